//! The Sync-for-Science "SMART Example Server": form-encoded registration with a caller-chosen id and
//! secret, the debug-token API, and no update or delete.

use std::time::SystemTime;

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::http::{HttpClient, Redactor, decode_json};
use super::s4s::{
    fetch_introspection, parse_expiry, post_debug_token, required, s4s_failure, unix_seconds,
};
use super::{
    AccessTokenGrant, AuthServer, AuthServerError, ClientAuthentication, ClientCredentials,
    ClientMetadata, DebugTokenGrant, DebugTokenRequest, Existence, RegisteredClient,
    ServerEndpoints, TokenInfo, probe_with_refresh_grant, required_endpoint,
};

#[derive(Clone, Debug)]
pub struct S4sLegacyClient {
    http: HttpClient,
    registration_endpoint: String,
    token_endpoint: Option<String>,
    debug_token_endpoint: Option<String>,
    debug_introspect_endpoint: Option<String>,
}

impl S4sLegacyClient {
    pub fn new(http: HttpClient, endpoints: &ServerEndpoints) -> Result<Self, AuthServerError> {
        Ok(Self {
            http,
            registration_endpoint: required_endpoint(&endpoints.registration, "registration")?,
            token_endpoint: endpoints.token.clone(),
            debug_token_endpoint: endpoints.debug_token.clone(),
            debug_introspect_endpoint: endpoints.debug_introspect.clone(),
        })
    }
}

impl AuthServer for S4sLegacyClient {
    /// The caller's id and secret must already be persisted: the server answers a second registration
    /// of the same id with HTTP 500, and the probe below then tells "already ours" from a real failure.
    async fn register(
        &self,
        metadata: &ClientMetadata,
        chosen: Option<&ClientCredentials>,
    ) -> Result<RegisteredClient, AuthServerError> {
        let chosen = chosen.ok_or_else(|| AuthServerError::Configuration {
            detail: "S4SLegacy registration needs a caller-chosen client id and secret".to_owned(),
        })?;
        let secret =
            chosen
                .client_secret
                .as_ref()
                .ok_or_else(|| AuthServerError::Configuration {
                    detail: "S4SLegacy registration needs a caller-chosen client secret".to_owned(),
                })?;
        let endpoint = self.registration_endpoint.as_str();
        let redactor = Redactor::new().with(Some(secret));
        let form = [
            ("client_id", chosen.client_id.as_str()),
            ("client_secret", secret.expose_secret()),
            ("client_name", metadata.client_name.as_str()),
            ("redirect_uris", &metadata.redirect_uris.join(" ")),
            ("scopes", &metadata.scopes.join(" ")),
        ];
        let answer = self
            .http
            .send(self.http.post(endpoint).form(&form), endpoint, &redactor)
            .await?;
        let registered = || RegisteredClient {
            client_id: chosen.client_id.clone(),
            client_secret: Some(secret.clone()),
            registration_access_token: None,
            registration_client_uri: None,
            client_id_issued_at: Some(unix_seconds(SystemTime::now()) as i64),
            client_secret_expires_at: None,
            granted_scopes: None,
        };
        if answer.status.is_success() {
            let body: Value = decode_json(&answer, endpoint, &redactor)?;
            let mut client = registered();
            client.granted_scopes = body["default_scopes"].as_array().map(|scopes| {
                scopes
                    .iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            });
            return Ok(client);
        }
        if answer.status == StatusCode::INTERNAL_SERVER_ERROR && self.token_endpoint.is_some() {
            return match self.probe(chosen).await? {
                // Our id and our secret are already registered: an earlier attempt got through.
                Existence::Exists => Ok(registered()),
                // The id is taken and our secret is not its secret: the one that registered it was
                // lost (a Secret deleted while the operator was down), or the id is someone else's.
                // Asking again cannot change that, and overwriting is impossible (review C15).
                Existence::Gone => Err(AuthServerError::ClientIdTaken {
                    client_id: chosen.client_id.clone(),
                }),
            };
        }
        Err(s4s_failure(&answer, endpoint, &redactor))
    }

    async fn read(&self, _client: &ClientCredentials) -> Result<RegisteredClient, AuthServerError> {
        Err(AuthServerError::Unsupported {
            dialect: "S4SLegacy",
            operation: "read a registration",
        })
    }

    async fn update(
        &self,
        _client: &ClientCredentials,
        _metadata: &ClientMetadata,
    ) -> Result<RegisteredClient, AuthServerError> {
        Err(AuthServerError::Unsupported {
            dialect: "S4SLegacy",
            operation: "update a registration",
        })
    }

    async fn delete(&self, _client: &ClientCredentials) -> Result<(), AuthServerError> {
        Err(AuthServerError::Unsupported {
            dialect: "S4SLegacy",
            operation: "delete a registration",
        })
    }

    /// `expires` is both the token's lifetime in seconds and (read as a Unix timestamp) the approval's
    /// expiry on this server. The lifetime is what the user asked for, so it is sent as seconds, as the
    /// seed's own example does (`"expires": 360` gives a token that works for 6 minutes). The approval
    /// then lies in 1970, so the refresh token of a debug token cannot be used; a far-future timestamp
    /// instead would make the access token live for decades. The real expiry comes from introspection.
    async fn mint_debug_token(
        &self,
        client: &ClientCredentials,
        request: &DebugTokenRequest,
    ) -> Result<DebugTokenGrant, AuthServerError> {
        let endpoint = required(&self.debug_token_endpoint, "debug token")?;
        let redactor = Redactor::new().with(client.client_secret.as_ref());
        let body = json!({
            "client_id": client.client_id,
            "expires": request.lifetime.as_secs(),
            "scopes": request.scopes.join(" "),
            "user": request.user,
            "patient_id": request.patient_id,
        });
        post_debug_token(&self.http, endpoint, &redactor, &body).await
    }

    async fn client_credentials_token(
        &self,
        _client: &ClientCredentials,
        _authentication: &ClientAuthentication,
        _scopes: &[String],
    ) -> Result<AccessTokenGrant, AuthServerError> {
        Err(AuthServerError::Unsupported {
            dialect: "S4SLegacy",
            operation: "obtain client_credentials access tokens",
        })
    }

    async fn introspect(&self, access_token: &SecretString) -> Result<TokenInfo, AuthServerError> {
        let endpoint = required(&self.debug_introspect_endpoint, "debug introspection")?;
        let info = fetch_introspection(&self.http, endpoint, "access_token", access_token).await?;
        let expires_at = parse_expiry(&info["expires"]);
        Ok(TokenInfo {
            active: expires_at.is_some_and(|at| at > SystemTime::now()),
            expires_at,
            scopes: info["scopes"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    async fn probe(&self, client: &ClientCredentials) -> Result<Existence, AuthServerError> {
        let token_endpoint = required(&self.token_endpoint, "token")?;
        probe_with_refresh_grant(&self.http, token_endpoint, client).await
    }
}
