//! The admin API under `/_admin/`: inspection, wiping, fault injection and RFC 7591 configuration.
//! Its requests are neither counted nor faulted. JSON in, JSON out; errors are 400 `{"error": ...}`.

use std::collections::BTreeSet;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::faults::FaultPlan;
use super::state::{AppState, Client, DemoUser, InitialAccessToken, ScopePolicy};
use super::{Dialect, rfc7591, s4s, s4s_legacy, wire};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/clients", get(clients))
        .route("/stats", get(stats))
        .route("/reset", post(reset))
        .route("/reset-stats", post(reset_stats))
        .route("/faults", get(faults).put(set_faults).delete(clear_faults))
        .route(
            "/initial-access-tokens",
            get(initial_access_tokens).post(add_initial_access_token),
        )
        .route("/policy", get(policy).put(set_policy))
        .route("/users", get(users).post(add_user))
}

/// 400 `{"error": message}`.
struct BadRequest(String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        wire::json_response(StatusCode::BAD_REQUEST, &json!({"error": self.0}))
    }
}

fn bad_request(message: impl Into<String>) -> BadRequest {
    BadRequest(message.into())
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, BadRequest> {
    serde_json::from_slice(body).map_err(|e| bad_request(format!("invalid request body: {e}")))
}

/// A client as its dialect's own API shows it, secrets and registration access token included.
fn client_view(dialect: Dialect, client: &Client, origin: &str) -> Value {
    match dialect {
        Dialect::Rfc7591 => rfc7591::representation(client, origin),
        Dialect::S4s => s4s::registration_response(client),
        Dialect::S4sLegacy => s4s_legacy::registration_response(client),
    }
}

async fn clients(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let origin = wire::origin(&headers, &state.fallback_origin);
    let store = state.store();
    let clients: Vec<Value> = store
        .clients_in_order()
        .into_iter()
        .map(|client| client_view(state.dialect, client, &origin))
        .collect();
    drop(store);
    wire::json_response(
        StatusCode::OK,
        &json!({"count": clients.len(), "clients": clients}),
    )
}

async fn stats(State(state): State<AppState>) -> Response {
    wire::json_response(StatusCode::OK, &state.stats.snapshot())
}

async fn reset(State(state): State<AppState>) -> Response {
    let (clients, tokens) = state.store().wipe();
    tracing::info!(clients, tokens, "state wiped");
    wire::json_response(
        StatusCode::OK,
        &json!({"clients_removed": clients, "tokens_removed": tokens}),
    )
}

async fn reset_stats(State(state): State<AppState>) -> Response {
    state.stats.reset();
    StatusCode::NO_CONTENT.into_response()
}

async fn faults(State(state): State<AppState>) -> Response {
    let plan = state.faults().map(|plan| json!(*plan));
    wire::json_response(StatusCode::OK, &json!({"faults": plan}))
}

async fn set_faults(State(state): State<AppState>, body: Bytes) -> Result<Response, BadRequest> {
    let plan: FaultPlan = parse(&body)?;
    if let Err(message) = plan.validate() {
        return Err(bad_request(message));
    }
    tracing::info!(?plan, "faults set");
    let body = json!({"faults": plan});
    state.set_faults(Some(plan));
    Ok(wire::json_response(StatusCode::OK, &body))
}

async fn clear_faults(State(state): State<AppState>) -> Response {
    state.set_faults(None);
    tracing::info!("faults cleared");
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewInitialAccessToken {
    /// Generated when absent.
    #[serde(default)]
    token: Option<String>,
    /// Registrations allowed; absent = unlimited.
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    expires_in_seconds: Option<u64>,
}

fn initial_access_token_view(token: &str, details: &InitialAccessToken) -> Value {
    json!({"token": token, "remaining": details.remaining, "expires_at": details.expires_at})
}

async fn initial_access_tokens(State(state): State<AppState>) -> Response {
    let store = state.store();
    let mut tokens: Vec<Value> = store
        .initial_access_tokens
        .iter()
        .map(|(token, details)| initial_access_token_view(token, details))
        .collect();
    drop(store);
    tokens.sort_by(|a, b| a["token"].as_str().cmp(&b["token"].as_str()));
    wire::json_response(StatusCode::OK, &json!({"tokens": tokens}))
}

async fn add_initial_access_token(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, BadRequest> {
    let request: NewInitialAccessToken = parse(&body)?;
    let token = match request.token {
        Some(token) if token.trim().is_empty() || token.contains(char::is_whitespace) => {
            return Err(bad_request(
                "token must be non-empty and contain no whitespace",
            ));
        }
        Some(token) => token,
        None => wire::random_alphanumeric(40),
    };
    let expires_at = match request.expires_in_seconds {
        None => None,
        Some(seconds) => match i64::try_from(seconds)
            .ok()
            .and_then(|s| wire::unix_now().checked_add(s))
        {
            Some(at) => Some(at),
            None => return Err(bad_request("expires_in_seconds is too large")),
        },
    };
    let details = InitialAccessToken {
        remaining: request.count,
        expires_at,
    };
    let body = initial_access_token_view(&token, &details);
    state.store().initial_access_tokens.insert(token, details);
    Ok(wire::json_response(StatusCode::CREATED, &body))
}

async fn policy(State(state): State<AppState>) -> Response {
    let policy = state.store().scope_policy.clone();
    wire::json_response(StatusCode::OK, &json!(policy))
}

async fn set_policy(State(state): State<AppState>, body: Bytes) -> Result<Response, BadRequest> {
    let policy: ScopePolicy = parse(&body)?;
    let body = json!(policy);
    state.store().scope_policy = policy;
    Ok(wire::json_response(StatusCode::OK, &body))
}

async fn users(State(state): State<AppState>) -> Response {
    let users = state.store().users.clone();
    wire::json_response(StatusCode::OK, &json!({"users": users}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    username: String,
    patient_ids: BTreeSet<String>,
}

async fn add_user(State(state): State<AppState>, body: Bytes) -> Result<Response, BadRequest> {
    let request: NewUser = parse(&body)?;
    if request.username.is_empty() || request.patient_ids.iter().any(String::is_empty) {
        return Err(bad_request("username and patient ids must be non-empty"));
    }
    let mut store = state.store();
    for patient_id in request.patient_ids {
        store.add_user(DemoUser {
            username: request.username.clone(),
            patient_id,
        });
    }
    let patients = store
        .users
        .get(&request.username)
        .cloned()
        .unwrap_or_default();
    drop(store);
    Ok(wire::json_response(
        StatusCode::CREATED,
        &json!({"username": request.username, "patient_ids": patients}),
    ))
}
