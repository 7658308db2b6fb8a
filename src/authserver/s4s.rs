//! The Sync-for-Science auth proxy as it runs today: JSON registration with server-assigned ids, the
//! debug-token API, and no update or delete.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{HttpAnswer, HttpClient, OAuthErrorBody, Redactor, decode_json, transient_error};
use super::{
    AccessTokenGrant, AuthServer, AuthServerError, ClientAuthentication, ClientCredentials,
    ClientMetadata, DebugTokenGrant, DebugTokenRequest, Existence, RegisteredClient,
    ServerEndpoints, TokenInfo, probe_with_refresh_grant, registration_from_answer,
    required_endpoint, split_scopes,
};

#[derive(Clone, Debug)]
pub struct S4sClient {
    http: HttpClient,
    registration_endpoint: String,
    token_endpoint: Option<String>,
    debug_token_endpoint: Option<String>,
    debug_introspect_endpoint: Option<String>,
}

/// Debug-token and introspection answers share these fields across both S4S flavours.
#[derive(Deserialize)]
pub(super) struct TokenAnswer {
    pub access_token: String,
    pub refresh_token: Option<String>,
}

impl S4sClient {
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

/// 400 answers are the caller's fault; the rest is the server's.
pub(super) fn s4s_failure(
    answer: &HttpAnswer,
    endpoint: &str,
    redactor: &Redactor,
) -> AuthServerError {
    if let Some(transient) = transient_error(answer, endpoint, redactor) {
        return transient;
    }
    let parsed = OAuthErrorBody::parse(&answer.body, redactor);
    match answer.status {
        StatusCode::BAD_REQUEST => AuthServerError::InvalidMetadata {
            status: 400,
            error: parsed.error,
            description: parsed.error_description,
        },
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => AuthServerError::PolicyRejected {
            status: answer.status.as_u16(),
            error: parsed.error,
            description: parsed.error_description,
        },
        other => AuthServerError::Protocol {
            endpoint: endpoint.to_owned(),
            detail: format!(
                "unexpected HTTP {}: {}",
                other.as_u16(),
                redactor.excerpt(&answer.body)
            ),
        },
    }
}

/// Posts a debug-token request (both S4S flavours answer `{access_token, refresh_token}`).
pub(super) async fn post_debug_token(
    http: &HttpClient,
    endpoint: &str,
    redactor: &Redactor,
    body: &Value,
) -> Result<DebugTokenGrant, AuthServerError> {
    let answer = http
        .send(http.post(endpoint).json(body), endpoint, redactor)
        .await?;
    if !answer.status.is_success() {
        return Err(s4s_failure(&answer, endpoint, redactor));
    }
    let token: TokenAnswer = decode_json(&answer, endpoint, redactor)?;
    Ok(DebugTokenGrant {
        access_token: token.access_token.into(),
        refresh_token: token.refresh_token.map(SecretString::from),
    })
}

/// Fetches a debug introspection document; the flavours differ in the query parameter's name.
pub(super) async fn fetch_introspection(
    http: &HttpClient,
    endpoint: &str,
    parameter: &str,
    access_token: &SecretString,
) -> Result<Value, AuthServerError> {
    let redactor = Redactor::new().with(Some(access_token));
    let request = http
        .get(endpoint)
        .query(&[(parameter, access_token.expose_secret())]);
    let answer = http.send(request, endpoint, &redactor).await?;
    if !answer.status.is_success() {
        return Err(s4s_failure(&answer, endpoint, &redactor));
    }
    decode_json(&answer, endpoint, &redactor)
}

/// Reads an expiry that is a Unix timestamp (number) or an RFC 1123 HTTP-date (string).
pub fn parse_expiry(value: &Value) -> Option<SystemTime> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .map(|secs| UNIX_EPOCH + Duration::from_secs(secs)),
        Value::String(s) => httpdate::parse_http_date(s).ok(),
        _ => None,
    }
}

pub(super) fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(super) fn required<'a>(
    endpoint: &'a Option<String>,
    name: &str,
) -> Result<&'a str, AuthServerError> {
    endpoint
        .as_deref()
        .ok_or_else(|| AuthServerError::Configuration {
            detail: format!(
                "no {name} endpoint: discovery did not find one and spec.endpoints does not set it"
            ),
        })
}

impl AuthServer for S4sClient {
    async fn register(
        &self,
        metadata: &ClientMetadata,
        _chosen: Option<&ClientCredentials>,
    ) -> Result<RegisteredClient, AuthServerError> {
        let endpoint = self.registration_endpoint.as_str();
        let redactor = Redactor::new();
        let body = json!({
            "client_name": metadata.client_name,
            "redirect_uris": metadata.redirect_uris,
            "scope": metadata.scopes.join(" "),
        });
        let answer = self
            .http
            .send(self.http.post(endpoint).json(&body), endpoint, &redactor)
            .await?;
        if answer.status.is_success() {
            let registered = registration_from_answer(&answer, endpoint, &redactor)?;
            return Ok(RegisteredClient {
                registration_access_token: None,
                registration_client_uri: None,
                client_id_issued_at: Some(unix_seconds(SystemTime::now()) as i64),
                client_secret_expires_at: None,
                ..registered
            });
        }
        Err(s4s_failure(&answer, endpoint, &redactor))
    }

    async fn read(&self, _client: &ClientCredentials) -> Result<RegisteredClient, AuthServerError> {
        Err(AuthServerError::Unsupported {
            dialect: "S4S",
            operation: "read a registration",
        })
    }

    async fn update(
        &self,
        _client: &ClientCredentials,
        _metadata: &ClientMetadata,
    ) -> Result<RegisteredClient, AuthServerError> {
        Err(AuthServerError::Unsupported {
            dialect: "S4S",
            operation: "update a registration",
        })
    }

    async fn delete(&self, _client: &ClientCredentials) -> Result<(), AuthServerError> {
        Err(AuthServerError::Unsupported {
            dialect: "S4S",
            operation: "delete a registration",
        })
    }

    async fn mint_debug_token(
        &self,
        client: &ClientCredentials,
        request: &DebugTokenRequest,
    ) -> Result<DebugTokenGrant, AuthServerError> {
        let endpoint = required(&self.debug_token_endpoint, "debug token")?;
        let redactor = Redactor::new().with(client.client_secret.as_ref());
        // approval_expires is left to the server (a year): it bounds the refresh token, which apps may
        // use long after the access token's short lifetime.
        let body = json!({
            "client_id": client.client_id,
            "username": request.user,
            "patient_id": request.patient_id,
            "scope": request.scopes.join(" "),
            "access_lifetime": request.lifetime.as_secs(),
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
            dialect: "S4S",
            operation: "obtain client_credentials access tokens",
        })
    }

    async fn introspect(&self, access_token: &SecretString) -> Result<TokenInfo, AuthServerError> {
        let endpoint = required(&self.debug_introspect_endpoint, "debug introspection")?;
        let info = fetch_introspection(&self.http, endpoint, "token", access_token).await?;
        let expires_at = ["access_expires", "exp", "expires"]
            .iter()
            .find_map(|f| parse_expiry(&info[*f]));
        Ok(TokenInfo {
            active: info["active"].as_bool().unwrap_or(false),
            expires_at,
            scopes: info["scope"].as_str().map(split_scopes).unwrap_or_default(),
        })
    }

    async fn probe(&self, client: &ClientCredentials) -> Result<Existence, AuthServerError> {
        let token_endpoint = required(&self.token_endpoint, "token")?;
        probe_with_refresh_grant(&self.http, token_endpoint, client).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_accepts_unix_timestamps_and_rfc1123_dates() {
        assert_eq!(
            parse_expiry(&json!(360)),
            Some(UNIX_EPOCH + Duration::from_secs(360))
        );
        assert_eq!(
            parse_expiry(&json!("Thu, 01 Jan 1970 00:06:00 GMT")),
            Some(UNIX_EPOCH + Duration::from_secs(360))
        );
        assert_eq!(parse_expiry(&json!("tomorrow")), None);
        assert_eq!(parse_expiry(&Value::Null), None);
    }
}
