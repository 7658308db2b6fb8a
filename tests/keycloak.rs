//! RFC 7591/7592 against a real Keycloak (what Kodjin runs), started by `hack/test` through
//! `hack/keycloak up`: the client layer's operations and error classes, and the operator end to end.

mod common;

use std::time::Duration;

use common::backend::{private_key_jwt_clients_authenticate_with_assertions, token_with_assertion};
use common::operator::*;
use common::*;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use smart_operator::authserver::{
    AuthServer, AuthServerClient, AuthServerError, ClientCredentials, ClientMetadata, ErrorClass,
    Existence, HttpClient, HttpSettings, ServerEndpoints,
};
use smart_operator::crd::{Dialect, SmartClient};
use smart_operator::keys::{SigningAlgorithm, SigningKey};

fn keycloak_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: the Keycloak tests need `eval \"$(hack/keycloak up)\"` (hack/test does it)")
    })
}

/// A new initial access token allowing `count` registrations.
fn initial_access_token(count: u32) -> SecretString {
    let (ok, out, err) = run_tool(
        repo_root().join("hack/keycloak").to_str().unwrap(),
        &["initial-access-token", &count.to_string(), "3600"],
    );
    assert!(ok, "hack/keycloak initial-access-token failed: {err}");
    SecretString::from(out.trim().to_owned())
}

fn endpoints() -> ServerEndpoints {
    ServerEndpoints {
        registration: Some(keycloak_env("KEYCLOAK_REGISTRATION_ENDPOINT")),
        token: Some(keycloak_env("KEYCLOAK_TOKEN_ENDPOINT")),
        ..Default::default()
    }
}

fn keycloak(initial_access_token: Option<SecretString>) -> AuthServerClient {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = HttpClient::new(&HttpSettings::default()).unwrap();
    AuthServerClient::new(Dialect::Rfc7591, http, &endpoints(), initial_access_token).unwrap()
}

fn metadata(scopes: &[&str]) -> ClientMetadata {
    ClientMetadata {
        client_name: "smart-operator test".into(),
        redirect_uris: vec!["https://app.example.org/callback".into()],
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        grant_types: vec!["authorization_code".into(), "refresh_token".into()],
        response_types: vec!["code".into()],
        token_endpoint_auth_method: "client_secret_basic".into(),
        ..Default::default()
    }
}

fn credentials_of(registered: &smart_operator::authserver::RegisteredClient) -> ClientCredentials {
    ClientCredentials {
        client_id: registered.client_id.clone(),
        client_secret: registered.client_secret.clone(),
        registration_access_token: registered.registration_access_token.clone(),
        registration_client_uri: registered.registration_client_uri.clone(),
        client_assertion: None,
    }
}

fn sorted(scopes: &[String]) -> Vec<String> {
    let mut scopes = scopes.to_vec();
    scopes.sort();
    scopes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_register_read_update_delete_with_a_rotating_registration_access_token() {
    let server = keycloak(Some(initial_access_token(1)));
    let registered = server
        .register(&metadata(&["launch/patient", "patient/*.read"]), None)
        .await
        .unwrap();
    assert!(
        registered.client_secret.is_some(),
        "a confidential client gets a secret"
    );
    assert!(
        registered
            .registration_client_uri
            .as_deref()
            .is_some_and(|u| u.ends_with(&registered.client_id))
    );
    assert_eq!(
        sorted(registered.granted_scopes.as_deref().unwrap()),
        ["launch/patient", "patient/*.read"],
        "Keycloak grants the requested scopes (in its own order)"
    );
    let first = credentials_of(&registered);

    let read = server.read(&first).await.unwrap();
    assert_eq!(read.client_id, registered.client_id);
    assert_eq!(
        read.registration_access_token
            .as_ref()
            .map(|t| t.expose_secret().to_owned()),
        first
            .registration_access_token
            .as_ref()
            .map(|t| t.expose_secret().to_owned()),
        "GET does not rotate the token"
    );

    let updated = server
        .update(
            &first,
            &metadata(&["launch/patient", "patient/*.read", "fhirUser"]),
        )
        .await
        .unwrap();
    let rotated = updated
        .registration_access_token
        .clone()
        .expect("PUT returns a registration access token");
    assert_ne!(
        rotated.expose_secret(),
        first
            .registration_access_token
            .as_ref()
            .unwrap()
            .expose_secret(),
        "PUT rotates it"
    );
    assert!(
        updated
            .granted_scopes
            .unwrap()
            .contains(&"fhirUser".to_owned())
    );
    let mut second = first.clone();
    second.registration_access_token = Some(rotated);
    match server.read(&first).await {
        Err(AuthServerError::RegistrationAccessTokenRejected { status: 401 }) => {}
        other => panic!("the old token must be dead after a PUT, got {other:?}"),
    }
    server.read(&second).await.expect("the rotated token works");

    assert_eq!(server.probe(&second).await.unwrap(), Existence::Exists);
    server.delete(&second).await.expect("RFC 7592 DELETE");
    assert_eq!(server.probe(&second).await.unwrap(), Existence::Gone);
    server
        .delete(&second)
        .await
        .expect("deleting a deleted client is success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_used_up_initial_access_token_is_a_401_credential_error() {
    let server = keycloak(Some(initial_access_token(1)));
    server
        .register(&metadata(&["launch/patient"]), None)
        .await
        .unwrap();
    let error = server
        .register(&metadata(&["launch/patient"]), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            AuthServerError::InitialAccessTokenRejected { status: 401 }
        ),
        "{error:?}"
    );
    assert_eq!(error.class(), ErrorClass::Credential);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_scope_not_allowed_by_realm_policy_is_a_403_user_error() {
    let server = keycloak(Some(initial_access_token(1)));
    let error = server
        .register(&metadata(&["system/*.cruds"]), None)
        .await
        .unwrap_err();
    match &error {
        AuthServerError::PolicyRejected {
            status: 403,
            error: code,
            ..
        } => assert_eq!(code, "insufficient_scope"),
        other => panic!("expected a 403 policy rejection, got {other:?}"),
    }
    assert_eq!(error.class(), ErrorClass::User);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_bad_redirect_uri_is_a_400_user_error() {
    let server = keycloak(Some(initial_access_token(1)));
    let mut bad = metadata(&["launch/patient"]);
    bad.redirect_uris = vec!["not a uri".into()];
    let error = server.register(&bad, None).await.unwrap_err();
    match &error {
        AuthServerError::InvalidMetadata {
            status: 400,
            error: code,
            ..
        } => assert_eq!(code, "invalid_redirect_uri"),
        other => panic!("expected a 400 invalid_redirect_uri, got {other:?}"),
    }
    assert_eq!(error.class(), ErrorClass::User);
}

/// A fresh namespace with a SmartAuthServer `keycloak` (five registrations' worth of initial access
/// token) and an operator watching it.
async fn namespace_with_operator(prefix: &str) -> (kube::Client, String, Operator) {
    let client = client().await;
    install_crds(&client).await;
    let ns = fresh_namespace(&client, prefix).await;
    let token = initial_access_token(5);
    apply(&client, Some(&ns), json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "iat"}, "stringData": {"token": token.expose_secret()}}))
        .await
        .unwrap();
    // Keycloak serves no .well-known/smart-configuration: the endpoints are given.
    apply(&client, Some(&ns), json!({
        "apiVersion": "smart.fhir.dev/v1alpha1", "kind": "SmartAuthServer", "metadata": {"name": "keycloak"},
        "spec": {
            "dialect": "RFC7591",
            "endpoints": {"registration": keycloak_env("KEYCLOAK_REGISTRATION_ENDPOINT"), "token": keycloak_env("KEYCLOAK_TOKEN_ENDPOINT")},
            "credentials": {"initialAccessTokenSecretRef": {"name": "iat", "key": "token"}},
        },
    }))
    .await
    .unwrap();
    let operator = Operator::start(&ns, &[]);
    (client, ns, operator)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_registers_updates_and_deletes_a_keycloak_client() {
    let (client, ns, _operator) = namespace_with_operator("keycloak").await;
    create(&client, Some(&ns), json!({
        "apiVersion": "smart.fhir.dev/v1alpha1", "kind": "SmartClient", "metadata": {"name": "app"},
        "spec": {"authServerRef": {"name": "keycloak"}, "redirectUris": ["https://app.example.org/callback"], "scopes": ["launch/patient", "patient/*.read"]},
    }))
    .await
    .unwrap();
    let ready = wait_for_ready(&client, &ns, "app", "True", "Ready")
        .await
        .status
        .unwrap();
    let secret = get_secret(&client, &ns, "app-smart-client").await.unwrap();
    let credentials = ClientCredentials {
        client_id: secret_value(&secret, "client_id").unwrap(),
        client_secret: secret_value(&secret, "client_secret").map(SecretString::from),
        registration_access_token: secret_value(&secret, "registration_access_token")
            .map(SecretString::from),
        registration_client_uri: secret_value(&secret, "registration_client_uri"),
        client_assertion: None,
    };
    assert_eq!(Some(&credentials.client_id), ready.client_id.as_ref());
    // Keycloak answers client_secret_expires_at: 0, a secret that never expires.
    assert_eq!(ready.client_secret_expires_at, None);
    assert!(
        !ready
            .conditions
            .iter()
            .any(|c| c.type_ == "ClientSecretValid"),
        "no expiry condition without an expiry"
    );
    let keycloak = keycloak(None);
    keycloak
        .read(&credentials)
        .await
        .expect("the persisted registration access token works");

    let apps: Api<SmartClient> = Api::namespaced(client.clone(), &ns);
    apps.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(
            &json!({"spec": {"scopes": ["launch/patient", "patient/*.read", "fhirUser"]}}),
        ),
    )
    .await
    .unwrap();
    let rotated = eventually(
        "the rotated registration access token is persisted",
        Duration::from_secs(30),
        || async {
            let secret = get_secret(&client, &ns, "app-smart-client").await?;
            let token = secret_value(&secret, "registration_access_token")?;
            (Some(token.as_str())
                != credentials
                    .registration_access_token
                    .as_ref()
                    .map(|t| t.expose_secret()))
            .then_some(token)
        },
    )
    .await;
    let mut current = credentials.clone();
    current.registration_access_token = Some(SecretString::from(rotated));
    let remote = keycloak
        .read(&current)
        .await
        .expect("the persisted, rotated token is the valid one");
    assert!(
        remote
            .granted_scopes
            .unwrap()
            .contains(&"fhirUser".to_owned()),
        "Keycloak has the new scope"
    );
    assert!(
        keycloak.read(&credentials).await.is_err(),
        "the old token is dead"
    );
    wait_for_ready(&client, &ns, "app", "True", "Ready").await;

    apps.delete("app", &DeleteParams::default()).await.unwrap();
    eventually(
        "the SmartClient is gone",
        Duration::from_secs(30),
        || async { apps.get_opt("app").await.ok()?.is_none().then_some(()) },
    )
    .await;
    assert_eq!(
        keycloak.probe(&current).await.unwrap(),
        Existence::Gone,
        "deleted on Keycloak too"
    );
}

/// The facts smart-dev-server's private_key_jwt support repeats (issue 13), from the real server;
/// `tests/dev_server.rs` runs the same checks against smart-dev-server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_registers_a_private_key_jwt_client_and_takes_its_assertions() {
    for algorithm in [SigningAlgorithm::ES384, SigningAlgorithm::RS384] {
        let server = keycloak(Some(initial_access_token(1)));
        let token_endpoint = keycloak_env("KEYCLOAK_TOKEN_ENDPOINT");
        private_key_jwt_clients_authenticate_with_assertions(&server, &token_endpoint, algorithm)
            .await;
    }
}

/// The operator's backend service on the real server: the key it made and wrote to the Secret is
/// the one Keycloak takes assertions from, before and after an algorithm change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_registers_a_keycloak_backend_service_whose_secret_key_gets_tokens() {
    let (client, ns, _operator) = namespace_with_operator("keycloak-backend").await;
    create(&client, Some(&ns), json!({
        "apiVersion": "smart.fhir.dev/v1alpha1", "kind": "SmartClient", "metadata": {"name": "export"},
        "spec": {"authServerRef": {"name": "keycloak"}, "grantTypes": ["client_credentials"], "scopes": ["system/*.read"],
                 "tokenEndpointAuthMethod": "private_key_jwt", "signingKey": {"algorithm": "ES384"},
                 "accessTokens": [{"name": "bulk", "refreshBefore": "295s"}]},
    }))
    .await
    .unwrap();
    wait_for_ready(&client, &ns, "export", "True", "Ready").await;
    let token_endpoint = keycloak_env("KEYCLOAK_TOKEN_ENDPOINT");
    let key_in_secret = |algorithm| {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            let secret = get_secret(&client, &ns, "export-smart-client").await?;
            let pem = secret_value(&secret, "private_key")?;
            let key = SigningKey::from_pem(algorithm, SecretString::from(pem)).ok()?;
            Some((key, secret_value(&secret, "client_id")?))
        }
    };
    let (ec, client_id) = key_in_secret(SigningAlgorithm::ES384).await.unwrap();
    let token = |key: SigningKey| {
        let assertion = key
            .client_assertion(&client_id, &token_endpoint, std::time::SystemTime::now())
            .unwrap();
        let token_endpoint = token_endpoint.clone();
        async move {
            token_with_assertion(
                &token_endpoint,
                assertion.expose_secret(),
                Some("system/*.read"),
            )
            .await
        }
    };
    let (status, body) = token(ec.clone()).await;
    assert_eq!(
        (status, &body["scope"]),
        (200, &json!("system/*.read")),
        "{body}"
    );

    // The operator's own access token: issued by Keycloak to this client, with the system scope.
    let secret = get_secret(&client, &ns, "export-smart-client")
        .await
        .unwrap();
    let access_token = secret_value(&secret, "bulk_access_token").expect("bulk_access_token");
    let claims: serde_json::Value =
        jsonwebtoken::dangerous::insecure_decode_claims(&access_token).expect("a JWT");
    assert_eq!(claims["azp"], json!(client_id), "{claims}");
    assert_eq!(claims["scope"], "system/*.read", "{claims}");
    // What a FHIR server behind Keycloak checks: the signature against the realm's keys, the issuer,
    // the expiry. (Keycloak 26's introspection answers `active: false` for client_credentials
    // tokens, which carry no session; see docs/keycloak.md.)
    let issuer = keycloak_env("KEYCLOAK_ISSUER");
    let verify = |token: String| {
        let issuer = issuer.clone();
        async move {
            let certs: jsonwebtoken::jwk::JwkSet =
                reqwest::get(format!("{issuer}/protocol/openid-connect/certs"))
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
            let header = jsonwebtoken::decode_header(&token).unwrap();
            let jwk = certs
                .find(header.kid.as_deref().unwrap())
                .expect("signed with a realm key");
            let mut validation = jsonwebtoken::Validation::new(header.alg);
            validation.set_issuer(&[issuer.as_str()]);
            validation.validate_aud = false;
            jsonwebtoken::decode::<serde_json::Value>(
                &token,
                &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
                &validation,
            )
            .map(|t| t.claims)
        }
    };
    let verified = verify(access_token.clone())
        .await
        .expect("a valid Keycloak token");
    assert_eq!(verified["azp"], json!(client_id));
    // Kept fresh: a 300 s token with refreshBefore 295s is obtained again after a tenth of its
    // lifetime (the shortest interval the scheduler allows).
    let renewed = eventually(
        "a new access token from Keycloak",
        Duration::from_secs(60),
        || async {
            let secret = get_secret(&client, &ns, "export-smart-client").await?;
            let token = secret_value(&secret, "bulk_access_token")?;
            (token != access_token).then_some(token)
        },
    )
    .await;
    verify(renewed)
        .await
        .expect("the renewed token is valid too");

    let apps: Api<SmartClient> = Api::namespaced(client.clone(), &ns);
    apps.patch(
        "export",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"signingKey": {"algorithm": "RS384", "overlap": "3s"}}})),
    )
    .await
    .unwrap();
    let rsa = eventually(
        "Keycloak takes the new RS384 key from the Secret",
        Duration::from_secs(30),
        || async {
            let (rsa, _) = key_in_secret(SigningAlgorithm::RS384).await?;
            (token(rsa.clone()).await.0 == 200).then_some(rsa)
        },
    )
    .await;
    // The replaced key stays trusted for the overlap, then Keycloak is given the new key alone.
    let (status, body) = eventually(
        "Keycloak refuses the replaced key once the overlap is over",
        Duration::from_secs(30),
        || async {
            let (status, body) = token(ec.clone()).await;
            (status != 200).then_some((status, body))
        },
    )
    .await;
    assert_eq!(status, 400, "the replaced key is refused: {body}");
    assert_eq!(body["error"], "invalid_client");
    assert_eq!(token(rsa.clone()).await.0, 200, "the new key still works");
    drop(rsa);
    delete_and_wait_until_gone(&client, &ns, "export").await;
}

fn credentials_in(secret: &k8s_openapi::api::core::v1::Secret, prefix: &str) -> ClientCredentials {
    let value = |key: &str| secret_value(secret, &format!("{prefix}{key}"));
    ClientCredentials {
        client_id: value("client_id").unwrap(),
        client_secret: value("client_secret").map(SecretString::from),
        registration_access_token: value("registration_access_token").map(SecretString::from),
        registration_client_uri: value("registration_client_uri"),
        client_assertion: None,
    }
}

/// A requested rotation on Keycloak: the replacement is registered, both clients authenticate
/// during the overlap, then the replaced one is deleted with its registration access token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_rotates_a_keycloak_client_and_deletes_the_replaced_one_after_the_overlap() {
    let (client, ns, _operator) = namespace_with_operator("keycloak-rotate").await;
    create(&client, Some(&ns), json!({
        "apiVersion": "smart.fhir.dev/v1alpha1", "kind": "SmartClient", "metadata": {"name": "app"},
        "spec": {"authServerRef": {"name": "keycloak"}, "redirectUris": ["https://app.example.org/callback"],
                 "scopes": ["launch/patient", "patient/*.read"], "rotation": {"overlap": "5s"}},
    }))
    .await
    .unwrap();
    wait_for_ready(&client, &ns, "app", "True", "Ready").await;
    let old = credentials_in(
        &get_secret(&client, &ns, "app-smart-client").await.unwrap(),
        "",
    );
    let apps: Api<SmartClient> = Api::namespaced(client.clone(), &ns);
    apps.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": {
            "smart.fhir.dev/rotate-credentials-requested-at": "now"}}})),
    )
    .await
    .unwrap();
    let rotated = eventually(
        "the replacement in the Secret",
        Duration::from_secs(30),
        || async {
            let secret = get_secret(&client, &ns, "app-smart-client").await?;
            (secret_value(&secret, "client_id")? != old.client_id).then_some(secret)
        },
    )
    .await;
    let new = credentials_in(&rotated, "");
    let previous = credentials_in(&rotated, "previous_");
    assert_eq!(previous.client_id, old.client_id);
    let keycloak = keycloak(None);
    assert_eq!(keycloak.probe(&new).await.unwrap(), Existence::Exists);
    assert_eq!(
        keycloak.probe(&previous).await.unwrap(),
        Existence::Exists,
        "the replaced client still authenticates during the overlap"
    );
    eventually(
        "the replaced client is deleted",
        Duration::from_secs(40),
        || async { (keycloak.probe(&previous).await.ok()? == Existence::Gone).then_some(()) },
    )
    .await;
    wait_for_retirement(&client, &ns, "app-smart-client").await;
    let status = apps.get("app").await.unwrap().status.unwrap();
    assert!(
        status.orphaned_clients.is_empty(),
        "{:?}",
        status.orphaned_clients
    );
    assert_eq!(keycloak.probe(&new).await.unwrap(), Existence::Exists);
    keycloak
        .read(&credentials_in(
            &get_secret(&client, &ns, "app-smart-client").await.unwrap(),
            "",
        ))
        .await
        .expect("the new registration is managed with the token in the Secret");
}

/// A client registered on Keycloak before the operator came is adopted: verified by RFC 7592 read
/// (Keycloak rotates the token on it; the new one is kept), its metadata updated to the spec,
/// nothing registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_adopts_an_existing_keycloak_client() {
    let (client, ns, _operator) = namespace_with_operator("keycloak-adopt").await;
    let existing = keycloak(Some(initial_access_token(1)))
        .register(&metadata(&["launch/patient"]), None)
        .await
        .unwrap();
    let given = credentials_of(&existing);
    apply(&client, Some(&ns), json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "existing"},
        "stringData": {
            "client_id": given.client_id,
            "client_secret": given.client_secret.as_ref().unwrap().expose_secret(),
            "registration_access_token": given.registration_access_token.as_ref().unwrap().expose_secret(),
            "registration_client_uri": given.registration_client_uri.clone().unwrap(),
        },
    }))
    .await
    .unwrap();
    create(&client, Some(&ns), json!({
        "apiVersion": "smart.fhir.dev/v1alpha1", "kind": "SmartClient", "metadata": {"name": "app"},
        "spec": {"authServerRef": {"name": "keycloak"}, "redirectUris": ["https://app.example.org/callback"],
                 "scopes": ["launch/patient", "patient/*.read"], "adopt": {"secretName": "existing"}},
    }))
    .await
    .unwrap();
    let ready = wait_for_ready(&client, &ns, "app", "True", "Ready").await;
    assert_eq!(
        ready.status.unwrap().client_id.as_deref(),
        Some(given.client_id.as_str())
    );
    let held = credentials_in(
        &get_secret(&client, &ns, "app-smart-client").await.unwrap(),
        "",
    );
    assert_eq!(held.client_id, given.client_id);
    let remote = keycloak(None)
        .read(&held)
        .await
        .expect("the token the operator kept is the valid one");
    assert!(
        remote
            .granted_scopes
            .unwrap()
            .contains(&"patient/*.read".to_owned()),
        "the metadata was brought in line with the spec"
    );
    assert!(
        keycloak(None).read(&given).await.is_err(),
        "the token in the source Secret was rotated away"
    );
}

/// The Secret in the app's shape against Keycloak: the launch keys and a rendered template hold
/// what Keycloak registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_shapes_a_keycloak_clients_secret_with_a_template() {
    let (client, ns, _operator) = namespace_with_operator("keycloak-shape").await;
    create(&client, Some(&ns), json!({
        "apiVersion": "smart.fhir.dev/v1alpha1", "kind": "SmartClient", "metadata": {"name": "app"},
        "spec": {"authServerRef": {"name": "keycloak"}, "redirectUris": ["https://app.example.org/callback"],
                 "scopes": ["launch/patient"],
                 "secret": {"type": "example.org/smart-client",
                            "template": {"app.env": "CLIENT_ID={{ client_id }}\nTOKEN_URL={{ token_endpoint }}\n"}}},
    }))
    .await
    .unwrap();
    wait_for_ready(&client, &ns, "app", "True", "Ready").await;
    let secret = get_secret(&client, &ns, "app-smart-client").await.unwrap();
    let held = credentials_in(&secret, "");
    assert_eq!(secret.type_.as_deref(), Some("example.org/smart-client"));
    assert_eq!(
        secret_value(&secret, "app.env").unwrap(),
        format!(
            "CLIENT_ID={}\nTOKEN_URL={}\n",
            held.client_id,
            keycloak_env("KEYCLOAK_TOKEN_ENDPOINT")
        )
    );
    keycloak(None)
        .read(&held)
        .await
        .expect("the templated Secret's credentials are Keycloak's");
}
