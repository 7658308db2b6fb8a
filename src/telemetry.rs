//! Metrics (Prometheus text format) and health endpoints: `/metrics`, `/livez`, `/readyz`.
//!
//! Labels never carry SmartClient names: a cluster with thousands of clients must not produce thousands
//! of series. Auth servers are few and chosen by admins, so they are a label.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub controller: &'static str,
    /// `success`, `error` or `requeue`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `<kind>/<namespace>/<name>` of the auth server resource.
    pub server: String,
    pub operation: &'static str,
    /// `ok` or the error's reason (`AuthServerError`, `RejectedByPolicy`, ...).
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub server: String,
    pub operation: &'static str,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ReconcileLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    pub authserver_requests: Family<RequestLabels, Counter>,
    pub authserver_duration: Family<OperationLabels, Histogram>,
    debug_token_next_expiry: Gauge,
    debug_token_next_refresh: Gauge,
    debug_tokens: Gauge,
    /// SmartClients the operator holds a record of in memory; falls as they are deleted.
    pub clients_remembered: Gauge,
    /// Per token (`<uid>/<name>`): expiry and next refresh, Unix seconds. Aggregated into the gauges.
    token_schedule: Mutex<HashMap<String, (i64, i64)>>,
    client_secrets_expired: Gauge,
    orphaned_clients: Gauge,
    /// Orphans listed per SmartClient (by uid), summed into `orphaned_clients`.
    orphans: Mutex<HashMap<String, usize>>,
    /// SmartClients (by uid) whose client secret is past the expiry the server gave it.
    expired_secrets: Mutex<std::collections::HashSet<String>>,
    next_rotation: Gauge,
    rotations_scheduled: Gauge,
    /// Per SmartClient (by uid): when its credentials are rotated next, Unix seconds.
    rotation_schedule: Mutex<HashMap<String, i64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("smart_operator");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration =
            Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            });
        let authserver_requests = Family::<RequestLabels, Counter>::default();
        let authserver_duration =
            Family::<OperationLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            });
        let debug_token_next_expiry = Gauge::default();
        let debug_token_next_refresh = Gauge::default();
        let debug_tokens = Gauge::default();
        let clients_remembered = Gauge::default();
        let client_secrets_expired = Gauge::default();
        let orphaned_clients = Gauge::default();
        let next_rotation = Gauge::default();
        let rotations_scheduled = Gauge::default();
        registry.register(
            "credential_next_rotation_timestamp_seconds",
            "Earliest scheduled credential rotation of any SmartClient (Unix seconds; 0 when none)",
            next_rotation.clone(),
        );
        registry.register(
            "credential_rotations_scheduled",
            "SmartClients with a credential rotation scheduled (status.nextRotationAt)",
            rotations_scheduled.clone(),
        );
        registry.register(
            "orphaned_clients",
            "Registrations left on auth servers, as listed in status.orphanedClients of all SmartClients",
            orphaned_clients.clone(),
        );
        registry.register(
            "client_secrets_expired",
            "SmartClients whose client secret is past the client_secret_expires_at the server gave it",
            client_secrets_expired.clone(),
        );
        registry.register(
            "reconcile",
            "Reconciles by controller and result",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconcile errors by controller and reason",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            reconcile_duration.clone(),
        );
        registry.register(
            "authserver_requests",
            "Auth server operations by server, operation and outcome",
            authserver_requests.clone(),
        );
        registry.register(
            "authserver_request_duration_seconds",
            "Latency of auth server operations by server and operation",
            authserver_duration.clone(),
        );
        registry.register(
            "debug_token_next_expiry_timestamp_seconds",
            "Earliest expiry of any debug token held (Unix seconds; 0 when none)",
            debug_token_next_expiry.clone(),
        );
        registry.register(
            "debug_token_next_refresh_timestamp_seconds",
            "Earliest scheduled re-mint of any debug token (Unix seconds; 0 when none)",
            debug_token_next_refresh.clone(),
        );
        registry.register("debug_tokens", "Debug tokens held", debug_tokens.clone());
        registry.register(
            "clients_remembered",
            "SmartClients whose record the operator holds in memory",
            clients_remembered.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            authserver_requests,
            authserver_duration,
            debug_token_next_expiry,
            debug_token_next_refresh,
            debug_tokens,
            clients_remembered,
            token_schedule: Mutex::default(),
            client_secrets_expired,
            expired_secrets: Mutex::default(),
            orphaned_clients,
            orphans: Mutex::default(),
            next_rotation,
            rotations_scheduled,
            rotation_schedule: Mutex::default(),
        }
    }
}

impl Metrics {
    pub fn observe_reconcile(
        &self,
        controller: &'static str,
        result: &'static str,
        elapsed: Duration,
    ) {
        self.reconciles
            .get_or_create(&ReconcileLabels { controller, result })
            .inc();
        self.reconcile_duration
            .get_or_create(&ControllerLabels { controller })
            .observe(elapsed.as_secs_f64());
    }

    pub fn observe_request(
        &self,
        server: &str,
        operation: &'static str,
        status: &'static str,
        elapsed: Duration,
    ) {
        self.authserver_requests
            .get_or_create(&RequestLabels {
                server: server.to_owned(),
                operation,
                status,
            })
            .inc();
        self.authserver_duration
            .get_or_create(&OperationLabels {
                server: server.to_owned(),
                operation,
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Records a token's schedule (or forgets it with `None`) and refreshes the aggregate gauges.
    pub fn set_token_schedule(&self, key: &str, schedule: Option<(i64, i64)>) {
        let Ok(mut tokens) = self.token_schedule.lock() else {
            return;
        };
        match schedule {
            Some(value) => {
                tokens.insert(key.to_owned(), value);
            }
            None => {
                tokens.remove(key);
            }
        }
        self.debug_tokens.set(tokens.len() as i64);
        self.debug_token_next_expiry
            .set(tokens.values().map(|v| v.0).min().unwrap_or(0));
        self.debug_token_next_refresh
            .set(tokens.values().map(|v| v.1).min().unwrap_or(0));
    }

    /// How many orphans a SmartClient lists (0 forgets it).
    pub fn set_orphans(&self, uid: &str, count: usize) {
        let Ok(mut orphans) = self.orphans.lock() else {
            return;
        };
        if count == 0 {
            orphans.remove(uid);
        } else {
            orphans.insert(uid.to_owned(), count);
        }
        self.orphaned_clients
            .set(orphans.values().sum::<usize>() as i64);
    }

    /// When a SmartClient's credentials are rotated next (None forgets it).
    pub fn set_rotation_schedule(&self, uid: &str, at: Option<i64>) {
        let Ok(mut schedule) = self.rotation_schedule.lock() else {
            return;
        };
        match at {
            Some(at) => {
                schedule.insert(uid.to_owned(), at);
            }
            None => {
                schedule.remove(uid);
            }
        }
        self.rotations_scheduled.set(schedule.len() as i64);
        self.next_rotation
            .set(schedule.values().copied().min().unwrap_or(0));
    }

    /// Whether a SmartClient's client secret is past its expiry.
    pub fn set_secret_expired(&self, uid: &str, expired: bool) {
        let Ok(mut expired_secrets) = self.expired_secrets.lock() else {
            return;
        };
        if expired {
            expired_secrets.insert(uid.to_owned());
        } else {
            expired_secrets.remove(uid);
        }
        self.client_secrets_expired
            .set(expired_secrets.len() as i64);
    }

    /// Forgets every token of one SmartClient (`<uid>/`).
    pub fn forget_tokens_of(&self, uid: &str) {
        let keys: Vec<String> = match self.token_schedule.lock() {
            Ok(tokens) => tokens
                .keys()
                .filter(|k| k.starts_with(&format!("{uid}/")))
                .cloned()
                .collect(),
            Err(_) => return,
        };
        for key in keys {
            self.set_token_schedule(&key, None);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// What `/livez` and `/readyz` report.
#[derive(Default)]
pub struct Health {
    /// Set once this instance serves its role: a standby waiting for the lease, or a leader whose
    /// watches have synced.
    pub ready: AtomicBool,
    /// Cleared when leader election is wedged (its task died): Kubernetes should restart the Pod.
    pub lease_alive: AtomicBool,
}

impl Health {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            ready: AtomicBool::new(false),
            lease_alive: AtomicBool::new(true),
        })
    }
}

#[derive(Clone)]
struct ServerState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// Serves `/metrics`, `/livez` and `/readyz` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(ServerState { metrics, health });
    tracing::info!(address = %listener.local_addr()?, "serving /metrics, /livez and /readyz");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics_handler(State(state): State<ServerState>) -> impl IntoResponse {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn livez(State(state): State<ServerState>) -> impl IntoResponse {
    if state.health.lease_alive.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "leader election is not running",
        )
    }
}

async fn readyz(State(state): State<ServerState>) -> impl IntoResponse {
    if state.health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "watches have not synced yet",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_encode_without_object_names_and_aggregate_token_schedules() {
        let metrics = Metrics::default();
        metrics.observe_reconcile("smartclient", "success", Duration::from_millis(3));
        metrics.observe_request(
            "SmartAuthServer/ns/dev",
            "register",
            "ok",
            Duration::from_millis(5),
        );
        metrics.set_token_schedule("uid-1/a", Some((200, 150)));
        metrics.set_token_schedule("uid-2/b", Some((100, 80)));
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"smart_operator_reconcile_total{controller="smartclient",result="success"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"server="SmartAuthServer/ns/dev",operation="register",status="ok""#)
        );
        assert!(text.contains("smart_operator_debug_token_next_expiry_timestamp_seconds 100"));
        assert!(text.contains("smart_operator_debug_token_next_refresh_timestamp_seconds 80"));
        metrics.forget_tokens_of("uid-2");
        assert!(metrics.encode().contains("smart_operator_debug_tokens 1"));
    }
}
