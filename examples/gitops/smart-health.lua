-- Argo CD health check for the smart.fhir.dev kinds: SmartClient, SmartAuthServer and
-- ClusterSmartAuthServer. Argo CD runs it with the live object in `obj` and reads the returned
-- table. Kept to Lua 5.1 (Argo CD's interpreter is gopher-lua).
--
-- It reads the conditions smart-operator writes for kstatus, so Argo CD gives the verdicts Flux,
-- Helm 4 `--wait` and kpt give. Which reasons need a person is the operator's decision (it sets
-- Stalled); this script keeps no list of reasons that could drift from it.
--
--   Progressing  no status yet, status.observedGeneration behind metadata.generation, or
--                Reconciling=True (a first registration, a retried server error, ...)
--   Degraded     Stalled=True: only a person can fix it (a spec, a Secret or the auth server's policy
--                must change, or a deletion is blocked)
--   Healthy      Ready=True
local function describe(condition)
  local text = condition.reason or "Unknown"
  if condition.message ~= nil and condition.message ~= "" then
    text = text .. ": " .. condition.message
  end
  return text
end

local hs = { status = "Progressing", message = "Waiting for smart-operator to report status" }
if obj.status == nil or obj.status.conditions == nil then
  return hs
end

local generation = obj.metadata ~= nil and obj.metadata.generation or nil
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  hs.message = "Waiting for smart-operator to act on generation " .. tostring(generation)
  return hs
end

local found = {}
for _, condition in ipairs(obj.status.conditions) do
  if condition.type ~= nil then
    found[condition.type] = condition
  end
end

if found.Stalled ~= nil and found.Stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(found.Stalled)
elseif found.Reconciling ~= nil and found.Reconciling.status == "True" then
  hs.message = describe(found.Reconciling)
elseif found.Ready ~= nil and found.Ready.status == "True" then
  hs.status = "Healthy"
  hs.message = found.Ready.message or "Ready"
  if hs.message == "" then
    hs.message = "Ready"
  end
elseif found.Ready ~= nil then
  hs.message = describe(found.Ready)
end
return hs
