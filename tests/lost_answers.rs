//! A server that commits a registration and then loses the answer (a timeout past the commit, a proxy
//! dropping the reply): smart-dev-server's `lose_answer_rate` fault. S4SLegacy writes its chosen id and
//! secret before posting, so a lost answer never makes a second client or a second secret.

mod common;

use std::time::Duration;

use common::operator::*;
use common::scenario::*;
use common::*;
use serde_json::json;
use smart_operator::devserver::Dialect as DevDialect;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_server_commits_a_registration_and_then_loses_its_answer() {
    let server = AuthServer::start(DevDialect::S4s, &[]).await;
    server
        .set_faults(json!({"lose_answer_rate": 1.0, "endpoints": ["register"]}))
        .await;
    let sent = reqwest::Client::new()
        .post(format!("{}/oauth/register", server.server.base_url()))
        .json(&json!({"client_name": "x", "redirect_uris": ["https://app.example.org/cb"], "scope": "launch"}))
        .send()
        .await;
    assert!(sent.is_err(), "no answer arrives: {sent:?}");
    assert_eq!(
        server.clients().await.len(),
        1,
        "the registration was committed"
    );
}

/// A SmartClient `app` whose first `lost` registrations are committed and their answers lost, Ready
/// once the fault is over.
async fn ready_after_lost_answers(prefix: &str, dialect: DevDialect, lost: u64) -> Setup {
    let s = setup(prefix, dialect, &[]).await;
    s.server
        .set_faults(json!({"lose_answer_rate": 1.0, "endpoints": ["register"]}))
        .await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    eventually("lost answers", Duration::from_secs(30), || async {
        (s.server.count("register").await >= lost).then_some(())
    })
    .await;
    s.server.clear_faults().await;
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s4s_legacy_registration_whose_answers_are_lost_is_neither_duplicated_nor_re_keyed() {
    let s = ready_after_lost_answers("lost-legacy", DevDialect::S4sLegacy, 3).await;

    let remote = s.server.clients().await;
    assert_eq!(remote.len(), 1, "one client on the server: {remote:?}");
    let secret = get_secret(&s.client, &s.ns, "app-smart-client")
        .await
        .unwrap();
    assert_eq!(
        remote[0]["client_secret"].as_str(),
        secret_value(&secret, "client_secret").as_deref(),
        "the Secret holds the secret the server has"
    );
    assert_eq!(
        remote[0]["client_id"].as_str(),
        secret_value(&secret, "client_id").as_deref()
    );
}

/// Orphans whose id the operator never learnt: the entries `status.orphanedClients` lists with an
/// empty client id.
async fn lost_answer_orphans(s: &Setup, name: &str) -> Vec<serde_json::Value> {
    let client = api(s).get(name).await.unwrap();
    let status = serde_json::to_value(client.status.unwrap_or_default()).unwrap();
    status["orphanedClients"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|o| o["reason"] == "AnswerLost")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_whose_answers_were_lost_are_each_recorded_as_orphans() {
    let s = ready_after_lost_answers("lost-rfc", DevDialect::Rfc7591, 2).await;

    let remote = s.server.clients().await;
    let secret = get_secret(&s.client, &s.ns, "app-smart-client")
        .await
        .unwrap();
    let held = secret_value(&secret, "client_id").unwrap();
    assert!(
        remote.iter().any(|c| c["client_id"] == held.as_str()),
        "the Secret holds a client the server has"
    );
    let orphans = lost_answer_orphans(&s, "app").await;
    assert_eq!(
        orphans.len(),
        remote.len() - 1,
        "every registration beyond the one in the Secret is recorded: {orphans:?}, {} on the server",
        remote.len()
    );
    wait_for_event(&s.client, &s.ns, "RegistrationAnswerLost").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_in_flight_when_the_operator_is_killed_is_recorded_after_the_restart() {
    let mut s = setup("lost-kill", DevDialect::Rfc7591, &[]).await;
    s.server
        .set_faults(json!({"answer_delay_ms": 5000, "endpoints": ["register"]}))
        .await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    eventually(
        "a committed registration",
        Duration::from_secs(30),
        || async { (s.server.clients().await.len() == 1).then_some(()) },
    )
    .await;
    s.operator.kill_hard();
    s.server.clear_faults().await;
    s.operator.restart();
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;

    let remote = s.server.clients().await;
    assert_eq!(remote.len(), 2, "the killed registration and its successor");
    let orphans = lost_answer_orphans(&s, "app").await;
    assert_eq!(orphans.len(), 1, "the lost one is recorded: {orphans:?}");
    assert_eq!(orphans[0]["clientId"], "", "its id was never learnt");
    let secret = get_secret(&s.client, &s.ns, "app-smart-client")
        .await
        .unwrap();
    let held = secret_value(&secret, "client_id").unwrap();
    assert!(remote.iter().any(|c| c["client_id"] == held.as_str()));
    assert!(
        secret
            .metadata
            .annotations
            .unwrap_or_default()
            .get("smart.fhir.dev/registration-sent-at")
            .is_none_or(|v| v.is_empty()),
        "no registration is in flight any more"
    );
}
