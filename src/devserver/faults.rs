//! Fault injection and request counting around every dialect endpoint (never the admin API).
//!
//! A [`FaultPlan`] adds latency, answers a fraction of requests with an error status, and drops a
//! fraction of connections without answering, optionally only on some endpoints.

use std::time::Duration;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::handler::Handler;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::listener::ConnectionHandle;
use super::state::AppState;
use super::stats::{Endpoint, Outcome};
use super::wire;

/// Set with `PUT /_admin/faults`, cleared with `DELETE /_admin/faults`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FaultPlan {
    /// Added before every affected request is handled (or failed, or dropped).
    #[serde(default)]
    pub latency_ms: u64,
    /// Fraction (0–1) of affected requests answered with `error_status` instead of being handled.
    #[serde(default)]
    pub error_rate: f64,
    #[serde(default = "default_error_status")]
    pub error_status: u16,
    /// Fraction (0–1) of affected requests whose connection is reset without any response.
    #[serde(default)]
    pub drop_rate: f64,
    /// Fraction (0–1) of affected requests that are handled (a registration is committed) and whose
    /// answer is then lost: the connection is reset instead of answered, as when a server commits
    /// and then times out or a proxy drops the reply.
    #[serde(default)]
    pub lose_answer_rate: f64,
    /// Added after every affected request is handled, before its answer goes out: what a slow
    /// server does after committing, the window in which a client's crash loses the answer.
    #[serde(default)]
    pub answer_delay_ms: u64,
    /// Only these endpoints are affected; absent = all.
    #[serde(default)]
    pub endpoints: Option<Vec<Endpoint>>,
}

fn default_error_status() -> u16 {
    503
}

impl FaultPlan {
    pub(super) fn validate(&self) -> Result<(), String> {
        for (name, rate) in [
            ("error_rate", self.error_rate),
            ("drop_rate", self.drop_rate),
            ("lose_answer_rate", self.lose_answer_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0 and 1, got {rate}"));
            }
        }
        if self.error_rate + self.drop_rate + self.lose_answer_rate > 1.0 {
            return Err("error_rate + drop_rate + lose_answer_rate must not exceed 1".to_owned());
        }
        if !(400..=599).contains(&self.error_status) {
            return Err(format!(
                "error_status must be an error status (400-599), got {}",
                self.error_status
            ));
        }
        Ok(())
    }

    fn affects(&self, endpoint: Endpoint) -> bool {
        self.endpoints
            .as_ref()
            .is_none_or(|only| only.contains(&endpoint))
    }

    fn draw(&self) -> Fault {
        if self.error_rate == 0.0 && self.drop_rate == 0.0 && self.lose_answer_rate == 0.0 {
            return Fault::None;
        }
        let roll: f64 = rand::random();
        if roll < self.drop_rate {
            Fault::Drop
        } else if roll < self.drop_rate + self.error_rate {
            Fault::Error
        } else if roll < self.drop_rate + self.error_rate + self.lose_answer_rate {
            Fault::LoseAnswer
        } else {
            Fault::None
        }
    }
}

enum Fault {
    None,
    Error,
    Drop,
    LoseAnswer,
}

#[derive(Clone)]
pub(super) struct Observation {
    state: AppState,
    endpoint: Endpoint,
}

/// `handler`, counted in the stats as `endpoint` and subject to the fault plan.
pub(super) fn observed<H, T>(
    handler: H,
    endpoint: Endpoint,
    state: &AppState,
) -> impl Handler<T, AppState>
where
    H: Handler<T, AppState>,
    T: 'static,
{
    let observation = Observation {
        state: state.clone(),
        endpoint,
    };
    handler.layer(axum::middleware::from_fn_with_state(observation, observe))
}

async fn observe(State(observation): State<Observation>, request: Request, next: Next) -> Response {
    let Observation { state, endpoint } = observation;
    let plan = state.faults().filter(|plan| plan.affects(endpoint));
    if let Some(plan) = &plan {
        if plan.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(plan.latency_ms)).await;
        }
        match plan.draw() {
            Fault::None => {}
            Fault::Drop => {
                if let Some(ConnectInfo(connection)) =
                    request.extensions().get::<ConnectInfo<ConnectionHandle>>()
                {
                    connection.sever();
                    state.stats.record(endpoint, Outcome::Dropped);
                    tracing::debug!(endpoint = endpoint.name(), "fault: dropping connection");
                    // Never written: the severed connection fails hyper's write and is reset.
                    return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                }
            }
            Fault::LoseAnswer => {
                if let Some(ConnectInfo(connection)) = request
                    .extensions()
                    .get::<ConnectInfo<ConnectionHandle>>()
                    .cloned()
                {
                    // Handled first (whatever it commits stays committed), then the answer is lost.
                    let _committed = next.run(request).await;
                    connection.sever();
                    state.stats.record(endpoint, Outcome::Dropped);
                    tracing::debug!(
                        endpoint = endpoint.name(),
                        "fault: answer lost after handling"
                    );
                    return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                }
            }
            Fault::Error => {
                let status = StatusCode::from_u16(plan.error_status)
                    .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                state.stats.record(
                    endpoint,
                    Outcome::Answered {
                        status: status.as_u16(),
                        injected: true,
                    },
                );
                tracing::debug!(endpoint = endpoint.name(), %status, "fault: injected error");
                return wire::json_response(
                    status,
                    &json!({
                        "error": "temporarily_unavailable",
                        "error_description": "fault injected by smart-dev-server",
                    }),
                );
            }
        }
    }
    let method = request.method().clone();
    let response = next.run(request).await;
    if let Some(delay) = plan.as_ref().map(|p| p.answer_delay_ms).filter(|d| *d > 0) {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = response.status();
    state.stats.record(
        endpoint,
        Outcome::Answered {
            status: status.as_u16(),
            injected: false,
        },
    );
    tracing::debug!(endpoint = endpoint.name(), %method, %status, "request");
    response
}
