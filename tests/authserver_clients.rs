//! The auth-server client layer (`smart_operator::authserver`) against the in-process dev server, one
//! dialect at a time: discovery, every operation, every error class, and that no secret leaks into an
//! error. Each test starts its own dev server on 127.0.0.1:0 and checks what the server recorded through
//! its admin API as well as what the client returned.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use smart_operator::authserver::{
    AuthServer, AuthServerClient, AuthServerError, ClientCredentials, ClientMetadata,
    DebugTokenRequest, ErrorClass, Existence, HttpClient, HttpSettings, RegisteredClient,
    ServerEndpoints, discover,
};
use smart_operator::crd::{Dialect, EndpointOverrides};
use smart_operator::devserver::{
    DevServer, DevServerConfig, Dialect as DevDialect, RunningDevServer,
};

/// Accepted without limit by every RFC 7591 dev server these tests start.
const INITIAL_ACCESS_TOKEN: &str = "unlimited-initial-access-token-0f3a9c";
const REDIRECT_URI: &str = "https://app.example.org/callback";
const DEMO_USER: &str = "daniel-adams";
const DEMO_PATIENT: &str = "smart-1288992";

/// A dev server plus a plain HTTP client for its admin API.
struct DevAuthServer {
    server: RunningDevServer,
    dialect: Dialect,
    admin: reqwest::Client,
}

impl DevAuthServer {
    async fn start(dialect: DevDialect) -> Self {
        // Plain http never needs a crypto provider, but building a reqwest client does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut config = DevServerConfig::new(dialect);
        if dialect == DevDialect::Rfc7591 {
            config.initial_access_tokens = vec![INITIAL_ACCESS_TOKEN.to_owned()];
        }
        let server = DevServer::bind(config)
            .await
            .expect("bind the dev server on 127.0.0.1:0")
            .spawn();
        let dialect = match dialect {
            DevDialect::Rfc7591 => Dialect::Rfc7591,
            DevDialect::S4s => Dialect::S4s,
            DevDialect::S4sLegacy => Dialect::S4sLegacy,
        };
        let admin = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("admin HTTP client");
        Self {
            server,
            dialect,
            admin,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base_url())
    }

    fn fhir_base_url(&self) -> String {
        self.url("/fhir")
    }

    /// An admin request that must succeed; its JSON answer (`null` for an empty body).
    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .admin
            .request(method.clone(), self.url(&format!("/_admin{path}")));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("admin request");
        let status = response.status();
        let text = response.text().await.expect("admin answer");
        assert!(
            status.is_success(),
            "{method} /_admin{path} answered {status}: {text}"
        );
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("admin answer is JSON")
        }
    }

    async fn clients(&self) -> Vec<Value> {
        let listing = self.admin(Method::GET, "/clients", None).await;
        listing["clients"].as_array().cloned().unwrap_or_default()
    }

    async fn stats(&self) -> Value {
        self.admin(Method::GET, "/stats", None).await
    }

    /// How often `endpoint` answered `status` ("dropped" for severed connections).
    async fn count(&self, endpoint: &str, status: &str) -> u64 {
        self.stats().await["endpoints"][endpoint]["by_status"][status]
            .as_u64()
            .unwrap_or(0)
    }

    async fn set_faults(&self, plan: Value) {
        self.admin(Method::PUT, "/faults", Some(plan)).await;
    }

    async fn set_policy(&self, policy: Value) {
        self.admin(Method::PUT, "/policy", Some(policy)).await;
    }

    async fn reset(&self) {
        self.admin(Method::POST, "/reset", None).await;
    }

    /// A discovered client with default HTTP settings (and the unlimited initial access token for
    /// RFC7591).
    async fn client(&self) -> AuthServerClient {
        let token = (self.dialect == Dialect::Rfc7591).then_some(INITIAL_ACCESS_TOKEN);
        self.client_with(HttpSettings::default(), token).await
    }

    async fn client_with(
        &self,
        settings: HttpSettings,
        initial_access_token: Option<&str>,
    ) -> AuthServerClient {
        let http = HttpClient::new(&settings).expect("HTTP client");
        let endpoints = discover(&http, self.dialect, Some(&self.fhir_base_url()), None)
            .await
            .expect("discovery");
        AuthServerClient::new(
            self.dialect,
            http,
            &endpoints,
            initial_access_token.map(SecretString::from),
        )
        .expect("auth server client")
    }
}

fn app_metadata(scopes: &[&str]) -> ClientMetadata {
    ClientMetadata {
        client_name: "Growth Chart".to_owned(),
        redirect_uris: vec![REDIRECT_URI.to_owned()],
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        grant_types: vec!["authorization_code".to_owned()],
        response_types: vec!["code".to_owned()],
        token_endpoint_auth_method: "client_secret_basic".to_owned(),
        ..Default::default()
    }
}

fn default_scopes() -> Vec<String> {
    ["openid", "launch/patient", "patient/*.read"]
        .map(str::to_owned)
        .to_vec()
}

fn default_metadata() -> ClientMetadata {
    app_metadata(&["openid", "launch/patient", "patient/*.read"])
}

/// What a caller persists from a registration and hands back for the next call.
fn credentials(registered: &RegisteredClient) -> ClientCredentials {
    ClientCredentials {
        client_id: registered.client_id.clone(),
        client_secret: registered.client_secret.clone(),
        registration_access_token: registered.registration_access_token.clone(),
        registration_client_uri: registered.registration_client_uri.clone(),
        client_assertion: None,
    }
}

fn chosen(client_id: &str, secret: &str) -> ClientCredentials {
    ClientCredentials {
        client_id: client_id.to_owned(),
        client_secret: Some(SecretString::from(secret)),
        registration_access_token: None,
        registration_client_uri: None,
        client_assertion: None,
    }
}

fn expose(secret: &Option<SecretString>) -> &str {
    secret
        .as_ref()
        .map(ExposeSecret::expose_secret)
        .expect("a secret value")
}

fn debug_token_request(lifetime: Duration) -> DebugTokenRequest {
    DebugTokenRequest {
        user: DEMO_USER.to_owned(),
        patient_id: Some(DEMO_PATIENT.to_owned()),
        scopes: vec!["launch/patient".to_owned(), "patient/*.read".to_owned()],
        lifetime,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn assert_close(actual: SystemTime, expected: SystemTime, tolerance: Duration) {
    let gap = actual
        .duration_since(expected)
        .or_else(|_| expected.duration_since(actual))
        .unwrap_or_default();
    assert!(
        gap <= tolerance,
        "{actual:?} is {gap:?} away from {expected:?} (tolerance {tolerance:?})"
    );
}

/// Neither the display text nor the debug form of `error` contains any of `secrets`.
fn assert_no_secret(error: &AuthServerError, secrets: &[&str]) {
    let display = error.to_string();
    let debug = format!("{error:?}");
    for secret in secrets {
        assert!(!display.contains(secret), "secret in error text: {display}");
        assert!(!debug.contains(secret), "secret in error debug: {debug}");
    }
}

// ---------------------------------------------------------------------------------------------------
// Discovery

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc7591_discovery_reads_endpoints_and_capabilities_from_smart_configuration() {
    let dev = DevAuthServer::start(DevDialect::Rfc7591).await;
    let http = HttpClient::new(&HttpSettings::default()).unwrap();

    let endpoints = discover(&http, Dialect::Rfc7591, Some(&dev.fhir_base_url()), None)
        .await
        .expect("discovery");

    assert_eq!(endpoints.issuer, Some(dev.url("")));
    assert_eq!(endpoints.registration, Some(dev.url("/oauth2/register")));
    assert_eq!(endpoints.token, Some(dev.url("/oauth2/token")));
    assert_eq!(endpoints.authorization, Some(dev.url("/oauth2/authorize")));
    assert_eq!(endpoints.debug_token, None, "RFC7591 has no debug API");
    assert_eq!(endpoints.debug_introspect, None);
    assert!(endpoints.scopes_supported.contains(&"openid".to_owned()));
    assert!(
        endpoints
            .smart_capabilities
            .contains(&"client-confidential-symmetric".to_owned())
    );
    assert!(
        endpoints
            .token_endpoint_auth_methods_supported
            .contains(&"private_key_jwt".to_owned())
    );
    assert_eq!(
        endpoints.token_endpoint_auth_signing_alg_values_supported,
        ["ES384", "RS384"]
    );
    assert!(
        endpoints
            .grant_types_supported
            .contains(&"client_credentials".to_owned())
    );
    // The SMART configuration already names the registration endpoint, so the issuer's OpenID
    // metadata is not fetched.
    assert_eq!(dev.stats().await["endpoints"]["discovery"]["total"], 1);
}

#[rstest::rstest]
#[case::s4s(DevDialect::S4s)]
#[case::s4s_legacy(DevDialect::S4sLegacy)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4s_discovery_reads_oauth_uris_from_fhir_metadata_and_derives_debug_endpoints(
    #[case] dialect: DevDialect,
) {
    let dev = DevAuthServer::start(dialect).await;
    let http = HttpClient::new(&HttpSettings::default()).unwrap();

    let endpoints = discover(&http, dev.dialect, Some(&dev.fhir_base_url()), None)
        .await
        .expect("discovery");

    assert_eq!(
        endpoints,
        ServerEndpoints {
            issuer: None,
            registration: Some(dev.url("/oauth/register")),
            token: Some(dev.url("/oauth/token")),
            authorization: Some(dev.url("/oauth/authorize")),
            debug_token: Some(dev.url("/oauth/debug/token")),
            debug_introspect: Some(dev.url("/oauth/debug/introspect")),
            ..Default::default()
        }
    );
    assert_eq!(dev.stats().await["endpoints"]["metadata"]["total"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_overrides_win_over_discovered_endpoints() {
    let dev = DevAuthServer::start(DevDialect::S4s).await;
    let http = HttpClient::new(&HttpSettings::default()).unwrap();
    let overrides = EndpointOverrides {
        registration: None,
        token: Some("http://127.0.0.1:1/custom/token".into()),
        debug_token: Some("http://127.0.0.1:1/custom/debug-token".into()),
        debug_introspect: None,
        allowed_hosts: None,
    };

    let endpoints = discover(
        &http,
        Dialect::S4s,
        Some(&dev.fhir_base_url()),
        Some(&overrides),
    )
    .await
    .expect("discovery");

    assert_eq!(
        endpoints.token.as_deref(),
        Some("http://127.0.0.1:1/custom/token")
    );
    assert_eq!(
        endpoints.debug_token.as_deref(),
        Some("http://127.0.0.1:1/custom/debug-token")
    );
    // What the overrides leave unset stays as discovered.
    assert_eq!(endpoints.registration, Some(dev.url("/oauth/register")));
    assert_eq!(
        endpoints.debug_introspect,
        Some(dev.url("/oauth/debug/introspect"))
    );
}

#[rstest::rstest]
#[case::rfc7591(DevDialect::Rfc7591)]
#[case::s4s(DevDialect::S4s)]
#[case::s4s_legacy(DevDialect::S4sLegacy)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_failure_without_a_registration_override_is_a_retryable_discovery_error(
    #[case] dialect: DevDialect,
) {
    let dev = DevAuthServer::start(dialect).await;
    let http = HttpClient::new(&HttpSettings::default()).unwrap();
    let overrides = EndpointOverrides {
        token: Some(dev.url("/oauth/token").as_str().into()),
        ..Default::default()
    };

    for overrides in [None, Some(&overrides)] {
        let error = discover(
            &http,
            dev.dialect,
            Some(&dev.url("/no-fhir-here")),
            overrides,
        )
        .await
        .expect_err("nothing to discover at that path");

        assert!(
            matches!(&error, AuthServerError::Discovery { detail } if detail.contains("404")),
            "{error:?}"
        );
        assert_eq!(error.class(), ErrorClass::Retryable);
        assert_eq!(error.reason(), "DiscoveryFailed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_failure_is_tolerated_when_the_registration_endpoint_is_overridden() {
    let dev = DevAuthServer::start(DevDialect::Rfc7591).await;
    let http = HttpClient::new(&HttpSettings::default()).unwrap();
    let overrides = EndpointOverrides {
        registration: Some(dev.url("/oauth2/register").as_str().into()),
        ..Default::default()
    };

    let endpoints = discover(
        &http,
        Dialect::Rfc7591,
        Some(&dev.url("/no-fhir-here")),
        Some(&overrides),
    )
    .await
    .expect("the registration override is enough");
    assert_eq!(endpoints.registration, Some(dev.url("/oauth2/register")));
    assert_eq!(endpoints.token, None, "nothing was discovered");

    // The override alone registers and manages clients; without a token endpoint the existence probe
    // asks the management API instead.
    let auth = AuthServerClient::new(
        Dialect::Rfc7591,
        http,
        &endpoints,
        Some(INITIAL_ACCESS_TOKEN.into()),
    )
    .unwrap();
    let registered = auth.register(&default_metadata(), None).await.unwrap();
    assert_eq!(
        auth.probe(&credentials(&registered)).await.unwrap(),
        Existence::Exists
    );
    assert_eq!(dev.clients().await.len(), 1);
    assert_eq!(dev.count("read", "200").await, 1);
    assert_eq!(dev.stats().await["endpoints"]["token"]["total"], 0);
}

// ---------------------------------------------------------------------------------------------------
// RFC7591 / RFC7592 operations

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc7591_register_returns_server_chosen_credentials_and_a_management_uri() {
    let dev = DevAuthServer::start(DevDialect::Rfc7591).await;
    let auth = dev.client().await;
    assert_eq!(auth.dialect(), Dialect::Rfc7591);
    let before = unix_now() as i64;

    let registered = auth.register(&default_metadata(), None).await.unwrap();

    assert!(!registered.client_id.is_empty());
    assert!(!expose(&registered.client_secret).is_empty());
    assert!(!expose(&registered.registration_access_token).is_empty());
    assert_eq!(
        registered.registration_client_uri,
        Some(dev.url(&format!("/oauth2/register/{}", registered.client_id)))
    );
    let issued_at = registered.client_id_issued_at.expect("client_id_issued_at");
    assert!((before - 1..=before + 5).contains(&issued_at));
    assert_eq!(registered.granted_scopes, Some(default_scopes()));

    // The server holds exactly this client, with the credentials it handed back.
    let clients = dev.clients().await;
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0]["client_id"], registered.client_id);
    assert_eq!(
        clients[0]["client_secret"],
        expose(&registered.client_secret)
    );
    assert_eq!(
        clients[0]["registration_access_token"],
        expose(&registered.registration_access_token)
    );
    assert_eq!(clients[0]["client_name"], "Growth Chart");
    assert_eq!(clients[0]["redirect_uris"], json!([REDIRECT_URI]));
    assert_eq!(dev.count("register", "201").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc7592_read_returns_the_registration_and_its_registration_access_token() {
    let dev = DevAuthServer::start(DevDialect::Rfc7591).await;
    let auth = dev.client().await;
    let registered = auth.register(&default_metadata(), None).await.unwrap();

    let read = auth.read(&credentials(&registered)).await.unwrap();

    assert_eq!(read.client_id, registered.client_id);
    assert_eq!(
        expose(&read.client_secret),
        expose(&registered.client_secret)
    );
    assert_eq!(
        expose(&read.registration_access_token),
        expose(&registered.registration_access_token)
    );
    assert_eq!(read.granted_scopes, Some(default_scopes()));
    assert_eq!(dev.count("read", "200").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc7592_update_rotates_the_registration_access_token_and_only_the_new_one_works() {
    let dev = DevAuthServer::start(DevDialect::Rfc7591).await;
    let auth = dev.client().await;
    let registered = auth.register(&default_metadata(), None).await.unwrap();
    let old = credentials(&registered);
    let mut renamed = app_metadata(&["openid", "patient/*.read"]);
    renamed.client_name = "Growth Chart v2".to_owned();

    let updated = auth.update(&old, &renamed).await.unwrap();

    assert_eq!(updated.client_id, registered.client_id);
    assert_ne!(
        expose(&updated.registration_access_token),
        expose(&registered.registration_access_token),
        "PUT rotates the registration access token"
    );
    assert_eq!(
        updated.granted_scopes,
        Some(vec!["openid".to_owned(), "patient/*.read".to_owned()])
    );
    let clients = dev.clients().await;
    assert_eq!(clients[0]["client_name"], "Growth Chart v2");
    assert_eq!(
        clients[0]["registration_access_token"],
        expose(&updated.registration_access_token)
    );

    let error = auth.read(&old).await.expect_err("the old token is stale");
    assert!(
        matches!(
            error,
            AuthServerError::RegistrationAccessTokenRejected { status: 401 }
        ),
        "{error:?}"
    );
    assert_eq!(error.class(), ErrorClass::Credential);
    assert_eq!(error.reason(), "RegistrationAccessTokenRejected");

    let read = auth.read(&credentials(&updated)).await.unwrap();
    assert_eq!(read.client_id, registered.client_id);
    assert_eq!(dev.count("update", "200").await, 1);
    assert_eq!(dev.count("read", "401").await, 1);
    assert_eq!(dev.count("read", "200").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc7592_delete_removes_the_client_and_deleting_it_again_is_success() {
    let dev = DevAuthServer::start(DevDialect::Rfc7591).await;
    let auth = dev.client().await;
    let registered = auth.register(&default_metadata(), None).await.unwrap();
    let client = credentials(&registered);

    auth.delete(&client).await.expect("delete");
    assert!(dev.clients().await.is_empty());
    assert_eq!(dev.count("delete", "204").await, 1);

    // Like Keycloak, the server answers a deleted client with the same 401 as a stale token.
    let error = auth.read(&client).await.expect_err("the client is gone");
    assert!(
        matches!(
            error,
            AuthServerError::RegistrationAccessTokenRejected { status: 401 }
                | AuthServerError::ClientGone
        ),
        "{error:?}"
    );
    assert_eq!(error.class(), ErrorClass::Credential);

    // "Already gone" is success: the 401 is resolved by the existence probe.
    auth.delete(&client)
        .await
        .expect("deleting a deleted client");
    assert_eq!(dev.count("delete", "401").await, 1);
    assert_eq!(dev.count("token", "401").await, 1, "one existence probe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc7592_delete_with_a_stale_token_of_an_existing_client_is_a_credential_error() {
    let dev = DevAuthServer::start(DevDialect::Rfc7591).await;
    let auth = dev.client().await;
    let registered = auth.register(&default_metadata(), None).await.unwrap();
    let stale = credentials(&registered);
    auth.update(&stale, &default_metadata()).await.unwrap();

    let error = auth.delete(&stale).await.expect_err("stale token");

    assert!(
        matches!(
            error,
            AuthServerError::RegistrationAccessTokenRejected { status: 401 }
        ),
        "{error:?}"
    );
    assert_eq!(dev.clients().await.len(), 1, "the client is still there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc7591_probe_says_exists_then_gone_after_the_server_is_wiped() {
    let dev = DevAuthServer::start(DevDialect::Rfc7591).await;
    let auth = dev.client().await;
    let client = credentials(&auth.register(&default_metadata(), None).await.unwrap());

    assert_eq!(auth.probe(&client).await.unwrap(), Existence::Exists);
    dev.reset().await;
    assert_eq!(auth.probe(&client).await.unwrap(), Existence::Gone);

    // The probe is a refresh grant with a made-up token: 400 invalid_grant, then 401 invalid_client.
    assert_eq!(dev.count("token", "400").await, 1);
    assert_eq!(dev.count("token", "401").await, 1);
    assert!(dev.clients().await.is_empty(), "probing registers nothing");
}

// ---------------------------------------------------------------------------------------------------
// Error classes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc7591_used_up_initial_access_token_is_rejected_as_a_credential_error() {
    let dev = DevAuthServer::start(DevDialect::Rfc7591).await;
    let created = dev
        .admin(
            Method::POST,
            "/initial-access-tokens",
            Some(json!({"count": 1})),
        )
        .await;
    let token = created["token"]
        .as_str()
        .expect("generated token")
        .to_owned();
    let auth = dev
        .client_with(HttpSettings::default(), Some(token.as_str()))
        .await;

    auth.register(&default_metadata(), None)
        .await
        .expect("the token allows one registration");
    let error = auth
        .register(&default_metadata(), None)
        .await
        .expect_err("the token is used up");

    assert!(
        matches!(
            error,
            AuthServerError::InitialAccessTokenRejected { status: 401 }
        ),
        "{error:?}"
    );
    assert_eq!(error.class(), ErrorClass::Credential);
    assert_eq!(error.reason(), "InitialAccessTokenRejected");
    assert_no_secret(&error, &[&token]);
    assert_eq!(dev.clients().await.len(), 1);
    assert_eq!(dev.count("register", "401").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc7591_missing_or_wrong_initial_access_token_is_rejected() {
    let dev = DevAuthServer::start(DevDialect::Rfc7591).await;
    for token in [None, Some("not-a-token-this-server-issued")] {
        let auth = dev.client_with(HttpSettings::default(), token).await;

        let error = auth
            .register(&default_metadata(), None)
            .await
            .expect_err("no valid initial access token");

        assert!(
            matches!(
                error,
                AuthServerError::InitialAccessTokenRejected { status: 401 }
            ),
            "{token:?}: {error:?}"
        );
        assert_eq!(error.class(), ErrorClass::Credential);
        if let Some(token) = token {
            assert_no_secret(&error, &[token]);
        }
    }
    assert!(dev.clients().await.is_empty());
    assert_eq!(dev.count("register", "401").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc7591_scope_refused_by_policy_is_a_user_error_with_the_servers_text() {
    let dev = DevAuthServer::start(DevDialect::Rfc7591).await;
    dev.set_policy(json!({"allowed_scopes": ["openid"], "on_disallowed": "reject"}))
        .await;
    let auth = dev.client().await;

    let error = auth
        .register(&default_metadata(), None)
        .await
        .expect_err("scopes outside the policy");

    match &error {
        AuthServerError::PolicyRejected {
            status,
            error,
            description,
        } => {
            assert_eq!(*status, 403);
            assert_eq!(error, "insufficient_scope");
            assert!(
                description.contains("Allowed Client Scopes"),
                "{description}"
            );
        }
        other => panic!("expected PolicyRejected, got {other:?}"),
    }
    assert_eq!(error.class(), ErrorClass::User);
    assert_eq!(error.reason(), "RejectedByPolicy");
    let message = error.to_string();
    assert!(message.contains("insufficient_scope"), "{message}");
    assert!(
        message.contains("Not permitted to use specified clientScope"),
        "{message}"
    );
    assert_no_secret(&error, &[INITIAL_ACCESS_TOKEN]);
    assert!(dev.clients().await.is_empty());
    assert_eq!(dev.count("register", "403").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc7591_scope_narrowed_by_policy_registers_with_fewer_granted_scopes() {
    let dev = DevAuthServer::start(DevDialect::Rfc7591).await;
    dev.set_policy(
        json!({"allowed_scopes": ["openid", "patient/*.read"], "on_disallowed": "narrow"}),
    )
    .await;
    let auth = dev.client().await;
    let requested = default_metadata();

    let registered = auth.register(&requested, None).await.unwrap();

    let granted = registered.granted_scopes.expect("the server says");
    assert_eq!(
        granted,
        vec!["openid".to_owned(), "patient/*.read".to_owned()]
    );
    assert!(granted.len() < requested.scopes.len());
    assert_eq!(dev.clients().await[0]["scope"], "openid patient/*.read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc7591_redirect_uri_with_a_fragment_is_invalid_metadata() {
    let dev = DevAuthServer::start(DevDialect::Rfc7591).await;
    let auth = dev.client().await;
    let mut metadata = default_metadata();
    metadata.redirect_uris = vec!["https://app.example.org/callback#fragment".to_owned()];

    let error = auth
        .register(&metadata, None)
        .await
        .expect_err("bad redirect URI");

    assert!(
        matches!(
            &error,
            AuthServerError::InvalidMetadata { status: 400, error, description }
                if error == "invalid_redirect_uri" && description.contains("fragment")
        ),
        "{error:?}"
    );
    assert_eq!(error.class(), ErrorClass::User);
    assert_eq!(error.reason(), "InvalidClientMetadata");
    assert!(dev.clients().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_503_is_a_retryable_server_error_without_retry_after() {
    let dev = DevAuthServer::start(DevDialect::Rfc7591).await;
    let auth = dev.client().await;
    dev.set_faults(json!({"error_rate": 1.0, "endpoints": ["register"]}))
        .await;

    let error = auth
        .register(&default_metadata(), None)
        .await
        .expect_err("every registration fails");

    match &error {
        AuthServerError::ServerError { status, detail, .. } => {
            assert_eq!(*status, 503);
            assert!(detail.contains("temporarily_unavailable"), "{detail}");
        }
        other => panic!("expected ServerError, got {other:?}"),
    }
    assert_eq!(error.class(), ErrorClass::Retryable);
    assert!(error.is_retryable());
    assert_eq!(error.reason(), "AuthServerError");
    // The dev server's injected errors carry no Retry-After header.
    assert_eq!(error.retry_after(), None);
    assert_no_secret(&error, &[INITIAL_ACCESS_TOKEN]);
    assert_eq!(dev.stats().await["injected_errors"], 1);
    assert!(dev.clients().await.is_empty());
}

/// The dev server never sends `Retry-After`, so this one answer comes from a mock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_of_a_503_is_reported_with_the_server_error() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/register"))
        .respond_with(
            ResponseTemplate::new(503)
                .insert_header("retry-after", "7")
                .set_body_string("maintenance"),
        )
        .mount(&mock)
        .await;
    let endpoints = ServerEndpoints {
        registration: Some(format!("{}/register", mock.uri())),
        ..Default::default()
    };
    let http = HttpClient::new(&HttpSettings::default()).unwrap();
    let auth = AuthServerClient::new(
        Dialect::Rfc7591,
        http,
        &endpoints,
        Some(INITIAL_ACCESS_TOKEN.into()),
    )
    .unwrap();

    let error = auth.register(&default_metadata(), None).await.unwrap_err();

    assert!(
        matches!(error, AuthServerError::ServerError { status: 503, .. }),
        "{error:?}"
    );
    assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_is_a_retryable_unreachable_error() {
    let dev = DevAuthServer::start(DevDialect::Rfc7591).await;
    let auth = dev.client().await;
    dev.set_faults(json!({"drop_rate": 1.0, "endpoints": ["register"]}))
        .await;

    let error = auth
        .register(&default_metadata(), None)
        .await
        .expect_err("the connection is reset");

    assert!(
        matches!(error, AuthServerError::Unreachable { .. }),
        "{error:?}"
    );
    assert_eq!(error.class(), ErrorClass::Retryable);
    assert_eq!(error.reason(), "AuthServerUnreachable");
    assert_no_secret(&error, &[INITIAL_ACCESS_TOKEN]);
    assert!(dev.count("register", "dropped").await >= 1);
    assert!(dev.clients().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_beyond_the_request_timeout_is_a_retryable_timeout() {
    let dev = DevAuthServer::start(DevDialect::Rfc7591).await;
    let settings = HttpSettings {
        request_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let auth = dev.client_with(settings, Some(INITIAL_ACCESS_TOKEN)).await;
    dev.set_faults(json!({"latency_ms": 1000, "endpoints": ["register"]}))
        .await;

    let started = Instant::now();
    let error = auth
        .register(&default_metadata(), None)
        .await
        .expect_err("too slow");

    assert!(
        started.elapsed() < Duration::from_millis(900),
        "gave up at the timeout"
    );
    assert!(
        matches!(&error, AuthServerError::Timeout { endpoint } if endpoint == &dev.url("/oauth2/register")),
        "{error:?}"
    );
    assert_eq!(error.class(), ErrorClass::Retryable);
    assert_eq!(error.reason(), "AuthServerTimeout");
}

#[rstest::rstest]
#[case::s4s(DevDialect::S4s)]
#[case::s4s_legacy(DevDialect::S4sLegacy)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4s_dialects_cannot_read_update_or_delete_and_say_so_without_calling_the_server(
    #[case] dialect: DevDialect,
) {
    let dev = DevAuthServer::start(dialect).await;
    let auth = dev.client().await;
    let client = chosen("some-client", "some-secret-value");
    let requests_before = dev.stats().await["total"].clone();

    let errors = [
        auth.read(&client).await.map(|_| ()),
        auth.update(&client, &default_metadata()).await.map(|_| ()),
        auth.delete(&client).await,
    ];

    for result in errors {
        let error = result.expect_err("unsupported");
        assert!(
            matches!(error, AuthServerError::Unsupported { .. }),
            "{error:?}"
        );
        assert_eq!(error.class(), ErrorClass::User);
        assert_eq!(error.reason(), "UnsupportedByDialect");
    }
    assert_eq!(dev.stats().await["total"], requests_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc7591_cannot_mint_or_introspect_debug_tokens() {
    let dev = DevAuthServer::start(DevDialect::Rfc7591).await;
    let auth = dev.client().await;
    let client = credentials(&auth.register(&default_metadata(), None).await.unwrap());
    let requests_before = dev.stats().await["total"].clone();

    let mint = auth
        .mint_debug_token(&client, &debug_token_request(Duration::from_secs(600)))
        .await
        .map(|_| ());
    let introspect = auth
        .introspect(&SecretString::from("any-token"))
        .await
        .map(|_| ());

    for result in [mint, introspect] {
        let error = result.expect_err("unsupported");
        assert!(
            matches!(
                error,
                AuthServerError::Unsupported {
                    dialect: "RFC7591",
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(error.class(), ErrorClass::User);
    }
    assert_eq!(dev.stats().await["total"], requests_before);
}

// ---------------------------------------------------------------------------------------------------
// S4S

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4s_register_gets_server_chosen_uuids_and_every_call_creates_a_new_client() {
    let dev = DevAuthServer::start(DevDialect::S4s).await;
    let auth = dev.client().await;
    assert_eq!(auth.dialect(), Dialect::S4s);

    let first = auth.register(&default_metadata(), None).await.unwrap();
    let second = auth.register(&default_metadata(), None).await.unwrap();

    for registered in [&first, &second] {
        uuid::Uuid::parse_str(&registered.client_id).expect("client_id is a UUID");
        uuid::Uuid::parse_str(expose(&registered.client_secret)).expect("client_secret is a UUID");
        assert!(registered.registration_access_token.is_none());
        assert!(registered.registration_client_uri.is_none());
        assert_eq!(registered.granted_scopes, Some(default_scopes()));
    }
    assert_ne!(first.client_id, second.client_id);
    assert_ne!(expose(&first.client_secret), expose(&second.client_secret));
    let clients = dev.clients().await;
    assert_eq!(clients.len(), 2);
    assert_eq!(clients[0]["client_id"], first.client_id);
    assert_eq!(clients[0]["client_secret"], expose(&first.client_secret));
    assert_eq!(clients[0]["scope"], "openid launch/patient patient/*.read");
    assert_eq!(dev.count("register", "201").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4s_debug_token_for_the_demo_user_introspects_active_until_now_plus_lifetime() {
    let dev = DevAuthServer::start(DevDialect::S4s).await;
    let auth = dev.client().await;
    let client = credentials(&auth.register(&default_metadata(), None).await.unwrap());
    let lifetime = Duration::from_secs(600);
    let request = debug_token_request(lifetime);

    let minted_at = SystemTime::now();
    let grant = auth.mint_debug_token(&client, &request).await.unwrap();
    let info = auth.introspect(&grant.access_token).await.unwrap();

    assert!(grant.refresh_token.is_some());
    let printed = format!("{grant:?}");
    assert!(
        !printed.contains(grant.access_token.expose_secret()),
        "{printed}"
    );
    assert!(info.active);
    assert_close(
        info.expires_at.expect("access_expires, an RFC 1123 date"),
        minted_at + lifetime,
        Duration::from_secs(3),
    );
    assert_eq!(info.scopes, request.scopes);
    assert_eq!(dev.count("debug_token", "200").await, 1);
    assert_eq!(dev.count("introspect", "200").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4s_probe_says_exists_then_gone_after_the_server_is_wiped() {
    let dev = DevAuthServer::start(DevDialect::S4s).await;
    let auth = dev.client().await;
    let client = credentials(&auth.register(&default_metadata(), None).await.unwrap());

    assert_eq!(auth.probe(&client).await.unwrap(), Existence::Exists);
    dev.reset().await;
    assert_eq!(auth.probe(&client).await.unwrap(), Existence::Gone);

    // Both answers are 401 (oauthlib 2.0.1): invalid_grant, then invalid_client. Only the error
    // field tells them apart.
    assert_eq!(dev.count("token", "401").await, 2);
    assert_eq!(
        dev.count("register", "201").await,
        1,
        "probing registers nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4s_400_errors_are_invalid_metadata_with_the_servers_description() {
    let dev = DevAuthServer::start(DevDialect::S4s).await;
    let auth = dev.client().await;
    let mut relative = default_metadata();
    relative.redirect_uris = vec!["/relative/callback".to_owned()];

    let error = auth
        .register(&relative, None)
        .await
        .expect_err("no URI scheme");

    assert!(
        matches!(
            &error,
            AuthServerError::InvalidMetadata { status: 400, error, description }
                if error == "invalid_redirect_uri"
                    && description == "A URI scheme is required: /relative/callback"
        ),
        "{error:?}"
    );
    assert_eq!(error.class(), ErrorClass::User);
    assert!(
        error
            .to_string()
            .contains("A URI scheme is required: /relative/callback")
    );

    let client = credentials(&auth.register(&default_metadata(), None).await.unwrap());
    let mut nobody = debug_token_request(Duration::from_secs(600));
    nobody.user = "nobody".to_owned();
    let error = auth
        .mint_debug_token(&client, &nobody)
        .await
        .expect_err("unknown user");
    assert!(
        matches!(
            &error,
            AuthServerError::InvalidMetadata { status: 400, error, description }
                if error == "no_user" && description == "Username \"nobody\" not found"
        ),
        "{error:?}"
    );
    assert_no_secret(&error, &[expose(&client.client_secret)]);
    assert_eq!(dev.count("register", "400").await, 1);
    assert_eq!(dev.count("debug_token", "400").await, 1);
}

// ---------------------------------------------------------------------------------------------------
// S4SLegacy

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4s_legacy_register_uses_the_caller_chosen_id_and_secret() {
    let dev = DevAuthServer::start(DevDialect::S4sLegacy).await;
    let auth = dev.client().await;
    assert_eq!(auth.dialect(), Dialect::S4sLegacy);

    let registered = auth
        .register(
            &default_metadata(),
            Some(&chosen("team-a-growth-chart", "chosen-secret-4d2e")),
        )
        .await
        .unwrap();

    assert_eq!(registered.client_id, "team-a-growth-chart");
    assert_eq!(expose(&registered.client_secret), "chosen-secret-4d2e");
    assert_eq!(registered.granted_scopes, Some(default_scopes()));
    let clients = dev.clients().await;
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0]["client_id"], "team-a-growth-chart");
    assert_eq!(clients[0]["client_secret"], "chosen-secret-4d2e");
    assert_eq!(clients[0]["default_scopes"], json!(default_scopes()));
    assert_eq!(dev.count("register", "200").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4s_legacy_register_without_chosen_credentials_is_a_configuration_error() {
    let dev = DevAuthServer::start(DevDialect::S4sLegacy).await;
    let auth = dev.client().await;
    let no_secret = ClientCredentials {
        client_secret: None,
        ..chosen("team-a-growth-chart", "unused")
    };

    for chosen in [None, Some(&no_secret)] {
        let error = auth
            .register(&default_metadata(), chosen)
            .await
            .expect_err("the caller must choose id and secret");
        assert!(
            matches!(error, AuthServerError::Configuration { .. }),
            "{error:?}"
        );
        assert_eq!(error.class(), ErrorClass::User);
    }
    assert_eq!(dev.stats().await["endpoints"]["register"]["total"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4s_legacy_registering_the_same_id_and_secret_again_is_success() {
    let dev = DevAuthServer::start(DevDialect::S4sLegacy).await;
    let auth = dev.client().await;
    let ours = chosen("team-a-growth-chart", "chosen-secret-4d2e");
    auth.register(&default_metadata(), Some(&ours))
        .await
        .unwrap();

    let again = auth
        .register(&default_metadata(), Some(&ours))
        .await
        .expect("an earlier attempt already registered it");

    assert_eq!(again.client_id, "team-a-growth-chart");
    assert_eq!(expose(&again.client_secret), "chosen-secret-4d2e");
    // The server refused the duplicate; the probe showed the client is ours.
    assert_eq!(dev.count("register", "500").await, 1);
    assert_eq!(dev.count("token", "401").await, 1);
    assert_eq!(dev.clients().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4s_legacy_registering_a_taken_id_with_another_secret_is_credentials_lost_not_retried() {
    let dev = DevAuthServer::start(DevDialect::S4sLegacy).await;
    let auth = dev.client().await;
    auth.register(
        &default_metadata(),
        Some(&chosen("team-a-growth-chart", "first-secret-value")),
    )
    .await
    .unwrap();

    let error = auth
        .register(
            &default_metadata(),
            Some(&chosen("team-a-growth-chart", "other-secret-value")),
        )
        .await
        .expect_err("the id belongs to another secret");

    assert!(
        matches!(&error, AuthServerError::ClientIdTaken { client_id } if client_id == "team-a-growth-chart"),
        "{error:?}"
    );
    assert_eq!(error.class(), ErrorClass::User, "asking again cannot help");
    assert_eq!(error.reason(), "CredentialsLost");
    assert_no_secret(&error, &["first-secret-value", "other-secret-value"]);
    assert_eq!(dev.count("token", "401").await, 1, "the probe said gone");
    let clients = dev.clients().await;
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0]["client_secret"], "first-secret-value");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4s_legacy_debug_token_introspects_active_with_an_rfc1123_expiry() {
    let dev = DevAuthServer::start(DevDialect::S4sLegacy).await;
    let auth = dev.client().await;
    let client = chosen("team-a-growth-chart", "chosen-secret-4d2e");
    auth.register(&default_metadata(), Some(&client))
        .await
        .unwrap();
    let lifetime = Duration::from_secs(600);
    let request = debug_token_request(lifetime);

    let minted_at = unix_now();
    let grant = auth.mint_debug_token(&client, &request).await.unwrap();
    let info = auth.introspect(&grant.access_token).await.unwrap();

    assert!(info.active);
    assert_eq!(info.scopes, request.scopes);
    let expires_at = info.expires_at.expect("expires, an RFC 1123 date");
    // The server's quirk (api.md): `expires` is both the access token's lifetime in seconds and the
    // approval's Unix timestamp. The client sends the lifetime, as the seed does, so the token lives
    // exactly `lifetime` (before the fix it sent now + lifetime and the token lived for decades).
    assert_close(
        expires_at,
        UNIX_EPOCH + Duration::from_secs(minted_at + lifetime.as_secs()),
        Duration::from_secs(3),
    );
    assert_eq!(dev.count("debug_token", "200").await, 1);
    assert_eq!(dev.count("introspect", "200").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4s_legacy_probe_says_exists_then_gone_after_the_server_is_wiped() {
    let dev = DevAuthServer::start(DevDialect::S4sLegacy).await;
    let auth = dev.client().await;
    let client = chosen("team-a-growth-chart", "chosen-secret-4d2e");
    auth.register(&default_metadata(), Some(&client))
        .await
        .unwrap();

    assert_eq!(auth.probe(&client).await.unwrap(), Existence::Exists);
    dev.reset().await;
    assert_eq!(auth.probe(&client).await.unwrap(), Existence::Gone);
}

// ---------------------------------------------------------------------------------------------------
// Redaction

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc7591_register_errors_never_show_the_initial_access_token() {
    let dev = DevAuthServer::start(DevDialect::Rfc7591).await;
    let auth = dev.client().await;

    // The server quotes an unsupported token_endpoint_auth_method back in its 400 description.
    let mut echoed = default_metadata();
    echoed.token_endpoint_auth_method = INITIAL_ACCESS_TOKEN.to_owned();
    let error = auth.register(&echoed, None).await.unwrap_err();
    assert!(
        matches!(&error, AuthServerError::InvalidMetadata { description, .. }
            if description.contains("[REDACTED]")),
        "{error:?}"
    );
    assert_no_secret(&error, &[INITIAL_ACCESS_TOKEN]);

    dev.set_policy(json!({"allowed_scopes": ["openid"], "on_disallowed": "reject"}))
        .await;
    let error = auth.register(&default_metadata(), None).await.unwrap_err();
    assert!(
        matches!(error, AuthServerError::PolicyRejected { .. }),
        "{error:?}"
    );
    assert_no_secret(&error, &[INITIAL_ACCESS_TOKEN]);

    dev.set_faults(json!({"error_rate": 1.0, "endpoints": ["register"]}))
        .await;
    let error = auth.register(&default_metadata(), None).await.unwrap_err();
    assert!(
        matches!(error, AuthServerError::ServerError { .. }),
        "{error:?}"
    );
    assert_no_secret(&error, &[INITIAL_ACCESS_TOKEN]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc7592_errors_never_show_the_client_secret_or_registration_access_token() {
    let dev = DevAuthServer::start(DevDialect::Rfc7591).await;
    let auth = dev.client().await;
    let registered = auth.register(&default_metadata(), None).await.unwrap();
    let client = credentials(&registered);
    let secret = expose(&registered.client_secret).to_owned();
    let token = expose(&registered.registration_access_token).to_owned();
    let secrets = [INITIAL_ACCESS_TOKEN, secret.as_str(), token.as_str()];

    // A rejected update quotes the auth method back: make it each secret in turn.
    for echoed_secret in [&secret, &token] {
        let mut echoed = default_metadata();
        echoed.token_endpoint_auth_method = echoed_secret.clone();
        let error = auth.update(&client, &echoed).await.unwrap_err();
        assert!(
            matches!(&error, AuthServerError::InvalidMetadata { status: 400, description, .. }
                if description.contains("[REDACTED]")),
            "{error:?}"
        );
        assert_no_secret(&error, &secrets);
    }

    dev.set_faults(json!({"error_rate": 1.0, "endpoints": ["read", "update", "delete", "token"]}))
        .await;
    let failures = [
        auth.read(&client).await.map(|_| ()),
        auth.update(&client, &default_metadata()).await.map(|_| ()),
        auth.delete(&client).await,
        auth.probe(&client).await.map(|_| ()),
    ];
    for result in failures {
        let error = result.expect_err("injected 503");
        assert!(
            matches!(error, AuthServerError::ServerError { status: 503, .. }),
            "{error:?}"
        );
        assert_no_secret(&error, &secrets);
    }

    dev.set_faults(json!({"drop_rate": 1.0, "endpoints": ["read", "token"]}))
        .await;
    for result in [
        auth.read(&client).await.map(|_| ()),
        auth.probe(&client).await.map(|_| ()),
    ] {
        let error = result.expect_err("dropped");
        assert!(
            matches!(error, AuthServerError::Unreachable { .. }),
            "{error:?}"
        );
        assert_no_secret(&error, &secrets);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4s_transport_errors_never_show_the_token_from_the_introspection_url() {
    let dev = DevAuthServer::start(DevDialect::S4s).await;
    let auth = dev.client().await;
    let client = credentials(&auth.register(&default_metadata(), None).await.unwrap());
    let grant = auth
        .mint_debug_token(&client, &debug_token_request(Duration::from_secs(600)))
        .await
        .unwrap();
    let access_token = grant.access_token.expose_secret().to_owned();
    let secrets = [access_token.as_str(), expose(&client.client_secret)];

    dev.set_faults(json!({"drop_rate": 1.0, "endpoints": ["introspect", "debug_token"]}))
        .await;
    let error = auth.introspect(&grant.access_token).await.unwrap_err();
    // The transport error leaves the request URL out (its query carries the token, which redaction
    // would miss once URL-encoded): only the endpoint without a query is named.
    assert!(
        matches!(&error, AuthServerError::Unreachable { detail, endpoint, .. }
            if !detail.contains("token=") && !endpoint.contains('?')),
        "{error:?}"
    );
    assert_no_secret(&error, &secrets);
    let error = auth
        .mint_debug_token(&client, &debug_token_request(Duration::from_secs(600)))
        .await
        .unwrap_err();
    assert_no_secret(&error, &secrets);

    dev.set_faults(json!({"error_rate": 1.0, "endpoints": ["introspect"]}))
        .await;
    let error = auth.introspect(&grant.access_token).await.unwrap_err();
    assert!(
        matches!(error, AuthServerError::ServerError { status: 503, .. }),
        "{error:?}"
    );
    assert_no_secret(&error, &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_registrations_do_not_show_secret_values_when_debug_printed() {
    let dev = DevAuthServer::start(DevDialect::Rfc7591).await;
    let auth = dev.client().await;
    let registered = auth.register(&default_metadata(), None).await.unwrap();
    let client = credentials(&registered);
    let secret = expose(&registered.client_secret);
    let token = expose(&registered.registration_access_token);

    for printed in [format!("{registered:?}"), format!("{client:?}")] {
        assert!(printed.contains(&registered.client_id), "{printed}");
        assert!(!printed.contains(secret), "{printed}");
        assert!(!printed.contains(token), "{printed}");
    }
    let printed_client = format!("{auth:?}");
    assert!(
        !printed_client.contains(INITIAL_ACCESS_TOKEN),
        "{printed_client}"
    );
}

/// Review S1: the discovery document must not decide where credentials go. A mock serves documents
/// that point elsewhere (the dev servers always point at themselves).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_endpoints_on_other_hosts_or_over_plain_http_are_refused() {
    use smart_operator::crd::AllowedHost;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mock = MockServer::start().await;
    let serve = |document: serde_json::Value| {
        Mock::given(method("GET"))
            .and(path("/fhir/.well-known/smart-configuration"))
            .respond_with(ResponseTemplate::new(200).set_body_json(document))
    };
    let http = HttpClient::new(&HttpSettings::default()).unwrap();
    let base = format!("{}/fhir", mock.uri());

    // Another host: refused unless the admin lists it.
    let elsewhere = serve(
        json!({"registration_endpoint": "https://collector.example.net/register",
                                 "token_endpoint": "https://collector.example.net/token"}),
    )
    .mount_as_scoped(&mock)
    .await;
    let error = discover(&http, Dialect::Rfc7591, Some(&base), None)
        .await
        .expect_err("another host");
    assert!(
        matches!(&error, AuthServerError::Discovery { detail } if detail.contains("allowedHosts")),
        "{error:?}"
    );
    let allowed = EndpointOverrides {
        allowed_hosts: Some(vec![AllowedHost("collector.example.net".into())]),
        ..Default::default()
    };
    let endpoints = discover(&http, Dialect::Rfc7591, Some(&base), Some(&allowed))
        .await
        .expect("a host the admin listed");
    assert_eq!(
        endpoints.registration.as_deref(),
        Some("https://collector.example.net/register")
    );
    drop(elsewhere);

    // The real auth-proxy builds its token URL from the Host header: http to an internal name.
    let _downgrade = serve(
        json!({"registration_endpoint": format!("{}/register", mock.uri()),
                                  "token_endpoint": "http://auth.internal:5000/oauth/token"}),
    )
    .mount_as_scoped(&mock)
    .await;
    let allowed = EndpointOverrides {
        allowed_hosts: Some(vec![AllowedHost("auth.internal".into())]),
        ..Default::default()
    };
    let error = discover(&http, Dialect::Rfc7591, Some(&base), Some(&allowed))
        .await
        .expect_err("plain http off loopback");
    assert!(
        matches!(&error, AuthServerError::Discovery { detail } if detail.contains("http://")),
        "{error:?}"
    );
}

/// What Keycloak does with a private_key_jwt client (`tests/keycloak.rs` runs the same checks
/// against it), smart-dev-server does too.
#[tokio::test]
async fn rfc7591_private_key_jwt_clients_authenticate_with_assertions_as_on_keycloak() {
    let dev = DevAuthServer::start(DevDialect::Rfc7591).await;
    let client = dev.client().await;
    for algorithm in [
        smart_operator::keys::SigningAlgorithm::ES384,
        smart_operator::keys::SigningAlgorithm::RS384,
    ] {
        common::backend::private_key_jwt_clients_authenticate_with_assertions(
            &client,
            &dev.url("/oauth2/token"),
            algorithm,
        )
        .await;
    }
}
