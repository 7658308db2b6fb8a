//! An RFC 7591 server without RFC 7592 management (no registration access token, no registration
//! client URI) is common (review C14): spec changes register a replacement (recorded as an orphan),
//! deletion leaves the registration with an Event, and nothing crashes or waits forever.

mod common;

use std::time::Duration;

use common::operator::*;
use common::scenario::*;
use common::*;
use serde_json::json;
use smart_operator::devserver::Dialect as DevDialect;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_rfc7592_gets_replacements_and_orphans_not_a_crash() {
    let mut s = setup("no-7592", DevDialect::Rfc7591, &[]).await;
    s.server
        .set_policy(json!({"without_management_api": true}))
        .await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    let first = wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    let old_id = first.status.unwrap().client_id.unwrap();

    patch_spec(
        &s,
        "app",
        json!({"redirectUris": ["https://app.example.org/new-callback"]}),
    )
    .await;
    let replaced = eventually("a replacement", Duration::from_secs(30), || async {
        let status = api(&s).get("app").await.ok()?.status?;
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
        (ready.status == "True" && status.client_id.as_deref() != Some(old_id.as_str()))
            .then_some(status)
    })
    .await;
    assert!(
        replaced
            .orphaned_clients
            .iter()
            .any(|o| o.client_id == old_id),
        "{:?}",
        replaced.orphaned_clients
    );
    assert_eq!(s.server.count("register").await, 2);
    assert_eq!(s.server.count("update").await, 0);
    assert!(s.operator.is_running(), "the operator did not crash");

    delete_and_wait_until_gone(&s.client, &s.ns, "app").await;
    let note = wait_for_event(&s.client, &s.ns, "Orphaned").await;
    assert!(note.contains("RFC 7592"), "{note}");
    assert_eq!(s.server.count("delete").await, 0);
    assert!(s.operator.is_running(), "the operator did not crash");
}

/// A rotation there: the replaced registration cannot be deleted, so after the overlap it is
/// recorded as an orphan, saying why; nothing is sent to a management API that is not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_without_rfc7592_orphans_the_replaced_registration_and_says_why() {
    let s = setup("no-7592-rotate", DevDialect::Rfc7591, &[]).await;
    s.server
        .set_policy(json!({"without_management_api": true}))
        .await;
    create(
        &s.client,
        Some(&s.ns),
        smart_client("app", json!({"rotation": {"overlap": "2s"}})),
    )
    .await
    .unwrap();
    let first = wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    let old_id = first.status.unwrap().client_id.unwrap();
    annotate(
        &s,
        "app",
        "smart.fhir.dev/rotate-credentials-requested-at",
        Some("1"),
    )
    .await;
    wait_for_orphan(&s.client, &s.ns, "app", &old_id, "Rotated").await;
    let note = wait_for_event(&s.client, &s.ns, "PreviousCredentialsRetired").await;
    assert!(note.contains("no registration access token"), "{note}");
    assert_eq!(s.server.count("register").await, 2);
    assert_eq!(s.server.count("delete").await, 0);
}
