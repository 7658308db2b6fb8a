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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s4s_legacy_registration_whose_answers_are_lost_is_neither_duplicated_nor_re_keyed() {
    let s = setup("lost-legacy", DevDialect::S4sLegacy, &[]).await;
    s.server
        .set_faults(json!({"lose_answer_rate": 1.0, "endpoints": ["register"]}))
        .await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    eventually("several lost answers", Duration::from_secs(30), || async {
        (s.server.count("register").await >= 3).then_some(())
    })
    .await;
    s.server.clear_faults().await;
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;

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
