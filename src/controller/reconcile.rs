//! The SmartClient reconciler: resolve (I/O) → plan (pure) → apply (I/O) → status, step by step until
//! the plan says wait. Every credential a server returns is written to the Secret before the next remote
//! call that could replace or invalidate it (minting a debug token cannot), and always before the status
//! that announces it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use secrecy::SecretString;
use serde_json::json;
use tracing::{debug, info, warn};

use super::cache::Caches;
use super::cleanup::{Cleanup, cleanup};
use super::conditions::set_condition;
use super::desired::{
    desired_metadata, generate_client_secret, is_applied, metadata_hash, s4s_legacy_client_id,
};
use super::events::EventQueue;
use super::observed::ObservedAuthServer;
use super::plan::{
    Action, PlanInput, USER_ERROR_REASONS, backoff_delay, next_retry, plan_next_action,
    refresh_due_at,
};
use super::resolve::{
    ResolveError, ResolvedServer, http_settings, read_secret_key, resolve_server,
};
use super::secret::{
    PublicValues, SecretOwnership, StoredCredentials, StoredToken, is_in_sync, read_credentials,
    render_data, render_secret, secret_name, secret_ownership,
};
use crate::authserver::{
    AuthServer, AuthServerClient, AuthServerError, ClientCredentials, DebugTokenRequest,
    ErrorClass, Existence, HttpClient, HttpSettings, RegisteredClient,
};
use crate::crd::{
    DebugTokenStatus, Dialect, OrphanedClient, SmartClient, SmartClientStatus, condition,
};
use crate::leadership::Leadership;
use crate::telemetry::Metrics;

/// Finalizer that lets the operator delete the remote registration before the object goes.
/// New SmartClients usually carry it from admission already (see `crd::admission::finalizer_policy`).
pub const FINALIZER: &str = crate::crd::admission::CLEANUP_FINALIZER;
/// Annotation that lets a SmartClient whose cleanup is blocked go without deleting the registration.
pub const ABANDON_ANNOTATION: &str = "smart.fhir.dev/abandon-registration";
/// Field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "smart-operator";
/// How often a SmartClient refused for a Secret it may not write looks again (one GET).
const SECRET_CONFLICT_RECHECK: Duration = Duration::from_secs(60);

/// Tunables of the SmartClient controller.
#[derive(Clone, Debug)]
pub struct Settings {
    pub operator_namespace: String,
    /// How often to check that the auth server still knows each client (S4S servers get wiped).
    pub existence_check_interval: Duration,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Failed cleanup attempts before `DeletionBlocked`.
    pub deletion_attempts: u32,
    pub http: HttpSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            operator_namespace: "smart-operator".into(),
            existence_check_interval: Duration::from_secs(600),
            backoff_base: Duration::from_secs(2),
            backoff_cap: Duration::from_secs(300),
            deletion_attempts: 5,
            http: HttpSettings::default(),
        }
    }
}

/// What the operator remembers about one SmartClient between reconciles.
#[derive(Default)]
struct Memory {
    credentials: Option<StoredCredentials>,
    next_existence_check: Option<Timestamp>,
    /// The last status written, with the generation it describes. The watch cache may hand the next
    /// reconcile an object from before that write; this keeps the operator from acting twice.
    written_status: Option<(i64, SmartClientStatus)>,
}

/// Shared state of the controllers.
pub struct Context {
    pub client: Client,
    pub(super) events: EventQueue,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub caches: Caches,
    pub leadership: Arc<Leadership>,
    memory: Mutex<HashMap<String, Memory>>,
    /// Per auth server: the fingerprint it was built for, and the client.
    http_clients: Mutex<HashMap<String, (String, HttpClient)>>,
    initial_tokens: Mutex<HashMap<String, CachedToken>>,
}

/// An initial access token as read from its Secret, and for which server configuration.
struct CachedToken {
    fingerprint: String,
    reference: crate::crd::SecretKeyRef,
    token: SecretString,
    read_at: Timestamp,
}

impl Context {
    pub fn new(
        client: Client,
        recorder: Recorder,
        settings: Settings,
        metrics: Arc<Metrics>,
        caches: Caches,
        leadership: Arc<Leadership>,
    ) -> Self {
        Self {
            client,
            events: EventQueue::start(recorder),
            settings,
            metrics,
            caches,
            leadership,
            memory: Mutex::default(),
            http_clients: Mutex::default(),
            initial_tokens: Mutex::default(),
        }
    }

    pub(super) fn remembered(&self, uid: &str) -> Option<StoredCredentials> {
        self.memory
            .lock()
            .ok()?
            .get(uid)
            .and_then(|m| m.credentials.clone())
    }

    fn remember(&self, uid: &str, credentials: Option<StoredCredentials>) {
        if let Ok(mut memory) = self.memory.lock() {
            memory.entry(uid.to_owned()).or_default().credentials = credentials;
        }
    }

    /// The newest status of this generation: what the operator last wrote, else the object's.
    pub(super) fn latest_status(&self, client: &SmartClient) -> SmartClientStatus {
        let uid = client.uid().unwrap_or_default();
        let generation = client.metadata.generation.unwrap_or_default();
        self.memory
            .lock()
            .ok()
            .and_then(|m| m.get(&uid).and_then(|m| m.written_status.clone()))
            .filter(|(written_generation, _)| *written_generation == generation)
            .map(|(_, status)| status)
            .unwrap_or_else(|| client.status.clone().unwrap_or_default())
    }

    /// Whether this operator wrote a status for this generation (which the object may not show yet).
    fn wrote_status(&self, client: &SmartClient) -> bool {
        let uid = client.uid().unwrap_or_default();
        let generation = client.metadata.generation.unwrap_or_default();
        self.memory.lock().ok().is_some_and(|m| {
            m.get(&uid)
                .and_then(|m| m.written_status.as_ref())
                .is_some_and(|(written, _)| *written == generation)
        })
    }

    pub(super) fn remember_status(&self, uid: &str, generation: i64, status: &SmartClientStatus) {
        if let Ok(mut memory) = self.memory.lock() {
            memory.entry(uid.to_owned()).or_default().written_status =
                Some((generation, status.clone()));
        }
    }

    pub(super) fn forget(&self, uid: &str) {
        if let Ok(mut memory) = self.memory.lock() {
            memory.remove(uid);
        }
    }

    /// When the next existence probe is due; the first one is spread over one interval so a restart
    /// does not probe every client at once.
    fn next_existence_check(&self, uid: &str, now: Timestamp) -> Timestamp {
        let interval = self.settings.existence_check_interval;
        let Ok(mut memory) = self.memory.lock() else {
            return now + interval;
        };
        *memory
            .entry(uid.to_owned())
            .or_default()
            .next_existence_check
            .get_or_insert_with(|| now + interval.mul_f64(0.5 + 0.5 * rand::random::<f64>()))
    }

    fn schedule_existence_check(&self, uid: &str, now: Timestamp) {
        if let Ok(mut memory) = self.memory.lock() {
            let jitter = self
                .settings
                .existence_check_interval
                .mul_f64(0.1 * rand::random::<f64>());
            memory
                .entry(uid.to_owned())
                .or_default()
                .next_existence_check = Some(now + self.settings.existence_check_interval + jitter);
        }
    }

    async fn http_client(&self, server: &ResolvedServer) -> Result<HttpClient, ReconcileError> {
        // One client per auth server, rebuilt when the server resource changes (a new CA, say).
        let key = server.metric_label();
        if let Some(http) = self.http_clients.lock().ok().and_then(|c| {
            c.get(&key)
                .filter(|(f, _)| *f == server.fingerprint)
                .map(|(_, h)| h.clone())
        }) {
            return Ok(http);
        }
        let settings = http_settings(
            &self.client,
            &server.spec,
            &server.secrets_namespace,
            &self.settings.http,
        )
        .await?;
        let http = HttpClient::new(&settings)?;
        if let Ok(mut cache) = self.http_clients.lock() {
            cache.insert(key, (server.fingerprint.clone(), http.clone()));
        }
        Ok(http)
    }

    /// The server's initial access token: read from its Secret once, then reused for every registration
    /// until the server rejects it (see [`Context::forget_initial_token`]) or the server resource changes.
    async fn initial_access_token(
        &self,
        server: &ResolvedServer,
        reference: &crate::crd::SecretKeyRef,
    ) -> Result<SecretString, ReconcileError> {
        let key = server.metric_label();
        let cached = self.initial_tokens.lock().ok().and_then(|tokens| {
            tokens
                .get(&key)
                .filter(|t| t.fingerprint == server.fingerprint && t.reference == *reference)
                .map(|t| t.token.clone())
        });
        if let Some(token) = cached {
            return Ok(token);
        }
        let token = read_secret_key(
            &self.client,
            &server.secrets_namespace,
            reference,
            "the initial access token",
        )
        .await?;
        if let Ok(mut tokens) = self.initial_tokens.lock() {
            tokens.insert(
                key,
                CachedToken {
                    fingerprint: server.fingerprint.clone(),
                    reference: reference.clone(),
                    token: token.clone(),
                    read_at: Timestamp::now(),
                },
            );
        }
        Ok(token)
    }

    /// Drops a server's cached initial access token after the server refused it. True when the token
    /// was read before `since`, so a fresh read may find a rotated one.
    fn forget_initial_token(&self, server: &ResolvedServer, since: Timestamp) -> bool {
        self.initial_tokens
            .lock()
            .ok()
            .and_then(|mut tokens| tokens.remove(&server.metric_label()))
            .is_some_and(|t| t.read_at < since)
    }

    pub(super) async fn auth_server(
        &self,
        server: &ResolvedServer,
        with_initial_token: bool,
    ) -> Result<ObservedAuthServer, ReconcileError> {
        let http = self.http_client(server).await?;
        let initial_access_token = match (&server.spec.credentials, with_initial_token) {
            (Some(credentials), true) => Some(
                self.initial_access_token(server, &credentials.initial_access_token_secret_ref)
                    .await?,
            ),
            _ => None,
        };
        let inner = AuthServerClient::new(
            server.dialect(),
            http,
            &server.endpoints,
            initial_access_token,
        )?;
        Ok(ObservedAuthServer {
            inner,
            metrics: self.metrics.clone(),
            server: server.metric_label(),
            leadership: self.leadership.clone(),
        })
    }

    pub(super) async fn publish(
        &self,
        client: &SmartClient,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        // Off the reconcile's path (see `events.rs`): neither a slow apiserver nor a terminating
        // namespace that refuses Events may hold up a reconcile or its cleanup.
        self.events.publish(event, client.object_ref(&()));
    }
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
}

impl ReconcileError {
    pub fn reason(&self) -> &'static str {
        match self {
            ReconcileError::AuthServer(e) => e.reason(),
            ReconcileError::Resolve(e) => e.reason(),
            ReconcileError::Kube(_) => "KubernetesApiError",
            ReconcileError::SecretWrite(_) => "SecretWriteFailed",
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
struct Run<'a> {
    ctx: &'a Context,
    client: &'a SmartClient,
    uid: String,
    generation: i64,
    now: Timestamp,
    status: SmartClientStatus,
    secrets: Api<Secret>,
    observed_secret: Option<Secret>,
    /// Whether `observed_secret` is this reconcile's own write (so it is current).
    secret_written: bool,
    /// A Secret rendered from new credentials or tokens, not yet written (see [`Run::persist`]).
    pending_secret: Option<Secret>,
    credentials: Option<StoredCredentials>,
    /// Credentials of a client the server forgot (wiped state): S4SLegacy registers the same id again.
    forgotten: Option<StoredCredentials>,
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
    };
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
    };
    // The Secret first: whoever sees Ready finds the credentials.
    if let Err(ReconcileError::SecretWrite(e)) = run.flush().await {
        return run.report_secret_write_failure(&e).await;
    }
    run.write_status().await?;
    Ok(requeue)
}

impl Run<'_> {
    /// A failed Secret write ends the reconcile: status (with the client id the server handed out) is
    /// still written, so the failure is visible and the id is on record twice.
    async fn report_secret_write_failure(
        &mut self,
        error: &kube::Error,
    ) -> Result<Requeue, ReconcileError> {
        let requeue = self.record_secret_write_failure(error).await;
        self.write_status().await?;
        Ok(requeue)
    }

    async fn drive(&mut self) -> Result<Requeue, ReconcileError> {
        let desired = match desired_metadata(self.client) {
            Ok(desired) => desired,
            Err(e) => return Ok(self.record_user_error("InvalidSpec", e.to_string()).await),
        };
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
        let desired_hash = metadata_hash(&desired, server.dialect());
        let secret_name = secret_name(self.client);
        let namespace = self.client.namespace().unwrap_or_default();
        self.observed_secret = self
            .ctx
            .caches
            .secret(&namespace, &secret_name)
            .map(|s| (*s).clone());
        let token_names: Vec<String> = self.debug_token_names(server.dialect());
        self.take_credentials(&token_names);
        self.record_hashes_in_current_format(&desired, server.dialect(), &desired_hash);
        self.status.secret_name = Some(secret_name.clone());
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
                    &render_data(self.client, credentials, &public),
                    Some(credentials),
                ),
                (Some(_), None) => false,
                (None, _) => true,
            };
            let token_refs: Vec<&str> = token_names.iter().map(String::as_str).collect();
            let action = plan_next_action(&PlanInput {
                dialect: server.dialect(),
                generation: self.generation,
                desired_hash: &desired_hash,
                status: &self.status,
                credentials: self.credentials.as_ref(),
                secret_in_sync,
                debug_tokens: token_refs,
                now: self.now,
                next_existence_check: self.ctx.next_existence_check(&self.uid, self.now),
            });
            debug!(?action, client = %self.client.name_any(), "planned");
            // Before any write or remote call, the live Secret: the store may lag this operator's own
            // last write, and it holds only Secrets labelled as the operator's, so a Secret of the
            // user's with this name is seen only by a live read.
            let needs_secret = !matches!(
                action,
                Action::Wait(_) | Action::Backoff(_) | Action::AwaitSpecChange
            );
            if needs_secret && !secret_confirmed && !self.secret_written {
                self.observed_secret = self.secrets.get_opt(&secret_name).await?;
                self.take_credentials(&token_names);
                self.record_hashes_in_current_format(&desired, server.dialect(), &desired_hash);
                secret_confirmed = true;
                continue;
            }
            if let SecretOwnership::Foreign(why) =
                secret_ownership(self.observed_secret.as_ref(), self.client)
            {
                return Ok(self.record_secret_conflict(why).await);
            }
            let needs_initial_token = matches!(
                action,
                Action::Register | Action::ReRegister | Action::Replace
            );
            let remote = !matches!(
                action,
                Action::Wait(_)
                    | Action::Backoff(_)
                    | Action::AwaitSpecChange
                    | Action::WriteSecret
            );
            if remote && !matches!(action, Action::MintToken(_)) {
                self.flush().await?;
            }
            if needs_initial_token || (auth.is_none() && remote) {
                auth = Some(self.ctx.auth_server(&server, needs_initial_token).await?);
            }
            match action {
                Action::Wait(after) => {
                    self.mark_ready(&server);
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
                Action::Register | Action::ReRegister | Action::Replace => {
                    let auth = auth.as_ref().expect("built above");
                    self.register(auth, &server, &desired, &desired_hash, action)
                        .await?;
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

    /// What the operator knows: its memory, else the record in the Secret it owns (after a restart or
    /// a leader change). The owned Secret is the truth even when status lags: it is written before
    /// status, and its ownerReference uid proves it is this SmartClient's. Read once, it seeds memory,
    /// so a Secret deleted later is restored rather than registered again, and status is brought in
    /// line with it (review C3).
    fn take_credentials(&mut self, token_names: &[String]) {
        self.credentials = self.ctx.remembered(&self.uid).or_else(|| {
            let recovered =
                read_credentials(self.observed_secret.as_ref()?, self.client, token_names)?;
            self.ctx.remember(&self.uid, Some(recovered.clone()));
            Some(recovered)
        });
        let Some(record) = &self.credentials else {
            return;
        };
        // Status reports the record; where a status write was lost, it catches up from it.
        if self.status.client_id.as_ref() != Some(&record.client_id) {
            self.status.client_id = Some(record.client_id.clone());
            self.status.registration_client_uri = record.registration_client_uri.clone();
            self.status.applied_metadata_hash = record.applied_metadata_hash.clone();
        } else if record.applied_metadata_hash.is_some() {
            self.status.applied_metadata_hash = record.applied_metadata_hash.clone();
        }
    }

    /// A hash recorded by an earlier release for the metadata the spec still asks for is rewritten in
    /// the current format (one Secret write, no remote call), so an upgrade updates or replaces
    /// nothing.
    fn record_hashes_in_current_format(
        &mut self,
        desired: &crate::authserver::ClientMetadata,
        dialect: Dialect,
        desired_hash: &str,
    ) {
        let outdated = |hash: &Option<String>| {
            hash.as_deref()
                .is_some_and(|h| h != desired_hash && is_applied(h, desired, dialect))
        };
        if let Some(record) = self.credentials.as_mut()
            && outdated(&record.applied_metadata_hash)
        {
            record.applied_metadata_hash = Some(desired_hash.to_owned());
        }
        if outdated(&self.status.applied_metadata_hash) {
            self.status.applied_metadata_hash = Some(desired_hash.to_owned());
        }
    }

    fn debug_token_names(&self, dialect: Dialect) -> Vec<String> {
        if !dialect.mints_debug_tokens() {
            return Vec::new();
        }
        self.client
            .spec
            .debug_tokens
            .iter()
            .flatten()
            .map(|t| t.name.clone())
            .collect()
    }

    fn public_values(&self, server: &ResolvedServer, requested: &[String]) -> PublicValues {
        let scopes = if self.status.granted_scopes.is_empty() {
            requested.to_vec()
        } else {
            self.status.granted_scopes.clone()
        };
        PublicValues {
            token_endpoint: server.endpoints.token.clone(),
            fhir_base_url: server.spec.fhir_base_url.as_ref().map(|u| u.0.clone()),
            scope: scopes.join(" "),
        }
    }

    /// Stages the Secret from the credentials held now. [`Run::flush`] writes it: before any remote
    /// call that could replace or invalidate the credentials, and before the status at the end, so an
    /// app that sees Ready finds them. Minting a debug token changes no credential, so a new client's
    /// Secret and its first token go out in one write.
    fn persist(&mut self, server: &ResolvedServer, requested: &[String]) {
        let Some(credentials) = &self.credentials else {
            return;
        };
        let data = render_data(
            self.client,
            credentials,
            &self.public_values(server, requested),
        );
        let secret = render_secret(self.client, data, Some(credentials));
        let name = secret.metadata.name.clone().unwrap_or_default();
        self.observed_secret = Some(secret.clone());
        self.pending_secret = Some(secret);
        self.secret_written = true;
        set_condition(
            &mut self.status.conditions,
            condition::SECRET_SYNCED,
            true,
            "SecretWritten",
            format!("Secret {name} holds the credentials"),
            Some(self.generation),
            self.now,
        );
    }

    /// Writes the staged Secret. Memory takes the credentials first: it is the write-ahead record, so a
    /// write the apiserver refuses (or a crash after the server answered) loses nothing; the next
    /// reconcile writes the Secret again from memory instead of registering again (review C1/C2).
    async fn flush(&mut self) -> Result<(), ReconcileError> {
        let Some(secret) = self.pending_secret.take() else {
            return Ok(());
        };
        self.ctx.remember(&self.uid, self.credentials.clone());
        let name = secret.metadata.name.clone().unwrap_or_default();
        let written = self
            .secrets
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await
            .map_err(ReconcileError::SecretWrite)?;
        self.observed_secret = Some(written);
        Ok(())
    }

    /// The Secret could not be written. The credentials stay in memory; status says why (the
    /// apiserver's words) and the write is retried with growing backoff, before any remote call.
    async fn record_secret_write_failure(&mut self, error: &kube::Error) -> Requeue {
        let (delay, failures) = self.record_failure(None);
        let name = secret_name(self.client);
        let reason = match error {
            kube::Error::Api(status) => status.message.clone(),
            other => other.to_string(),
        };
        let message = format!(
            "the Secret {name} could not be written: {reason}; the credentials are kept and the write is retried (attempt {failures}, next in {}s)",
            delay.as_secs()
        );
        set_condition(
            &mut self.status.conditions,
            condition::SECRET_SYNCED,
            false,
            "SecretWriteFailed",
            message.clone(),
            Some(self.generation),
            self.now,
        );
        warn!(client = %self.client.name_any(), secret = %name, %reason, "could not write the Secret");
        self.report_not_ready(
            "SecretWriteFailed",
            message.clone(),
            message,
            "WriteSecret",
            false,
        )
        .await;
        Requeue::requeue(delay)
    }

    async fn register(
        &mut self,
        auth: &ObservedAuthServer,
        server: &ResolvedServer,
        desired: &crate::authserver::ClientMetadata,
        desired_hash: &str,
        action: Action,
    ) -> Result<(), ReconcileError> {
        let previous_client_id = self.status.client_id.clone();
        // S4SLegacy: the caller chooses the id and secret. Persist them before posting, so a crash between
        // the two cannot lose a registered secret.
        let chosen = if server.dialect() == Dialect::S4sLegacy {
            let mut client_id = s4s_legacy_client_id(self.client);
            if action == Action::Replace && self.client.spec.client_id.is_none() {
                let hex = desired_hash.rsplit('-').next().unwrap_or(desired_hash);
                client_id = format!("{client_id}.{}", &hex[..8.min(hex.len())]);
            }
            // A choice persisted earlier but never confirmed (a crash or a failure after it was
            // written) is posted again as it is: the server may hold it already.
            let unconfirmed = self.credentials.as_ref().filter(|c| c.registration_pending);
            if let Some(earlier) = unconfirmed {
                client_id = earlier.client_id.clone();
            }
            // A server that lost its state gets the same id and secret back, so mounted credentials
            // keep working: the forgotten credentials count as ours.
            let reuse = self
                .credentials
                .as_ref()
                .or(self.forgotten.as_ref())
                .filter(|c| c.client_id == client_id)
                .and_then(|c| c.client_secret.clone());
            let chosen = StoredCredentials {
                client_id,
                client_secret: Some(reuse.unwrap_or_else(generate_client_secret)),
                registration_access_token: None,
                registration_client_uri: None,
                tokens: Default::default(),
                // Not registered yet: no metadata is applied until the server says so.
                applied_metadata_hash: None,
                registration_pending: true,
            };
            self.credentials = Some(chosen.clone());
            self.persist(server, &desired.scopes);
            self.flush().await?;
            Some(as_client_credentials(&chosen))
        } else {
            None
        };
        let registered = match auth.register(desired, chosen.as_ref()).await {
            // The server created a client whose answer cannot be used: record it, never retry.
            Err(AuthServerError::RegisteredButUnreadable {
                endpoint,
                client_id: Some(client_id),
                detail,
            }) => {
                self.record_orphan(&client_id, "AnswerUnreadable");
                return Err(AuthServerError::RegisteredButUnreadable {
                    endpoint,
                    client_id: Some(client_id),
                    detail,
                }
                .into());
            }
            // The token may have been rotated or topped up in its Secret since it was cached: try once
            // more with a fresh read before reporting the error.
            Err(e)
                if e.class() == ErrorClass::Credential
                    && self.ctx.forget_initial_token(server, self.now) =>
            {
                let fresh = self.ctx.auth_server(server, true).await?;
                fresh.register(desired, chosen.as_ref()).await?
            }
            other => other?,
        };
        self.accept_registration(registered, server, desired_hash);
        self.persist(server, &desired.scopes);
        self.status.retry = None;
        self.ctx.schedule_existence_check(&self.uid, self.now);
        let client_id = self.status.client_id.clone().unwrap_or_default();
        let (reason, note) = match action {
            Action::Replace => {
                if let Some(old) = previous_client_id.filter(|old| *old != client_id) {
                    self.record_orphan(&old, "Replaced");
                }
                let why = match server.dialect() {
                    Dialect::Rfc7591 => "the auth server offers no RFC 7592 management".to_owned(),
                    dialect => format!("{dialect} cannot update clients"),
                };
                (
                    "Replaced",
                    format!(
                        "{why}: registered {client_id} with the new metadata; the previous client is orphaned on the server"
                    ),
                )
            }
            Action::ReRegister => (
                "ReRegistered",
                format!(
                    "the auth server no longer knew the client (or its credentials were lost): registered again as {client_id}"
                ),
            ),
            _ => (
                "Registered",
                format!(
                    "registered with {} {} as {client_id}",
                    server.kind, server.name
                ),
            ),
        };
        info!(client = %self.client.name_any(), %client_id, reason, "registration accepted");
        self.ctx
            .publish(self.client, EventType::Normal, reason, "Register", note)
            .await;
        Ok(())
    }

    /// Lists a client left on the server in `status.orphanedClients` (once per client id).
    fn record_orphan(&mut self, client_id: &str, reason: &str) {
        info!(client = %self.client.name_any(), %client_id, reason, "registration orphaned");
        let orphans = &mut self.status.orphaned_clients;
        if orphans.iter().all(|o| o.client_id != client_id) {
            orphans.push(OrphanedClient {
                client_id: client_id.to_owned(),
                reason: reason.into(),
                since: Time(self.now),
            });
            orphans.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        }
    }

    /// Takes in a fresh registration: credentials into memory (persisted by the caller), facts into status.
    fn accept_registration(
        &mut self,
        registered: RegisteredClient,
        server: &ResolvedServer,
        desired_hash: &str,
    ) {
        let keep_tokens = self
            .credentials
            .as_ref()
            .filter(|c| c.client_id == registered.client_id)
            .map(|c| c.tokens.clone());
        if keep_tokens.is_none() {
            // Tokens belong to a client id; a new client needs new ones.
            self.status.debug_tokens.clear();
        }
        let RegisteredClient {
            client_id,
            client_secret,
            registration_access_token,
            registration_client_uri,
            client_id_issued_at,
            granted_scopes,
        } = registered;
        // Servers answer updates with less than registrations (Keycloak sends client_id_issued_at only
        // on create; some servers omit an unchanged token): keep what the answer does not replace.
        let previous = self.credentials.take().filter(|p| p.client_id == client_id);
        let registration_client_uri = registration_client_uri.or_else(|| {
            previous
                .as_ref()
                .and_then(|p| p.registration_client_uri.clone())
        });
        self.credentials = Some(StoredCredentials {
            client_id: client_id.clone(),
            client_secret: client_secret
                .or_else(|| previous.as_ref().and_then(|p| p.client_secret.clone())),
            registration_access_token: registration_access_token.or_else(|| {
                previous
                    .as_ref()
                    .and_then(|p| p.registration_access_token.clone())
            }),
            registration_client_uri: registration_client_uri.clone(),
            tokens: keep_tokens.unwrap_or_default(),
            applied_metadata_hash: Some(desired_hash.to_owned()),
            registration_pending: false,
        });
        let same_client = previous.is_some();
        self.status.client_id = Some(client_id);
        self.status.registration_client_uri = registration_client_uri;
        let issued_at = client_id_issued_at
            .and_then(|s| Timestamp::from_second(s).ok())
            .map(Time);
        if issued_at.is_some() || !same_client {
            self.status.client_id_issued_at = issued_at;
        }
        if let Some(granted) = granted_scopes {
            self.status.granted_scopes = granted;
        } else if !same_client {
            self.status.granted_scopes.clear();
        }
        self.status.applied_metadata_hash = Some(desired_hash.to_owned());
        set_condition(
            &mut self.status.conditions,
            condition::REGISTERED,
            true,
            "Registered",
            format!("registered with {} {}", server.kind, server.name),
            Some(self.generation),
            self.now,
        );
    }

    async fn update(
        &mut self,
        auth: &ObservedAuthServer,
        server: &ResolvedServer,
        desired: &crate::authserver::ClientMetadata,
        desired_hash: &str,
    ) -> Result<(), ReconcileError> {
        let credentials = self
            .credentials
            .clone()
            .expect("plan updates only known clients");
        match auth
            .update(&as_client_credentials(&credentials), desired)
            .await
        {
            Ok(updated) => {
                self.accept_registration(updated, server, desired_hash);
                self.persist(server, &desired.scopes);
                self.status.retry = None;
                self.ctx
                    .publish(
                        self.client,
                        EventType::Normal,
                        "Updated",
                        "Update",
                        "the registration's metadata was updated (RFC 7592)".into(),
                    )
                    .await;
                Ok(())
            }
            Err(AuthServerError::ClientGone) => {
                self.lose_registration("ClientGone");
                Ok(())
            }
            Err(AuthServerError::RegistrationAccessTokenRejected { status }) => {
                match auth.probe(&as_client_credentials(&credentials)).await? {
                    Existence::Gone => {
                        self.lose_registration("ClientGone");
                        Ok(())
                    }
                    Existence::Exists => {
                        Err(AuthServerError::RegistrationAccessTokenRejected { status }.into())
                    }
                }
            }
            Err(other) => Err(other.into()),
        }
    }

    async fn probe(
        &mut self,
        auth: &ObservedAuthServer,
        server: &ResolvedServer,
        requested: &[String],
    ) -> Result<(), ReconcileError> {
        let credentials = self
            .credentials
            .clone()
            .expect("plan probes only known clients");
        // A client that cannot authenticate at the token endpoint (public, or no token endpoint) is
        // looked up with RFC 7592 GET, whose answer may carry a re-signed registration access token:
        // it is the only valid one from now on and is kept like any other credential (review C7).
        let by_management_read = server.dialect() == Dialect::Rfc7591
            && (credentials.client_secret.is_none() || server.endpoints.token.is_none());
        let existence = if by_management_read {
            match auth.read(&as_client_credentials(&credentials)).await {
                Ok(registered) => {
                    self.keep_rotated_token(
                        registered.registration_access_token,
                        server,
                        requested,
                    );
                    Existence::Exists
                }
                // Ambiguous (a stale token or a deleted client): assume it exists rather than register
                // a duplicate.
                Err(AuthServerError::RegistrationAccessTokenRejected { .. }) => Existence::Exists,
                Err(AuthServerError::ClientGone) => Existence::Gone,
                Err(e) => return Err(e.into()),
            }
        } else {
            auth.probe(&as_client_credentials(&credentials)).await?
        };
        match existence {
            Existence::Exists => {
                // The server answered and knows the client: an earlier failure's backoff is over
                // (left in place, it would block a later deletion without an attempt; review C4).
                self.status.retry = None;
                self.ctx.schedule_existence_check(&self.uid, self.now);
            }
            Existence::Gone => {
                self.ctx
                    .publish(self.client, EventType::Warning, "ClientGone", "Probe", "the auth server no longer knows this client (its state was wiped?); registering again".into())
                    .await;
                self.lose_registration("ClientGone");
            }
        }
        Ok(())
    }

    /// A registration access token the server rotated goes into the record and the Secret.
    fn keep_rotated_token(
        &mut self,
        token: Option<SecretString>,
        server: &ResolvedServer,
        requested: &[String],
    ) {
        use secrecy::ExposeSecret;
        let Some(token) = token else {
            return;
        };
        let Some(record) = self.credentials.as_mut() else {
            return;
        };
        let changed = record
            .registration_access_token
            .as_ref()
            .is_none_or(|held| held.expose_secret() != token.expose_secret());
        if changed {
            record.registration_access_token = Some(token);
            self.persist(server, requested);
        }
    }

    /// The server forgot the client: drop the credentials (keeping status.clientId) so the plan
    /// re-registers.
    fn lose_registration(&mut self, reason: &str) {
        self.forgotten = self.credentials.take();
        self.ctx.remember(&self.uid, None);
        set_condition(
            &mut self.status.conditions,
            condition::REGISTERED,
            false,
            reason,
            "the auth server no longer knows this client",
            Some(self.generation),
            self.now,
        );
    }

    async fn mint(
        &mut self,
        auth: &ObservedAuthServer,
        server: &ResolvedServer,
        scopes: &[String],
        name: &str,
    ) -> Result<(), ReconcileError> {
        let spec = self
            .client
            .spec
            .debug_tokens
            .iter()
            .flatten()
            .find(|t| t.name == name)
            .cloned()
            .expect("plan mints only spec tokens");
        let lifetime = spec
            .lifetime
            .map(Duration::from)
            .unwrap_or(Duration::from_secs(3600));
        let refresh_before = spec
            .refresh_before
            .map(Duration::from)
            .unwrap_or(lifetime / 5);
        let request = DebugTokenRequest {
            user: spec.user.clone(),
            patient_id: spec.patient_id.clone(),
            scopes: spec
                .scopes
                .as_ref()
                .map(|s| s.iter().map(|s| s.0.clone()).collect())
                .unwrap_or_else(|| scopes.to_vec()),
            lifetime,
        };
        let credentials = self
            .credentials
            .clone()
            .expect("plan mints only for known clients");
        let grant = match auth
            .mint_debug_token(&as_client_credentials(&credentials), &request)
            .await
        {
            Ok(grant) => grant,
            Err(e) => {
                set_condition(
                    &mut self.status.conditions,
                    condition::TOKENS_FRESH,
                    false,
                    e.reason(),
                    format!("minting debug token {name} failed: {e}"),
                    Some(self.generation),
                    self.now,
                );
                return Err(e.into());
            }
        };
        let minted_at = Timestamp::now();
        // The server's own word on expiry wins; the requested lifetime is the fallback.
        let expires_at = match auth.introspect(&grant.access_token).await {
            Ok(info) => info.expires_at.and_then(|t| Timestamp::try_from(t).ok()),
            Err(e) if e.is_retryable() => return Err(e.into()),
            Err(_) => None,
        }
        .unwrap_or(minted_at + lifetime);
        let next_refresh_at = refresh_due_at(minted_at, expires_at, refresh_before, rand::random());
        if let Some(credentials) = self.credentials.as_mut() {
            credentials.tokens.insert(
                name.to_owned(),
                StoredToken {
                    access_token: grant.access_token,
                    refresh_token: grant.refresh_token,
                    expires_at: Some(expires_at.to_string()),
                },
            );
        }
        self.persist(server, scopes);
        let entry = DebugTokenStatus {
            name: name.to_owned(),
            expires_at: Some(Time(expires_at)),
            next_refresh_at: Some(Time(next_refresh_at)),
        };
        self.status.debug_tokens.retain(|t| t.name != name);
        self.status.debug_tokens.push(entry);
        self.status.debug_tokens.sort_by(|a, b| a.name.cmp(&b.name));
        self.status.retry = None;
        info!(client = %self.client.name_any(), token = name, %expires_at, %next_refresh_at, "debug token minted");
        Ok(())
    }

    fn mark_ready(&mut self, server: &ResolvedServer) {
        // Healthy: whatever failed before (a Secret write, a probe) has been done since, so no backoff
        // is left to delay or block what comes next (a deletion, say).
        self.status.retry = None;
        let token_names = self.debug_token_names(server.dialect());
        self.status
            .debug_tokens
            .retain(|t| token_names.contains(&t.name));
        self.ctx.metrics.forget_tokens_of(&self.uid);
        for token in &self.status.debug_tokens {
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
                    "{} debug token(s) minted and scheduled for renewal",
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

    async fn record_auth_server_error(&mut self, error: &AuthServerError) -> Requeue {
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
    fn flag_expired_tokens(&mut self) {
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
    fn record_failure(&mut self, asked: Option<Duration>) -> (Duration, i32) {
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

    async fn record_user_error(&mut self, reason: &str, message: String) -> Requeue {
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
    async fn record_secret_conflict(&mut self, message: String) -> Requeue {
        self.status.retry = None;
        self.report_not_ready(
            "SecretConflict",
            message.clone(),
            message,
            "Reconcile",
            false,
        )
        .await;
        set_condition(
            &mut self.status.conditions,
            condition::SECRET_SYNCED,
            false,
            "SecretConflict",
            "the Secret the spec names belongs to someone else; nothing is written to it",
            Some(self.generation),
            self.now,
        );
        Requeue::requeue(SECRET_CONFLICT_RECHECK)
    }

    async fn record_not_usable(&mut self, reason: &str, message: String) -> Requeue {
        self.report_not_ready(reason, message.clone(), message, "Resolve", false)
            .await;
        // Auth server changes trigger a reconcile through the watch; this is only a safety net.
        Requeue::requeue(Duration::from_secs(300))
    }

    /// Sets `Ready=False` and publishes a Warning Event when the reason is new (for this generation, if
    /// `per_generation`), so a failure repeated by backoff does not flood Events.
    async fn report_not_ready(
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
    async fn write_status(&self) -> Result<(), ReconcileError> {
        let known = self.client.status.is_some() || self.ctx.wrote_status(self.client);
        if known && self.ctx.latest_status(self.client) == self.status {
            return Ok(());
        }
        let api: Api<SmartClient> = Api::namespaced(
            self.ctx.client.clone(),
            &self.client.namespace().unwrap_or_default(),
        );
        let patch = serde_json::json!({
            "apiVersion": "smart.fhir.dev/v1alpha1",
            "kind": "SmartClient",
            "status": self.status,
        });
        api.patch_status(
            &self.client.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        self.ctx
            .remember_status(&self.uid, self.generation, &self.status);
        Ok(())
    }
}

/// Fields the admission policy should have refused, for objects created before it existed.
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
    None
}

pub(super) fn as_client_credentials(credentials: &StoredCredentials) -> ClientCredentials {
    ClientCredentials {
        client_id: credentials.client_id.clone(),
        client_secret: credentials.client_secret.clone(),
        registration_access_token: credentials.registration_access_token.clone(),
        registration_client_uri: credentials.registration_client_uri.clone(),
    }
}
