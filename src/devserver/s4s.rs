//! The Sync-for-Science auth-proxy as it runs today (Flask + Flask-OAuthlib), and what both S4S
//! dialects share: the FHIR `metadata` with the SMART `oauth-uris` extension and the token endpoint.
//!
//! Behaviour mirrors `auth_proxy/views/oauth/views.py` and `auth_proxy/services/oauth.py`:
//! - `POST /oauth/register` (JSON `{client_name, redirect_uris[], scope}`) → 201 with server-chosen
//!   UUID `client_id`/`client_secret`; every POST creates a new client. Errors are 400
//!   `{error, description}` (`bad_request`, `invalid_client_metadata`, `invalid_redirect_uri`).
//! - `POST /oauth/debug/token` (JSON `{client_id, username, patient_id, scope, access_lifetime,
//!   approval_expires}`) → `{access_token, refresh_token}`; errors `no_user`, `no_client`,
//!   `no_patient`, `no_patient_for_user`, `malformed_lifetime`, `malformed_expiration`.
//! - `GET /oauth/debug/introspect?token=` (and `/oauth/debug/introspect/<token>`) finds the token by
//!   access or refresh token → `{access_expires, access_token, active, approval_expires, client_id,
//!   refresh_token, scope, security_labels, token_type, username}`, dates RFC 1123; unknown → 400
//!   `no_token`.
//! - `POST /oauth/token` is oauthlib 2.0.1's (both versions pin it): errors are `{"error": ...}` (no
//!   description, no `WWW-Authenticate`), and `invalid_client`, `invalid_grant` and
//!   `unauthorized_client` are all HTTP 401 (oauthlib made the last two 400 only in 3.0.0), so only the
//!   `error` field tells an unknown client from a known one. `invalid_request` and
//!   `unsupported_grant_type` are 400. A refresh replaces *all* of the client's unexpired tokens with
//!   one new token (the proxy's `cb_tokensetter`).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use super::faults::observed;
use super::state::{AppState, Client, IssuedToken, Store};
use super::stats::Endpoint;
use super::wire::{self, Fields, Refusal};

/// Flask-OAuthlib's default `OAUTH2_PROVIDER_TOKEN_EXPIRES_IN`.
const REFRESHED_ACCESS_LIFETIME: i64 = 3600;
const DEFAULT_DEBUG_ACCESS_LIFETIME: i64 = 60 * 60;
const DEFAULT_DEBUG_APPROVAL: i64 = 365 * 24 * 60 * 60;

pub(super) fn routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/oauth/register",
            post(observed(register, Endpoint::Register, state)),
        )
        .route(
            "/oauth/debug/token",
            post(observed(debug_token, Endpoint::DebugToken, state)),
        )
        .route(
            "/oauth/debug/introspect",
            get(observed(introspect_query, Endpoint::Introspect, state)),
        )
        .route(
            "/oauth/debug/introspect/{token}",
            get(observed(introspect_path, Endpoint::Introspect, state)),
        )
        .merge(shared_routes(state))
}

/// Routes both S4S dialects serve identically.
pub(super) fn shared_routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/fhir/metadata",
            get(observed(metadata, Endpoint::Metadata, state)),
        )
        .route(
            "/oauth/token",
            post(observed(token, Endpoint::Token, state)),
        )
}

/// The registration response (also what `/_admin/clients` shows for this dialect).
pub(super) fn registration_response(client: &Client) -> Value {
    json!({
        "client_id": client.client_id,
        "client_secret": client.client_secret,
        "client_secret_expires_at": 0,
        "client_name": client.metadata.get("client_name").cloned().unwrap_or(Value::Null),
        "redirect_uris": client.metadata.get("redirect_uris").cloned().unwrap_or_else(|| json!([])),
        "scope": client.scopes.join(" "),
    })
}

async fn register(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    // `if not request.json`: no JSON content type, or a falsy payload.
    let payload: Value = if wire::is_json(&headers) {
        match serde_json::from_slice(&body) {
            Ok(payload) => payload,
            Err(_) => return Err(Refusal::bad_request_page()),
        }
    } else {
        Value::Null
    };
    if !wire::truthy(Some(&payload)) {
        return Err(Refusal::service(
            "bad_request",
            "The request requires a JSON payload.",
        ));
    }
    let Value::Object(payload) = payload else {
        // `request.json.get` on a list or scalar.
        return Err(Refusal::internal_error());
    };

    let redirect_uris = redirect_uris(payload.get("redirect_uris"))?;
    let scope = match payload.get("scope") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(scope)) => scope.clone(),
        Some(_) => return Err(Refusal::internal_error()),
    };

    let client_id = wire::uuid();
    let client_name = match payload.get("client_name") {
        None | Some(Value::Null) => Value::String(client_id.clone()),
        Some(name) => name.clone(),
    };
    let mut metadata = Map::new();
    metadata.insert("client_name".to_owned(), client_name);
    // Stored space-joined and split again, as the proxy's `_redirect_uris` column does.
    let stored_uris: Vec<&str> = redirect_uris
        .iter()
        .flat_map(|u| u.split_whitespace())
        .collect();
    metadata.insert("redirect_uris".to_owned(), json!(stored_uris));

    let mut store = state.store();
    let client = Client {
        seq: store.next_seq(),
        client_id: client_id.clone(),
        client_secret: Some(wire::uuid()),
        issued_at: wire::unix_now(),
        secret_expires_at: 0,
        scopes: scope.split_whitespace().map(str::to_owned).collect(),
        registration_access_token: None,
        metadata,
    };
    let response = registration_response(&client);
    store.clients.insert(client_id, client);
    drop(store);
    Ok(wire::json_response(StatusCode::CREATED, &response))
}

/// `redirect_uris` validated like the proxy's `register`: present and non-empty, every URI with a
/// scheme and without a fragment (judged by Python's `urlparse`).
fn redirect_uris(value: Option<&Value>) -> Result<Vec<String>, Refusal> {
    if !wire::truthy(value) {
        return Err(Refusal::service(
            "invalid_client_metadata",
            "One or more redirect URIs are required.",
        ));
    }
    let uris: Vec<String> = match value {
        Some(Value::Array(items)) => {
            let mut uris = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(uri) => uris.push(uri.clone()),
                    _ => return Err(Refusal::internal_error()),
                }
            }
            uris
        }
        // Python iterates a string character by character.
        Some(Value::String(text)) => text.chars().map(String::from).collect(),
        _ => return Err(Refusal::internal_error()),
    };
    for uri in &uris {
        if python_urlparse_scheme(uri).is_none() {
            return Err(Refusal::service(
                "invalid_redirect_uri",
                format!("A URI scheme is required: {uri}"),
            ));
        }
        if uri
            .split_once('#')
            .is_some_and(|(_, fragment)| !fragment.is_empty())
        {
            return Err(Refusal::service(
                "invalid_redirect_uri",
                format!("URI fragments are disallowed in redirect URIs: {uri}"),
            ));
        }
    }
    Ok(uris)
}

/// The scheme Python's `urllib.parse.urlparse` finds: letters, digits, `+-.` before the first `:`,
/// starting with a letter.
fn python_urlparse_scheme(uri: &str) -> Option<&str> {
    let (scheme, _) = uri.split_once(':')?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some(scheme)
}

async fn debug_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    // `request.get_json()` is None without a JSON content type; `.get` on None then raises.
    if !wire::is_json(&headers) {
        return Err(Refusal::internal_error());
    }
    let payload: Value = match serde_json::from_slice(&body) {
        Ok(payload) => payload,
        Err(_) => return Err(Refusal::bad_request_page()),
    };
    let Value::Object(payload) = payload else {
        return Err(Refusal::internal_error());
    };
    let now = wire::unix_now();
    let mut store = state.store();

    let username = payload.get("username");
    if !wire::truthy(username) {
        return Err(Refusal::service("no_user", "\"username\" is required."));
    }
    let username = username.cloned().unwrap_or(Value::Null);
    let Some(patients) = username.as_str().and_then(|u| store.users.get(u)) else {
        return Err(Refusal::service(
            "no_user",
            format!("Username \"{}\" not found", wire::python_str(&username)),
        ));
    };
    let patients = patients.clone();

    let client_id = payload.get("client_id");
    if !wire::truthy(client_id) {
        return Err(Refusal::service("no_client", "\"client_id\" is required."));
    }
    let client_id = client_id.cloned().unwrap_or(Value::Null);
    let Some(client) = client_id.as_str().and_then(|id| store.clients.get(id)) else {
        return Err(Refusal::service(
            "no_client",
            format!("Client ID \"{}\" not found.", wire::python_str(&client_id)),
        ));
    };
    let (client_id, client_scopes) = (client.client_id.clone(), client.scopes.clone());

    let patient_id = payload.get("patient_id");
    if !wire::truthy(patient_id) {
        return Err(Refusal::service(
            "no_patient",
            "\"patient_id\" is required.",
        ));
    }
    let patient_id = patient_id.cloned().unwrap_or(Value::Null);
    let Some(patient_id) = patient_id.as_str().filter(|p| patients.contains(*p)) else {
        return Err(Refusal::service(
            "no_patient_for_user",
            format!(
                "Patient ID \"{}\" does not belong to user \"{}\"",
                wire::python_str(&patient_id),
                wire::python_str(&username)
            ),
        ));
    };

    let access_lifetime = match payload.get("access_lifetime") {
        None => DEFAULT_DEBUG_ACCESS_LIFETIME,
        Some(value) => match wire::python_int(value) {
            Ok(Some(lifetime)) => lifetime,
            Ok(None) => {
                return Err(Refusal::service(
                    "malformed_lifetime",
                    "Access token lifetime should be an integer.",
                ));
            }
            Err(()) => return Err(Refusal::internal_error()),
        },
    };
    let malformed_expiration = || {
        Refusal::service(
            "malformed_expiration",
            "Approval expiration time should be a Unix timestamp.",
        )
    };
    let approval_expires = match payload.get("approval_expires") {
        None => now + DEFAULT_DEBUG_APPROVAL,
        Some(value) => match wire::python_int(value) {
            // `datetime.fromtimestamp` refuses years outside 1..9999 with a ValueError too.
            Ok(Some(expires)) if wire::representable(expires) => expires,
            Ok(_) => return Err(malformed_expiration()),
            Err(()) => return Err(Refusal::internal_error()),
        },
    };
    let scopes: Vec<String> = match payload.get("scope") {
        None | Some(Value::Null) => client_scopes,
        Some(Value::String(scope)) => scope.split_whitespace().map(str::to_owned).collect(),
        Some(_) => return Err(Refusal::internal_error()),
    };
    let Some(access_expires) = now
        .checked_add(access_lifetime)
        .filter(|t| wire::representable(*t))
    else {
        // `timedelta` overflow.
        return Err(Refusal::internal_error());
    };

    let token = IssuedToken {
        seq: store.next_seq(),
        access_token: wire::uuid(),
        refresh_token: wire::uuid(),
        client_id,
        username: username.as_str().map(str::to_owned),
        patient_id: patient_id.to_owned(),
        scopes,
        // Debug tokens are created without security labels.
        security_labels: Vec::new(),
        access_expires,
        approval_expires,
    };
    let response =
        json!({"access_token": token.access_token, "refresh_token": token.refresh_token});
    store.tokens.insert(token);
    drop(store);
    Ok(wire::json_response(StatusCode::OK, &response))
}

async fn introspect_query(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, Refusal> {
    let query = Fields::parse(query.unwrap_or_default().as_bytes());
    introspect(&state, query.get("token").unwrap_or_default())
}

async fn introspect_path(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Response, Refusal> {
    introspect(&state, &token)
}

fn introspect(state: &AppState, presented: &str) -> Result<Response, Refusal> {
    let store = state.store();
    let Some(token) = store
        .tokens
        .by_access(presented)
        .or_else(|| store.tokens.by_refresh(presented))
    else {
        return Err(Refusal::service("no_token", "No matching token found."));
    };
    let now = wire::unix_now();
    let body = json!({
        "access_expires": wire::http_date(token.access_expires),
        "access_token": token.access_token,
        "active": now < token.access_expires && now < token.approval_expires,
        "approval_expires": wire::http_date(token.approval_expires),
        "client_id": token.client_id,
        "refresh_token": token.refresh_token,
        "scope": token.scopes.join(" "),
        "security_labels": token.security_labels,
        "token_type": "Bearer",
        "username": token.username,
    });
    drop(store);
    Ok(wire::json_response(StatusCode::OK, &body))
}

async fn metadata(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let origin = wire::origin(&headers, &state.fallback_origin);
    let body = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "kind": "instance",
        "fhirVersion": "3.0.1",
        "format": ["application/fhir+json"],
        "software": {"name": "smart-dev-server", "version": env!("CARGO_PKG_VERSION")},
        "rest": [{
            "mode": "server",
            "security": {
                "extension": [{
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [
                        {"url": "authorize", "valueUri": format!("{origin}/oauth/authorize")},
                        {"url": "manage", "valueUri": format!("{origin}/apps")},
                        {"url": "token", "valueUri": format!("{origin}/oauth/token")},
                        {"url": "register", "valueUri": format!("{origin}/oauth/register")},
                    ],
                }],
                "service": [{
                    "coding": [{
                        "system": "http://hl7.org/fhir/restful-security-service",
                        "code": "SMART-on-FHIR",
                    }],
                    "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
                }],
            },
        }],
    });
    wire::json_response(StatusCode::OK, &body)
}

/// oauthlib 2.0.1's error response: `{"error": ...}` and no-store; no challenge header, even on 401.
fn oauthlib_error(status: StatusCode, error: &str, description: Option<&str>) -> Response {
    let mut body = Map::new();
    body.insert("error".to_owned(), json!(error));
    if let Some(description) = description {
        body.insert("error_description".to_owned(), json!(description));
    }
    let mut response = wire::json_response(status, &Value::Object(body));
    wire::no_store(&mut response);
    response
}

/// Flask-OAuthlib's token endpoint, validating in oauthlib's order: grant type, required
/// parameters, client authentication, then the grant itself.
async fn token(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let form = if wire::is_form(&headers) {
        Fields::parse(&body)
    } else {
        Fields::parse(b"")
    };
    let grant_type = form.get("grant_type").unwrap_or_default();
    match grant_type {
        "refresh_token" if form.get("refresh_token").is_none() => {
            return oauthlib_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                Some("Missing refresh token parameter."),
            );
        }
        "authorization_code" if form.get("code").is_none() => {
            return oauthlib_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                Some("Missing code parameter."),
            );
        }
        "refresh_token" | "authorization_code" | "client_credentials" => {}
        _ => return oauthlib_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", None),
    }

    let mut store = state.store();
    let credentials = wire::client_credentials(&headers, &form);
    let authenticated = credentials.as_ref().and_then(|c| {
        store.clients.get(&c.client_id).filter(|client| {
            wire::secret_matches(client.client_secret.as_deref(), c.client_secret.as_deref())
        })
    });
    let Some(client) = authenticated else {
        return oauthlib_error(StatusCode::UNAUTHORIZED, "invalid_client", None);
    };
    let client_id = client.client_id.clone();

    match grant_type {
        // Flask-OAuthlib only lets clients with a `user` use client credentials; proxy clients have none.
        "client_credentials" => {
            oauthlib_error(StatusCode::UNAUTHORIZED, "unauthorized_client", None)
        }
        // This server never runs the interactive authorize step, so no code is ever valid; the real
        // proxy (both versions) answers an unknown code with a 500 page.
        "authorization_code" => Refusal::internal_error().into_response(),
        _ => {
            let presented = form.get("refresh_token").unwrap_or_default();
            refresh(&mut store, &client_id, presented)
        }
    }
}

/// The refresh grant: the presented refresh token must belong to the client; then the proxy's
/// `cb_tokensetter` takes the client's unexpired tokens, refreshes the one with the latest approval
/// and deletes all of them, so every other token of the client stops working.
fn refresh(store: &mut Store, client_id: &str, presented: &str) -> Response {
    let Some(original) = store
        .tokens
        .by_refresh(presented)
        .filter(|t| t.client_id == client_id)
        .cloned()
    else {
        return oauthlib_error(StatusCode::UNAUTHORIZED, "invalid_grant", None);
    };
    let now = wire::unix_now();
    let mut live: Vec<&IssuedToken> = store
        .tokens
        .of_client(client_id)
        .filter(|t| t.approval_expires >= now)
        .collect();
    live.sort_by_key(|t| (t.approval_expires, t.seq));
    // `old_tokens[-1]` on an empty query: an IndexError, so a 500.
    let Some(latest) = live.last() else {
        return Refusal::internal_error().into_response();
    };
    let doomed: Vec<String> = live.iter().map(|t| t.access_token.clone()).collect();
    let mut refreshed = (*latest).clone();
    refreshed.seq = store.next_seq();
    refreshed.access_token = wire::uuid();
    refreshed.refresh_token = wire::uuid();
    refreshed.access_expires = now + REFRESHED_ACCESS_LIFETIME;
    // oauthlib grants the refresh token's original scopes when none are requested.
    refreshed.scopes = original.scopes.clone();
    for access_token in doomed {
        store.tokens.remove(&access_token);
    }
    let body = json!({
        "access_token": refreshed.access_token,
        "expires_in": REFRESHED_ACCESS_LIFETIME,
        "refresh_token": refreshed.refresh_token,
        "scope": refreshed.scopes.join(" "),
        "token_type": "Bearer",
        // SMART launch context from the proxy's `smart_token_credentials`.
        "patient": original.patient_id,
    });
    store.tokens.insert(refreshed);
    let mut response = wire::json_response(StatusCode::OK, &body);
    wire::no_store(&mut response);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urlparse_scheme_matches_python() {
        assert_eq!(
            python_urlparse_scheme("https://app.example/cb"),
            Some("https")
        );
        assert_eq!(
            python_urlparse_scheme("com.example.app:/cb"),
            Some("com.example.app")
        );
        assert_eq!(python_urlparse_scheme("/relative/cb"), None);
        assert_eq!(python_urlparse_scheme("1http://x"), None);
    }
}
