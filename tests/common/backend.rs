//! SMART Backend Services checks shared by the real server (Keycloak) and smart-dev-server, so the
//! dev server is held to what the real one does.

use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use smart_operator::authserver::{AuthServer, AuthServerClient, ClientCredentials, ClientMetadata};
use smart_operator::keys::{SigningAlgorithm, SigningKey, jwk_set};

/// A client_credentials token request authenticated with a client assertion (RFC 7523 §2.2).
pub async fn token_with_assertion(
    token_endpoint: &str,
    assertion: &str,
    scope: Option<&str>,
) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", "client_credentials"),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", assertion),
    ];
    if let Some(scope) = scope {
        form.push(("scope", scope));
    }
    let answer = reqwest::Client::new()
        .post(token_endpoint)
        .form(&form)
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or_default())
}

/// Registration metadata of a backend service authenticating with `key`.
pub fn backend_service_metadata(key: &SigningKey, scopes: &[&str]) -> ClientMetadata {
    let mut metadata = ClientMetadata {
        client_name: "smart-operator backend service test".into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        grant_types: vec!["client_credentials".into()],
        token_endpoint_auth_method: "private_key_jwt".into(),
        ..Default::default()
    };
    metadata
        .extra
        .insert("jwks".into(), serde_json::to_value(jwk_set([key])).unwrap());
    metadata.extra.insert(
        "token_endpoint_auth_signing_alg".into(),
        json!(key.algorithm().jwa_name()),
    );
    metadata
}

/// Registers a private_key_jwt client with an inline JWK Set, gets tokens with fresh assertions, and
/// is refused for a replay, an unknown key, a wrong audience and an expired assertion, each with the
/// description Keycloak 26 gives; then deletes the client.
pub async fn private_key_jwt_clients_authenticate_with_assertions(
    server: &AuthServerClient,
    token_endpoint: &str,
    algorithm: SigningAlgorithm,
) {
    let now = SystemTime::now;
    let key = SigningKey::generate(algorithm).unwrap();
    let registered = server
        .register(&backend_service_metadata(&key, &["system/*.read"]), None)
        .await
        .unwrap();
    assert!(
        registered.client_secret.is_none(),
        "{algorithm:?}: no client secret for private_key_jwt"
    );
    assert_eq!(
        registered.granted_scopes.as_deref(),
        Some(&["system/*.read".to_owned()][..])
    );
    let id = registered.client_id.clone();
    let assertion = |key: &SigningKey, audience: &str, at: SystemTime| -> SecretString {
        key.client_assertion(&id, audience, at).unwrap()
    };

    // A fresh assertion gets a token; the scope is what the request names (none: empty).
    let (status, body) = token_with_assertion(
        token_endpoint,
        assertion(&key, token_endpoint, now()).expose_secret(),
        Some("system/*.read"),
    )
    .await;
    assert_eq!(status, 200, "{algorithm:?}: {body}");
    assert_eq!(body["scope"], "system/*.read");
    assert_eq!(body["expires_in"], 300);
    assert!(body["access_token"].is_string());
    let once = assertion(&key, token_endpoint, now());
    let (status, body) = token_with_assertion(token_endpoint, once.expose_secret(), None).await;
    assert_eq!((status, body["scope"].as_str()), (200, Some("")), "{body}");

    // Refusals: all 400 invalid_client, told apart by their descriptions.
    let other = SigningKey::generate(algorithm).unwrap();
    let refusals = [
        (once.clone(), "Token reuse detected"),
        (
            assertion(&other, token_endpoint, now()),
            "Unable to load public key",
        ),
        (
            assertion(&key, "https://elsewhere.example.org/token", now()),
            "Invalid token audience",
        ),
        (
            assertion(&key, token_endpoint, now() - Duration::from_secs(600)),
            "Token is not active",
        ),
    ];
    for (refused, description) in refusals {
        let (status, body) =
            token_with_assertion(token_endpoint, refused.expose_secret(), None).await;
        assert_eq!(status, 400, "{algorithm:?} {description}: {body}");
        assert_eq!(body["error"], "invalid_client");
        assert_eq!(body["error_description"], description);
    }
    let credentials = ClientCredentials {
        client_id: registered.client_id.clone(),
        client_secret: None,
        registration_access_token: registered.registration_access_token.clone(),
        registration_client_uri: registered.registration_client_uri.clone(),
        client_assertion: None,
    };
    let probe = |assertion: SecretString| async move {
        let answer = reqwest::Client::new()
            .post(token_endpoint)
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", "made-up"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", assertion.expose_secret()),
            ])
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        (status, answer.json::<Value>().await.unwrap_or_default())
    };
    // The existence probe with an assertion (a made-up refresh token): 400 invalid_grant while the
    // client exists, 400 invalid_client for an assertion it does not take, 401 invalid_client once
    // the client is gone.
    let answer = |(status, body): (u16, Value)| {
        (
            status,
            body["error"].as_str().unwrap_or_default().to_owned(),
        )
    };
    assert_eq!(
        answer(probe(assertion(&key, token_endpoint, now())).await),
        (400, "invalid_grant".to_owned())
    );
    assert_eq!(
        answer(probe(assertion(&other, token_endpoint, now())).await),
        (400, "invalid_client".to_owned())
    );
    server.delete(&credentials).await.unwrap();
    assert_eq!(
        answer(probe(assertion(&key, token_endpoint, now())).await),
        (401, "invalid_client".to_owned())
    );
}
