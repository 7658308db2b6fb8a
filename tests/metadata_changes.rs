//! Only what a dialect sends changes it (review C12): the S4S dialects receive a client name, redirect
//! URIs and scopes, so an edit of anything else replaces nothing.

mod common;

use std::time::Duration;

use common::operator::*;
use common::scenario::*;
use common::*;
use serde_json::json;
use smart_operator::devserver::Dialect as DevDialect;

async fn edit_that_the_dialect_never_sees_replaces_nothing(dialect: DevDialect) {
    let s = setup("meta-unsent", dialect, &[]).await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    let first = wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    patch_spec(
        &s,
        "app",
        json!({"contacts": ["mailto:team@example.org"], "logoUri": "https://app.example.org/logo.png"}),
    )
    .await;
    let caught_up = eventually(
        "the operator saw the edit",
        Duration::from_secs(30),
        || async {
            let client = api(&s).get("app").await.ok()?;
            let status = client.status.clone()?;
            let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
            (ready.observed_generation == Some(2) && ready.status == "True").then_some(status)
        },
    )
    .await;
    assert_eq!(caught_up.client_id, first.status.unwrap().client_id);
    assert_eq!(
        s.server.count("register").await,
        1,
        "nothing registered again"
    );
    assert!(caught_up.orphaned_clients.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4s_contacts_and_logo_edits_replace_nothing() {
    edit_that_the_dialect_never_sees_replaces_nothing(DevDialect::S4s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4s_legacy_contacts_and_logo_edits_replace_nothing() {
    edit_that_the_dialect_never_sees_replaces_nothing(DevDialect::S4sLegacy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc7591_contacts_edit_is_one_put() {
    let s = setup("meta-put", DevDialect::Rfc7591, &[]).await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    patch_spec(&s, "app", json!({"contacts": ["mailto:team@example.org"]})).await;
    eventually("one PUT", Duration::from_secs(30), || async {
        (s.server.count("update").await == 1).then_some(())
    })
    .await;
    let remote = s.server.clients().await;
    assert_eq!(remote[0]["contacts"], json!(["mailto:team@example.org"]));
}

/// Review C10: S4SLegacy can neither update a client nor register a fixed `clientId` again, so a
/// metadata change of such a client cannot be applied; it must say so, not report success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4s_legacy_metadata_change_of_a_fixed_client_id_is_refused_not_reported_as_applied() {
    let s = setup("meta-fixed", DevDialect::S4sLegacy, &[]).await;
    create(
        &s.client,
        Some(&s.ns),
        smart_client("app", json!({"clientId": "fixed-app"})),
    )
    .await
    .unwrap();
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    patch_spec(
        &s,
        "app",
        json!({"redirectUris": ["https://app.example.org/new-callback"]}),
    )
    .await;
    let refused = wait_for_ready(&s.client, &s.ns, "app", "False", "UnsupportedByDialect").await;
    let message = ready_message(&refused);
    assert!(message.contains("clientId"), "{message}");
    assert!(
        !events(&s.client, &s.ns)
            .await
            .iter()
            .any(|(r, _)| r == "Replaced"),
        "no Event claims the change was applied"
    );
    let remote = s.server.clients().await;
    assert_eq!(remote.len(), 1);
}
