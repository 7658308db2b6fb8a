//! Clients for the auth servers SmartClients are registered with: one trait, one implementation per
//! dialect, discovery, and the HTTP layer they share.
//!
//! Every call returns a typed answer or an [`AuthServerError`] that says whether to retry, report a user
//! error, or get a new credential. Every answer that carries a new credential (client secret, rotated
//! registration access token) hands it back so the caller can persist it before its next call.

mod discovery;
mod error;
pub mod http;
mod rfc7591;
mod s4s;
mod s4s_legacy;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, SystemTime};

use secrecy::SecretString;

pub use discovery::{ServerEndpoints, discover};
pub use error::{AuthServerError, ErrorClass};
pub use http::{HttpClient, HttpSettings};
pub use rfc7591::Rfc7591Client;
pub use s4s::S4sClient;
pub use s4s_legacy::S4sLegacyClient;

use crate::crd::Dialect;

/// The client metadata the operator asks a server to register (RFC 7591 names).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClientMetadata {
    pub client_name: String,
    pub redirect_uris: Vec<String>,
    pub scopes: Vec<String>,
    pub grant_types: Vec<String>,
    pub response_types: Vec<String>,
    pub token_endpoint_auth_method: String,
    pub logo_uri: Option<String>,
    pub contacts: Vec<String>,
    /// The public keys of a private_key_jwt client, registered inline (`jwks`, RFC7591 only).
    pub jwks: Option<serde_json::Value>,
    /// Further metadata passed through as-is (RFC7591 only).
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// An existing registration and the credentials to manage it.
#[derive(Clone, Debug, Default)]
pub struct ClientCredentials {
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    pub registration_access_token: Option<SecretString>,
    pub registration_client_uri: Option<String>,
    /// A private_key_jwt client's proof at the token endpoint: an assertion made for this call.
    pub client_assertion: Option<SecretString>,
}

/// What a server answered to a registration, read or update. Persist every credential in it before the
/// next call: a rotated registration access token is the only valid one from now on.
#[derive(Clone, Debug)]
pub struct RegisteredClient {
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    pub registration_access_token: Option<SecretString>,
    pub registration_client_uri: Option<String>,
    /// Seconds since the Unix epoch.
    pub client_id_issued_at: Option<i64>,
    /// When the client secret expires (`client_secret_expires_at`), seconds since the Unix epoch;
    /// None when it never does (the answer's 0) or the server did not say.
    pub client_secret_expires_at: Option<i64>,
    /// Scopes the server granted, when it said; may be fewer than requested.
    pub granted_scopes: Option<Vec<String>>,
}

/// A debug token to mint for a test user (Sync-for-Science debug API).
#[derive(Clone, Debug)]
pub struct DebugTokenRequest {
    pub user: String,
    pub patient_id: Option<String>,
    pub scopes: Vec<String>,
    pub lifetime: Duration,
}

/// A minted debug token.
#[derive(Clone, Debug)]
pub struct DebugTokenGrant {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
}

/// How a client proves who it is at the token endpoint.
#[derive(Clone, Debug)]
pub enum ClientAuthentication {
    /// `client_secret_basic`: HTTP Basic with the client id and secret.
    Basic,
    /// `client_secret_post`: the client id and secret in the form.
    Post,
    /// `private_key_jwt`: a signed client assertion (RFC 7523), made fresh for this request.
    Assertion(SecretString),
}

/// An access token the server issued to the client itself (client_credentials grant).
#[derive(Clone, Debug)]
pub struct AccessTokenGrant {
    pub access_token: SecretString,
    /// `expires_in`, when the server said.
    pub expires_in: Option<Duration>,
    /// The scopes the token carries (`scope`), when the server said.
    pub scope: Option<String>,
}

/// What introspection says about a token.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenInfo {
    pub active: bool,
    pub expires_at: Option<SystemTime>,
    pub scopes: Vec<String>,
}

/// Answer of the side-effect-free "does this client still exist" probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existence {
    Exists,
    Gone,
}

/// What every dialect offers. Operations a dialect lacks answer [`AuthServerError::Unsupported`].
pub trait AuthServer {
    /// Registers a new client. `chosen` carries the caller-chosen id and secret where the dialect lets
    /// the caller choose (S4SLegacy); other dialects ignore it.
    fn register(
        &self,
        metadata: &ClientMetadata,
        chosen: Option<&ClientCredentials>,
    ) -> impl Future<Output = Result<RegisteredClient, AuthServerError>> + Send;

    /// Reads a registration (RFC 7592 GET).
    fn read(
        &self,
        client: &ClientCredentials,
    ) -> impl Future<Output = Result<RegisteredClient, AuthServerError>> + Send;

    /// Replaces a registration's metadata (RFC 7592 PUT).
    fn update(
        &self,
        client: &ClientCredentials,
        metadata: &ClientMetadata,
    ) -> impl Future<Output = Result<RegisteredClient, AuthServerError>> + Send;

    /// Deletes a registration (RFC 7592 DELETE). A client that is already gone is success.
    fn delete(
        &self,
        client: &ClientCredentials,
    ) -> impl Future<Output = Result<(), AuthServerError>> + Send;

    /// Mints an access token for a test user.
    fn mint_debug_token(
        &self,
        client: &ClientCredentials,
        request: &DebugTokenRequest,
    ) -> impl Future<Output = Result<DebugTokenGrant, AuthServerError>> + Send;

    /// Obtains an access token for the client itself with the client_credentials grant.
    fn client_credentials_token(
        &self,
        client: &ClientCredentials,
        authentication: &ClientAuthentication,
        scopes: &[String],
    ) -> impl Future<Output = Result<AccessTokenGrant, AuthServerError>> + Send;

    /// Tells whether a token is active and when it expires.
    fn introspect(
        &self,
        access_token: &SecretString,
    ) -> impl Future<Output = Result<TokenInfo, AuthServerError>> + Send;

    /// Tells whether the client still exists, without side effects.
    fn probe(
        &self,
        client: &ClientCredentials,
    ) -> impl Future<Output = Result<Existence, AuthServerError>> + Send;
}

/// A client for any dialect: what the controller holds per auth server.
#[derive(Clone, Debug)]
pub enum AuthServerClient {
    Rfc7591(Rfc7591Client),
    S4s(S4sClient),
    S4sLegacy(S4sLegacyClient),
}

impl AuthServerClient {
    /// Builds the client for `dialect` from discovered endpoints.
    pub fn new(
        dialect: Dialect,
        http: HttpClient,
        endpoints: &ServerEndpoints,
        initial_access_token: Option<SecretString>,
    ) -> Result<Self, AuthServerError> {
        Ok(match dialect {
            Dialect::Rfc7591 => {
                Self::Rfc7591(Rfc7591Client::new(http, endpoints, initial_access_token)?)
            }
            Dialect::S4s => Self::S4s(S4sClient::new(http, endpoints)?),
            Dialect::S4sLegacy => Self::S4sLegacy(S4sLegacyClient::new(http, endpoints)?),
        })
    }

    pub fn dialect(&self) -> Dialect {
        match self {
            Self::Rfc7591(_) => Dialect::Rfc7591,
            Self::S4s(_) => Dialect::S4s,
            Self::S4sLegacy(_) => Dialect::S4sLegacy,
        }
    }
}

macro_rules! dispatch {
    ($self:ident, $client:ident => $call:expr) => {
        match $self {
            AuthServerClient::Rfc7591($client) => $call.await,
            AuthServerClient::S4s($client) => $call.await,
            AuthServerClient::S4sLegacy($client) => $call.await,
        }
    };
}

impl AuthServer for AuthServerClient {
    async fn register(
        &self,
        metadata: &ClientMetadata,
        chosen: Option<&ClientCredentials>,
    ) -> Result<RegisteredClient, AuthServerError> {
        dispatch!(self, c => c.register(metadata, chosen))
    }

    async fn read(&self, client: &ClientCredentials) -> Result<RegisteredClient, AuthServerError> {
        dispatch!(self, c => c.read(client))
    }

    async fn update(
        &self,
        client: &ClientCredentials,
        metadata: &ClientMetadata,
    ) -> Result<RegisteredClient, AuthServerError> {
        dispatch!(self, c => c.update(client, metadata))
    }

    async fn delete(&self, client: &ClientCredentials) -> Result<(), AuthServerError> {
        dispatch!(self, c => c.delete(client))
    }

    async fn mint_debug_token(
        &self,
        client: &ClientCredentials,
        request: &DebugTokenRequest,
    ) -> Result<DebugTokenGrant, AuthServerError> {
        dispatch!(self, c => c.mint_debug_token(client, request))
    }

    async fn client_credentials_token(
        &self,
        client: &ClientCredentials,
        authentication: &ClientAuthentication,
        scopes: &[String],
    ) -> Result<AccessTokenGrant, AuthServerError> {
        dispatch!(self, c => c.client_credentials_token(client, authentication, scopes))
    }

    async fn introspect(&self, access_token: &SecretString) -> Result<TokenInfo, AuthServerError> {
        dispatch!(self, c => c.introspect(access_token))
    }

    async fn probe(&self, client: &ClientCredentials) -> Result<Existence, AuthServerError> {
        dispatch!(self, c => c.probe(client))
    }
}

/// Reads a 2xx registration answer leniently (review C13). The server has created the client by
/// now, so an answer that fails a strict parse must not be retried as if nothing happened (each retry
/// would register another client): the credentials are taken from whatever shape they come in, and
/// an answer without them is [`AuthServerError::RegisteredButUnreadable`], which is not retried and
/// names the client id when there is one.
pub fn registration_from_answer(
    answer: &http::HttpAnswer,
    endpoint: &str,
    redactor: &http::Redactor,
) -> Result<RegisteredClient, AuthServerError> {
    let unreadable =
        |client_id: Option<String>, detail: &str| AuthServerError::RegisteredButUnreadable {
            endpoint: endpoint.to_owned(),
            client_id,
            detail: detail.to_owned(),
        };
    let Ok(serde_json::Value::Object(body)) = serde_json::from_slice(&answer.body) else {
        return Err(unreadable(None, "the answer is not a JSON object"));
    };
    let text = |field: &str| body.get(field).and_then(|v| v.as_str()).map(str::to_owned);
    let Some(client_id) = text("client_id").filter(|id| !id.is_empty()) else {
        return Err(unreadable(None, "the answer has no client_id string"));
    };
    // A credential in an unexpected shape cannot be used, and guessing would lose it silently.
    for credential in [
        "client_secret",
        "registration_access_token",
        "registration_client_uri",
    ] {
        if body
            .get(credential)
            .is_some_and(|v| !v.is_string() && !v.is_null())
        {
            return Err(unreadable(
                Some(redactor.redact(&client_id)),
                &format!("{credential} is not a string"),
            ));
        }
    }
    let seconds = |field: &str| {
        body.get(field).and_then(|v| match v {
            serde_json::Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        })
    };
    let issued_at = seconds("client_id_issued_at");
    // RFC 7591 §3.2.1: 0 means the secret does not expire.
    let secret_expires_at = seconds("client_secret_expires_at").filter(|at| *at > 0);
    let granted_scopes = body.get("scope").and_then(|v| match v {
        serde_json::Value::String(s) => Some(split_scopes(s)),
        serde_json::Value::Array(items) => Some(
            items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect(),
        ),
        _ => None,
    });
    Ok(RegisteredClient {
        client_id,
        client_secret: text("client_secret").map(SecretString::from),
        registration_access_token: text("registration_access_token").map(SecretString::from),
        registration_client_uri: text("registration_client_uri"),
        client_id_issued_at: issued_at,
        client_secret_expires_at: secret_expires_at,
        granted_scopes,
    })
}

/// Splits a space-separated OAuth scope string.
pub fn split_scopes(scope: &str) -> Vec<String> {
    scope.split_whitespace().map(str::to_owned).collect()
}

/// A required endpoint, or a configuration error naming it.
fn required_endpoint(endpoint: &Option<String>, name: &str) -> Result<String, AuthServerError> {
    endpoint
        .clone()
        .ok_or_else(|| AuthServerError::Configuration {
            detail: format!(
                "no {name} endpoint: discovery did not find one and spec.endpoints does not set it"
            ),
        })
}

/// The side-effect-free existence probe (api.md, "Dialects"): a refresh grant with a random refresh
/// token and the client's own credentials. What it means is read from the answer's `error` field, never
/// from the status code alone: oauthlib 2.0.1 (both Sync-for-Science auth-proxy versions) answers
/// `invalid_grant` with HTTP 401, Keycloak with 400.
async fn probe_with_refresh_grant(
    http: &HttpClient,
    token_endpoint: &str,
    client: &ClientCredentials,
) -> Result<Existence, AuthServerError> {
    use secrecy::ExposeSecret;
    let secret = client
        .client_secret
        .as_ref()
        .map(|s| s.expose_secret().to_owned());
    let made_up_refresh_token = format!("probe-{}", uuid::Uuid::new_v4());
    let redactor = http::Redactor::new()
        .with(client.client_secret.as_ref())
        .with(client.client_assertion.as_ref());
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", made_up_refresh_token.as_str()),
    ];
    let request = match &client.client_assertion {
        Some(assertion) => {
            form.push((
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ));
            form.push(("client_assertion", assertion.expose_secret()));
            http.post(token_endpoint)
        }
        None => http
            .post(token_endpoint)
            .basic_auth(&client.client_id, secret),
    };
    let answer = http
        .send(request.form(&form), token_endpoint, &redactor)
        .await?;
    if let Some(transient) = http::transient_error(&answer, token_endpoint, &redactor) {
        return Err(transient);
    }
    let body = http::OAuthErrorBody::parse(&answer.body, &redactor);
    let read = if client.client_assertion.is_some() {
        existence_from_assertion_probe_answer
    } else {
        existence_from_probe_answer
    };
    read(answer.status.as_u16(), &body.error).ok_or_else(|| AuthServerError::ExistenceUnknown {
        endpoint: token_endpoint.to_owned(),
        status: answer.status.as_u16(),
        detail: if body.error.is_empty() {
            redactor.excerpt(&answer.body)
        } else {
            body.error.clone()
        },
    })
}

/// Reads a probe's answer. `invalid_client` is the server saying it does not know the client (or not
/// with this secret, which for a secret only the operator holds is the same thing); `invalid_grant`
/// means it authenticated the client and only refused the made-up token. Anything else (a 2xx, another
/// error code, a gateway's HTML page) proves nothing either way: `None`, so the caller retries and
/// never registers again on it.
pub fn existence_from_probe_answer(status: u16, error: &str) -> Option<Existence> {
    match (status, error) {
        (400 | 401, "invalid_client") => Some(Existence::Gone),
        (400 | 401, "invalid_grant") => Some(Existence::Exists),
        _ => None,
    }
}

/// Reads the answer to a probe authenticated with a client assertion. Keycloak (and the dev server
/// with it) tells an unknown client, 401 `invalid_client`, from an assertion it does not take, 400
/// `invalid_client` (a key it does not have, a replay): only the first is "gone", or a client whose
/// key the server lost would be registered a second time.
pub fn existence_from_assertion_probe_answer(status: u16, error: &str) -> Option<Existence> {
    match (status, error) {
        (401, "invalid_client") => Some(Existence::Gone),
        (400 | 401, "invalid_grant") => Some(Existence::Exists),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assertion_probe_takes_only_an_unknown_client_for_gone() {
        // Keycloak 26 and smart-dev-server alike (tests/common/backend.rs).
        assert_eq!(
            existence_from_assertion_probe_answer(401, "invalid_client"),
            Some(Existence::Gone)
        );
        assert_eq!(
            existence_from_assertion_probe_answer(400, "invalid_grant"),
            Some(Existence::Exists)
        );
        // A key the server does not take: the client may well exist; registering again would
        // make a second one.
        assert_eq!(
            existence_from_assertion_probe_answer(400, "invalid_client"),
            None
        );
    }

    fn answer(body: &str) -> http::HttpAnswer {
        http::HttpAnswer {
            status: reqwest::StatusCode::CREATED,
            body: body.as_bytes().to_vec(),
            retry_after: None,
        }
    }

    #[test]
    fn registration_answers_in_unusual_shapes_are_read_not_retried() {
        let redactor = http::Redactor::new();
        let read =
            |body: &str| registration_from_answer(&answer(body), "https://as/register", &redactor);
        // A float issue time and a scope list: read, not a failure that would register again.
        let odd = read(r#"{"client_id": "c1", "client_secret": "s1", "client_id_issued_at": 1.7e9, "scope": ["a", "b"]}"#)
            .unwrap();
        assert_eq!(odd.client_id, "c1");
        assert_eq!(odd.client_id_issued_at, Some(1_700_000_000));
        assert_eq!(
            odd.granted_scopes,
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        let stringly = read(r#"{"client_id": "c2", "client_id_issued_at": "1700000000"}"#).unwrap();
        assert_eq!(stringly.client_id_issued_at, Some(1_700_000_000));

        for (body, id) in [
            ("<html>created</html>", None),
            (r#"{"client_secret": "s"}"#, None),
            (r#"{"client_id": "c3", "client_secret": 42}"#, Some("c3")),
        ] {
            let error = read(body).unwrap_err();
            assert!(
                matches!(&error, AuthServerError::RegisteredButUnreadable { client_id, .. } if client_id.as_deref() == id),
                "{body}: {error:?}"
            );
            assert_eq!(error.class(), ErrorClass::User, "never retried: {body}");
        }
    }

    #[test]
    fn probe_answers_are_read_by_their_error_code_not_their_status() {
        let cases = [
            // oauthlib 2.0.1 (both real S4S auth-proxy versions): a known client is 401 invalid_grant.
            (401, "invalid_grant", Some(Existence::Exists)),
            // Keycloak and oauthlib >= 3: 400 invalid_grant.
            (400, "invalid_grant", Some(Existence::Exists)),
            (401, "invalid_client", Some(Existence::Gone)),
            (400, "invalid_client", Some(Existence::Gone)),
            // Keycloak's wrong secret (an admin rotated it): the client exists, the secret does not work.
            (401, "unauthorized_client", None),
            // A gateway's own 401 page, or a server that accepted a made-up token.
            (401, "", None),
            (403, "invalid_client", None),
            (200, "", None),
        ];
        for (status, error, expected) in cases {
            assert_eq!(
                existence_from_probe_answer(status, error),
                expected,
                "HTTP {status} {error:?}"
            );
        }
    }
}
