//! What every SmartClient reconcile shares: the settings, the memory of credentials and written
//! status (the write-ahead record between reconciles), the auth-server clients and initial access tokens
//! cached per server, and the Event queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use secrecy::SecretString;

use super::cache::Caches;
use super::events::EventQueue;
use super::observed::ObservedAuthServer;
use super::reconcile::ReconcileError;
use super::resolve::{ResolvedServer, http_settings, read_secret_key};
use super::secret::StoredCredentials;
use crate::authserver::{AuthServerClient, HttpClient, HttpSettings};
use crate::crd::{AuthServerKind, SmartClient, SmartClientStatus};
use crate::leadership::Leadership;
use crate::telemetry::Metrics;

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
    /// When the auth server last answered an existence check (or registration) for this client.
    last_existence_check: Option<Timestamp>,
    /// The last status written, with the generation it describes. The watch cache may hand the next
    /// reconcile an object from before that write; this keeps the operator from acting twice.
    written_status: Option<(i64, SmartClientStatus)>,
    /// The last registration this operator sent (the time it recorded in the Secret): its fate is
    /// known here, so finding it in the Secret is no sign of a lost answer.
    registration_sent_at: Option<String>,
    /// A private_key_jwt client's key, held from the moment it is made: it reaches the Secret before
    /// any registration publishes it, and a failed Secret write loses nothing.
    signing_keys: Option<super::key_rotation::HeldKeys>,
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
    http_clients: Arc<HttpClients>,
    initial_tokens: Mutex<HashMap<String, CachedToken>>,
    /// Per auth server (`kind/namespace/name`): when a check last found one of its clients gone. The
    /// clients of a server are wiped together (a redeployed S4S auth-proxy), so every client checked
    /// before that time is due for a check at once.
    wipes_suspected: Mutex<HashMap<String, Timestamp>>,
    /// Tells the controllers to reconcile every client of a server suspected wiped.
    wipe_alarm: tokio::sync::broadcast::Sender<WipedServer>,
}

/// One HTTP client per auth server (`kind/namespace/name`), with the fingerprint of the server
/// resource it was built for. The CA bundle is read when a client is built: a server that cannot be
/// reached (a rotated certificate the old CA does not sign, among others) loses its client, so the
/// next attempt reads the CA Secret again (review C17: a CA rotated in its Secret was never seen).
#[derive(Default)]
pub struct HttpClients(Mutex<HashMap<String, (String, HttpClient)>>);

impl HttpClients {
    fn get(&self, server: &str, fingerprint: &str) -> Option<HttpClient> {
        let clients = self.0.lock().ok()?;
        clients
            .get(server)
            .filter(|(built_for, _)| built_for == fingerprint)
            .map(|(_, http)| http.clone())
    }

    fn insert(&self, server: String, fingerprint: String, http: HttpClient) {
        if let Ok(mut clients) = self.0.lock() {
            clients.insert(server, (fingerprint, http));
        }
    }

    pub fn forget(&self, server: &str) {
        if let Ok(mut clients) = self.0.lock() {
            clients.remove(server);
        }
    }
}

/// An auth server suspected wiped, as the controllers find its clients.
#[derive(Clone, Debug)]
pub struct WipedServer {
    pub kind: AuthServerKind,
    pub name: String,
    /// The namespace of a SmartAuthServer; None for a ClusterSmartAuthServer.
    pub namespace: Option<String>,
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
            http_clients: Arc::default(),
            initial_tokens: Mutex::default(),
            wipes_suspected: Mutex::default(),
            wipe_alarm: tokio::sync::broadcast::channel(64).0,
        }
    }

    /// Changes what is remembered of one SmartClient (creating its entry), and keeps the
    /// `clients_remembered` gauge in step.
    fn with_memory<R>(&self, uid: &str, change: impl FnOnce(&mut Memory) -> R) -> Option<R> {
        let mut memory = self.memory.lock().ok()?;
        let result = change(memory.entry(uid.to_owned()).or_default());
        self.metrics.clients_remembered.set(memory.len() as i64);
        Some(result)
    }

    pub(super) fn remembered(&self, uid: &str) -> Option<StoredCredentials> {
        self.memory
            .lock()
            .ok()?
            .get(uid)
            .and_then(|m| m.credentials.clone())
    }

    pub(super) fn remember(&self, uid: &str, credentials: Option<StoredCredentials>) {
        self.with_memory(uid, |m| m.credentials = credentials);
    }

    pub(super) fn remembered_signing_keys(
        &self,
        uid: &str,
    ) -> Option<super::key_rotation::HeldKeys> {
        self.memory
            .lock()
            .ok()?
            .get(uid)
            .and_then(|m| m.signing_keys.clone())
    }

    pub(super) fn remember_signing_keys(
        &self,
        uid: &str,
        keys: Option<super::key_rotation::HeldKeys>,
    ) {
        self.with_memory(uid, |m| m.signing_keys = keys);
    }

    /// Whether this operator sent the registration recorded in flight since `sent_at`, or has
    /// already recorded it as a possible orphan.
    pub(super) fn knows_registration(&self, uid: &str, sent_at: &str) -> bool {
        self.memory.lock().ok().is_some_and(|m| {
            m.get(uid)
                .and_then(|m| m.registration_sent_at.as_deref())
                .is_some_and(|known| known == sent_at)
        })
    }

    pub(super) fn remember_registration(&self, uid: &str, sent_at: &str) {
        self.with_memory(uid, |m| m.registration_sent_at = Some(sent_at.to_owned()));
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
    pub(super) fn wrote_status(&self, client: &SmartClient) -> bool {
        let uid = client.uid().unwrap_or_default();
        let generation = client.metadata.generation.unwrap_or_default();
        self.memory.lock().ok().is_some_and(|m| {
            m.get(&uid)
                .and_then(|m| m.written_status.as_ref())
                .is_some_and(|(written, _)| *written == generation)
        })
    }

    pub(super) fn remember_status(&self, uid: &str, generation: i64, status: &SmartClientStatus) {
        self.with_memory(uid, |m| {
            m.written_status = Some((generation, status.clone()))
        });
    }

    /// Lets go of everything held for a SmartClient that is gone: its record and its token metrics.
    pub fn forget(&self, uid: &str) {
        self.forget_where(|known| known == uid);
    }

    /// Lets go of every SmartClient `exists` does not know: objects deleted without the operator's
    /// cleanup (a finalizer stripped by hand, a deletion missed while a watch was down) would
    /// otherwise stay in memory and in the metrics for good (review C17).
    pub fn forget_absent(&self, exists: impl Fn(&str) -> bool) {
        self.forget_where(|uid| !exists(uid));
    }

    fn forget_where(&self, gone: impl Fn(&str) -> bool) {
        let Ok(mut memory) = self.memory.lock() else {
            return;
        };
        let uids: Vec<String> = memory.keys().filter(|uid| gone(uid)).cloned().collect();
        for uid in &uids {
            memory.remove(uid);
        }
        self.metrics.clients_remembered.set(memory.len() as i64);
        drop(memory);
        for uid in &uids {
            self.metrics.forget_tokens_of(uid);
            self.metrics.set_secret_expired(uid, false);
            self.metrics.set_orphans(uid, 0);
            self.metrics.set_rotation_schedule(uid, None);
        }
    }

    /// When the next existence probe is due; the first one is spread over one interval so a restart
    /// does not probe every client at once. A client of a server suspected wiped since its last check
    /// is due now.
    pub(super) fn next_existence_check(
        &self,
        uid: &str,
        server: &str,
        now: Timestamp,
    ) -> Timestamp {
        let interval = self.settings.existence_check_interval;
        let suspected = self
            .wipes_suspected
            .lock()
            .ok()
            .and_then(|w| w.get(server).copied());
        self.with_memory(uid, |m| {
            if let Some(suspected) = suspected
                && m.last_existence_check.is_none_or(|last| last < suspected)
            {
                return now;
            }
            *m.next_existence_check
                .get_or_insert_with(|| now + interval.mul_f64(0.5 + 0.5 * rand::random::<f64>()))
        })
        .unwrap_or(now + interval)
    }

    pub(super) fn schedule_existence_check(&self, uid: &str, now: Timestamp) {
        let interval = self.settings.existence_check_interval;
        let jitter = interval.mul_f64(0.1 * rand::random::<f64>());
        self.with_memory(uid, |m| {
            m.next_existence_check = Some(now + interval + jitter);
            m.last_existence_check = Some(now);
        });
    }

    /// A check found a client of `server` gone: every client of it last checked before `now` is
    /// checked at once (see [`Context::wipe_alarms`]).
    pub(super) fn suspect_wipe(&self, server: &ResolvedServer, now: Timestamp) {
        let key = server.metric_label();
        let fresh = self.wipes_suspected.lock().ok().is_some_and(|mut w| {
            // One alarm per wipe: the clients it wakes find their own clients gone too.
            let interval = self.settings.existence_check_interval;
            let fresh = w.get(&key).is_none_or(|at| *at + interval < now);
            if fresh {
                w.insert(key, now);
            }
            fresh
        });
        if fresh {
            let cluster = server.kind != "SmartAuthServer";
            let _ = self.wipe_alarm.send(WipedServer {
                kind: if cluster {
                    AuthServerKind::ClusterSmartAuthServer
                } else {
                    AuthServerKind::SmartAuthServer
                },
                name: server.name.clone(),
                namespace: (!cluster).then(|| server.secrets_namespace.clone()),
            });
        }
    }

    /// The servers suspected wiped, as they are; a controller reconciles their clients.
    pub fn wipe_alarms(&self) -> tokio::sync::broadcast::Receiver<WipedServer> {
        self.wipe_alarm.subscribe()
    }

    pub(super) async fn http_client(
        &self,
        server: &ResolvedServer,
    ) -> Result<HttpClient, ReconcileError> {
        // One client per auth server, rebuilt when the server resource changes (a new CA, say).
        let key = server.metric_label();
        if let Some(http) = self.http_clients.get(&key, &server.fingerprint) {
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
        self.http_clients
            .insert(key, server.fingerprint.clone(), http.clone());
        Ok(http)
    }

    /// The server's initial access token: read from its Secret once, then reused for every registration
    /// until the server rejects it (see [`Context::forget_initial_token`]) or the server resource changes.
    pub(super) async fn initial_access_token(
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
    pub(super) fn forget_initial_token(&self, server: &ResolvedServer, since: Timestamp) -> bool {
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
            http_clients: self.http_clients.clone(),
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
