//! RFC 7591 dynamic client registration with RFC 7592 management (Kodjin, Keycloak, any DCR server).

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};

use super::http::{HttpAnswer, HttpClient, OAuthErrorBody, Redactor, transient_error};
use super::{
    AccessTokenGrant, AuthServer, AuthServerError, ClientAuthentication, ClientCredentials,
    ClientMetadata, DebugTokenGrant, DebugTokenRequest, Existence, RegisteredClient,
    ServerEndpoints, TokenInfo, probe_with_refresh_grant, registration_from_answer,
    required_endpoint,
};

#[derive(Clone, Debug)]
pub struct Rfc7591Client {
    http: HttpClient,
    registration_endpoint: String,
    token_endpoint: Option<String>,
    initial_access_token: Option<SecretString>,
}

impl Rfc7591Client {
    pub fn new(
        http: HttpClient,
        endpoints: &ServerEndpoints,
        initial_access_token: Option<SecretString>,
    ) -> Result<Self, AuthServerError> {
        Ok(Self {
            http,
            registration_endpoint: required_endpoint(&endpoints.registration, "registration")?,
            token_endpoint: endpoints.token.clone(),
            initial_access_token,
        })
    }

    fn management_uri<'a>(
        &self,
        client: &'a ClientCredentials,
    ) -> Result<&'a str, AuthServerError> {
        client
            .registration_client_uri
            .as_deref()
            .ok_or_else(|| AuthServerError::Configuration {
                detail: "the client has no registration_client_uri; the server did not offer RFC 7592 management"
                    .to_owned(),
            })
    }

    fn registration_access_token<'a>(
        &self,
        client: &'a ClientCredentials,
    ) -> Result<&'a SecretString, AuthServerError> {
        client
            .registration_access_token
            .as_ref()
            .ok_or(AuthServerError::RegistrationAccessTokenRejected { status: 401 })
    }

    /// Maps a failed management call (RFC 7592): 401 is ambiguous (stale token or deleted client), 404
    /// means gone.
    fn management_failure(
        answer: &HttpAnswer,
        endpoint: &str,
        redactor: &Redactor,
    ) -> AuthServerError {
        if let Some(transient) = transient_error(answer, endpoint, redactor) {
            return transient;
        }
        let body = OAuthErrorBody::parse(&answer.body, redactor);
        match answer.status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
                if body.error == "insufficient_scope" =>
            {
                AuthServerError::PolicyRejected {
                    status: answer.status.as_u16(),
                    error: body.error,
                    description: body.error_description,
                }
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                AuthServerError::RegistrationAccessTokenRejected {
                    status: answer.status.as_u16(),
                }
            }
            StatusCode::NOT_FOUND => AuthServerError::ClientGone,
            StatusCode::BAD_REQUEST => AuthServerError::InvalidMetadata {
                status: 400,
                error: body.error,
                description: body.error_description,
            },
            other => unexpected(other, endpoint, redactor, &answer.body),
        }
    }
}

fn unexpected(
    status: StatusCode,
    endpoint: &str,
    redactor: &Redactor,
    body: &[u8],
) -> AuthServerError {
    AuthServerError::Protocol {
        endpoint: endpoint.to_owned(),
        detail: format!(
            "unexpected HTTP {}: {}",
            status.as_u16(),
            redactor.excerpt(body)
        ),
    }
}

/// The JSON body of a registration or update. Typed fields win over `extra`.
pub fn metadata_body(metadata: &ClientMetadata, client_id: Option<&str>) -> Value {
    let mut body: Map<String, Value> = metadata.extra.clone().into_iter().collect();
    body.insert("client_name".into(), json!(metadata.client_name));
    body.insert("redirect_uris".into(), json!(metadata.redirect_uris));
    body.insert("scope".into(), json!(metadata.scopes.join(" ")));
    body.insert("grant_types".into(), json!(metadata.grant_types));
    body.insert("response_types".into(), json!(metadata.response_types));
    body.insert(
        "token_endpoint_auth_method".into(),
        json!(metadata.token_endpoint_auth_method),
    );
    if let Some(logo) = &metadata.logo_uri {
        body.insert("logo_uri".into(), json!(logo));
    }
    if !metadata.contacts.is_empty() {
        body.insert("contacts".into(), json!(metadata.contacts));
    }
    if let Some(jwks) = &metadata.jwks {
        body.insert("jwks".into(), jwks.clone());
    }

    if let Some(id) = client_id {
        body.insert("client_id".into(), json!(id));
    }
    Value::Object(body)
}

impl AuthServer for Rfc7591Client {
    async fn register(
        &self,
        metadata: &ClientMetadata,
        _chosen: Option<&ClientCredentials>,
    ) -> Result<RegisteredClient, AuthServerError> {
        let endpoint = self.registration_endpoint.as_str();
        let redactor = Redactor::new().with(self.initial_access_token.as_ref());
        let mut request = self
            .http
            .post(endpoint)
            .json(&metadata_body(metadata, None));
        if let Some(token) = &self.initial_access_token {
            request = request.bearer_auth(token.expose_secret());
        }
        let answer = self.http.send(request, endpoint, &redactor).await?;
        if answer.status.is_success() {
            return registration_from_answer(&answer, endpoint, &redactor);
        }
        if let Some(transient) = transient_error(&answer, endpoint, &redactor) {
            return Err(transient);
        }
        let body = OAuthErrorBody::parse(&answer.body, &redactor);
        Err(match answer.status {
            StatusCode::UNAUTHORIZED => AuthServerError::InitialAccessTokenRejected { status: 401 },
            StatusCode::FORBIDDEN => AuthServerError::PolicyRejected {
                status: 403,
                error: body.error,
                description: body.error_description,
            },
            StatusCode::BAD_REQUEST => AuthServerError::InvalidMetadata {
                status: 400,
                error: body.error,
                description: body.error_description,
            },
            other => unexpected(other, endpoint, &redactor, &answer.body),
        })
    }

    async fn read(&self, client: &ClientCredentials) -> Result<RegisteredClient, AuthServerError> {
        let endpoint = self.management_uri(client)?;
        let token = self.registration_access_token(client)?;
        let redactor = Redactor::new()
            .with(Some(token))
            .with(client.client_secret.as_ref());
        let request = self.http.get(endpoint).bearer_auth(token.expose_secret());
        let answer = self.http.send(request, endpoint, &redactor).await?;
        // Any 2xx: another one's body holds the new token and secret, which must not reach an error
        // message (review S5).
        if answer.status.is_success() {
            return registration_from_answer(&answer, endpoint, &redactor);
        }
        Err(Self::management_failure(&answer, endpoint, &redactor))
    }

    async fn update(
        &self,
        client: &ClientCredentials,
        metadata: &ClientMetadata,
    ) -> Result<RegisteredClient, AuthServerError> {
        let endpoint = self.management_uri(client)?;
        let token = self.registration_access_token(client)?;
        let redactor = Redactor::new()
            .with(Some(token))
            .with(client.client_secret.as_ref());
        // RFC 7592 PUT is a full replacement and must carry the client id.
        let request = self
            .http
            .put(endpoint)
            .bearer_auth(token.expose_secret())
            .json(&metadata_body(metadata, Some(&client.client_id)));
        let answer = self.http.send(request, endpoint, &redactor).await?;
        // Any 2xx: another one's body holds the new token and secret, which must not reach an error
        // message (review S5).
        if answer.status.is_success() {
            return registration_from_answer(&answer, endpoint, &redactor);
        }
        Err(Self::management_failure(&answer, endpoint, &redactor))
    }

    async fn delete(&self, client: &ClientCredentials) -> Result<(), AuthServerError> {
        let endpoint = self.management_uri(client)?;
        let token = self.registration_access_token(client)?;
        let redactor = Redactor::new().with(Some(token));
        let request = self
            .http
            .delete(endpoint)
            .bearer_auth(token.expose_secret());
        let answer = self.http.send(request, endpoint, &redactor).await?;
        match answer.status {
            StatusCode::NO_CONTENT | StatusCode::OK | StatusCode::NOT_FOUND => Ok(()),
            _ => match Self::management_failure(&answer, endpoint, &redactor) {
                // Keycloak answers a deleted client's management URI with the same 401 as a stale
                // token; the side-effect-free probe tells "already gone" (success) from a stale token.
                AuthServerError::RegistrationAccessTokenRejected { status } => {
                    match self.probe(client).await? {
                        Existence::Gone => Ok(()),
                        Existence::Exists => {
                            Err(AuthServerError::RegistrationAccessTokenRejected { status })
                        }
                    }
                }
                other => Err(other),
            },
        }
    }

    async fn mint_debug_token(
        &self,
        _client: &ClientCredentials,
        _request: &DebugTokenRequest,
    ) -> Result<DebugTokenGrant, AuthServerError> {
        Err(AuthServerError::Unsupported {
            dialect: "RFC7591",
            operation: "mint debug tokens",
        })
    }

    async fn client_credentials_token(
        &self,
        client: &ClientCredentials,
        authentication: &ClientAuthentication,
        scopes: &[String],
    ) -> Result<AccessTokenGrant, AuthServerError> {
        let endpoint = self
            .token_endpoint
            .as_deref()
            .ok_or(AuthServerError::Unsupported {
                dialect: "RFC7591",
                operation: "obtain access tokens without a token endpoint (set spec.endpoints.token)",
            })?;
        let assertion = match authentication {
            ClientAuthentication::Assertion(assertion) => Some(assertion),
            _ => None,
        };
        let redactor = Redactor::new()
            .with(client.client_secret.as_ref())
            .with(assertion);
        let scope = scopes.join(" ");
        let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
        if !scope.is_empty() {
            form.push(("scope", &scope));
        }
        let secret = client.client_secret.as_ref().map(|s| s.expose_secret());
        let mut request = self.http.post(endpoint);
        match authentication {
            ClientAuthentication::Basic => {
                request = request.basic_auth(&client.client_id, secret);
            }
            ClientAuthentication::Post => {
                form.push(("client_id", &client.client_id));
                form.push(("client_secret", secret.unwrap_or_default()));
            }
            ClientAuthentication::Assertion(assertion) => {
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ));
                form.push(("client_assertion", assertion.expose_secret()));
            }
        }
        let answer = self
            .http
            .send(request.form(&form), endpoint, &redactor)
            .await?;
        if answer.status.is_success() {
            #[derive(serde::Deserialize)]
            struct TokenAnswer {
                access_token: String,
                expires_in: Option<u64>,
                scope: Option<String>,
            }
            // The body holds the token: a parse failure says what is wrong, never what it says.
            let parsed: TokenAnswer =
                serde_json::from_slice(&answer.body).map_err(|e| AuthServerError::Protocol {
                    endpoint: endpoint.to_owned(),
                    detail: format!(
                        "the token answer is not a token response ({:?} error)",
                        e.classify()
                    ),
                })?;
            return Ok(AccessTokenGrant {
                access_token: SecretString::from(parsed.access_token),
                expires_in: parsed.expires_in.map(std::time::Duration::from_secs),
                scope: parsed.scope,
            });
        }
        if let Some(transient) = transient_error(&answer, endpoint, &redactor) {
            return Err(transient);
        }
        let body = OAuthErrorBody::parse(&answer.body, &redactor);
        Err(AuthServerError::ClientAuthenticationRejected {
            status: answer.status.as_u16(),
            error: body.error,
            description: body.error_description,
        })
    }

    async fn introspect(&self, _access_token: &SecretString) -> Result<TokenInfo, AuthServerError> {
        Err(AuthServerError::Unsupported {
            dialect: "RFC7591",
            operation: "introspect debug tokens",
        })
    }

    async fn probe(&self, client: &ClientCredentials) -> Result<Existence, AuthServerError> {
        match (
            &self.token_endpoint,
            &client.client_secret,
            &client.client_assertion,
        ) {
            (Some(token_endpoint), Some(_), _) | (Some(token_endpoint), _, Some(_)) => {
                probe_with_refresh_grant(&self.http, token_endpoint, client).await
            }
            // A public client cannot authenticate at the token endpoint; ask the management API instead.
            // Its 401 is ambiguous (stale token or deleted client): assume the client exists rather than
            // register a duplicate.
            _ => match self.read(client).await {
                Ok(_) | Err(AuthServerError::RegistrationAccessTokenRejected { .. }) => {
                    Ok(Existence::Exists)
                }
                Err(AuthServerError::ClientGone) => Ok(Existence::Gone),
                Err(e) => Err(e),
            },
        }
    }
}
