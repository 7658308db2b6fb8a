//! What the tools platform teams already run make of SmartClients and auth servers: the real kstatus
//! library (sigs.k8s.io/cli-utils, used by Flux, Helm 4 `--wait`, kpt and Argo CD's generic health),
//! through `hack/kstatus-check`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::operator::*;
use common::scenario::*;
use common::*;
use serde_json::json;
use smart_operator::devserver::Dialect as DevDialect;

/// kstatus's verdict and message for one object, as `kubectl get -o json` shows it.
fn kstatus(kind: &str, namespace: &str, name: &str) -> (String, String) {
    let (ok, object, err) = run_tool(
        "kubectl",
        &["get", kind, name, "-n", namespace, "-o", "json"],
    );
    assert!(ok, "kubectl get {kind} {name}: {err}");
    let mut checker = Command::new(repo_root().join("hack/kstatus-check"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hack/kstatus-check");
    checker
        .stdin
        .take()
        .unwrap()
        .write_all(object.as_bytes())
        .unwrap();
    let out = checker.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "hack/kstatus-check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let mut fields = line.trim_end().splitn(3, '\t').skip(1);
    (
        fields.next().unwrap_or_default().to_owned(),
        fields.next().unwrap_or_default().to_owned(),
    )
}

async fn eventually_kstatus(s: &Setup, kind: &str, name: &str, want: &str) -> String {
    eventually(
        &format!("kstatus {want} for {kind} {name}"),
        Duration::from_secs(30),
        || async {
            let (status, message) = kstatus(kind, &s.ns, name);
            (status == want).then_some(message)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kstatus_says_current_failed_and_in_progress_when_they_are_true() {
    let s = setup("kstatus", DevDialect::Rfc7591, &[]).await;
    // Objects no operator has written status for yet (no operator watches this namespace): InProgress,
    // not Current. Without a default for status.observedGeneration kstatus counts an object without
    // status Current, and plain Flux `wait: true` would pass a client nothing has registered.
    let unwatched = fresh_namespace(&s.client, "kstatus-unwatched").await;
    create(
        &s.client,
        Some(&unwatched),
        smart_client("unseen", json!({})),
    )
    .await
    .unwrap();
    apply(&s.client, Some(&unwatched), json!({"apiVersion": "smart.fhir.dev/v1alpha1", "kind": "SmartAuthServer", "metadata": {"name": "dev"}, "spec": {"dialect": "S4S", "fhirBaseUrl": s.server.fhir_base_url()}}))
        .await
        .unwrap();
    for kind in ["smartclient", "smartauthserver"] {
        let name = if kind == "smartclient" {
            "unseen"
        } else {
            "dev"
        };
        let (status, message) = kstatus(kind, &unwatched, name);
        assert_eq!(status, "InProgress", "{kind} without status: {message}");
    }

    // The auth server and a healthy client: Current.
    eventually_kstatus(&s, "smartauthserver", "dev", "Current").await;
    create(&s.client, Some(&s.ns), smart_client("healthy", json!({})))
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, "healthy", "True", "Ready").await;
    eventually_kstatus(&s, "smartclient", "healthy", "Current").await;

    // Right after a spec change the server takes its time to answer: InProgress until caught up.
    s.server
        .set_faults(json!({"answer_delay_ms": 1500, "endpoints": ["update"]}))
        .await;
    patch_spec(&s, "healthy", json!({"clientName": "renamed"})).await;
    let (status, message) = kstatus("smartclient", &s.ns, "healthy");
    assert_eq!(status, "InProgress", "right after the change: {message}");
    eventually_kstatus(&s, "smartclient", "healthy", "Current").await;
    s.server.clear_faults().await;

    // A server failing: InProgress (retrying with backoff), never Current or Failed.
    s.server
        .set_faults(json!({"error_rate": 1.0, "endpoints": ["register"]}))
        .await;
    create(&s.client, Some(&s.ns), smart_client("retrying", json!({})))
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, "retrying", "False", "AuthServerError").await;
    let (status, message) = kstatus("smartclient", &s.ns, "retrying");
    assert_eq!(status, "InProgress", "{message}");
    s.server.clear_faults().await;

    // A refusal only a person can fix: Failed, with the server's words.
    s.server
        .set_policy(json!({"allowed_scopes": ["openid"], "on_disallowed": "reject"}))
        .await;
    create(&s.client, Some(&s.ns), smart_client("refused", json!({})))
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, "refused", "False", "RejectedByPolicy").await;
    let message = eventually_kstatus(&s, "smartclient", "refused", "Failed").await;
    assert!(
        message.contains("RejectedByPolicy") || message.contains("scope"),
        "the server's words: {message}"
    );
}
