//! examples/gitops: the Argo CD health check is run for real, by Lua 5.1 (the language of Argo CD's
//! gopher-lua) and Lua 5.4, against sample objects whose kstatus conditions the operator's own code
//! derives, so the script and the operator cannot disagree on a reason; the Argo CD and Flux manifests
//! parse; the kustomization lists and builds every example manifest.
//!
//! The interpreters come from `hack/lib/ensure-lua.sh` (hack/test runs it); without them these tests
//! fail and say so.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use smart_operator::controller::auth_server::auth_server_stalls;
use smart_operator::controller::conditions::derive_kstatus_conditions;
use smart_operator::controller::plan::USER_ERROR_REASONS;
use smart_operator::controller::reconcile::smart_client_stalls;

const INTERPRETERS: [&str; 2] = ["lua5.1", "lua5.4"];

/// Ready=False reasons beyond user errors that wait for a person: Argo CD Degraded, Flux Failed.
const STALLING_REASONS: [&str; 3] = ["SecretConflict", "SecretEdited", "ObserveOnly"];

/// Ready=False reasons the operator works through by itself: Progressing.
const TRANSIENT_REASONS: [&str; 9] = [
    "AuthServerError",
    "AuthServerUnreachable",
    "AuthServerTimeout",
    "AuthServerProtocolError",
    "DiscoveryFailed",
    "AuthServerNotFound",
    "AuthServerNotReady",
    "InitialAccessTokenRejected",
    "RegistrationAccessTokenRejected",
];

fn gitops_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/gitops")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// Running the health check

/// A JSON value as a Lua table constructor, the way Argo CD hands the object to the script.
fn lua_literal(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => {
            let items: Vec<_> = items.iter().map(lua_literal).collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Object(fields) => {
            let fields: Vec<_> = fields
                .iter()
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_literal(v)))
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
    }
}

fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for byte in s.bytes() {
        match byte {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b' '..=b'~' => out.push(byte as char),
            // Lua's decimal escapes work byte-wise in 5.1 and 5.4 alike (UTF-8 passes through).
            _ => out.push_str(&format!("\\{byte:03}")),
        }
    }
    out.push('"');
    out
}

#[derive(Debug)]
struct Health {
    status: String,
    message: String,
}

/// Runs examples/gitops/smart-health.lua with `obj` set, as Argo CD does, under one interpreter.
fn run_health_check(interpreter: &str, object: &Value) -> Health {
    let script = gitops_dir().join("smart-health.lua");
    let driver = format!(
        "obj = {}\nlocal check = assert(loadfile({}))\nlocal hs = check()\n\
         assert(type(hs) == \"table\", \"the health check returned \" .. type(hs))\n\
         io.write(tostring(hs.status), \"\\n\", tostring(hs.message))\n",
        lua_literal(object),
        lua_string(script.to_str().unwrap()),
    );
    let mut child = Command::new(interpreter)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {interpreter} ({e}): the Argo CD health check is tested with Lua 5.1 and 5.4; \
                 install them with hack/lib/ensure-lua.sh (hack/test runs it)"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(driver.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{interpreter} failed running the health check: {}\ninput: {object}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (status, message) = stdout.split_once('\n').unwrap_or((&stdout, ""));
    Health {
        status: status.to_owned(),
        message: message.to_owned(),
    }
}

/// Asserts the health under every interpreter and returns the message (the same under each).
fn assert_health(object: &Value, expected: &str) -> String {
    let mut messages = Vec::new();
    for interpreter in INTERPRETERS {
        let health = run_health_check(interpreter, object);
        assert_eq!(
            health.status, expected,
            "{interpreter}: expected {expected}, got {health:?} for {object}"
        );
        assert!(
            !health.message.is_empty() && health.message != "nil",
            "{interpreter}: no message in {health:?}"
        );
        messages.push(health.message);
    }
    assert!(
        messages.windows(2).all(|w| w[0] == w[1]),
        "the interpreters disagree on the message: {messages:?}"
    );
    messages.pop().unwrap()
}

fn object(kind: &str, generation: i64, status: Option<Value>) -> Value {
    let mut object = json!({
        "apiVersion": "smart.fhir.dev/v1alpha1",
        "kind": kind,
        "metadata": { "name": "lab-results", "namespace": "labs", "generation": generation },
        "spec": { "authServerRef": { "name": "kodjin" }, "scopes": ["launch/patient"] },
    });
    if let Some(status) = status {
        object["status"] = status;
    }
    object
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({
        "type": type_, "status": status, "reason": reason, "message": message,
        "observedGeneration": 2, "lastTransitionTime": "2026-11-23T12:00:00Z",
    })
}

fn ready(status: &str, reason: &str, message: &str) -> Value {
    condition("Ready", status, reason, message)
}

/// `conditions` with the kstatus conditions (`Stalled`, `Reconciling`) the operator derives from them,
/// judged by the operator's own rule for `kind`: what the live object carries.
fn as_written(kind: &str, conditions: Vec<Value>, generation: i64) -> Vec<Value> {
    let mut conditions: Vec<Condition> =
        serde_json::from_value(Value::Array(conditions)).expect("conditions");
    let stalls = if kind == "SmartClient" {
        smart_client_stalls
    } else {
        auth_server_stalls
    };
    derive_kstatus_conditions(&mut conditions, stalls, Some(generation), Timestamp::now());
    conditions
        .into_iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect()
}

/// A SmartClient at generation 2 whose status describes generation 2 with these conditions, as the
/// operator writes them.
fn smart_client(conditions: Vec<Value>) -> Value {
    object(
        "SmartClient",
        2,
        Some(json!({
            "observedGeneration": 2,
            "clientId": "0b5f3c1e-7d7c-4c53-a1a4-2f1f7e2b9c11",
            "secretName": "lab-results-oauth",
            "conditions": as_written("SmartClient", conditions, 2),
        })),
    )
}

#[test]
fn argo_health_is_healthy_when_ready_is_true() {
    let client = smart_client(vec![
        ready(
            "True",
            "Ready",
            "client registered; Secret lab-results-oauth is up to date",
        ),
        condition("Registered", "True", "Registered", ""),
        condition("SecretSynced", "True", "SecretWritten", ""),
    ]);
    let message = assert_health(&client, "Healthy");
    assert!(message.contains("lab-results-oauth"), "{message}");
}

#[test]
fn argo_health_is_degraded_when_ready_is_false_for_a_reason_that_needs_a_person() {
    for reason in USER_ERROR_REASONS.iter().chain(&STALLING_REASONS) {
        let client = smart_client(vec![ready(
            "False",
            reason,
            "the auth server refused: \"invalid_redirect_uri\"",
        )]);
        let message = assert_health(&client, "Degraded");
        assert!(
            message.contains(reason) && message.contains("invalid_redirect_uri"),
            "the message names the reason and the server's words: {message}"
        );
    }
}

#[test]
fn argo_health_is_progressing_when_ready_is_false_with_auth_server_error() {
    for reason in TRANSIENT_REASONS {
        let client = smart_client(vec![ready(
            "False",
            reason,
            "HTTP 503 from the auth server; retrying in 8s",
        )]);
        let message = assert_health(&client, "Progressing");
        assert!(message.contains(reason), "{message}");
    }
}

#[test]
fn argo_health_is_progressing_when_there_is_no_status_yet() {
    assert_health(&object("SmartClient", 1, None), "Progressing");
    assert_health(&object("SmartClient", 1, Some(json!({}))), "Progressing");
    // What the CRD's status default makes of an object the operator has not written status for.
    assert_health(
        &object("SmartClient", 1, Some(json!({"observedGeneration": 0}))),
        "Progressing",
    );
    assert_health(
        &object("SmartClient", 1, Some(json!({"conditions": []}))),
        "Progressing",
    );
}

#[test]
fn argo_health_is_progressing_while_the_operator_has_not_seen_the_latest_spec() {
    let mut client = smart_client(vec![ready("True", "Ready", "client registered")]);
    client["metadata"]["generation"] = json!(3);
    let message = assert_health(&client, "Progressing");
    assert!(message.contains('3'), "{message}");
    // A user error of the previous generation does not make the new one Degraded either.
    let mut client = smart_client(vec![ready("False", "InvalidSpec", "bad scope")]);
    assert_health(&client, "Degraded");
    client["metadata"]["generation"] = json!(3);
    assert_health(&client, "Progressing");
}

#[test]
fn argo_health_follows_the_kstatus_conditions_not_a_list_of_reasons() {
    // A reason the script has never heard of: the operator's Stalled decides.
    let status = |conditions: Vec<Value>| {
        object(
            "SmartClient",
            2,
            Some(json!({"observedGeneration": 2, "conditions": conditions})),
        )
    };
    let message = assert_health(
        &status(vec![
            ready("False", "SomeFutureReason", "a person must act"),
            condition("Stalled", "True", "SomeFutureReason", "a person must act"),
        ]),
        "Degraded",
    );
    assert!(message.contains("SomeFutureReason"), "{message}");
    let message = assert_health(
        &status(vec![
            ready("False", "InvalidSpec", "bad scope"),
            condition("Reconciling", "True", "Rotating", "rotating the secret"),
        ]),
        "Progressing",
    );
    assert!(message.contains("Rotating"), "{message}");
}

#[test]
fn argo_health_is_degraded_when_deletion_is_blocked() {
    let mut client = smart_client(vec![
        ready("True", "Ready", "client registered"),
        condition(
            "DeletionBlocked",
            "True",
            "AuthServerUnreachable",
            "deleting client abc failed 5 times",
        ),
    ]);
    client["metadata"]["deletionTimestamp"] = json!("2026-11-23T12:00:00Z");
    let message = assert_health(&client, "Degraded");
    assert!(message.contains("failed 5 times"), "{message}");
}

#[test]
fn argo_health_judges_auth_servers_by_their_ready_condition() {
    for kind in ["SmartAuthServer", "ClusterSmartAuthServer"] {
        let status = |condition: Value| {
            object(
                kind,
                1,
                Some(
                    json!({"observedGeneration": 1, "conditions": as_written(kind, vec![condition], 1)}),
                ),
            )
        };
        assert_health(
            &status(ready("True", "Discovered", "endpoints discovered")),
            "Healthy",
        );
        assert_health(
            &status(ready("False", "DiscoveryFailed", "connection refused")),
            "Progressing",
        );
        assert_health(
            &status(ready(
                "False",
                "InvalidAuthServerConfiguration",
                "bad CA bundle",
            )),
            "Degraded",
        );
    }
}

#[test]
fn argo_health_handles_quotes_and_non_ascii_in_messages() {
    let client = smart_client(vec![ready(
        "False",
        "InvalidClientMetadata",
        "redirect URI \"https://ü.example.org/cb\" refused\\",
    )]);
    let message = assert_health(&client, "Degraded");
    assert!(
        message.contains("\"https://ü.example.org/cb\""),
        "{message}"
    );
}

// ---------------------------------------------------------------------------------------------------
// The manifests

#[test]
fn argocd_cm_holds_the_standalone_script_for_every_kind() {
    let script = read(&gitops_dir().join("smart-health.lua"));
    let docs = yaml_documents(&gitops_dir().join("argocd-cm.yaml"));
    assert_eq!(docs.len(), 1, "argocd-cm.yaml is one ConfigMap");
    let cm = &docs[0];
    assert_eq!(cm["apiVersion"], "v1");
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["name"], "argocd-cm");
    let data = cm["data"].as_object().expect("argocd-cm has data");
    for kind in ["SmartClient", "SmartAuthServer", "ClusterSmartAuthServer"] {
        let key = format!("resource.customizations.health.smart.fhir.dev_{kind}");
        let embedded = data
            .get(&key)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("argocd-cm.yaml has no {key}"));
        assert_eq!(
            embedded, script,
            "{key} differs from smart-health.lua: keep them identical"
        );
    }
    assert_eq!(data.len(), 3, "unexpected keys: {:?}", data.keys());
}

#[test]
fn flux_kustomization_waits_for_smart_resources_by_kstatus_alone() {
    let docs = yaml_documents(&gitops_dir().join("flux-kustomization.yaml"));
    let source = docs
        .iter()
        .find(|d| d["kind"] == "GitRepository")
        .expect("a GitRepository");
    assert_eq!(source["apiVersion"], "source.toolkit.fluxcd.io/v1");
    let ks = docs
        .iter()
        .find(|d| d["kind"] == "Kustomization")
        .expect("a Kustomization");
    assert_eq!(ks["apiVersion"], "kustomize.toolkit.fluxcd.io/v1");
    let spec = &ks["spec"];
    assert_eq!(spec["wait"], true, "the Kustomization waits for health");
    // Flux judges with kstatus, whose verdicts on the operator's objects tests/kstatus.rs checks with
    // the real library; custom expressions would be a second set of rules to keep in line.
    assert!(
        spec.get("healthCheckExprs").is_none(),
        "plain kstatus is enough: {spec}"
    );
    assert_eq!(spec["sourceRef"]["kind"], "GitRepository");
    assert_eq!(spec["sourceRef"]["name"], source["metadata"]["name"]);
    let path = spec["path"].as_str().expect("spec.path");
    assert!(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(path)
            .join("kustomization.yaml")
            .is_file(),
        "spec.path {path} has no kustomization.yaml"
    );
    for field in ["interval", "timeout"] {
        let d = spec[field].as_str().unwrap_or_default();
        d.parse::<kube::core::Duration>()
            .unwrap_or_else(|e| panic!("spec.{field} {d:?} is not a duration: {e}"));
    }
}

fn example_manifests() -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
    names.sort();
    assert!(
        names.len() >= 4,
        "expected the examples/ manifests, found {names:?}"
    );
    names
}

#[test]
fn gitops_kustomization_lists_every_example_manifest() {
    let docs = yaml_documents(&gitops_dir().join("kustomization.yaml"));
    let k = &docs[0];
    assert_eq!(k["apiVersion"], "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k["kind"], "Kustomization");
    let resources: Vec<&str> = k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for name in example_manifests() {
        assert!(
            resources.contains(&format!("../{name}").as_str()),
            "kustomization.yaml does not list ../{name}: {resources:?}"
        );
    }
    for resource in &resources {
        assert!(
            gitops_dir().join(resource).is_file(),
            "kustomization.yaml lists {resource}, which does not exist"
        );
    }
}

#[test]
fn gitops_kustomization_builds_every_example_into_one_namespace() {
    let dir = gitops_dir();
    let output = Command::new("kubectl")
        .args(["kustomize", "--load-restrictor", "LoadRestrictionsNone"])
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run kubectl ({e}): put the control plane's bin dir on PATH (eval \"$(hack/control-plane env)\"; hack/test does)")
        });
    assert!(
        output.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let built: Vec<Value> =
        serde_saphyr::from_multiple::<Value>(&String::from_utf8_lossy(&output.stdout))
            .expect("kustomize output is YAML")
            .into_iter()
            .filter(|v| !v.is_null())
            .collect();

    // Everything the example files hold, by kind and name.
    let mut expected: Vec<(String, String)> = Vec::new();
    for name in example_manifests() {
        for doc in yaml_documents(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples")
                .join(&name),
        ) {
            expected.push((
                doc["kind"].as_str().unwrap().to_owned(),
                doc["metadata"]["name"].as_str().unwrap().to_owned(),
            ));
        }
    }
    let namespace = built
        .iter()
        .find(|d| d["kind"] == "Namespace")
        .expect("the build creates its namespace");
    let ns = namespace["metadata"]["name"].as_str().unwrap();
    assert_eq!(
        namespace["metadata"]["labels"]["smart.fhir.dev/clients"], "allowed",
        "the namespace is admitted by the ClusterSmartAuthServer example"
    );
    for (kind, name) in &expected {
        let doc = built
            .iter()
            .find(|d| d["kind"] == kind.as_str() && d["metadata"]["name"] == name.as_str())
            .unwrap_or_else(|| panic!("the build lacks {kind} {name}"));
        if kind != "ClusterSmartAuthServer" {
            assert_eq!(doc["metadata"]["namespace"], ns, "{kind} {name}");
        }
    }
    assert!(
        expected.iter().filter(|(k, _)| k == "SmartClient").count() >= 4,
        "{expected:?}"
    );
    assert_eq!(
        built.len(),
        expected.len() + 1,
        "only the examples and the namespace"
    );
}
