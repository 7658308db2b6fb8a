//! RFC 7591 dynamic client registration and RFC 7592 management, answering the way Keycloak's
//! `clients-registrations/openid-connect` provider does (Kodjin runs Keycloak behind a gateway):
//!
//! - `POST /oauth2/register` with `Authorization: Bearer <initial access token>` → 201 + `Location`,
//!   the metadata plus `client_id`, `client_secret`, `client_id_issued_at`,
//!   `client_secret_expires_at: 0`, `registration_access_token`, `registration_client_uri`.
//! - A `client_id` in the body → 400 `invalid_client_metadata` "Client Identifier included" (checked
//!   before authentication, as Keycloak does). Missing, unknown, used-up or expired initial access
//!   token → 401 `invalid_token`. A scope outside the policy → 403 `insufficient_scope` (or silently
//!   narrowed). A bad redirect URI → 400 `invalid_redirect_uri`.
//! - `GET|PUT|DELETE /oauth2/register/{client_id}` with `Authorization: Bearer <RAT>`: GET → 200 (same
//!   RAT); PUT is full replacement, must carry the same `client_id` (else 400 "Client Identifier
//!   modified"), rotates the RAT (the old one is 401 from then on) → 200; DELETE → 204. An unknown
//!   client and a wrong RAT are the same 401, as in Keycloak.
//! - `POST /oauth2/token`: Keycloak's token endpoint for the client-authenticating grants. Unknown
//!   client → 401 `invalid_client`; wrong secret → 401 `unauthorized_client`; an existing client with a
//!   bogus refresh token → 400 `invalid_grant`; `client_credentials` for clients registered with that
//!   grant type.
//!
//! Errors are `{"error", "error_description"}` with Keycloak's descriptions.

use std::borrow::Cow;
use std::collections::BTreeSet;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use super::assertion::{self, JWT_BEARER};
use super::faults::observed;
use super::state::{AppState, Client, DisallowedScope, ScopePolicy, Store};
use super::stats::Endpoint;
use super::wire::{self, Fields, Refusal};

/// Keycloak's default access token lifespan.
const ACCESS_TOKEN_LIFETIME: i64 = 300;

/// Advertised when the scope policy allows everything.
const DEFAULT_SCOPES_SUPPORTED: &[&str] = &[
    "openid",
    "fhirUser",
    "profile",
    "launch",
    "launch/patient",
    "offline_access",
    "online_access",
    "patient/*.read",
    "patient/*.rs",
    "user/*.read",
    "user/*.rs",
    "system/*.read",
    "system/*.rs",
];

/// Fields the server issues; a client cannot set them by registering or updating.
const SERVER_MANAGED: &[&str] = &[
    "client_id",
    "client_secret",
    "client_id_issued_at",
    "client_secret_expires_at",
    "registration_access_token",
    "registration_client_uri",
];

const STRING_FIELDS: &[&str] = &[
    "client_name",
    "scope",
    "token_endpoint_auth_method",
    "logo_uri",
    "client_uri",
    "policy_uri",
    "tos_uri",
    "jwks_uri",
    "software_id",
    "software_version",
];

const STRING_LIST_FIELDS: &[&str] = &["redirect_uris", "grant_types", "response_types", "contacts"];

const AUTH_METHODS: &[&str] = &[
    "none",
    "client_secret_basic",
    "client_secret_post",
    "client_secret_jwt",
    "private_key_jwt",
];

/// Client authentication the token endpoint takes (Keycloak also offers `tls_client_auth` and
/// `client_secret_jwt`, which this server does not implement).
const TOKEN_ENDPOINT_AUTH_METHODS: &[&str] = &[
    "client_secret_basic",
    "client_secret_post",
    "private_key_jwt",
];

/// Algorithms of client assertions it verifies: the two SMART names.
const SIGNING_ALGS: &[&str] = &["ES384", "RS384"];

pub(super) fn routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/fhir/.well-known/smart-configuration",
            get(observed(smart_configuration, Endpoint::Discovery, state)),
        )
        .route(
            "/.well-known/openid-configuration",
            get(observed(openid_configuration, Endpoint::Discovery, state)),
        )
        .route(
            "/oauth2/jwks",
            get(observed(jwks, Endpoint::Discovery, state)),
        )
        .route(
            "/oauth2/register",
            post(observed(register, Endpoint::Register, state)),
        )
        .route(
            "/oauth2/register/{client_id}",
            get(observed(read, Endpoint::Read, state))
                .put(observed(update, Endpoint::Update, state))
                .delete(observed(delete, Endpoint::Delete, state)),
        )
        .route(
            "/oauth2/token",
            post(observed(token, Endpoint::Token, state)),
        )
}

fn invalid_token(description: &'static str) -> Refusal {
    Refusal::oauth(StatusCode::UNAUTHORIZED, "invalid_token", description)
}

fn invalid_metadata(description: impl Into<Cow<'static, str>>) -> Refusal {
    Refusal::oauth(
        StatusCode::BAD_REQUEST,
        "invalid_client_metadata",
        description,
    )
}

fn scopes_supported(policy: &ScopePolicy) -> Vec<String> {
    match &policy.allowed_scopes {
        Some(allowed) => allowed.iter().cloned().collect(),
        None => DEFAULT_SCOPES_SUPPORTED
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
    }
}

/// The discovery lists as the policy has them: its `advertise` lists, else the defaults.
fn advertised(body: &mut Value, policy: &ScopePolicy) {
    let a = &policy.advertise;
    for (field, list) in [
        (
            "token_endpoint_auth_methods_supported",
            &a.token_endpoint_auth_methods_supported,
        ),
        (
            "token_endpoint_auth_signing_alg_values_supported",
            &a.token_endpoint_auth_signing_alg_values_supported,
        ),
        ("grant_types_supported", &a.grant_types_supported),
        ("capabilities", &a.capabilities),
    ] {
        if let Some(list) = list
            && body.get(field).is_some()
        {
            body[field] = json!(list);
        }
    }
}

async fn smart_configuration(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let origin = wire::origin(&headers, &state.fallback_origin);
    let policy = state.store().scope_policy.clone();
    let scopes = scopes_supported(&policy);
    let mut body = json!({
        "issuer": origin,
        "jwks_uri": format!("{origin}/oauth2/jwks"),
        "authorization_endpoint": format!("{origin}/oauth2/authorize"),
        "token_endpoint": format!("{origin}/oauth2/token"),
        "registration_endpoint": format!("{origin}/oauth2/register"),
        "scopes_supported": scopes,
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported": TOKEN_ENDPOINT_AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": SIGNING_ALGS,
        "code_challenge_methods_supported": ["S256"],
        "capabilities": [
            "launch-ehr",
            "launch-standalone",
            "client-public",
            "client-confidential-symmetric",
            "client-confidential-asymmetric",
            "context-ehr-patient",
            "context-standalone-patient",
            "permission-offline",
            "permission-patient",
            "permission-user",
            "permission-v1",
            "permission-v2",
            "sso-openid-connect",
        ],
    });
    advertised(&mut body, &policy);
    wire::json_response(StatusCode::OK, &body)
}

async fn openid_configuration(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let origin = wire::origin(&headers, &state.fallback_origin);
    let policy = state.store().scope_policy.clone();
    let scopes = scopes_supported(&policy);
    let mut body = json!({
        "issuer": origin,
        "authorization_endpoint": format!("{origin}/oauth2/authorize"),
        "token_endpoint": format!("{origin}/oauth2/token"),
        "registration_endpoint": format!("{origin}/oauth2/register"),
        "jwks_uri": format!("{origin}/oauth2/jwks"),
        "scopes_supported": scopes,
        "response_types_supported": ["code", "none"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": TOKEN_ENDPOINT_AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": SIGNING_ALGS,
    });
    advertised(&mut body, &policy);
    wire::json_response(StatusCode::OK, &body)
}

async fn jwks() -> Response {
    wire::json_response(StatusCode::OK, &json!({"keys": []}))
}

/// The registration as RFC 7591/7592 responses (and `/_admin/clients`) show it.
pub(super) fn representation(client: &Client, origin: &str) -> Value {
    let mut body = client.metadata.clone();
    body.insert("client_id".to_owned(), json!(client.client_id));
    if let Some(secret) = &client.client_secret {
        body.insert("client_secret".to_owned(), json!(secret));
        body.insert(
            "client_secret_expires_at".to_owned(),
            json!(client.secret_expires_at),
        );
    }
    body.insert("client_id_issued_at".to_owned(), json!(client.issued_at));
    body.insert(
        "registration_access_token".to_owned(),
        json!(client.registration_access_token),
    );
    body.insert(
        "registration_client_uri".to_owned(),
        json!(registration_client_uri(origin, &client.client_id)),
    );
    Value::Object(body)
}

fn registration_client_uri(origin: &str, client_id: &str) -> String {
    format!("{origin}/oauth2/register/{client_id}")
}

fn new_registration_access_token() -> String {
    wire::random_alphanumeric(48)
}

/// The JSON object body of a registration request.
fn parse_metadata(headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, Refusal> {
    if !wire::is_json(headers) {
        return Err(Refusal::oauth(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request",
            "Content-Type must be application/json",
        ));
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(metadata)) => Ok(metadata),
        _ => Err(invalid_metadata("Client metadata invalid")),
    }
}

/// Type checks on the metadata fields RFC 7591 defines, and the redirect URIs.
fn validate(metadata: &Map<String, Value>) -> Result<(), Refusal> {
    for field in STRING_FIELDS {
        if metadata
            .get(*field)
            .is_some_and(|v| !v.is_null() && !v.is_string())
        {
            return Err(invalid_metadata(format!(
                "Client metadata invalid: {field} must be a string"
            )));
        }
    }
    for field in STRING_LIST_FIELDS {
        let valid = match metadata.get(*field) {
            None | Some(Value::Null) => true,
            Some(Value::Array(items)) => items.iter().all(Value::is_string),
            Some(_) => false,
        };
        if !valid {
            return Err(invalid_metadata(format!(
                "Client metadata invalid: {field} must be an array of strings"
            )));
        }
    }
    if let Some(method) = metadata
        .get("token_endpoint_auth_method")
        .and_then(Value::as_str)
        && !AUTH_METHODS.contains(&method)
    {
        return Err(invalid_metadata(format!(
            "Client metadata invalid: unsupported token_endpoint_auth_method {method}"
        )));
    }
    let redirect_uris = metadata
        .get("redirect_uris")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str);
    for uri in redirect_uris {
        match url::Url::parse(uri) {
            Err(_) => {
                return Err(Refusal::oauth(
                    StatusCode::BAD_REQUEST,
                    "invalid_redirect_uri",
                    "A redirect URI is not a valid URI",
                ));
            }
            Ok(url) if url.fragment().is_some() => {
                return Err(Refusal::oauth(
                    StatusCode::BAD_REQUEST,
                    "invalid_redirect_uri",
                    "Redirect URIs must not contain an URI fragment",
                ));
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// The scopes granted for the requested `scope`, or the policy's 403.
fn grant_scopes(
    policy: &ScopePolicy,
    metadata: &Map<String, Value>,
) -> Result<Option<Vec<String>>, Refusal> {
    let Some(requested) = metadata.get("scope").and_then(Value::as_str) else {
        return Ok(None);
    };
    let requested: Vec<String> = requested.split_whitespace().map(str::to_owned).collect();
    let Some(allowed) = &policy.allowed_scopes else {
        return Ok(Some(requested));
    };
    let (granted, refused): (Vec<String>, Vec<String>) = requested
        .into_iter()
        .partition(|scope| allowed.contains(scope));
    if refused.is_empty() || policy.on_disallowed == DisallowedScope::Narrow {
        Ok(Some(granted))
    } else {
        Err(Refusal::oauth(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "Policy 'Allowed Client Scopes' rejected request to client-registration service. Details: \
             Not permitted to use specified clientScope",
        ))
    }
}

/// The metadata to store: the request without server-managed fields, Keycloak's defaults filled in,
/// `scope` replaced by what was granted.
fn stored_metadata(
    mut metadata: Map<String, Value>,
    granted: Option<&[String]>,
) -> Map<String, Value> {
    for field in SERVER_MANAGED {
        metadata.remove(*field);
    }
    metadata.retain(|_, value| !value.is_null());
    let defaults = [
        ("redirect_uris", json!([])),
        (
            "grant_types",
            json!(["authorization_code", "refresh_token"]),
        ),
        ("response_types", json!(["code", "none"])),
        ("token_endpoint_auth_method", json!("client_secret_basic")),
    ];
    for (field, default) in defaults {
        metadata.entry(field).or_insert(default);
    }
    if let Some(granted) = granted {
        metadata.insert("scope".to_owned(), json!(granted.join(" ")));
    }
    metadata
}

fn auth_method(metadata: &Map<String, Value>) -> Option<&str> {
    metadata
        .get("token_endpoint_auth_method")
        .and_then(Value::as_str)
}

fn is_public(metadata: &Map<String, Value>) -> bool {
    auth_method(metadata) == Some("none")
}

/// Whether the client authenticates with a secret the server issues: not public clients, and not
/// `private_key_jwt` ones (Keycloak returns no `client_secret` for them).
fn issues_secret(metadata: &Map<String, Value>) -> bool {
    !matches!(auth_method(metadata), Some("none" | "private_key_jwt"))
}

fn check_initial_access_token(
    store: &Store,
    presented: Option<&str>,
    now: i64,
) -> Result<(), Refusal> {
    let Some(presented) = presented else {
        return Err(invalid_token("Missing initial access token"));
    };
    let Some(token) = store.initial_access_tokens.get(presented) else {
        return Err(invalid_token("Initial Access Token not found"));
    };
    if token.remaining == Some(0) {
        return Err(invalid_token("No remaining count on initial access token"));
    }
    if token.expires_at.is_some_and(|expires_at| expires_at <= now) {
        return Err(invalid_token("Expired initial access token"));
    }
    Ok(())
}

async fn register(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let metadata = parse_metadata(&headers, &body)?;
    if metadata.get("client_id").is_some_and(|id| !id.is_null()) {
        return Err(invalid_metadata("Client Identifier included"));
    }
    let origin = wire::origin(&headers, &state.fallback_origin);
    let presented = wire::bearer_token(&headers);
    let now = wire::unix_now();

    let mut store = state.store();
    check_initial_access_token(&store, presented, now)?;
    let granted = grant_scopes(&store.scope_policy, &metadata)?;
    validate(&metadata)?;
    if let Some(remaining) = presented
        .and_then(|t| store.initial_access_tokens.get_mut(t))
        .and_then(|t| t.remaining.as_mut())
    {
        *remaining = remaining.saturating_sub(1);
    }

    let metadata = stored_metadata(metadata, granted.as_deref());
    let client_id = wire::uuid();
    let client = Client {
        seq: store.next_seq(),
        client_id: client_id.clone(),
        client_secret: issues_secret(&metadata).then(|| wire::random_alphanumeric(32)),
        issued_at: now,
        secret_expires_at: store
            .scope_policy
            .client_secret_lifetime_secs
            .map_or(0, |lifetime| now + lifetime),
        scopes: granted.unwrap_or_default(),
        registration_access_token: Some(new_registration_access_token()),
        metadata,
    };
    let mut body = representation(&client, &origin);
    let managed = !store.scope_policy.without_management_api;
    if !managed && let Value::Object(fields) = &mut body {
        fields.remove("registration_access_token");
        fields.remove("registration_client_uri");
    }
    store.clients.insert(client_id.clone(), client);
    drop(store);

    let mut response = wire::json_response(StatusCode::CREATED, &body);
    if managed
        && let Ok(location) = HeaderValue::from_str(&registration_client_uri(&origin, &client_id))
    {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// The client at `client_id` if `presented` is its current registration access token.
fn authorized<'a>(
    store: &'a mut Store,
    client_id: &str,
    presented: Option<&str>,
) -> Option<&'a mut Client> {
    let presented = presented?;
    store
        .clients
        .get_mut(client_id)
        .filter(|client| client.registration_access_token.as_deref() == Some(presented))
}

async fn read(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(client_id): Path<String>,
) -> Result<Response, Refusal> {
    let origin = wire::origin(&headers, &state.fallback_origin);
    let mut store = state.store();
    let rotate = store.scope_policy.rotate_token_on_read;
    match authorized(&mut store, &client_id, wire::bearer_token(&headers)) {
        Some(client) => {
            // As older Keycloak releases did: a GET re-signs the token; the old one is dead from now on.
            if rotate {
                client.registration_access_token = Some(new_registration_access_token());
            }
            Ok(wire::json_response(
                StatusCode::OK,
                &representation(client, &origin),
            ))
        }
        None => Err(invalid_token(
            "Not authorized to view client. Not valid token or client credentials provided.",
        )),
    }
}

const NOT_AUTHORIZED_TO_UPDATE: &str =
    "Not authorized to update client. Maybe missing token or bad token type.";

async fn update(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(client_id): Path<String>,
    body: Bytes,
) -> Result<Response, Refusal> {
    let metadata = parse_metadata(&headers, &body)?;
    let origin = wire::origin(&headers, &state.fallback_origin);
    let mut store = state.store();
    let policy = store.scope_policy.clone();
    let Some(client) = authorized(&mut store, &client_id, wire::bearer_token(&headers)) else {
        return Err(invalid_token(NOT_AUTHORIZED_TO_UPDATE));
    };
    let granted = grant_scopes(&policy, &metadata)?;
    if metadata.get("client_id").and_then(Value::as_str) != Some(client.client_id.as_str()) {
        return Err(invalid_metadata("Client Identifier modified"));
    }
    // RFC 7592 §2.2: a client may echo its secret but never choose one.
    if let Some(secret) = metadata.get("client_secret").filter(|s| !s.is_null())
        && secret.as_str() != client.client_secret.as_deref()
    {
        return Err(invalid_metadata("Client secret does not match"));
    }
    validate(&metadata)?;
    let metadata = stored_metadata(metadata, granted.as_deref());
    if !issues_secret(&metadata) {
        client.client_secret = None;
    } else if client.client_secret.is_none() {
        client.client_secret = Some(wire::random_alphanumeric(32));
    }
    client.scopes = granted.unwrap_or_default();
    client.metadata = metadata;
    client.registration_access_token = Some(new_registration_access_token());
    let body = representation(client, &origin);
    drop(store);
    Ok(wire::json_response(StatusCode::OK, &body))
}

async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(client_id): Path<String>,
) -> Result<Response, Refusal> {
    let mut store = state.store();
    if authorized(&mut store, &client_id, wire::bearer_token(&headers)).is_none() {
        return Err(invalid_token(NOT_AUTHORIZED_TO_UPDATE));
    }
    store.remove_client(&client_id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn token_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut response = wire::oauth_error(status, error, description);
    wire::no_store(&mut response);
    response
}

const INVALID_CREDENTIALS: &str = "Invalid client or Invalid client credentials";

/// Keycloak's token endpoint order: grant type, client authentication, then the grant's parameters.
async fn token(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let origin = wire::origin(&headers, &state.fallback_origin);
    let form = if wire::is_form(&headers) {
        Fields::parse(&body)
    } else {
        Fields::parse(b"")
    };
    let Some(grant_type) = form.get("grant_type") else {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing form parameter: grant_type",
        );
    };
    if !matches!(
        grant_type,
        "authorization_code" | "refresh_token" | "client_credentials" | "password"
    ) {
        return token_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Unsupported grant_type",
        );
    }

    let assertion = (form.get("client_assertion_type") == Some(JWT_BEARER))
        .then(|| form.get("client_assertion").unwrap_or_default());
    let client_id = match (assertion, wire::client_credentials(&headers, &form)) {
        (_, Some(credentials)) => Some(credentials.client_id),
        (Some(assertion), None) => assertion::claimed_client_id(assertion),
        (None, None) => None,
    };
    let Some(client_id) = client_id else {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            "Missing client_id parameter",
        );
    };
    let mut store = state.store();
    let store = &mut *store;
    let Some(client) = store.clients.get(&client_id) else {
        return token_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            INVALID_CREDENTIALS,
        );
    };
    let authenticated = match assertion {
        Some(assertion) => {
            let audiences = [format!("{origin}/oauth2/token"), origin.clone()];
            assertion::verify(
                assertion,
                &client.metadata,
                &audiences,
                &mut store.used_assertions,
                wire::unix_now(),
            )
            .map_err(|description| {
                token_error(StatusCode::BAD_REQUEST, "invalid_client", description)
            })
        }
        None if wire::secret_matches(
            client.client_secret.as_deref(),
            wire::client_credentials(&headers, &form)
                .and_then(|c| c.client_secret)
                .as_deref(),
        ) && auth_method(&client.metadata) != Some("private_key_jwt") =>
        {
            Ok(())
        }
        None => Err(token_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized_client",
            INVALID_CREDENTIALS,
        )),
    };
    if let Err(refusal) = authenticated {
        return refusal;
    }

    match grant_type {
        "refresh_token" => match form.get("refresh_token") {
            None => token_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing parameter: refresh_token",
            ),
            // This server never issues refresh tokens, so none is valid.
            Some(_) => token_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "Invalid refresh token",
            ),
        },
        "authorization_code" => match form.get("code") {
            None => token_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing parameter: code",
            ),
            Some(_) => token_error(StatusCode::BAD_REQUEST, "invalid_grant", "Code not valid"),
        },
        "password" => token_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "Client not allowed for direct access grants",
        ),
        _ => client_credentials_grant(
            client,
            form.get("scope"),
            store
                .scope_policy
                .access_token_lifetime_secs
                .unwrap_or(ACCESS_TOKEN_LIFETIME),
        ),
    }
}

fn client_credentials_grant(client: &Client, requested: Option<&str>, lifetime: i64) -> Response {
    if is_public(&client.metadata) {
        return token_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized_client",
            "Public client not allowed to retrieve service account",
        );
    }
    let enabled = client
        .metadata
        .get("grant_types")
        .and_then(Value::as_array)
        .is_some_and(|grants| grants.iter().any(|g| g == "client_credentials"));
    if !enabled {
        return token_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized_client",
            "Client not enabled to retrieve service account",
        );
    }
    // As in Keycloak, where registered scopes become the client's optional scopes: a token carries
    // the ones the request names and the client was granted, none without a `scope` parameter.
    let wanted: BTreeSet<&str> = requested.unwrap_or_default().split_whitespace().collect();
    let scopes: Vec<&str> = client
        .scopes
        .iter()
        .map(String::as_str)
        .filter(|s| wanted.contains(s))
        .collect();
    let mut response = wire::json_response(
        StatusCode::OK,
        &json!({
            "access_token": wire::random_alphanumeric(64),
            "expires_in": lifetime,
            "refresh_expires_in": 0,
            "token_type": "Bearer",
            "not-before-policy": 0,
            "scope": scopes.join(" "),
        }),
    );
    wire::no_store(&mut response);
    response
}
