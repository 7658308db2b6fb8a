//! The remote steps of a live SmartClient's reconcile, each one action of the plan: register (or
//! replace), update, check existence, mint a debug token. Each takes in what the server answered into
//! the record and stages the Secret; the loop in `reconcile.rs` writes it before the next remote call.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use secrecy::SecretString;
use std::time::Duration;
use tracing::info;

use super::conditions::{find, set_condition};
use super::desired::{generate_client_secret, s4s_legacy_client_id};
use super::observed::ObservedAuthServer;
use super::plan::{Action, refresh_due_at};
use super::reconcile::{ReconcileError, Run, as_client_credentials};
use super::resolve::ResolvedServer;
use super::secret::{StoredCredentials, StoredToken};
use crate::authserver::{
    AuthServer, AuthServerError, DebugTokenRequest, ErrorClass, Existence, RegisteredClient,
};
use crate::crd::{DebugTokenStatus, Dialect, OrphanedClient, condition};

impl Run<'_> {
    pub(super) async fn register(
        &mut self,
        auth: &ObservedAuthServer,
        server: &ResolvedServer,
        desired: &crate::authserver::ClientMetadata,
        desired_hash: &str,
        action: Action,
    ) -> Result<(), ReconcileError> {
        let previous_client_id = self.status.client_id.clone();
        // A rotation: the credentials held now are kept, as the previous registration, beside the
        // replacement's in the write that takes in its answer.
        let rotating_out = (action == Action::RotateCredentials)
            .then(|| self.outgoing_registration())
            .flatten();
        let handled_request = rotating_out
            .as_ref()
            .and_then(|_| self.credential_rotation_request());
        // S4SLegacy: the caller chooses the id and secret. Persist them before posting, so a crash between
        // the two cannot lose a registered secret.
        let chosen = if server.dialect() == Dialect::S4sLegacy {
            let mut client_id = s4s_legacy_client_id(self.client);
            if action == Action::Replace && self.client.spec.client_id.is_none() {
                let hex = desired_hash.rsplit('-').next().unwrap_or(desired_hash);
                client_id = format!("{client_id}.{}", &hex[..8.min(hex.len())]);
            }
            // A server that forgot the client gets the id it had back (a replacement's or a
            // rotation's id is not the derived one), with its secret below.
            if action == Action::ReRegister
                && self.client.spec.client_id.is_none()
                && let Some(forgotten) = &self.forgotten
            {
                client_id = forgotten.client_id.clone();
            }
            // A rotation's replacement needs an id of its own (the metadata is unchanged).
            if rotating_out.is_some() {
                client_id = format!("{client_id}.r{:08x}", rand::random::<u32>());
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
                // The credentials it replaces stay in the Secret while the choice is unconfirmed,
                // and so does the rotation request it answers (a choice posted again after a
                // failure answers the same one).
                previous: rotating_out
                    .clone()
                    .or_else(|| self.credentials.as_ref().and_then(|c| c.previous.clone())),
                handled_rotation_request: handled_request.clone().or_else(|| {
                    self.credentials
                        .as_ref()
                        .and_then(|c| c.handled_rotation_request.clone())
                }),
                ..Default::default()
            };
            self.credentials = Some(chosen.clone());
            self.persist(server, &desired.scopes);
            self.flush().await?;
            Some(as_client_credentials(&chosen))
        } else {
            None
        };
        let registered = match self
            .send_registration(auth, server, desired, chosen.as_ref())
            .await
        {
            Ok(registered) => registered,
            // Past the renew deadline the Secret keeps saying the registration is in flight: the next
            // leader finds it there and records what this instance can no longer write to status.
            Err(e @ ReconcileError::AuthServer(AuthServerError::NotLeader)) => return Err(e),
            Err(e) => {
                // The attempt is over: whatever it may have left on the server is recorded first,
                // then the Secret stops saying a registration is in flight.
                if let Some(sent_at) = self.registration_sent_at.take() {
                    let lost = match &e {
                        ReconcileError::AuthServer(AuthServerError::RegisteredButUnreadable {
                            client_id: None,
                            ..
                        }) => Some("AnswerUnreadable"),
                        ReconcileError::AuthServer(a) if a.answer_may_be_lost() => {
                            Some("AnswerLost")
                        }
                        _ => None,
                    };
                    if let Some(reason) = lost {
                        self.record_lost_answer(&sent_at, reason).await?;
                    }
                    self.persist(server, &desired.scopes);
                }
                return Err(e);
            }
        };
        self.registration_sent_at = None;
        self.accept_registration(registered, server, desired_hash);
        if let (Some(outgoing), Some(record)) = (&rotating_out, self.credentials.as_mut()) {
            record.previous = Some(outgoing.clone());
            record.handled_rotation_request = handled_request.clone();
        }
        self.report_rotation();
        self.report_granted_scopes(&desired.scopes).await;
        self.persist(server, &desired.scopes);
        self.status.retry = None;
        // The answer shows the client exists now, after any wipe suspected so far.
        self.ctx
            .schedule_existence_check(&self.uid, Timestamp::now());
        let client_id = self.status.client_id.clone().unwrap_or_default();
        let (reason, note) = match action {
            Action::RotateCredentials => (
                "CredentialsRotated",
                format!(
                    "registered {client_id} to replace {}: the Secret holds the new credentials, and the replaced ones as previous_* until {}, when that registration is retired",
                    rotating_out
                        .as_ref()
                        .map(|o| o.client_id.as_str())
                        .unwrap_or_default(),
                    self.status
                        .previous_client
                        .as_ref()
                        .map(|p| p.retires_at.0.to_string())
                        .unwrap_or_default()
                ),
            ),
            Action::Replace => {
                if let Some(old) = previous_client_id.filter(|old| *old != client_id) {
                    self.record_orphan(&old, "Replaced", self.now);
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

    /// Posts the registration; the answers that end it are sorted out here (an unreadable answer is
    /// recorded, a refused initial access token is read again once).
    async fn send_registration(
        &mut self,
        auth: &ObservedAuthServer,
        server: &ResolvedServer,
        desired: &crate::authserver::ClientMetadata,
        chosen: Option<&crate::authserver::ClientCredentials>,
    ) -> Result<RegisteredClient, ReconcileError> {
        Ok(match auth.register(desired, chosen).await {
            // The server created a client whose answer cannot be used: record it, never retry.
            Err(AuthServerError::RegisteredButUnreadable {
                endpoint,
                client_id: Some(client_id),
                detail,
            }) => {
                self.record_orphan(&client_id, "AnswerUnreadable", self.now);
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
                fresh.register(desired, chosen).await?
            }
            other => other?,
        })
    }

    /// Lists a client left on the server in `status.orphanedClients`: once per client id, or, for a
    /// client whose id nobody learnt (recorded with an empty id), once per registration sent.
    pub(super) fn record_orphan(&mut self, client_id: &str, reason: &str, since: Timestamp) {
        info!(client = %self.client.name_any(), %client_id, reason, "registration orphaned");
        let orphans = &mut self.status.orphaned_clients;
        let known = orphans
            .iter()
            .any(|o| o.client_id == client_id && (!client_id.is_empty() || o.since.0 == since));
        if !known {
            orphans.push(OrphanedClient {
                client_id: client_id.to_owned(),
                reason: reason.into(),
                since: Time(since),
            });
            orphans.sort_by(|a, b| (&a.client_id, a.since.0).cmp(&(&b.client_id, b.since.0)));
        }
    }

    /// A registration sent at `sent_at` whose answer never reached the Secret (a timeout, a broken
    /// connection, or an operator that died waiting): the server may hold a client whose id nobody
    /// learnt. It is listed with an empty id and the time it was sent, and said in an Event, so an
    /// admin can find it on the server by its client name and that time.
    /// The record goes to status at once, before the Secret stops saying the registration is in
    /// flight, so no crash in between can lose it.
    pub(super) async fn record_lost_answer(
        &mut self,
        sent_at: &str,
        reason: &str,
    ) -> Result<(), ReconcileError> {
        let since = sent_at.parse().unwrap_or(self.now);
        self.record_orphan("", reason, since);
        let note = format!(
            "a registration sent at {sent_at} got no answer the operator could keep; the auth server may hold a client named {:?} registered then, whose id is unknown: it is listed in status.orphanedClients",
            self.client
                .spec
                .client_name
                .as_deref()
                .unwrap_or(&self.client.name_any())
        );
        self.ctx
            .publish(
                self.client,
                EventType::Warning,
                "RegistrationAnswerLost",
                "Register",
                note,
            )
            .await;
        self.write_status().await
    }

    /// Takes in a fresh registration: credentials into memory (persisted by the caller), facts into status.
    pub(super) fn accept_registration(
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
            self.status.access_tokens.clear();
        }
        let RegisteredClient {
            client_id,
            client_secret,
            registration_access_token,
            registration_client_uri,
            client_id_issued_at,
            client_secret_expires_at,
            granted_scopes,
        } = registered;
        // Servers answer updates with less than registrations (Keycloak sends client_id_issued_at only
        // on create; some servers omit an unchanged token): keep what the answer does not replace.
        let new_secret = client_secret.is_some();
        // A rotation's replaced registration stays held (across a replacement, or a re-registration
        // after the server forgot the current one) until it is retired.
        let outgoing = self.credentials.as_ref().or(self.forgotten.as_ref());
        let replaced = outgoing
            .and_then(|c| c.previous.clone())
            .filter(|p| p.client_id != client_id);
        let handled_rotation_request = outgoing.and_then(|c| c.handled_rotation_request.clone());
        let previous = self.credentials.take().filter(|p| p.client_id == client_id);
        let secret_expires_at = client_secret_expires_at
            .and_then(|s| Timestamp::from_second(s).ok())
            .or_else(|| {
                previous
                    .as_ref()
                    .filter(|_| !new_secret)
                    .and_then(|p| p.secret_expires_at)
            });
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
            registered_at: previous
                .as_ref()
                .and_then(|p| p.registered_at)
                .or(Some(self.now)),
            secret_expires_at,
            previous: replaced,
            handled_rotation_request,
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
        // A new secret (or client) brings its own expiry; an answer without one keeps the old one
        // only for the same secret.
        if client_secret_expires_at.is_some() || !same_client || new_secret {
            self.status.client_secret_expires_at = client_secret_expires_at
                .and_then(|s| Timestamp::from_second(s).ok())
                .map(Time);
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

    /// Whether the server granted every scope asked for: `ScopesGranted`, False with the scopes it
    /// left out (reason `ScopesNarrowed`, and a Warning Event when that changes). The Secret's `scope`
    /// key already shows what was granted. A server that does not say what it granted is believed.
    pub(super) async fn report_granted_scopes(&mut self, requested: &[String]) {
        let granted = &self.status.granted_scopes;
        if granted.is_empty() {
            return;
        }
        let missing: Vec<&str> = requested
            .iter()
            .filter(|s| !granted.contains(s))
            .map(String::as_str)
            .collect();
        let before = find(&self.status.conditions, condition::SCOPES_GRANTED).cloned();
        let (all, reason, message) = if missing.is_empty() {
            (
                true,
                "AllScopesGranted",
                "the server granted every requested scope".to_owned(),
            )
        } else {
            (
                false,
                "ScopesNarrowed",
                format!(
                    "the server granted {} of {} requested scopes; not granted: {}",
                    requested.len() - missing.len(),
                    requested.len(),
                    missing.join(" ")
                ),
            )
        };
        let news = before
            .as_ref()
            .is_none_or(|c| c.status != if all { "True" } else { "False" } || c.message != message);
        set_condition(
            &mut self.status.conditions,
            condition::SCOPES_GRANTED,
            all,
            reason,
            message.clone(),
            Some(self.generation),
            self.now,
        );
        if news && !all {
            self.ctx
                .publish(
                    self.client,
                    EventType::Warning,
                    "ScopesNarrowed",
                    "Register",
                    message,
                )
                .await;
        }
    }

    pub(super) async fn update(
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
                self.report_granted_scopes(&desired.scopes).await;
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

    pub(super) async fn probe(
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
        // A private_key_jwt client proves itself with an assertion made for this probe.
        let mut client = as_client_credentials(&credentials);
        client.client_assertion = self.fresh_assertion(server, &credentials.client_id)?;
        let by_management_read = server.dialect() == Dialect::Rfc7591
            && ((credentials.client_secret.is_none() && client.client_assertion.is_none())
                || server.endpoints.token.is_none());
        // When the check was made, on the clock: a wipe suspected since then (by another client's
        // check, whose reconcile may have started after this one) asks for one more; this
        // reconcile's start time would look older than the suspicion after every check, and the
        // plan would ask again and again.
        let checked_at = Timestamp::now();
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
            auth.probe(&client).await?
        };
        match existence {
            Existence::Exists => {
                // The server answered and knows the client: an earlier failure's backoff is over
                // (left in place, it would block a later deletion without an attempt; review C4).
                self.status.retry = None;
                self.ctx.schedule_existence_check(&self.uid, checked_at);
            }
            Existence::Gone => {
                self.ctx.suspect_wipe(server, checked_at);
                self.ctx
                    .publish(self.client, EventType::Warning, "ClientGone", "Probe", "the auth server no longer knows this client (its state was wiped?); registering again".into())
                    .await;
                self.lose_registration("ClientGone");
            }
        }
        Ok(())
    }

    /// A registration access token the server rotated goes into the record and the Secret.
    pub(super) fn keep_rotated_token(
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
    pub(super) fn lose_registration(&mut self, reason: &str) {
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

    pub(super) async fn mint(
        &mut self,
        auth: &ObservedAuthServer,
        server: &ResolvedServer,
        scopes: &[String],
        name: &str,
    ) -> Result<(), ReconcileError> {
        if let Some(access) = self
            .client
            .spec
            .access_tokens
            .iter()
            .flatten()
            .find(|t| t.name == name)
            .cloned()
        {
            return self
                .obtain_access_token(auth, server, scopes, &access)
                .await;
        }
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
            Err(e) => return Err(self.token_failed(format!("minting debug token {name}"), e)),
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
        let token = StoredToken {
            access_token: grant.access_token,
            refresh_token: grant.refresh_token,
            expires_at: Some(expires_at.to_string()),
        };
        self.keep_token(server, scopes, name, token, expires_at, next_refresh_at);
        info!(client = %self.client.name_any(), token = name, %expires_at, %next_refresh_at, "debug token minted");
        Ok(())
    }

    /// A token that could not be had: `TokensFresh=False` with the reason, and the error to return.
    pub(super) fn token_failed(&mut self, what: String, e: AuthServerError) -> ReconcileError {
        set_condition(
            &mut self.status.conditions,
            condition::TOKENS_FRESH,
            false,
            e.reason(),
            format!("{what} failed: {e}"),
            Some(self.generation),
            self.now,
        );
        e.into()
    }

    /// Takes a new token into the record (and the staged Secret) and its schedule into status.
    pub(super) fn keep_token(
        &mut self,
        server: &ResolvedServer,
        scopes: &[String],
        name: &str,
        token: StoredToken,
        expires_at: Timestamp,
        next_refresh_at: Timestamp,
    ) {
        if let Some(credentials) = self.credentials.as_mut() {
            credentials.tokens.insert(name.to_owned(), token);
        }
        self.persist(server, scopes);
        let entry = DebugTokenStatus {
            name: name.to_owned(),
            expires_at: Some(Time(expires_at)),
            next_refresh_at: Some(Time(next_refresh_at)),
        };
        let is_access_token = self
            .client
            .spec
            .access_tokens
            .iter()
            .flatten()
            .any(|t| t.name == name);
        let list = if is_access_token {
            &mut self.status.access_tokens
        } else {
            &mut self.status.debug_tokens
        };
        list.retain(|t| t.name != name);
        list.push(entry);
        list.sort_by(|a, b| a.name.cmp(&b.name));
        self.status.retry = None;
    }
}
