//! SMART Backend Services (issue 13): a `private_key_jwt` SmartClient gets a key pair the operator
//! made, the private key is in its Secret before the server is given the public key, and the key in
//! the Secret is the one the server takes assertions from, also after the algorithm changes.

mod common;

use common::backend::token_with_assertion;
use common::operator::*;
use common::scenario::*;
use common::*;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use smart_operator::devserver::Dialect as DevDialect;
use smart_operator::keys::{SigningAlgorithm, SigningKey};

/// A backend service: client_credentials, system scopes, private_key_jwt with a key of `algorithm`.
pub fn backend_service(name: &str, algorithm: &str) -> Value {
    let mut client = smart_client(
        name,
        json!({
            "grantTypes": ["client_credentials"],
            "scopes": ["system/*.read"],
            "tokenEndpointAuthMethod": "private_key_jwt",
            "signingKey": {"algorithm": algorithm},
        }),
    );
    client["spec"]
        .as_object_mut()
        .unwrap()
        .remove("redirectUris");
    client
}

/// The key in the client's Secret, checked against the kid the Secret names.
async fn key_in_secret(s: &Setup, name: &str, algorithm: SigningAlgorithm) -> (SigningKey, String) {
    let secret = get_secret(&s.client, &s.ns, &format!("{name}-smart-client"))
        .await
        .expect("the Secret");
    assert!(
        secret_value(&secret, "client_secret").is_none(),
        "no shared secret for private_key_jwt"
    );
    let pem = secret_value(&secret, "private_key").expect("private_key in the Secret");
    let key = SigningKey::from_pem(algorithm, SecretString::from(pem)).expect("a PKCS#8 key");
    assert_eq!(
        secret_value(&secret, "key_id").as_deref(),
        Some(key.kid()),
        "key_id is the key's RFC 7638 thumbprint"
    );
    let client_id = secret_value(&secret, "client_id").expect("client_id");
    (key, client_id)
}

/// The kids of the JWK Set the server holds for `client_id`.
async fn registered_kids(s: &Setup, client_id: &str) -> Vec<String> {
    let clients = s.server.clients().await;
    let client = clients
        .iter()
        .find(|c| c["client_id"] == client_id)
        .unwrap_or_else(|| panic!("{client_id} is not registered: {clients:?}"));
    assert_eq!(client["token_endpoint_auth_method"], "private_key_jwt");
    client["jwks"]["keys"]
        .as_array()
        .expect("an inline JWK Set")
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_service_is_registered_with_the_key_in_its_secret_and_follows_an_algorithm_change()
 {
    let s = setup("backend", DevDialect::Rfc7591, &[]).await;
    create(&s.client, Some(&s.ns), backend_service("export", "ES384"))
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, "export", "True", "Ready").await;
    let (key, client_id) = key_in_secret(&s, "export", SigningAlgorithm::ES384).await;
    assert_eq!(
        registered_kids(&s, &client_id).await,
        vec![key.kid().to_owned()]
    );
    let token_endpoint = format!("{}/oauth2/token", s.server.server.base_url());
    let assertion = |key: &SigningKey| {
        key.client_assertion(&client_id, &token_endpoint, std::time::SystemTime::now())
            .unwrap()
    };
    let (status, body) = token_with_assertion(
        &token_endpoint,
        assertion(&key).expose_secret(),
        Some("system/*.read"),
    )
    .await;
    assert_eq!(
        status, 200,
        "the Secret's key is the one the server takes: {body}"
    );
    let secret_names: Vec<String> = events(&s.client, &s.ns)
        .await
        .into_iter()
        .filter(|(reason, _)| reason == "SigningKeyCreated")
        .map(|(_, note)| note)
        .collect();
    assert_eq!(secret_names.len(), 1, "{secret_names:?}");
    assert!(
        !secret_names[0].contains("PRIVATE KEY"),
        "no key material in Events"
    );

    // A new algorithm rotates the key: at every moment the key in the Secret gets tokens, and once
    // the overlap is over the old key is trusted no more.
    patch_spec(
        &s,
        "export",
        json!({"signingKey": {"algorithm": "RS384", "overlap": "3s"}}),
    )
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    let mut seen = Vec::new();
    let rsa = loop {
        let secret = get_secret(&s.client, &s.ns, "export-smart-client")
            .await
            .unwrap();
        let pem = secret_value(&secret, "private_key").unwrap();
        let current = SigningKey::from_pem_any(SecretString::from(pem)).unwrap();
        let (status, body) =
            token_with_assertion(&token_endpoint, assertion(&current).expose_secret(), None).await;
        assert_eq!(
            status,
            200,
            "the Secret's key {} was refused during the rotation: {body}",
            current.kid()
        );
        let on_server = registered_kids(&s, &client_id).await;
        if !seen.contains(&on_server) {
            seen.push(on_server.clone());
        }
        if current.algorithm() == SigningAlgorithm::RS384 && on_server == [current.kid()] {
            break current;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rotation did not finish: the server went through {seen:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(
        seen.iter().any(|kids| kids.len() == 2),
        "both keys were on the server for the overlap: {seen:?}"
    );
    wait_for_ready(&s.client, &s.ns, "export", "True", "Ready").await;
    let (status, body) =
        token_with_assertion(&token_endpoint, assertion(&key).expose_secret(), None).await;
    assert_eq!(
        (status, body["error_description"].as_str()),
        (400, Some("Unable to load public key")),
        "the old key is no longer trusted"
    );
    assert_eq!(
        s.server.count("register").await,
        1,
        "updated, not registered again"
    );
    assert_eq!(
        s.server.count("update").await,
        2,
        "both keys, then the new one alone"
    );

    let log = s.operator.log();
    let body: String = rsa
        .private_key_pem()
        .expose_secret()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(
        !log.contains(&body[..40]),
        "no key material in the operator's log"
    );
    delete_and_expect_registration_gone(&s, "export").await;
}

/// Access tokens on schedule (`spec.accessTokens`): obtained with a fresh assertion for a
/// private_key_jwt client and with the secret for a client_secret_basic one, written to the
/// Secret, and obtained again `refreshBefore` their expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_tokens_are_in_the_secret_and_obtained_again_before_they_expire() {
    let s = setup("backend-tokens", DevDialect::Rfc7591, &[]).await;
    s.server
        .set_policy(json!({"access_token_lifetime_secs": 6}))
        .await;
    let mut asymmetric = backend_service("export", "ES384");
    asymmetric["spec"]["accessTokens"] = json!([{"name": "bulk", "refreshBefore": "3s"}]);
    let mut symmetric = smart_client(
        "nightly",
        json!({"grantTypes": ["client_credentials"], "scopes": ["system/*.read"],
               "accessTokens": [{"name": "bulk", "refreshBefore": "3s"}]}),
    );
    symmetric["spec"]
        .as_object_mut()
        .unwrap()
        .remove("redirectUris");
    for client in [asymmetric, symmetric] {
        create(&s.client, Some(&s.ns), client).await.unwrap();
    }
    for name in ["export", "nightly"] {
        let ready = wait_for_ready(&s.client, &s.ns, name, "True", "Ready")
            .await
            .status
            .unwrap();
        let entry = ready
            .access_tokens
            .iter()
            .find(|t| t.name == "bulk")
            .unwrap_or_else(|| panic!("{name}: status.accessTokens has bulk: {ready:?}"));
        let (expires, refresh) = (
            entry.expires_at.clone().unwrap().0,
            entry.next_refresh_at.clone().unwrap().0,
        );
        assert!(refresh < expires, "{name}: renewed before it expires");
        let fresh = condition_in(&ready, "TokensFresh");
        assert_eq!(fresh.status, "True", "{name}: {fresh:?}");
        let secret = get_secret(&s.client, &s.ns, &format!("{name}-smart-client"))
            .await
            .unwrap();
        let first = secret_value(&secret, "bulk_access_token").expect("bulk_access_token");
        let expires_at = secret_value(&secret, "bulk_expires_at").expect("bulk_expires_at");
        assert_eq!(
            expires_at.parse::<k8s_openapi::jiff::Timestamp>().unwrap(),
            expires,
            "{name}: the Secret's expiry is status's"
        );
        eventually(
            &format!("{name}: a new access token before the first expires"),
            std::time::Duration::from_secs(20),
            || async {
                let secret = get_secret(&s.client, &s.ns, &format!("{name}-smart-client")).await?;
                (secret_value(&secret, "bulk_access_token")? != first).then_some(())
            },
        )
        .await;
    }
    let log = s.operator.log();
    assert!(
        !log.contains("client_assertion="),
        "no assertion in the operator's log"
    );
}

/// Capabilities first: a server whose discovery does not offer private_key_jwt, the key's
/// algorithm or the grant gets nothing sent, and the client says what is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_does_not_offer_what_the_client_needs_is_sent_nothing() {
    let s = setup("backend-fit", DevDialect::Rfc7591, &[]).await;
    // On the server as it is by default (every offer there): registered.
    create(&s.client, Some(&s.ns), backend_service("offered", "ES384"))
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, "offered", "True", "Ready").await;
    let registered = s.server.count("register").await;

    s.server
        .set_policy(json!({"advertise": {
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS384"],
            "capabilities": ["client-confidential-symmetric"],
        }}))
        .await;
    // An auth server discovered after the policy took effect.
    apply(&s.client, Some(&s.ns), json!({"apiVersion": "smart.fhir.dev/v1alpha1", "kind": "SmartAuthServer", "metadata": {"name": "limited"},
        "spec": {"dialect": "RFC7591", "fhirBaseUrl": s.server.fhir_base_url(),
                 "credentials": {"initialAccessTokenSecretRef": {"name": "iat", "key": "token"}}}}))
        .await
        .unwrap();
    let mut client = backend_service("export", "ES384");
    client["spec"]["authServerRef"] = json!({"name": "limited"});
    create(&s.client, Some(&s.ns), client).await.unwrap();
    let status = wait_for_ready(&s.client, &s.ns, "export", "False", "UnsupportedByServer")
        .await
        .status
        .unwrap();
    let ready = condition_in(&status, "Ready");
    assert!(
        ready.message.contains("client-confidential-asymmetric")
            && ready.message.contains("[RS384] lacks ES384"),
        "{ready:?}"
    );
    assert_eq!(
        s.server.count("register").await,
        registered,
        "nothing was sent"
    );
}

/// The key in the Secret (`private_key`, or with `prefix` `next_`/`previous_`), if there is one.
async fn secret_key(s: &Setup, name: &str, prefix: &str) -> Option<SigningKey> {
    let secret = get_secret(&s.client, &s.ns, &format!("{name}-smart-client")).await?;
    let pem = secret_value(&secret, &format!("{prefix}private_key"))?;
    SigningKey::from_pem_any(SecretString::from(pem)).ok()
}

/// A rotation asked for by annotation, with the operator killed after each of its steps: it
/// resumes from what the Secret holds, registers nothing, and ends with the new key alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_rotation_resumes_after_the_operator_is_killed_after_each_step() {
    let mut s = setup("backend-rotate", DevDialect::Rfc7591, &[]).await;
    let mut client = backend_service("export", "ES384");
    client["spec"]["signingKey"]["overlap"] = json!("4s");
    create(&s.client, Some(&s.ns), client).await.unwrap();
    wait_for_ready(&s.client, &s.ns, "export", "True", "Ready").await;
    let (old, client_id) = key_in_secret(&s, "export", SigningAlgorithm::ES384).await;
    let secs = std::time::Duration::from_secs;

    // The next key is in the Secret and the PUT of both keys fails: killed there.
    s.server
        .set_faults(json!({"error_rate": 1.0, "endpoints": ["update"]}))
        .await;
    annotate(
        &s,
        "export",
        "smart.fhir.dev/rotate-key-requested-at",
        Some("first"),
    )
    .await;
    let next = eventually("the next key in the Secret", secs(30), || async {
        secret_key(&s, "export", "next_").await
    })
    .await;
    assert_eq!(
        registered_kids(&s, &client_id).await,
        vec![old.kid().to_owned()]
    );
    s.operator.kill_hard();
    s.server.clear_faults().await;
    s.operator.restart();

    // Both keys on the server, the new one current: killed again during the overlap.
    eventually(
        "the next key is current, the old one previous",
        secs(30),
        || async {
            let current = secret_key(&s, "export", "").await?;
            let previous = secret_key(&s, "export", "previous_").await?;
            (current.kid() == next.kid() && previous.kid() == old.kid()).then_some(())
        },
    )
    .await;
    let mut both = registered_kids(&s, &client_id).await;
    both.sort();
    let mut expected = vec![old.kid().to_owned(), next.kid().to_owned()];
    expected.sort();
    assert_eq!(both, expected, "the server trusts both during the overlap");
    s.operator.kill_hard();
    s.operator.restart();

    // After the overlap: the new key alone, on the server and in the Secret.
    eventually(
        "the old key gone from the server and the Secret",
        secs(30),
        || async {
            let gone = secret_key(&s, "export", "previous_").await.is_none();
            (gone && registered_kids(&s, &client_id).await == [next.kid().to_owned()]).then_some(())
        },
    )
    .await;
    // Status follows the Secret (it is written after it).
    let wanted = vec![(next.kid().to_owned(), "Current".to_owned())];
    let status = eventually("status shows the new key alone", secs(30), || async {
        let status = api(&s).get("export").await.ok()?.status?;
        let keys: Vec<(String, String)> = status
            .signing_keys
            .iter()
            .map(|k| (k.kid.clone(), k.state.clone()))
            .collect();
        (keys == wanted).then_some(status)
    })
    .await;
    assert_eq!(
        status.last_handled_key_rotation_at.as_deref(),
        Some("first")
    );
    assert_eq!(
        s.server.count("register").await,
        1,
        "nothing registered again"
    );
    let token_endpoint = format!("{}/oauth2/token", s.server.server.base_url());
    let now = std::time::SystemTime::now;
    let with = |key: &SigningKey| {
        key.client_assertion(&client_id, &token_endpoint, now())
            .unwrap()
    };
    assert_eq!(
        token_with_assertion(&token_endpoint, with(&next).expose_secret(), None)
            .await
            .0,
        200
    );
    assert_eq!(
        token_with_assertion(&token_endpoint, with(&old).expose_secret(), None)
            .await
            .0,
        400
    );
}

/// A key rotation whose first step reaches the Secret while status cannot be written, then a crash:
/// the restarted operator finds the request handled in the Secret and starts no second rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_request_is_handled_once_across_a_crash_before_status_says_so() {
    let mut s = setup("backend-once", DevDialect::Rfc7591, &[]).await;
    let mut client = backend_service("export", "ES384");
    client["spec"]["signingKey"]["overlap"] = json!("1h");
    create(&s.client, Some(&s.ns), client).await.unwrap();
    wait_for_ready(&s.client, &s.ns, "export", "True", "Ready").await;
    let (old, _) = key_in_secret(&s, "export", SigningAlgorithm::ES384).await;
    let policy = refuse_status_writes(&s).await;
    annotate(
        &s,
        "export",
        "smart.fhir.dev/rotate-key-requested-at",
        Some("once"),
    )
    .await;
    let secs = std::time::Duration::from_secs;
    let new = eventually("the new key is current", secs(30), || async {
        let current = secret_key(&s, "export", "").await?;
        (current.kid() != old.kid()).then_some(current)
    })
    .await;
    s.operator.kill_hard();
    allow_writes(&policy);
    s.operator.restart();
    eventually("status catches up from the Secret", secs(30), || async {
        let status = api(&s).get("export").await.ok()?.status?;
        (status.last_handled_key_rotation_at.as_deref() == Some("once")).then_some(())
    })
    .await;
    tokio::time::sleep(secs(3)).await;
    let current = secret_key(&s, "export", "").await.unwrap();
    let previous = secret_key(&s, "export", "previous_").await.unwrap();
    assert_eq!(
        (current.kid(), previous.kid()),
        (new.kid(), old.kid()),
        "no second rotation"
    );
}

/// `rotateEvery`: the key rotates by itself, and again after the next interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotates_on_schedule() {
    let s = setup("backend-schedule", DevDialect::Rfc7591, &[]).await;
    let mut client = backend_service("export", "ES384");
    client["spec"]["signingKey"] =
        json!({"algorithm": "ES384", "rotateEvery": "10s", "overlap": "2s"});
    create(&s.client, Some(&s.ns), client).await.unwrap();
    wait_for_ready(&s.client, &s.ns, "export", "True", "Ready").await;
    let (first, client_id) = key_in_secret(&s, "export", SigningAlgorithm::ES384).await;
    let mut seen = vec![first.kid().to_owned()];
    for round in 1..=2 {
        let kid = eventually(
            &format!("rotation {round}"),
            std::time::Duration::from_secs(30),
            || async {
                let current = secret_key(&s, "export", "").await?;
                let alone = registered_kids(&s, &client_id).await == [current.kid().to_owned()];
                (!seen.contains(&current.kid().to_owned()) && alone)
                    .then(|| current.kid().to_owned())
            },
        )
        .await;
        seen.push(kid);
    }
    assert_eq!(s.server.count("register").await, 1);
    assert_eq!(s.server.count("update").await, 4, "two PUTs per rotation");
}

/// A server that lost its state (a redeploy, a wipe) no longer knows the client: the existence
/// check, authenticated with an assertion, tells so (401 invalid_client), and the client is
/// registered again with the key it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_service_forgotten_by_a_wiped_server_is_registered_again() {
    let s = setup(
        "backend-wipe",
        DevDialect::Rfc7591,
        &["--existence-check-interval", "2s"],
    )
    .await;
    create(&s.client, Some(&s.ns), backend_service("export", "ES384"))
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, "export", "True", "Ready").await;
    let (key, first_id) = key_in_secret(&s, "export", SigningAlgorithm::ES384).await;
    s.server.reset().await;
    let second_id = eventually(
        "registered again after the wipe",
        std::time::Duration::from_secs(40),
        || async {
            let secret = get_secret(&s.client, &s.ns, "export-smart-client").await?;
            let id = secret_value(&secret, "client_id")?;
            (id != first_id && s.server.clients().await.len() == 1).then_some(id)
        },
    )
    .await;
    assert_eq!(
        registered_kids(&s, &second_id).await,
        vec![key.kid().to_owned()],
        "the same key, registered again"
    );
    let token_endpoint = format!("{}/oauth2/token", s.server.server.base_url());
    let assertion = key
        .client_assertion(&second_id, &token_endpoint, std::time::SystemTime::now())
        .unwrap();
    let (status, body) =
        token_with_assertion(&token_endpoint, assertion.expose_secret(), None).await;
    assert_eq!(status, 200, "{body}");
}
