//! Credential rotation (issue 14 items 2 and 3) on the real control plane against smart-dev-server:
//! on request, ahead of the secret's expiry, with the replaced credentials kept as `previous_*`
//! for the overlap and then deleted (RFC 7591) or orphaned and recorded (S4S).

mod common;

use std::time::Duration;

use common::operator::*;
use common::scenario::*;
use common::*;
use serde_json::json;
use smart_operator::devserver::Dialect as DevDialect;

const ROTATE: &str = "smart.fhir.dev/rotate-credentials-requested-at";

fn client_ids(clients: &[serde_json::Value]) -> Vec<String> {
    let mut ids: Vec<String> = clients
        .iter()
        .filter_map(|c| c["client_id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

/// Waits until the Secret's `client_id` is no longer `old`, and returns the Secret.
async fn wait_for_new_credentials(s: &Setup, old: &str) -> k8s_openapi::api::core::v1::Secret {
    eventually(
        "the Secret holds new credentials",
        Duration::from_secs(30),
        || async {
            let secret = get_secret(&s.client, &s.ns, "app-smart-client").await?;
            (secret_value(&secret, "client_id")? != old).then_some(secret)
        },
    )
    .await
}

/// Creates SmartClient `app` with `spec.rotation` = `rotation`, waits for Ready, returns its Secret.
async fn ready_rotating_client(
    s: &Setup,
    rotation: serde_json::Value,
) -> k8s_openapi::api::core::v1::Secret {
    create(
        &s.client,
        Some(&s.ns),
        smart_client("app", json!({"rotation": rotation})),
    )
    .await
    .unwrap();
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    get_secret(&s.client, &s.ns, "app-smart-client")
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_rotation_keeps_the_old_credentials_for_the_overlap_then_deletes_them() {
    let s = setup("rotate-7591", DevDialect::Rfc7591, &[]).await;
    let before = ready_rotating_client(&s, json!({"overlap": "4s"})).await;
    let old_id = secret_value(&before, "client_id").unwrap();
    let old_secret = secret_value(&before, "client_secret").unwrap();
    let registrations = s.server.count("register").await;

    annotate(&s, "app", ROTATE, Some("leak-1")).await;
    let rotated = wait_for_new_credentials(&s, &old_id).await;
    let new_id = secret_value(&rotated, "client_id").unwrap();
    assert_eq!(
        secret_value(&rotated, "previous_client_id").as_deref(),
        Some(old_id.as_str())
    );
    assert_eq!(
        secret_value(&rotated, "previous_client_secret").as_deref(),
        Some(old_secret.as_str()),
        "apps that have not rolled yet keep working with the old secret"
    );
    assert_ne!(secret_value(&rotated, "client_secret").unwrap(), old_secret);
    let mut both = vec![old_id.clone(), new_id.clone()];
    both.sort();
    assert_eq!(
        client_ids(&s.server.clients().await),
        both,
        "both live during the overlap"
    );
    let status = eventually(
        "status reports the rotation",
        Duration::from_secs(10),
        || async {
            let status = api(&s).get("app").await.ok()?.status?;
            (status.client_id.as_deref() == Some(new_id.as_str())
                && status.last_handled_rotation_at.as_deref() == Some("leak-1"))
            .then_some(status)
        },
    )
    .await;
    assert_eq!(
        status
            .previous_client
            .as_ref()
            .map(|p| p.client_id.as_str()),
        Some(old_id.as_str())
    );
    let note = wait_for_event(&s.client, &s.ns, "CredentialsRotated").await;
    assert!(note.contains(&new_id) && note.contains(&old_id), "{note}");
    assert!(!note.contains(&old_secret), "no secret in Events: {note}");

    // After the overlap the old registration is deleted, then leaves the Secret.
    eventually(
        "the old registration is deleted",
        Duration::from_secs(30),
        || async { (client_ids(&s.server.clients().await) == vec![new_id.clone()]).then_some(()) },
    )
    .await;
    let retired = wait_for_retirement(&s.client, &s.ns, "app-smart-client").await;
    assert!(secret_value(&retired, "previous_client_secret").is_none());
    assert_eq!(
        secret_value(&retired, "client_id").as_deref(),
        Some(new_id.as_str())
    );
    wait_for_event(&s.client, &s.ns, "PreviousCredentialsRetired").await;
    eventually(
        "status.previousClient cleared",
        Duration::from_secs(10),
        || async {
            let status = api(&s).get("app").await.ok()?.status?;
            status.previous_client.is_none().then_some(())
        },
    )
    .await;
    assert_eq!(
        s.server.count("register").await,
        registrations + 1,
        "one registration for one rotation"
    );
    let status = api(&s).get("app").await.unwrap().status.unwrap();
    assert!(
        status.orphaned_clients.is_empty(),
        "{:?}",
        status.orphaned_clients
    );

    // Handled once: a restart does not rotate again for the same request.
    let mut operator = s.operator;
    operator.restart();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(s.server.count("register").await, registrations + 1);
    assert!(!operator.log().contains(&old_secret), "no secret in logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_secret_is_rotated_ahead_of_its_expiry_without_a_request() {
    let s = setup("rotate-expiry", DevDialect::Rfc7591, &[]).await;
    s.server
        .set_policy(json!({"client_secret_lifetime_secs": 8}))
        .await;
    create(
        &s.client,
        Some(&s.ns),
        smart_client(
            "app",
            json!({"rotation": {"overlap": "2s", "refreshBefore": "3s"}}),
        ),
    )
    .await
    .unwrap();
    let ready = wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    let status = ready.status.unwrap();
    let expires = status.client_secret_expires_at.clone().unwrap().0;
    let next = status
        .next_rotation_at
        .clone()
        .expect("status.nextRotationAt")
        .0;
    assert_eq!(
        expires.as_second() - next.as_second(),
        3,
        "scheduled refreshBefore ahead of the expiry"
    );
    assert!(
        s.operator
            .metric("smart_operator_credential_next_rotation_timestamp_seconds")
            .await
            .is_some_and(|v| v as i64 == next.as_second()),
        "the metric shows the schedule"
    );
    let old_id = status.client_id.unwrap();
    wait_for_new_credentials(&s, &old_id).await;
    // Rotated before the old secret expired: never reported expired.
    let client = api(&s).get("app").await.unwrap();
    assert_ne!(
        condition(&client, "ClientSecretValid").map(|(status, _)| status),
        Some("False".to_owned())
    );
    eventually(
        "the old registration is deleted",
        Duration::from_secs(20),
        || async {
            client_ids(&s.server.clients().await)
                .iter()
                .all(|id| *id != old_id)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s4s_rotation_orphans_the_replaced_client_and_records_it() {
    let s = setup("rotate-s4s", DevDialect::S4s, &[]).await;
    let before = ready_rotating_client(&s, json!({"overlap": "2s"})).await;
    let old_id = secret_value(&before, "client_id").unwrap();
    annotate(&s, "app", ROTATE, Some("1")).await;
    let rotated = wait_for_new_credentials(&s, &old_id).await;
    assert_eq!(
        secret_value(&rotated, "previous_client_id").as_deref(),
        Some(old_id.as_str())
    );
    let status = wait_for_orphan(&s.client, &s.ns, "app", &old_id, "Rotated").await;
    assert!(
        status.previous_client.is_none()
            || status
                .previous_client
                .as_ref()
                .is_some_and(|p| p.client_id == old_id)
    );
    wait_for_retirement(&s.client, &s.ns, "app-smart-client").await;
    assert_eq!(
        s.operator.metric("smart_operator_orphaned_clients").await,
        Some(1.0)
    );
}

/// The rotation's answer reaches the Secret but status cannot be written, and the operator dies:
/// the restarted operator finds the request handled in the Secret and rotates no second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_request_is_handled_once_across_a_crash_before_status_says_so() {
    let mut s = setup("rotate-crash", DevDialect::Rfc7591, &[]).await;
    let old_id = secret_value(
        &ready_rotating_client(&s, json!({"overlap": "1h"})).await,
        "client_id",
    )
    .unwrap();
    let policy = refuse_status_writes(&s).await;
    annotate(&s, "app", ROTATE, Some("once")).await;
    let rotated = wait_for_new_credentials(&s, &old_id).await;
    let new_id = secret_value(&rotated, "client_id").unwrap();
    let registrations = s.server.count("register").await;
    s.operator.kill_hard();
    allow_writes(&policy);
    s.operator.restart();
    eventually(
        "status catches up from the Secret",
        Duration::from_secs(30),
        || async {
            let status = api(&s).get("app").await.ok()?.status?;
            (status.client_id.as_deref() == Some(new_id.as_str())
                && status.last_handled_rotation_at.as_deref() == Some("once"))
            .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        s.server.count("register").await,
        registrations,
        "no second rotation"
    );
    let secret = get_secret(&s.client, &s.ns, "app-smart-client")
        .await
        .unwrap();
    assert_eq!(secret_value(&secret, "client_id"), Some(new_id));
    assert_eq!(secret_value(&secret, "previous_client_id"), Some(old_id));
}

/// A SmartClient deleted during an overlap takes both registrations with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_client_during_the_overlap_deletes_the_replaced_registration_too() {
    let s = setup("rotate-delete", DevDialect::Rfc7591, &[]).await;
    let old_id = secret_value(
        &ready_rotating_client(&s, json!({"overlap": "1h"})).await,
        "client_id",
    )
    .unwrap();
    annotate(&s, "app", ROTATE, Some("1")).await;
    wait_for_new_credentials(&s, &old_id).await;
    assert_eq!(s.server.clients().await.len(), 2);
    delete_and_expect_registration_gone(&s, "app").await;
}

/// S4SLegacy writes a replacement's chosen id and secret before posting them; the post keeps
/// failing, status cannot be written, and the operator dies: the restarted one posts the same
/// choice, knows which request it answers, and rotates once. A wipe afterwards gets the rotated id
/// and secret back (not the derived id with a new secret).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s4s_legacy_rotation_posted_again_after_a_crash_answers_its_request_once() {
    let mut s = setup(
        "rotate-legacy",
        DevDialect::S4sLegacy,
        &["--existence-check-interval", "2s"],
    )
    .await;
    let original = ready_rotating_client(&s, json!({"overlap": "1h"})).await;
    let old_id = secret_value(&original, "client_id").unwrap();
    let policy = refuse_status_writes(&s).await;
    s.server
        .set_faults(json!({"error_rate": 1.0, "endpoints": ["register"]}))
        .await;
    let posts = s.server.count("register").await;
    annotate(&s, "app", ROTATE, Some("once")).await;
    eventually(
        "the choice posted and posted again",
        Duration::from_secs(30),
        || async { (s.server.count("register").await >= posts + 2).then_some(()) },
    )
    .await;
    s.operator.kill_hard();
    allow_writes(&policy);
    s.server.clear_faults().await;
    s.operator.restart();
    let rotated = wait_for_new_credentials(&s, &old_id).await;
    eventually(
        "the rotation confirmed",
        Duration::from_secs(30),
        || async {
            let status = api(&s).get("app").await.ok()?.status?;
            (status.last_handled_rotation_at.as_deref() == Some("once")
                && condition(&api(&s).get("app").await.ok()?, "Ready")?.0 == "True")
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now = get_secret(&s.client, &s.ns, "app-smart-client")
        .await
        .unwrap();
    assert_eq!(
        secret_value(&now, "previous_client_id"),
        Some(old_id.clone()),
        "rotated once"
    );
    assert_eq!(
        secret_value(&now, "client_id"),
        secret_value(&rotated, "client_id")
    );
    assert_eq!(
        s.server.clients().await.len(),
        2,
        "the original and one replacement"
    );

    // A wipe: the rotated id comes back with its own secret.
    let before = (
        secret_value(&now, "client_id"),
        secret_value(&now, "client_secret"),
    );
    s.server.reset().await;
    eventually(
        "registered again after the wipe",
        Duration::from_secs(30),
        || async {
            let clients = s.server.clients().await;
            clients
                .iter()
                .any(|c| c["client_id"].as_str().map(str::to_owned) == before.0)
                .then_some(())
        },
    )
    .await;
    let after = get_secret(&s.client, &s.ns, "app-smart-client")
        .await
        .unwrap();
    assert_eq!(
        (
            secret_value(&after, "client_id"),
            secret_value(&after, "client_secret")
        ),
        before,
        "mounted credentials keep working after a wipe"
    );
}
