//! Day-2 handles on a SmartClient: `smart.fhir.dev/reconcile-requested-at` re-runs it now (a user-error
//! wait and a backoff are over), `smart.fhir.dev/paused: "true"` stops every remote call and write.

mod common;

use std::time::Duration;

use common::operator::*;
use common::scenario::*;
use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams};
use serde_json::json;
use smart_operator::devserver::Dialect as DevDialect;

const REQUESTED: &str = "smart.fhir.dev/reconcile-requested-at";
const PAUSED: &str = "smart.fhir.dev/paused";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_request_ends_a_user_error_wait_once_the_server_is_fixed() {
    let s = setup("ann-request", DevDialect::Rfc7591, &[]).await;
    s.server
        .set_policy(json!({"allowed_scopes": ["openid"], "on_disallowed": "reject"}))
        .await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, "app", "False", "RejectedByPolicy").await;
    // The auth server's admin allows the scopes; the spec is unchanged, so the operator waits.
    s.server
        .set_policy(json!({"allowed_scopes": null, "on_disallowed": "reject"}))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(s.server.count("register").await, 1, "a user error waits");

    annotate(&s, "app", REQUESTED, Some("2026-12-01T10:00:00Z")).await;
    let ready = wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    assert_eq!(
        ready.status.unwrap().last_handled_reconcile_at.as_deref(),
        Some("2026-12-01T10:00:00Z")
    );
    wait_for_event(&s.client, &s.ns, "ReconcileRequested").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_request_ends_a_backoff() {
    let s = setup(
        "ann-backoff",
        DevDialect::Rfc7591,
        &["--backoff-base", "60s", "--backoff-cap", "120s"],
    )
    .await;
    s.server
        .set_faults(json!({"error_rate": 1.0, "endpoints": ["register"]}))
        .await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, "app", "False", "AuthServerError").await;
    s.server.clear_faults().await;
    annotate(&s, "app", REQUESTED, Some("now")).await;
    eventually(
        "Ready long before the 60 s backoff is over",
        Duration::from_secs(10),
        || async {
            let client = api(&s).get("app").await.ok()?;
            (condition(&client, "Ready")?.0 == "True").then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_client_makes_no_remote_call_and_no_write_until_it_is_resumed() {
    let s = setup("ann-paused", DevDialect::S4s, &[]).await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    annotate(&s, "app", PAUSED, Some("true")).await;
    eventually("Paused=True", Duration::from_secs(10), || async {
        let client = api(&s).get("app").await.ok()?;
        (condition(&client, "Paused")?.0 == "True").then_some(())
    })
    .await;
    let calls = s.server.stats().await["total"].clone();
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    secrets
        .delete("app-smart-client", &DeleteParams::default())
        .await
        .unwrap();
    // A spec change too: neither is acted on while paused.
    patch_spec(&s, "app", json!({"clientName": "changed while paused"})).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        get_secret(&s.client, &s.ns, "app-smart-client")
            .await
            .is_none(),
        "the Secret is not written while paused"
    );
    assert_eq!(
        s.server.stats().await["total"],
        calls,
        "no call reaches the server while paused"
    );

    annotate(&s, "app", PAUSED, None).await;
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    eventually("the Secret back", Duration::from_secs(10), || async {
        get_secret(&s.client, &s.ns, "app-smart-client").await
    })
    .await;
    // The Secret is written before status, so status is read until it follows.
    eventually("Paused no longer True", Duration::from_secs(10), || async {
        let client = api(&s).get("app").await.ok()?;
        let paused = condition(&client, "Paused").map(|(status, _)| status);
        (paused != Some("True".to_owned())).then_some(())
    })
    .await;
}

const OBSERVE_ONLY: &str = "smart.fhir.dev/observe-only";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observe_only_client_is_read_and_reported_never_registered_updated_or_deleted() {
    let s = setup("ann-observe", DevDialect::Rfc7591, &[]).await;
    // New and observe-only: reported, never registered, no Secret.
    let mut fresh = smart_client("fresh", json!({}));
    fresh["metadata"]["annotations"] = json!({OBSERVE_ONLY: "true"});
    create(&s.client, Some(&s.ns), fresh).await.unwrap();
    let observed = wait_for_ready(&s.client, &s.ns, "fresh", "False", "ObserveOnly").await;
    assert!(
        ready_message(&observed).contains("would register"),
        "{}",
        ready_message(&observed)
    );
    assert!(
        get_secret(&s.client, &s.ns, "fresh-smart-client")
            .await
            .is_none()
    );

    // Registered, then observe-only: a spec change is reported, not sent; deletion leaves it there.
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    annotate(&s, "app", OBSERVE_ONLY, Some("true")).await;
    patch_spec(&s, "app", json!({"clientName": "changed while observed"})).await;
    let reported = wait_for_ready(&s.client, &s.ns, "app", "False", "ObserveOnly").await;
    assert!(
        ready_message(&reported).contains("would update"),
        "{}",
        ready_message(&reported)
    );
    api(&s)
        .delete("app", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the SmartClient gone", Duration::from_secs(20), || async {
        api(&s).get_opt("app").await.ok()?.is_none().then_some(())
    })
    .await;
    assert_eq!(
        s.server.count("register").await,
        1,
        "only the one registration"
    );
    assert_eq!(s.server.count("update").await, 0, "no update sent");
    assert_eq!(s.server.count("delete").await, 0, "no delete sent");
    assert_eq!(s.server.clients().await.len(), 1, "the registration stays");
}

/// Orphans are counted, and cleared once someone has dealt with them on the server (issue 14
/// item 4): `smart.fhir.dev/clear-orphans: <client id>[,<client id>...] | all`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_counted_and_cleared_by_annotation() {
    let s = setup("ann-orphans", DevDialect::S4s, &[]).await;
    let first = ready_app(&s).await.client_id.unwrap();
    // S4S cannot update: a new name replaces the client and orphans the first.
    patch_spec(&s, "app", json!({"clientName": "renamed"})).await;
    eventually(
        "the first client listed as an orphan",
        Duration::from_secs(30),
        || async {
            let status = api(&s).get("app").await.ok()?.status?;
            status
                .orphaned_clients
                .iter()
                .any(|o| o.client_id == first)
                .then_some(())
        },
    )
    .await;
    eventually("the orphan counted", Duration::from_secs(10), || async {
        (s.operator.metric("smart_operator_orphaned_clients").await == Some(1.0)).then_some(())
    })
    .await;

    annotate(&s, "app", "smart.fhir.dev/clear-orphans", Some(&first)).await;
    eventually("the orphan cleared", Duration::from_secs(30), || async {
        let status = api(&s).get("app").await.ok()?.status?;
        status.orphaned_clients.is_empty().then_some(())
    })
    .await;
    let note = wait_for_event(&s.client, &s.ns, "OrphansCleared").await;
    assert!(note.contains(&first), "{note}");
    eventually("the count back to 0", Duration::from_secs(10), || async {
        (s.operator.metric("smart_operator_orphaned_clients").await == Some(0.0)).then_some(())
    })
    .await;
}
