-- Argo CD health check for the smart.fhir.dev kinds: SmartClient, SmartAuthServer and
-- ClusterSmartAuthServer. Argo CD runs it with the live object in `obj` and reads the returned
-- table. Kept to Lua 5.1 (Argo CD's interpreter is gopher-lua).
--
--   Healthy      Ready=True
--   Degraded     Ready=False with a reason that waits for a person (the spec, a Secret or the
--                auth server's policy must change), or DeletionBlocked=True
--   Progressing  anything else: no status yet, a spec the operator has not seen yet, an auth server
--                not ready, or an error the operator retries with backoff
local needs_a_person = {
  InvalidSpec = true,
  InvalidClientMetadata = true,
  RejectedByPolicy = true,
  UnsupportedByDialect = true,
  CredentialsLost = true,
  AuthServerNotAllowed = true,
  InvalidAuthServerConfiguration = true,
}

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

local ready = nil
for _, condition in ipairs(obj.status.conditions) do
  if condition.type == "DeletionBlocked" and condition.status == "True" then
    hs.status = "Degraded"
    hs.message = "Deletion blocked: " .. describe(condition)
    return hs
  end
  if condition.type == "Ready" then
    ready = condition
  end
end

if ready == nil then
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
  if hs.message == "" then
    hs.message = "Ready"
  end
elseif ready.status == "False" and needs_a_person[ready.reason] then
  hs.status = "Degraded"
  hs.message = describe(ready)
else
  hs.message = describe(ready)
end
return hs
