//! The SmartClient reconciler: resolve (I/O) → plan (pure) → apply (I/O) → status, step by step until
//! the plan says wait. Every credential a server returns is written to the Secret before the next remote
//! call that could replace or invalidate it (minting a debug token cannot), and always before the status
//! that announces it.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::EventType;
use serde_json::json;
use tracing::{debug, warn};

use super::cleanup::{Cleanup, cleanup};
use super::conditions::{self, set_condition};
pub use super::context::{Context, Settings};
use super::desired::{desired_metadata, metadata_hash};
use super::observed::ObservedAuthServer;
use super::plan::{Action, PlanInput, backoff_delay, plan_next_action};
pub use super::report::smart_client_stalls;
use super::resolve::{ResolveError, resolve_server};
use super::secret::{
    SecretOwnership, StoredCredentials, credentials_edited, is_in_sync, render_data, secret_name,
    secret_ownership,
};
use super::secret_template::check_templates;
use super::server_fit::unsupported_by_server;
use crate::authserver::{AuthServerError, ClientCredentials};
use crate::crd::{Dialect, SmartClient, SmartClientStatus, condition};

/// Finalizer that lets the operator delete the remote registration before the object goes.
/// New SmartClients usually carry it from admission already (see `crd::admission::finalizer_policy`).
pub const FINALIZER: &str = crate::crd::admission::CLEANUP_FINALIZER;
/// Annotation that lets a SmartClient whose cleanup is blocked go without deleting the registration.
pub const ABANDON_ANNOTATION: &str = "smart.fhir.dev/abandon-registration";
/// Field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "smart-operator";
/// Any new value re-runs the client now (see [`Run::take_reconcile_request`]).
pub const RECONCILE_REQUESTED_ANNOTATION: &str = "smart.fhir.dev/reconcile-requested-at";
/// "true": no remote call and no write for the client (see [`Run::pause_if_asked`]).
pub const PAUSED_ANNOTATION: &str = "smart.fhir.dev/paused";
/// "true": the client is read and reported on, never registered, updated, deleted or written.
pub const OBSERVE_ONLY_ANNOTATION: &str = "smart.fhir.dev/observe-only";
/// Annotation naming orphans to take out of `status.orphanedClients` (comma-separated client ids,
/// or `all`).
pub const CLEAR_ORPHANS_ANNOTATION: &str = "smart.fhir.dev/clear-orphans";

/// Whether a SmartClient is observe-only (see [`OBSERVE_ONLY_ANNOTATION`]).
pub fn observe_only(client: &SmartClient) -> bool {
    client
        .annotations()
        .get(OBSERVE_ONLY_ANNOTATION)
        .is_some_and(|v| v == "true")
}

/// Errors of one reconcile. Secret values never reach these messages.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    AuthServer(#[from] AuthServerError),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("the Secret could not be written: {0}")]
    SecretWrite(kube::Error),
    #[error(transparent)]
    SigningKey(#[from] crate::keys::KeyError),
}

impl ReconcileError {
    pub fn reason(&self) -> &'static str {
        match self {
            ReconcileError::AuthServer(e) => e.reason(),
            ReconcileError::Resolve(e) => e.reason(),
            ReconcileError::Kube(_) => "KubernetesApiError",
            ReconcileError::SecretWrite(_) => "SecretWriteFailed",
            ReconcileError::SigningKey(_) => "SigningKeyFailed",
        }
    }
}

/// Entry point for the kube-runtime Controller. The finalizer goes on before anything is registered, so
/// every registration can be cleaned up; the reconcile goes on with the patched object at once instead
/// of waiting for the watch to bring it back.
pub async fn reconcile(
    client: Arc<SmartClient>,
    ctx: Arc<Context>,
) -> Result<Requeue, ReconcileError> {
    let namespace = client.namespace().unwrap_or_default();
    let api: Api<SmartClient> = Api::namespaced(ctx.client.clone(), &namespace);
    let position = client.finalizers().iter().position(|f| f == FINALIZER);
    if client.metadata.deletion_timestamp.is_some() {
        let Some(position) = position else {
            return Ok(Requeue::await_change());
        };
        let requeue = match cleanup(&client, &ctx).await? {
            Cleanup::Done => Requeue::await_change(),
            Cleanup::Pending(requeue) => return Ok(requeue),
        };
        let patch = finalizer_patch(&json!([
            { "op": "test", "path": format!("/metadata/finalizers/{position}"), "value": FINALIZER },
            { "op": "remove", "path": format!("/metadata/finalizers/{position}") },
        ]));
        match api
            .patch(&client.name_any(), &PatchParams::default(), &patch)
            .await
        {
            Ok(_) => Ok(requeue),
            // Gone already: nothing left to let go of.
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(requeue),
            Err(e) => Err(e.into()),
        }
    } else if position.is_some() {
        apply(&client, &ctx).await
    } else {
        // The `test` makes this fail instead of clobbering a list someone changed meanwhile.
        let patch = match client.metadata.finalizers.as_ref() {
            None => json!([
                { "op": "test", "path": "/metadata/finalizers", "value": null },
                { "op": "add", "path": "/metadata/finalizers", "value": [FINALIZER] },
            ]),
            Some(current) => json!([
                { "op": "test", "path": "/metadata/finalizers", "value": current },
                { "op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER },
            ]),
        };
        match api
            .patch(
                &client.name_any(),
                &PatchParams::default(),
                &finalizer_patch(&patch),
            )
            .await
        {
            Ok(patched) => apply(&patched, &ctx).await,
            // The `test` failed: this reconcile saw an old version (another watch triggered it first).
            // The newer one is on its way; look again shortly rather than report an error.
            Err(kube::Error::Api(e)) if e.code == 422 || e.code == 409 => {
                debug!(client = %client.name_any(), "finalizer list changed meanwhile; looking again");
                Ok(Requeue::requeue(Duration::from_secs(1)))
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn finalizer_patch(operations: &serde_json::Value) -> Patch<()> {
    let operations: json_patch::Patch = serde_json::from_value(operations.clone())
        .expect("finalizer patches are well-formed JSON patches");
    Patch::Json(operations)
}

/// Requeue policy for errors that escaped the status machinery (apiserver errors mostly).
pub fn error_policy(
    _client: Arc<SmartClient>,
    error: &ReconcileError,
    ctx: Arc<Context>,
) -> Requeue {
    warn!(reason = error.reason(), %error, "reconcile failed");
    Requeue::requeue(backoff_delay(
        3,
        ctx.settings.backoff_base,
        ctx.settings.backoff_cap,
        rand::random(),
    ))
}

/// One reconcile of a live SmartClient.
pub(super) struct Run<'a> {
    pub(super) ctx: &'a Context,
    pub(super) client: &'a SmartClient,
    pub(super) uid: String,
    pub(super) generation: i64,
    pub(super) now: Timestamp,
    pub(super) status: SmartClientStatus,
    pub(super) secrets: Api<Secret>,
    pub(super) observed_secret: Option<Secret>,
    /// Whether `observed_secret` is this reconcile's own write (so it is current).
    pub(super) secret_written: bool,
    /// A Secret rendered from new credentials or tokens, not yet written (see [`Run::persist`]).
    pub(super) pending_secret: Option<Secret>,
    pub(super) credentials: Option<StoredCredentials>,
    /// Credentials of a client the server forgot (wiped state): S4SLegacy registers the same id again.
    pub(super) forgotten: Option<StoredCredentials>,
    /// When the registration now in flight was sent, as the Secret records it (see
    /// [`Run::announce_registration`]).
    pub(super) registration_sent_at: Option<String>,
    /// A private_key_jwt client's keys (see `signing.rs`).
    pub(super) signing_keys: Option<super::key_rotation::HeldKeys>,
}

async fn apply(client: &SmartClient, ctx: &Context) -> Result<Requeue, ReconcileError> {
    let namespace = client.namespace().unwrap_or_default();
    let mut run = Run {
        ctx,
        client,
        uid: client.uid().unwrap_or_default(),
        generation: client.metadata.generation.unwrap_or_default(),
        now: Timestamp::now(),
        status: ctx.latest_status(client),
        secrets: Api::namespaced(ctx.client.clone(), &namespace),
        observed_secret: None,
        secret_written: false,
        pending_secret: None,
        credentials: None,
        forgotten: None,
        registration_sent_at: None,
        signing_keys: None,
    };
    if run.pause_if_asked().await? {
        return Ok(Requeue::await_change());
    }
    run.take_reconcile_request().await;
    run.clear_orphans_if_asked().await;
    let outcome = run.drive().await;
    let requeue = match outcome {
        Ok(requeue) => requeue,
        Err(ReconcileError::SecretWrite(e)) => return run.report_secret_write_failure(&e).await,
        // Past the renew deadline another instance may lead: keep what was obtained while leading,
        // write no status, make no further call.
        Err(ReconcileError::AuthServer(AuthServerError::NotLeader)) => {
            if let Err(flush) = run.flush().await {
                warn!(client = %client.name_any(), error = %flush, "could not write the Secret");
            }
            return Err(AuthServerError::NotLeader.into());
        }
        Err(ReconcileError::AuthServer(e)) => run.record_auth_server_error(&e).await,
        Err(ReconcileError::Resolve(ResolveError::Kube(e))) | Err(ReconcileError::Kube(e)) => {
            // Whatever the server handed out before the apiserver failed still goes to the Secret.
            if let Err(flush) = run.flush().await {
                warn!(client = %client.name_any(), error = %flush, "could not write the Secret");
            }
            return Err(e.into());
        }
        Err(ReconcileError::Resolve(e)) => run.record_not_usable(e.reason(), e.to_string()).await,
        Err(e @ ReconcileError::SigningKey(_)) => {
            run.record_not_usable(e.reason(), e.to_string()).await
        }
    };
    // Whatever the outcome (a rotation that keeps failing, say), a secret past its expiry is
    // reported; a healthy client's wake-up at the expiry is planned in `drive`, a failing one's
    // comes with its backoff.
    run.report_secret_expiry().await;
    // The Secret first: whoever sees Ready finds the credentials.
    if let Err(ReconcileError::SecretWrite(e)) = run.flush().await {
        return run.report_secret_write_failure(&e).await;
    }
    run.write_status().await?;
    Ok(requeue)
}

impl Run<'_> {
    /// `smart.fhir.dev/paused: "true"`: no call to the auth server and no Secret write, only status
    /// saying so (once). True when paused; the annotation's removal (a change) resumes the client.
    pub(super) async fn pause_if_asked(&mut self) -> Result<bool, ReconcileError> {
        let paused = self
            .client
            .annotations()
            .get(PAUSED_ANNOTATION)
            .is_some_and(|v| v == "true");
        if !paused {
            self.status
                .conditions
                .retain(|c| c.type_ != condition::PAUSED);
            return Ok(false);
        }
        set_condition(
            &mut self.status.conditions,
            condition::PAUSED,
            true,
            "Paused",
            format!(
                "{PAUSED_ANNOTATION} is \"true\": no call to the auth server and no Secret write until it is removed"
            ),
            Some(self.generation),
            self.now,
        );
        self.write_status().await?;
        Ok(true)
    }

    /// A new value of `smart.fhir.dev/reconcile-requested-at` (any value, as Flux's
    /// `reconcile.fluxcd.io/requestedAt`): the backoff is over and a user error no longer waits for a
    /// spec change, so the client is tried again now (after an auth-server admin fixed a policy, say).
    pub(super) async fn take_reconcile_request(&mut self) {
        let Some(requested) = self
            .client
            .annotations()
            .get(RECONCILE_REQUESTED_ANNOTATION)
        else {
            return;
        };
        if self.status.last_handled_reconcile_at.as_ref() == Some(requested) {
            return;
        }
        self.status.last_handled_reconcile_at = Some(requested.clone());
        self.status.retry = None;
        // The user-error wait is keyed on Ready's reason; this one ends it.
        if conditions::find(&self.status.conditions, condition::READY)
            .is_some_and(|ready| ready.status != "True")
        {
            set_condition(
                &mut self.status.conditions,
                condition::READY,
                false,
                "ReconcileRequested",
                format!("{RECONCILE_REQUESTED_ANNOTATION} changed to {requested}; trying again"),
                Some(self.generation),
                self.now,
            );
        }
        self.ctx
            .publish(
                self.client,
                EventType::Normal,
                "ReconcileRequested",
                "Reconcile",
                format!("{RECONCILE_REQUESTED_ANNOTATION}: {requested}; backoff and user-error wait cleared"),
            )
            .await;
    }

    /// `smart.fhir.dev/clear-orphans: <client id>[,...] | all`: the listed entries leave
    /// `status.orphanedClients` (someone dealt with them on the server, or accepts them). Orphans
    /// without a known id (an answer lost) go with `all` only.
    pub(super) async fn clear_orphans_if_asked(&mut self) {
        let Some(asked) = self.client.annotations().get(CLEAR_ORPHANS_ANNOTATION) else {
            return;
        };
        let ids: Vec<&str> = asked.split(',').map(str::trim).collect();
        let all = ids.contains(&"all");
        let (cleared, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.status.orphaned_clients)
            .into_iter()
            .partition(|o| all || (!o.client_id.is_empty() && ids.contains(&o.client_id.as_str())));
        self.status.orphaned_clients = kept;
        if cleared.is_empty() {
            return;
        }
        let names: Vec<&str> = cleared
            .iter()
            .map(|o| {
                if o.client_id.is_empty() {
                    "(an unknown id)"
                } else {
                    o.client_id.as_str()
                }
            })
            .collect();
        self.ctx
            .publish(
                self.client,
                EventType::Normal,
                "OrphansCleared",
                "Reconcile",
                format!(
                    "{CLEAR_ORPHANS_ANNOTATION}: no longer listed as orphans: {}",
                    names.join(", ")
                ),
            )
            .await;
    }

    /// A failed Secret write ends the reconcile: status (with the client id the server handed out) is
    /// still written, so the failure is visible and the id is on record twice.
    pub(super) async fn report_secret_write_failure(
        &mut self,
        error: &kube::Error,
    ) -> Result<Requeue, ReconcileError> {
        let requeue = self.record_secret_write_failure(error).await;
        self.write_status().await?;
        Ok(requeue)
    }

    pub(super) async fn drive(&mut self) -> Result<Requeue, ReconcileError> {
        let spec_metadata = match desired_metadata(self.client) {
            Ok(desired) => desired,
            Err(e) => return Ok(self.record_user_error("InvalidSpec", e.to_string()).await),
        };
        if let Err(problem) = check_templates(self.client) {
            return Ok(self.record_user_error("InvalidSpec", problem).await);
        }
        let server = resolve_server(
            &self.ctx.client,
            &self.ctx.caches,
            self.client,
            &self.ctx.settings.operator_namespace,
        )
        .await?;
        if let Some(problem) = dialect_mismatch(self.client, server.dialect()) {
            return Ok(self.record_user_error("InvalidSpec", problem).await);
        }
        let secret_name = secret_name(self.client);
        let namespace = self.client.namespace().unwrap_or_default();
        self.observed_secret = self
            .ctx
            .caches
            .secret(&namespace, &secret_name)
            .map(|s| (*s).clone());
        let token_names: Vec<String> = self.token_names(server.dialect());
        self.take_credentials(&token_names);
        self.take_signing_keys();
        let mut desired = self.desired_with_keys(&spec_metadata);
        let mut desired_hash = metadata_hash(&desired, server.dialect());
        // spec.secret.name changed: status names the old Secret until it is emptied, so neither a
        // crash nor a restart loses track of it, and a restarted operator finds the credentials there.
        let renamed_from = self
            .status
            .secret_name
            .clone()
            .filter(|old| *old != secret_name);
        if let Some(old) = &renamed_from
            && self.credentials.is_none()
        {
            self.take_credentials_from(old, &token_names).await?;
        }
        self.record_hashes_in_current_format(&desired, server.dialect(), &desired_hash);
        if renamed_from.is_none() {
            self.status.secret_name = Some(secret_name.clone());
        }
        // The store may lag this operator's own last write: before acting on what it says, read live.
        let mut secret_confirmed = false;

        let mut auth: Option<ObservedAuthServer> = None;
        // Each step changes what the plan sees; a handful always suffices, the bound is a safety net.
        for _ in 0..16 {
            let public = self.public_values(&server, &desired.scopes);
            let secret_in_sync = match (&self.credentials, &self.observed_secret) {
                (Some(credentials), Some(observed)) => is_in_sync(
                    observed,
                    self.client,
                    &render_data(
                        self.client,
                        credentials,
                        self.signing_keys.as_ref(),
                        &public,
                    ),
                    Some(credentials),
                    self.registration_sent_at.as_deref(),
                ),
                (Some(_), None) => false,
                (None, _) => true,
            };
            let token_refs: Vec<&str> = token_names.iter().map(String::as_str).collect();
            self.report_rotation();
            let action = plan_next_action(&PlanInput {
                dialect: server.dialect(),
                generation: self.generation,
                desired_hash: &desired_hash,
                status: &self.status,
                credentials: self.credentials.as_ref(),
                secret_in_sync,
                signing_key_written: self.signing_key_written(),
                key_step: self.key_step(),
                adopt: self.client.spec.adopt.is_some(),
                credential_step: self.credential_step(),
                tokens: token_refs,
                now: self.now,
                next_existence_check: self.ctx.next_existence_check(
                    &self.uid,
                    &server.metric_label(),
                    self.now,
                ),
            });
            debug!(?action, client = %self.client.name_any(), "planned");
            // Before any write or remote call, the live Secret: the store may lag this operator's own
            // last write, and it holds only Secrets labelled as the operator's, so a Secret of the
            // user's with this name is seen only by a live read.
            let needs_secret = !matches!(
                action,
                Action::Wait(_) | Action::Backoff(_) | Action::AwaitSpecChange
            );
            // A first registration creates its Secret before it is sent, and the create itself
            // fails on a Secret that exists: no read is needed first.
            let creates_secret = action == Action::Register
                && self.observed_secret.is_none()
                && server.dialect().server_chooses_client_id();
            if needs_secret && !secret_confirmed && !self.secret_written && !creates_secret {
                self.observed_secret = self.secrets.get_opt(&secret_name).await?;
                self.take_credentials(&token_names);
                self.take_signing_keys();
                desired = self.desired_with_keys(&spec_metadata);
                desired_hash = metadata_hash(&desired, server.dialect());
                self.record_hashes_in_current_format(&desired, server.dialect(), &desired_hash);
                self.account_for_unanswered_registration().await?;
                secret_confirmed = true;
                continue;
            }
            if let SecretOwnership::Foreign(why) =
                secret_ownership(self.observed_secret.as_ref(), self.client)
            {
                return Ok(self.record_secret_conflict(why).await);
            }
            // Memory is empty (a restart) and the Secret's credentials are not the ones the operator
            // wrote: acting on them would take an edited secret for a forgotten client.
            if self.credentials.is_none()
                && self
                    .observed_secret
                    .as_ref()
                    .is_some_and(|observed| credentials_edited(observed, self.client))
            {
                return Ok(self.record_secret_edited().await);
            }
            if observe_only(self.client)
                && let Some(would) = change_of(&action)
            {
                return Ok(self.record_observe_only(would).await);
            }
            let needs_initial_token = matches!(
                action,
                Action::Register | Action::ReRegister | Action::Replace | Action::RotateCredentials
            );
            // What the server says it offers comes first: a client it cannot serve is not sent.
            if (needs_initial_token || action == Action::Update)
                && let Some(problem) = unsupported_by_server(
                    &desired,
                    &self
                        .trusted_signing_keys()
                        .iter()
                        .map(|k| k.algorithm())
                        .collect::<Vec<_>>(),
                    &server.endpoints,
                )
            {
                return Ok(self.record_user_error("UnsupportedByServer", problem).await);
            }
            let remote = !matches!(
                action,
                Action::Wait(_)
                    | Action::Backoff(_)
                    | Action::AwaitSpecChange
                    | Action::WriteSecret
                    | Action::WriteSigningKey
                    | Action::RotateKey(_)
            );
            if remote && !matches!(action, Action::MintToken(_)) {
                self.flush().await?;
            }
            if needs_initial_token || (auth.is_none() && remote) {
                auth = Some(self.ctx.auth_server(&server, needs_initial_token).await?);
            }
            match action {
                Action::Wait(after) => {
                    if let Some(old) = &renamed_from {
                        self.retire_secret(old).await?;
                        self.status.secret_name = Some(secret_name.clone());
                    }
                    self.mark_ready(&server);
                    let after = match (after, self.report_secret_expiry().await) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    return Ok(after
                        .map(Requeue::requeue)
                        .unwrap_or_else(Requeue::await_change));
                }
                // Status already says why; nothing changes until the time comes or the spec changes.
                Action::Backoff(after) => return Ok(Requeue::requeue(after)),
                Action::AwaitSpecChange => return Ok(Requeue::await_change()),
                // S4SLegacy can neither update a client nor register its fixed id anew: the change
                // cannot reach the server, and must not be reported as applied (review C10).
                Action::Replace
                    if server.dialect() == Dialect::S4sLegacy
                        && self.client.spec.client_id.is_some() =>
                {
                    let message = format!(
                        "S4SLegacy cannot update client {} and its spec.clientId is fixed, so this metadata change cannot be applied; change spec.clientId to register a new client with it, or revert the change",
                        self.client.spec.client_id.as_deref().unwrap_or_default()
                    );
                    return Ok(self
                        .record_user_error("UnsupportedByDialect", message)
                        .await);
                }
                Action::Register
                | Action::ReRegister
                | Action::Replace
                | Action::RotateCredentials => {
                    if !self.announce_registration(&server, &desired.scopes).await? {
                        // The Secret exists after all: plan again from what it holds.
                        self.take_credentials(&token_names);
                        self.record_hashes_in_current_format(
                            &desired,
                            server.dialect(),
                            &desired_hash,
                        );
                        self.account_for_unanswered_registration().await?;
                        secret_confirmed = true;
                        continue;
                    }
                    let auth = auth.as_ref().expect("built above");
                    self.register(auth, &server, &desired, &desired_hash, action)
                        .await?;
                }
                Action::WriteSigningKey => {
                    let written = self.write_signing_key(&server, &desired.scopes).await?;
                    if !written {
                        // The Secret exists after all: plan again from what it holds.
                        self.take_credentials(&token_names);
                        self.take_signing_keys();
                        secret_confirmed = true;
                    }
                    desired = self.desired_with_keys(&spec_metadata);
                    desired_hash = metadata_hash(&desired, server.dialect());
                }
                Action::RotateKey(step) => {
                    self.rotate_key(step, &server, &desired.scopes).await?;
                    desired = self.desired_with_keys(&spec_metadata);
                    desired_hash = metadata_hash(&desired, server.dialect());
                }
                Action::Update => {
                    let auth = auth.as_ref().expect("built above");
                    self.update(auth, &server, &desired, &desired_hash).await?;
                }
                Action::WriteSecret => {
                    let existed = self.observed_secret.is_some();
                    self.persist(&server, &desired.scopes);
                    self.flush().await?;
                    if existed {
                        self.ctx
                            .publish(
                                self.client,
                                EventType::Warning,
                                "SecretRestored",
                                "Restore",
                                "the Secret was edited; the operator rewrote the keys it manages"
                                    .into(),
                            )
                            .await;
                    } else if self.status.client_id.is_some() {
                        self.ctx
                            .publish(self.client, EventType::Warning, "SecretRestored", "Restore", "the Secret was missing; the operator wrote it again from the credentials it holds".into())
                            .await;
                    }
                }
                Action::Adopt => {
                    let auth = auth.as_ref().expect("built above");
                    if let Some(requeue) = self
                        .adopt(auth, &server, &desired.scopes, &desired_hash)
                        .await?
                    {
                        return Ok(requeue);
                    }
                }
                Action::RetirePrevious => {
                    self.retire_previous(&server, &desired.scopes).await?;
                }
                Action::ProbeExistence => {
                    let auth = auth.as_ref().expect("built above");
                    self.probe(auth, &server, &desired.scopes).await?;
                }
                Action::MintToken(name) => {
                    let auth = auth.as_ref().expect("built above");
                    self.mint(auth, &server, &desired.scopes, &name).await?;
                }
            }
        }
        warn!(client = %self.client.name_any(), "reconcile did not settle within its step budget");
        Ok(Requeue::requeue(self.ctx.settings.backoff_base))
    }
}

/// Fields the admission policy should have refused, for objects created before it existed.
/// What an action would change, in words; None for what only reads (an existence check) or waits.
fn change_of(action: &Action) -> Option<String> {
    Some(match action {
        Action::Register => "register the client".to_owned(),
        Action::Adopt => "adopt the registration spec.adopt names".to_owned(),
        Action::WriteSigningKey => "make a signing key and write it to the Secret".to_owned(),
        Action::RotateKey(step) => format!("rotate the signing key ({step:?})"),
        Action::ReRegister => {
            "register the client again (the server no longer knows it)".to_owned()
        }
        Action::Replace => "register a replacement and orphan the current client".to_owned(),
        Action::Update => "update the registration's metadata (RFC 7592)".to_owned(),
        Action::RotateCredentials => {
            "rotate the credentials (register a replacement; keep the current ones as previous_*)"
                .to_owned()
        }
        Action::RetirePrevious => {
            "retire the registration a rotation replaced (delete it, or orphan it)".to_owned()
        }
        Action::WriteSecret => "write the Secret".to_owned(),
        Action::MintToken(name) => format!("mint debug token {name}"),
        Action::ProbeExistence | Action::Wait(_) | Action::Backoff(_) | Action::AwaitSpecChange => {
            return None;
        }
    })
}

fn dialect_mismatch(client: &SmartClient, dialect: Dialect) -> Option<String> {
    if client.spec.client_id.is_some() && dialect != Dialect::S4sLegacy {
        return Some(format!(
            "spec.clientId is only allowed with S4SLegacy servers; this one speaks {dialect}"
        ));
    }
    if client
        .spec
        .debug_tokens
        .as_ref()
        .is_some_and(|t| !t.is_empty())
        && !dialect.mints_debug_tokens()
    {
        return Some(format!(
            "spec.debugTokens need the Sync-for-Science debug API; this server speaks {dialect}"
        ));
    }
    if client
        .spec
        .access_tokens
        .as_ref()
        .is_some_and(|t| !t.is_empty())
        && dialect != Dialect::Rfc7591
    {
        return Some(format!(
            "spec.accessTokens come from an RFC7591 server's token endpoint; this server speaks {dialect} (use debugTokens)"
        ));
    }
    if client.spec.signing_key.is_some() && dialect != Dialect::Rfc7591 {
        return Some(format!(
            "spec.tokenEndpointAuthMethod private_key_jwt registers a public key, which only RFC7591 servers take; this one speaks {dialect}"
        ));
    }
    None
}

pub(super) fn as_client_credentials(credentials: &StoredCredentials) -> ClientCredentials {
    ClientCredentials {
        client_id: credentials.client_id.clone(),
        client_secret: credentials.client_secret.clone(),
        registration_access_token: credentials.registration_access_token.clone(),
        registration_client_uri: credentials.registration_client_uri.clone(),
        client_assertion: None,
    }
}
