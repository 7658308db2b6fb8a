//! How a live SmartClient's outcome is reported: `Ready` and the other conditions, Events, the
//! backoff kept in status, and the one function that writes status (kstatus conditions derived).

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::EventType;
use tracing::warn;

use super::conditions::{self, derive_kstatus_conditions, set_condition};
use super::context::Context;
use super::plan::{USER_ERROR_REASONS, next_retry};
use super::reconcile::{FIELD_MANAGER, OBSERVE_ONLY_ANNOTATION, ReconcileError, Run};
use super::resolve::ResolvedServer;
use super::secret::secret_name;
use crate::authserver::{AuthServerError, ErrorClass};
use crate::crd::{SmartClient, SmartClientStatus, condition};

/// How often a SmartClient refused for a Secret it may not write looks again (one GET).
const SECRET_CONFLICT_RECHECK: Duration = Duration::from_secs(60);

impl Run<'_> {
    /// `ClientSecretValid`, where the server gave the client secret an expiry: True until then,
    /// False (`ClientSecretExpired`, a Warning Event, `smart_operator_client_secrets_expired`) once
    /// past. Returns the time left, to look again then.
    pub(super) async fn report_secret_expiry(&mut self) -> Option<Duration> {
        let Some(expires) = self.status.client_secret_expires_at.as_ref().map(|t| t.0) else {
            self.status
                .conditions
                .retain(|c| c.type_ != condition::CLIENT_SECRET_VALID);
            self.ctx.metrics.set_secret_expired(&self.uid, false);
            return None;
        };
        let expired = self.now >= expires;
        let was_expired = conditions::find(&self.status.conditions, condition::CLIENT_SECRET_VALID)
            .is_some_and(|c| c.status == "False");
        let (reason, message) = if expired {
            (
                "ClientSecretExpired",
                format!(
                    "the client secret expired at {expires} (client_secret_expires_at): the server refuses it from now on; the operator rotates ahead of the expiry (spec.rotation.refreshBefore), or annotate smart.fhir.dev/rotate-credentials-requested-at to rotate now"
                ),
            )
        } else {
            (
                "ClientSecretValid",
                format!("the client secret expires at {expires}"),
            )
        };
        set_condition(
            &mut self.status.conditions,
            condition::CLIENT_SECRET_VALID,
            !expired,
            reason,
            message.clone(),
            Some(self.generation),
            self.now,
        );
        self.ctx.metrics.set_secret_expired(&self.uid, expired);
        if expired && !was_expired {
            self.ctx
                .publish(
                    self.client,
                    EventType::Warning,
                    "ClientSecretExpired",
                    "Expiry",
                    message,
                )
                .await;
        }
        (!expired).then(|| Duration::try_from(expires.duration_since(self.now)).unwrap_or_default())
    }

    pub(super) fn mark_ready(&mut self, server: &ResolvedServer) {
        // Healthy: whatever failed before (a Secret write, a probe) has been done since, so no backoff
        // is left to delay or block what comes next (a deletion, say).
        self.status.retry = None;
        let token_names = self.token_names(server.dialect());
        self.status
            .debug_tokens
            .retain(|t| token_names.contains(&t.name));
        self.status
            .access_tokens
            .retain(|t| token_names.contains(&t.name));
        self.ctx.metrics.forget_tokens_of(&self.uid);
        for token in self
            .status
            .debug_tokens
            .iter()
            .chain(&self.status.access_tokens)
        {
            if let (Some(expires), Some(refresh)) = (&token.expires_at, &token.next_refresh_at) {
                let schedule = (expires.0.as_second(), refresh.0.as_second());
                self.ctx
                    .metrics
                    .set_token_schedule(&format!("{}/{}", self.uid, token.name), Some(schedule));
            }
        }
        if !token_names.is_empty() {
            set_condition(
                &mut self.status.conditions,
                condition::TOKENS_FRESH,
                true,
                "TokensFresh",
                format!(
                    "{} token(s) obtained and scheduled for renewal",
                    token_names.len()
                ),
                Some(self.generation),
                self.now,
            );
        } else {
            self.status
                .conditions
                .retain(|c| c.type_ != condition::TOKENS_FRESH);
        }
        let client_id = self.status.client_id.clone().unwrap_or_default();
        set_condition(
            &mut self.status.conditions,
            condition::READY,
            true,
            "Ready",
            format!(
                "client {client_id} is registered with {} {} and its Secret is up to date",
                server.kind, server.name
            ),
            Some(self.generation),
            self.now,
        );
        self.status.observed_generation = Some(self.generation);
    }

    pub(super) async fn record_auth_server_error(&mut self, error: &AuthServerError) -> Requeue {
        let reason = error.reason();
        let message = error.to_string();
        if error.class() == ErrorClass::User {
            return self.record_user_error(reason, message).await;
        }
        let (delay, failures) = self.record_failure(error.retry_after());
        self.flag_expired_tokens();
        let detail = format!(
            "{message} (attempt {failures}, next in {}s)",
            delay.as_secs()
        );
        self.report_not_ready(reason, detail, message, "Reconcile", false)
            .await;
        Requeue::requeue(delay)
    }

    /// A debug token past its expiry while the operator cannot re-mint it makes `TokensFresh` False, so
    /// an alert on it fires (review C11: it stayed True over an expired token).
    pub(super) fn flag_expired_tokens(&mut self) {
        let expired: Vec<&str> = self
            .status
            .debug_tokens
            .iter()
            .filter(|t| t.expires_at.as_ref().is_some_and(|at| at.0 <= self.now))
            .map(|t| t.name.as_str())
            .collect();
        if expired.is_empty() {
            return;
        }
        let message = format!(
            "debug token(s) {} expired and could not be re-minted yet",
            expired.join(", ")
        );
        set_condition(
            &mut self.status.conditions,
            condition::TOKENS_FRESH,
            false,
            "TokenExpired",
            message,
            Some(self.generation),
            self.now,
        );
    }

    /// One more failure in `status.retry`: returns the delay until the next attempt and the count.
    pub(super) fn record_failure(&mut self, asked: Option<Duration>) -> (Duration, i32) {
        let (retry, delay) = next_retry(
            self.status.retry.as_ref(),
            self.ctx.settings.backoff_base,
            self.ctx.settings.backoff_cap,
            asked,
            self.now,
            rand::random(),
        );
        let failures = retry.failures;
        self.status.retry = Some(retry);
        (delay, failures)
    }

    pub(super) async fn record_user_error(&mut self, reason: &str, message: String) -> Requeue {
        // Never a panic (a debug build's assert here ended the process: review C14): an unexpected
        // reason is logged and reported as InvalidSpec.
        let reason = if USER_ERROR_REASONS.contains(&reason) {
            reason
        } else {
            warn!(client = %self.client.name_any(), reason, "unexpected user-error reason; reported as InvalidSpec");
            "InvalidSpec"
        };
        self.status.retry = None;
        let note = format!("{message}; waiting for a spec change");
        self.report_not_ready(reason, message, note, "Reconcile", true)
            .await;
        Requeue::await_change()
    }

    /// The Secret the spec names is not the operator's to write: refuse, and look again now and then
    /// (the Secret may be deleted or renamed; the operator watches only its own Secrets).
    pub(super) async fn record_secret_conflict(&mut self, message: String) -> Requeue {
        self.record_secret_refused(
            "SecretConflict",
            message,
            "the Secret the spec names belongs to someone else; nothing is written to it",
        )
        .await
    }

    /// Something the client needs is not there yet (not a user error: it may appear by itself, as
    /// objects of one GitOps sync arrive in any order): `Ready=False`, looked at again every minute.
    pub(super) async fn record_waiting(&mut self, reason: &str, message: String) -> Requeue {
        self.status.retry = None;
        self.report_not_ready(reason, message.clone(), message, "Reconcile", false)
            .await;
        Requeue::requeue(SECRET_CONFLICT_RECHECK)
    }

    /// Observe-only: what the plan would change is reported, and nothing more happens until the
    /// annotation goes or something changes.
    pub(super) async fn record_observe_only(&mut self, would: String) -> Requeue {
        let message = format!(
            "{OBSERVE_ONLY_ANNOTATION} is \"true\": the operator would {would}; nothing is registered, updated, deleted or written"
        );
        self.report_not_ready("ObserveOnly", message.clone(), message, "Reconcile", false)
            .await;
        Requeue::await_change()
    }

    pub(super) async fn record_secret_edited(&mut self) -> Requeue {
        let name = secret_name(self.client);
        let message = format!(
            "the credentials in Secret {name} were edited while the operator did not hold them (they differ from the ones it wrote), so they are not taken as this client's and nothing is registered in their place: put the original values back, or delete Secret {name} to have the client registered anew"
        );
        self.record_secret_refused(
            "SecretEdited",
            message,
            "the Secret's credentials were edited; nothing is written to it",
        )
        .await
    }

    /// A Secret the operator may not act on: no write, no remote call; looked at again when it
    /// changes, and every minute.
    async fn record_secret_refused(
        &mut self,
        reason: &str,
        message: String,
        synced: &str,
    ) -> Requeue {
        self.status.retry = None;
        self.report_not_ready(reason, message.clone(), message, "Reconcile", false)
            .await;
        set_condition(
            &mut self.status.conditions,
            condition::SECRET_SYNCED,
            false,
            reason,
            synced,
            Some(self.generation),
            self.now,
        );
        Requeue::requeue(SECRET_CONFLICT_RECHECK)
    }

    pub(super) async fn record_not_usable(&mut self, reason: &str, message: String) -> Requeue {
        self.report_not_ready(reason, message.clone(), message, "Resolve", false)
            .await;
        // Auth server changes trigger a reconcile through the watch; this is only a safety net.
        Requeue::requeue(Duration::from_secs(300))
    }

    /// Sets `Ready=False` and publishes a Warning Event when the reason is new (for this generation, if
    /// `per_generation`), so a failure repeated by backoff does not flood Events.
    pub(super) async fn report_not_ready(
        &mut self,
        reason: &str,
        message: String,
        note: String,
        action: &str,
        per_generation: bool,
    ) {
        let generation = Some(self.generation);
        let known = self.status.conditions.iter().any(|c| {
            c.type_ == condition::READY
                && c.reason == reason
                && (!per_generation || c.observed_generation == generation)
        });
        set_condition(
            &mut self.status.conditions,
            condition::READY,
            false,
            reason,
            message,
            generation,
            self.now,
        );
        self.status.observed_generation = generation;
        if !known {
            self.ctx
                .publish(self.client, EventType::Warning, reason, action, note)
                .await;
        }
    }

    /// Writes status by server-side apply, only when it changed.
    pub(super) async fn write_status(&mut self) -> Result<(), ReconcileError> {
        write_client_status(self.ctx, self.client, &mut self.status).await
    }
}

/// Reasons of `Ready=False` beyond the user errors that only a person can fix: kstatus sees them as
/// `Stalled` (Failed).
const STALLING_BEYOND_USER_ERRORS: &[&str] = &[
    "SecretConflict",
    "SecretEdited",
    // The cluster server does not admit this namespace: its labels or the server's selector must change.
    "AuthServerNotAllowed",
    // Observe-only waits for a person to remove the annotation.
    "ObserveOnly",
];

/// Whether a SmartClient's `Ready=False` for `reason` waits for a person (kstatus `Stalled`).
pub fn smart_client_stalls(reason: &str) -> bool {
    USER_ERROR_REASONS.contains(&reason) || STALLING_BEYOND_USER_ERRORS.contains(&reason)
}

/// The one writer of a SmartClient's status (live path and cleanup): the kstatus conditions are
/// derived here, and nothing is written when nothing changed.
pub(super) async fn write_client_status(
    ctx: &Context,
    client: &SmartClient,
    status: &mut SmartClientStatus,
) -> Result<(), ReconcileError> {
    let generation = client.metadata.generation;
    // A status that describes this generation describes it in every condition.
    if status.observed_generation == generation {
        for condition in &mut status.conditions {
            condition.observed_generation = generation;
        }
    }
    derive_kstatus_conditions(
        &mut status.conditions,
        smart_client_stalls,
        generation,
        Timestamp::now(),
    );
    // Counted on every pass, written or not, so a restarted operator counts what status lists.
    ctx.metrics.set_orphans(
        &client.uid().unwrap_or_default(),
        status.orphaned_clients.len(),
    );
    let known = client.status.is_some() || ctx.wrote_status(client);
    if known && ctx.latest_status(client) == *status {
        return Ok(());
    }
    let api: Api<SmartClient> =
        Api::namespaced(ctx.client.clone(), &client.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": "smart.fhir.dev/v1alpha1",
        "kind": "SmartClient",
        "status": status,
    });
    api.patch_status(
        &client.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    ctx.remember_status(
        &client.uid().unwrap_or_default(),
        generation.unwrap_or_default(),
        status,
    );
    Ok(())
}
