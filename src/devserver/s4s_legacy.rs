//! The older Sync-for-Science auth-proxy, as the "SMART Example Server" page documents it.
//!
//! - `POST /oauth/register`, form-encoded `client_id`, `client_secret` (optional; a UUID when absent),
//!   `client_name`, `redirect_uris`, `scopes` (lists space-separated in one field) → 200
//!   `{client_id, client_secret, default_scopes[], redirect_uris[]}`. A missing required field is
//!   Flask's 400 page (`request.form[...]`); re-registering an existing id is the database's integrity
//!   error, a 500 page. No update, no delete.
//! - `POST /oauth/debug/token`, JSON `{client_id, expires, scopes, user, patient_id}` →
//!   `{access_token, refresh_token}`. `expires` is used twice: as the approval expiry *timestamp*
//!   (`arrow.get(expires)`, so 360 means 1970-01-01T00:06:00Z) and as the access token *lifetime*
//!   (`token.refresh(..., expires, ...)`). A missing field or an unknown client raises: 500.
//! - `GET /oauth/debug/introspect?access_token=` → `{access_token, approval_expires, expires,
//!   refresh_token, scopes[], security_labels[], token_type}` with RFC 1123 dates; an unknown token
//!   raises (`None.interest`): 500.
//!
//! The metadata and token endpoints are the ones both S4S dialects share.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use super::faults::observed;
use super::s4s;
use super::state::{AppState, Client, IssuedToken};
use super::stats::Endpoint;
use super::wire::{self, Fields, Refusal};

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
            get(observed(introspect, Endpoint::Introspect, state)),
        )
        .merge(s4s::shared_routes(state))
}

/// The registration response (also what `/_admin/clients` shows for this dialect).
pub(super) fn registration_response(client: &Client) -> Value {
    json!({
        "client_id": client.client_id,
        "client_secret": client.client_secret,
        "default_scopes": client.scopes,
        "redirect_uris": client.metadata.get("redirect_uris").cloned().unwrap_or_else(|| json!([])),
    })
}

async fn register(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    // Flask only parses form bodies into `request.form`; anything else leaves it empty.
    let form = if wire::is_form(&headers) {
        Fields::parse(&body)
    } else {
        Fields::parse(b"")
    };
    let (Some(client_id), Some(client_name), Some(redirect_uris), Some(scopes)) = (
        form.get("client_id"),
        form.get("client_name"),
        form.get("redirect_uris"),
        form.get("scopes"),
    ) else {
        return Err(Refusal::bad_request_page());
    };

    let mut metadata = Map::new();
    metadata.insert("client_name".to_owned(), json!(client_name));
    metadata.insert(
        "redirect_uris".to_owned(),
        json!(redirect_uris.split_whitespace().collect::<Vec<_>>()),
    );

    let mut store = state.store();
    if store.clients.contains_key(client_id) {
        // The primary key already exists: SQLAlchemy's IntegrityError, unhandled.
        return Err(Refusal::internal_error());
    }
    let client = Client {
        seq: store.next_seq(),
        client_id: client_id.to_owned(),
        client_secret: Some(
            form.get("client_secret")
                .map_or_else(wire::uuid, str::to_owned),
        ),
        issued_at: wire::unix_now(),
        secret_expires_at: 0,
        scopes: scopes.split_whitespace().map(str::to_owned).collect(),
        registration_access_token: None,
        metadata,
    };
    let response = registration_response(&client);
    store.clients.insert(client.client_id.clone(), client);
    drop(store);
    Ok(wire::json_response(StatusCode::OK, &response))
}

async fn debug_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    if !wire::is_json(&headers) {
        // `None["user"]`.
        return Err(Refusal::internal_error());
    }
    let payload: Value = match serde_json::from_slice(&body) {
        Ok(payload) => payload,
        Err(_) => return Err(Refusal::bad_request_page()),
    };
    // `token_json["..."]` raises KeyError for a missing field: every field is required.
    let (Some(client_id), Some(expires), Some(scopes), Some(user), Some(patient_id)) = (
        payload.get("client_id"),
        payload.get("expires"),
        payload.get("scopes"),
        payload.get("user"),
        payload.get("patient_id"),
    ) else {
        return Err(Refusal::internal_error());
    };
    let expires = expires.as_i64().or_else(|| {
        expires
            .as_f64()
            .filter(|f| f.is_finite())
            .map(|f| f.trunc() as i64)
    });
    let (Some(client_id), Some(expires), Some(scopes), Some(patient_id)) = (
        client_id.as_str(),
        expires,
        scopes.as_str(),
        patient_id.as_str(),
    ) else {
        return Err(Refusal::internal_error());
    };
    let now = wire::unix_now();
    // The quirk: approval expiry is the epoch plus `expires`, the access token lives `expires` seconds.
    let approval_expires = expires;
    let Some(access_expires) = now.checked_add(expires) else {
        return Err(Refusal::internal_error());
    };
    if !wire::representable(approval_expires) || !wire::representable(access_expires) {
        return Err(Refusal::internal_error());
    }

    let mut store = state.store();
    if !store.clients.contains_key(client_id) {
        // The token's client foreign key dangles; the proxy fails refreshing/serialising it.
        return Err(Refusal::internal_error());
    }
    let token = IssuedToken {
        seq: store.next_seq(),
        access_token: wire::uuid(),
        refresh_token: wire::uuid(),
        client_id: client_id.to_owned(),
        // This version does not check the user (and never shows it again).
        username: user.as_str().map(str::to_owned),
        patient_id: patient_id.to_owned(),
        scopes: scopes.split_whitespace().map(str::to_owned).collect(),
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

async fn introspect(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, Refusal> {
    let query = Fields::parse(query.unwrap_or_default().as_bytes());
    let presented = query.get("access_token").unwrap_or_default();
    let store = state.store();
    let Some(token) = store.tokens.by_access(presented) else {
        return Err(Refusal::internal_error());
    };
    let body = json!({
        "access_token": token.access_token,
        "approval_expires": wire::http_date(token.approval_expires),
        "expires": wire::http_date(token.access_expires),
        "refresh_token": token.refresh_token,
        "scopes": token.scopes,
        "security_labels": token.security_labels,
        "token_type": "Bearer",
    });
    drop(store);
    Ok(wire::json_response(StatusCode::OK, &body))
}
