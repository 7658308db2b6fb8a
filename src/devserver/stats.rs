//! Request counters per endpoint and per status code, read through `GET /_admin/stats`.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The dialect endpoints the dev server counts and can inject faults into, by their admin-API names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// Client registration (RFC 7591 POST, S4S `/oauth/register`).
    Register,
    /// RFC 7592 read of a registration.
    Read,
    /// RFC 7592 full replacement of a registration.
    Update,
    /// RFC 7592 deletion of a registration.
    Delete,
    /// S4S `/oauth/debug/token`.
    DebugToken,
    /// S4S `/oauth/debug/introspect`.
    Introspect,
    /// The OAuth token endpoint.
    Token,
    /// RFC 7591 discovery documents (`smart-configuration`, `openid-configuration`).
    Discovery,
    /// S4S FHIR `metadata` (CapabilityStatement).
    Metadata,
}

impl Endpoint {
    pub const ALL: [Endpoint; 9] = [
        Endpoint::Register,
        Endpoint::Read,
        Endpoint::Update,
        Endpoint::Delete,
        Endpoint::DebugToken,
        Endpoint::Introspect,
        Endpoint::Token,
        Endpoint::Discovery,
        Endpoint::Metadata,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Register => "register",
            Endpoint::Read => "read",
            Endpoint::Update => "update",
            Endpoint::Delete => "delete",
            Endpoint::DebugToken => "debug_token",
            Endpoint::Introspect => "introspect",
            Endpoint::Token => "token",
            Endpoint::Discovery => "discovery",
            Endpoint::Metadata => "metadata",
        }
    }
}

/// What became of one request.
#[derive(Clone, Copy, Debug)]
pub(super) enum Outcome {
    /// A response with this status was sent (the handler's, or an injected error).
    Answered { status: u16, injected: bool },
    /// The connection was severed without a response.
    Dropped,
}

/// Status-map key of a severed connection; the other keys are status codes.
const DROPPED: &str = "dropped";

/// `None` stands for a dropped connection.
type StatusCounts = BTreeMap<Option<u16>, u64>;

#[derive(Default)]
struct EndpointCounters {
    total: u64,
    by_status: StatusCounts,
}

#[derive(Default)]
struct Counters {
    total: u64,
    injected_errors: u64,
    dropped: u64,
    by_status: StatusCounts,
    by_endpoint: BTreeMap<Endpoint, EndpointCounters>,
}

#[derive(Default)]
pub(super) struct Stats {
    counters: Mutex<Counters>,
}

impl Stats {
    pub(super) fn record(&self, endpoint: Endpoint, outcome: Outcome) {
        let key = match outcome {
            Outcome::Answered { status, .. } => Some(status),
            Outcome::Dropped => None,
        };
        let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        counters.total += 1;
        match outcome {
            Outcome::Answered { injected: true, .. } => counters.injected_errors += 1,
            Outcome::Dropped => counters.dropped += 1,
            Outcome::Answered {
                injected: false, ..
            } => {}
        }
        *counters.by_status.entry(key).or_default() += 1;
        let per_endpoint = counters.by_endpoint.entry(endpoint).or_default();
        per_endpoint.total += 1;
        *per_endpoint.by_status.entry(key).or_default() += 1;
    }

    pub(super) fn reset(&self) {
        *self.counters.lock().unwrap_or_else(PoisonError::into_inner) = Counters::default();
    }

    /// `{total, injected_errors, dropped, by_status, endpoints: {name: {total, by_status}}}`; every
    /// endpoint name is present so callers can index without checking.
    pub(super) fn snapshot(&self) -> Value {
        let counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        let endpoints: serde_json::Map<String, Value> = Endpoint::ALL
            .iter()
            .map(|endpoint| {
                let (total, by_status) = counters
                    .by_endpoint
                    .get(endpoint)
                    .map(|c| (c.total, status_object(&c.by_status)))
                    .unwrap_or((0, json!({})));
                (
                    endpoint.name().to_owned(),
                    json!({"total": total, "by_status": by_status}),
                )
            })
            .collect();
        json!({
            "total": counters.total,
            "injected_errors": counters.injected_errors,
            "dropped": counters.dropped,
            "by_status": status_object(&counters.by_status),
            "endpoints": endpoints,
        })
    }
}

fn status_object(counts: &StatusCounts) -> Value {
    let object: serde_json::Map<String, Value> = counts
        .iter()
        .map(|(status, count)| {
            let key = status.map_or_else(|| DROPPED.to_owned(), |s| s.to_string());
            (key, json!(count))
        })
        .collect();
    Value::Object(object)
}
