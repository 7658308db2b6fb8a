//! Adopting an existing registration (issue 14 item 1) on the real control plane against
//! smart-dev-server: verified with the server, taken over without registering anything, its
//! metadata brought in line (RFC 7592 PUT), refused with the reason when the server says it is not
//! what the Secret claims. Keycloak and the real auth-proxy: tests/keycloak.rs, tests/auth_proxy.rs.

mod common;

use std::time::Duration;

use common::operator::*;
use common::scenario::*;
use common::*;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use smart_operator::authserver::{
    AuthServer, AuthServerClient, ClientMetadata, HttpClient, HttpSettings, RegisteredClient,
    discover,
};
use smart_operator::crd::Dialect;
use smart_operator::devserver::Dialect as DevDialect;

/// A client registered straight at the dev server, as one made before the operator came.
async fn register_directly(s: &Setup, dialect: Dialect) -> RegisteredClient {
    install_crypto_provider();
    let http = HttpClient::new(&HttpSettings::default()).unwrap();
    let endpoints = discover(&http, dialect, Some(&s.server.fhir_base_url()), None)
        .await
        .unwrap();
    let token = (dialect == Dialect::Rfc7591).then(|| SecretString::from(IAT));
    let auth = AuthServerClient::new(dialect, http, &endpoints, token).unwrap();
    let metadata = ClientMetadata {
        client_name: "made by hand".into(),
        redirect_uris: vec!["https://app.example.org/callback".into()],
        scopes: vec!["launch/patient".into()],
        grant_types: vec!["authorization_code".into(), "refresh_token".into()],
        response_types: vec!["code".into()],
        token_endpoint_auth_method: "client_secret_basic".into(),
        ..Default::default()
    };
    auth.register(&metadata, None).await.unwrap()
}

fn source_secret(name: &str, registered: &RegisteredClient) -> Value {
    let mut data = json!({"client_id": registered.client_id});
    let secret = |s: &Option<SecretString>| s.as_ref().map(|s| s.expose_secret().to_owned());
    if let Some(v) = secret(&registered.client_secret) {
        data["client_secret"] = json!(v);
    }
    if let Some(v) = secret(&registered.registration_access_token) {
        data["registration_access_token"] = json!(v);
    }
    if let Some(v) = &registered.registration_client_uri {
        data["registration_client_uri"] = json!(v);
    }
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data})
}

/// Creates SmartClient `name` adopting from Secret `source` (with more `spec` fields) and waits
/// until its Ready condition has `status` and `reason`.
async fn adopting_client(
    s: &Setup,
    name: &str,
    source: &str,
    spec: Value,
    (status, reason): (&str, &str),
) -> smart_operator::crd::SmartClient {
    let mut spec = spec;
    spec["adopt"] = json!({"secretName": source});
    create(&s.client, Some(&s.ns), smart_client(name, spec))
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, name, status, reason).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rfc7591_registration_is_adopted_without_registering_and_brought_in_line() {
    let s = setup("adopt-7591", DevDialect::Rfc7591, &[]).await;
    let existing = register_directly(&s, Dialect::Rfc7591).await;
    apply(&s.client, Some(&s.ns), source_secret("existing", &existing))
        .await
        .unwrap();
    let registrations = s.server.count("register").await;
    let ready = adopting_client(
        &s,
        "app",
        "existing",
        json!({"clientName": "Adopted App"}),
        ("True", "Ready"),
    )
    .await;
    assert_eq!(
        ready.status.unwrap().client_id.as_deref(),
        Some(existing.client_id.as_str())
    );
    assert_eq!(
        s.server.count("register").await,
        registrations,
        "nothing registered"
    );
    assert_eq!(
        s.server.count("update").await,
        1,
        "one PUT brings the metadata in line"
    );
    let on_server = s.server.clients().await;
    assert_eq!(on_server.len(), 1);
    assert_eq!(on_server[0]["client_name"], "Adopted App");
    let secret = get_secret(&s.client, &s.ns, "app-smart-client")
        .await
        .unwrap();
    assert_eq!(
        secret_value(&secret, "client_id").as_deref(),
        Some(existing.client_id.as_str())
    );
    assert_eq!(
        secret_value(&secret, "client_secret"),
        existing
            .client_secret
            .as_ref()
            .map(|s| s.expose_secret().to_owned())
    );
    let note = wait_for_event(&s.client, &s.ns, "Adopted").await;
    assert!(note.contains("nothing was registered"), "{note}");
    // The source is only read: still the user's, unchanged, without an owner.
    let source = get_secret(&s.client, &s.ns, "existing").await.unwrap();
    assert!(source.metadata.owner_references.is_none());
    // From now on it is the operator's: deletion deletes it.
    delete_and_expect_registration_gone(&s, "app").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_adoption_says_why_and_registers_nothing() {
    let s = setup("adopt-refused", DevDialect::Rfc7591, &[]).await;
    let existing = register_directly(&s, Dialect::Rfc7591).await;
    let mut wrong_token = source_secret("wrong-token", &existing);
    wrong_token["stringData"]["registration_access_token"] = json!("not-the-token");
    apply(&s.client, Some(&s.ns), wrong_token).await.unwrap();
    let mut unknown = source_secret("unknown", &existing);
    unknown["stringData"] = json!({"client_id": "no-such-client", "client_secret": "x"});
    apply(&s.client, Some(&s.ns), unknown).await.unwrap();
    let registrations = s.server.count("register").await;
    for (name, source, words) in [
        (
            "token",
            "wrong-token",
            "refused its registration access token",
        ),
        ("unknown", "unknown", "does not know client no-such-client"),
    ] {
        let refused =
            adopting_client(&s, name, source, json!({}), ("False", "AdoptionRefused")).await;
        let message = ready_message(&refused);
        assert!(message.contains(words), "{message}");
        assert!(
            !message.contains("not-the-token"),
            "no credential in status: {message}"
        );
    }
    // A source that is not there yet waits for it, and registers nothing meanwhile.
    adopting_client(
        &s,
        "later",
        "not-yet",
        json!({}),
        ("False", "AdoptionSecretNotFound"),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        s.server.count("register").await,
        registrations,
        "nothing registered"
    );
    assert!(
        get_secret(&s.client, &s.ns, "token-smart-client")
            .await
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s4s_registration_is_adopted_by_its_existence_probe() {
    let s = setup("adopt-s4s", DevDialect::S4s, &[]).await;
    let existing = register_directly(&s, Dialect::S4s).await;
    apply(&s.client, Some(&s.ns), source_secret("existing", &existing))
        .await
        .unwrap();
    let ready = adopting_client(&s, "app", "existing", json!({}), ("True", "Ready")).await;
    assert_eq!(
        ready.status.unwrap().client_id.as_deref(),
        Some(existing.client_id.as_str())
    );
    assert_eq!(
        s.server.count("register").await,
        1,
        "only the one made by hand"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(s.server.count("register").await, 1, "and no replacement");
}
