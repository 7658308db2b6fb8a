//! `client_secret_expires_at` is honoured (issue 14 item 3): status shows it, and a secret past it
//! (here because the rotation ahead of the expiry cannot register a replacement) is a condition, an
//! Event and a metric, never a silent failure. Rotation ahead of the expiry: tests/rotation.rs.

mod common;

use std::time::Duration;

use common::operator::*;
use common::scenario::*;
use serde_json::json;
use smart_operator::devserver::Dialect as DevDialect;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_secret_past_its_expiry_is_reported() {
    let s = setup("expiry", DevDialect::Rfc7591, &[]).await;
    s.server
        .set_policy(json!({"client_secret_lifetime_secs": 4}))
        .await;
    let status = ready_app(&s).await;
    let expires = status
        .client_secret_expires_at
        .clone()
        .expect("status.clientSecretExpiresAt")
        .0;
    let issued = status.client_id_issued_at.clone().unwrap().0;
    assert_eq!(expires.as_second() - issued.as_second(), 4);
    let valid = condition_in(&status, "ClientSecretValid");
    assert_eq!(valid.status, "True", "{valid:?}");
    // The rotation due ahead of the expiry finds the server refusing registrations.
    s.server
        .set_faults(json!({"error_rate": 1.0, "endpoints": ["register"]}))
        .await;

    // Past it: False, an Event and the metric, without any spec change.
    eventually(
        "ClientSecretValid=False",
        Duration::from_secs(20),
        || async {
            let client = api(&s).get("app").await.ok()?;
            condition(&client, "ClientSecretValid")
                .filter(|(status, reason)| status == "False" && reason == "ClientSecretExpired")
        },
    )
    .await;
    let note = wait_for_event(&s.client, &s.ns, "ClientSecretExpired").await;
    assert!(note.contains("expired"), "{note}");
    assert_eq!(
        s.operator
            .metric("smart_operator_client_secrets_expired")
            .await,
        Some(1.0)
    );
}
