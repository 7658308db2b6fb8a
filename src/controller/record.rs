//! The write-ahead record of a live SmartClient as the reconcile keeps it: read from memory or the
//! Secret the operator owns, staged and written to that Secret before the next remote call, the
//! registration in flight announced there before it is sent, and a renamed Secret emptied once the
//! new one holds the credentials.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::EventType;
use tracing::warn;

use super::conditions::set_condition;
use super::desired::is_applied;
use super::reconcile::{FIELD_MANAGER, ReconcileError, Run};
use super::resolve::ResolvedServer;
use super::secret::{
    PublicValues, SecretOwnership, annotate_signing_keys, mark_registration_sent, read_credentials,
    registration_sent_at, render_data, render_secret, render_signing_keys, secret_name,
    secret_ownership,
};
use crate::crd::{Dialect, condition};

impl Run<'_> {
    /// What the operator knows: its memory, else the record in the Secret it owns (after a restart or
    /// a leader change). The owned Secret is the truth even when status lags: it is written before
    /// status, and its ownerReference uid proves it is this SmartClient's. Read once, it seeds memory,
    /// so a Secret deleted later is restored rather than registered again, and status is brought in
    /// line with it (review C3).
    pub(super) fn take_credentials(&mut self, token_names: &[String]) {
        self.credentials = self.ctx.remembered(&self.uid).or_else(|| {
            let recovered =
                read_credentials(self.observed_secret.as_ref()?, self.client, token_names)?;
            self.ctx.remember(&self.uid, Some(recovered.clone()));
            Some(recovered)
        });
        let Some(record) = self.credentials.as_mut() else {
            return;
        };
        // Tokens the spec no longer names leave the record, and so the Secret.
        record.tokens.retain(|name, _| token_names.contains(name));
        let record = &*record;
        // Status reports the record; where a status write was lost, it catches up from it.
        if self.status.client_id.as_ref() != Some(&record.client_id) {
            self.status.client_id = Some(record.client_id.clone());
            self.status.registration_client_uri = record.registration_client_uri.clone();
            self.status.applied_metadata_hash = record.applied_metadata_hash.clone();
        } else if record.applied_metadata_hash.is_some() {
            self.status.applied_metadata_hash = record.applied_metadata_hash.clone();
        }
    }

    /// Credentials from the Secret the client used before `spec.secret.name` changed (after a restart
    /// memory is empty, and the new Secret does not exist yet).
    pub(super) async fn take_credentials_from(
        &mut self,
        old: &str,
        token_names: &[String],
    ) -> Result<(), ReconcileError> {
        let Some(observed) = self.secrets.get_opt(old).await? else {
            return Ok(());
        };
        if let Some(recovered) = read_credentials(&observed, self.client, token_names) {
            self.ctx.remember(&self.uid, Some(recovered.clone()));
            self.credentials = Some(recovered);
        }
        Ok(())
    }

    /// Once the credentials are in the renamed Secret, the old one keeps none of them: server-side
    /// apply of it without data removes every key the operator wrote (keys others wrote stay). It
    /// stays owned, so it goes with the SmartClient; the operator deletes no Secret (review C17).
    pub(super) async fn retire_secret(&mut self, old: &str) -> Result<(), ReconcileError> {
        let Some(observed) = self.secrets.get_opt(old).await? else {
            return Ok(());
        };
        if secret_ownership(Some(&observed), self.client) != SecretOwnership::Ours {
            return Ok(());
        }
        let mut emptied = render_secret(self.client, BTreeMap::new(), None);
        emptied.metadata.name = Some(old.to_owned());
        self.secrets
            .patch(
                old,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&emptied),
            )
            .await
            .map_err(ReconcileError::SecretWrite)?;
        let note = format!(
            "spec.secret.name changed: the credentials are in Secret {}; Secret {old} no longer holds them (it goes with the SmartClient)",
            secret_name(self.client)
        );
        self.ctx
            .publish(
                self.client,
                EventType::Normal,
                "SecretRetired",
                "Rename",
                note,
            )
            .await;
        Ok(())
    }

    /// A hash recorded by an earlier release for the metadata the spec still asks for is rewritten in
    /// the current format (one Secret write, no remote call), so an upgrade updates or replaces
    /// nothing.
    pub(super) fn record_hashes_in_current_format(
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

    /// The tokens the operator keeps fresh in the Secret: debug tokens where the dialect mints them,
    /// access tokens (client_credentials) on RFC7591 servers. Names are unique across both.
    pub(super) fn token_names(&self, dialect: Dialect) -> Vec<String> {
        let spec = &self.client.spec;
        let debug = spec
            .debug_tokens
            .iter()
            .flatten()
            .map(|t| t.name.clone())
            .filter(|_| dialect.mints_debug_tokens());
        let access = spec
            .access_tokens
            .iter()
            .flatten()
            .map(|t| t.name.clone())
            .filter(|_| dialect == Dialect::Rfc7591);
        debug.chain(access).collect()
    }

    pub(super) fn public_values(
        &self,
        server: &ResolvedServer,
        requested: &[String],
    ) -> PublicValues {
        let scopes = if self.status.granted_scopes.is_empty() {
            requested.to_vec()
        } else {
            self.status.granted_scopes.clone()
        };
        PublicValues {
            token_endpoint: server.endpoints.token.clone(),
            fhir_base_url: server.spec.fhir_base_url.as_ref().map(|u| u.0.clone()),
            scope: scopes.join(" "),
            issuer: server.endpoints.issuer.clone(),
            authorization_endpoint: server.endpoints.authorization.clone(),
        }
    }

    /// Stages the Secret from the credentials held now. [`Run::flush`] writes it: before any remote
    /// call that could replace or invalidate the credentials, and before the status at the end, so an
    /// app that sees Ready finds them. Minting a debug token changes no credential, so a new client's
    /// Secret and its first token go out in one write.
    pub(super) fn persist(&mut self, server: &ResolvedServer, requested: &[String]) {
        // A client the server forgot keeps its last credentials in the Secret until new ones come.
        let record = self.credentials.as_ref().or(self.forgotten.as_ref());
        let marked = self
            .observed_secret
            .as_ref()
            .and_then(registration_sent_at)
            .is_some();
        if record.is_none()
            && self.registration_sent_at.is_none()
            && !marked
            && self.signing_keys.is_none()
        {
            return;
        }
        let public = self.public_values(server, requested);
        let mut data = record
            .map(|record| render_data(self.client, record, self.signing_keys.as_ref(), &public))
            .unwrap_or_default();
        if record.is_none() {
            render_signing_keys(self.client, self.signing_keys.as_ref(), &mut data);
        }
        let mut secret = render_secret(self.client, data, record);
        annotate_signing_keys(&mut secret, self.signing_keys.as_ref());
        mark_registration_sent(
            &mut secret,
            self.registration_sent_at.as_deref(),
            self.observed_secret.as_ref(),
        );
        let name = secret.metadata.name.clone().unwrap_or_default();
        self.observed_secret = Some(secret.clone());
        self.pending_secret = Some(secret);
        self.secret_written = true;
        if self.credentials.is_some() {
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
    }

    /// Before a registration whose client id the server chooses: the Secret records that one is in
    /// flight (and when it was sent), so an operator that dies, or loses its lease, before the answer
    /// is in the Secret leaves a trace, and whoever finds it records the possible orphan (see
    /// [`Run::account_for_unanswered_registration`]). A first registration creates the Secret for
    /// this: a create, not an apply, so a Secret of the user's by that name is refused, never taken
    /// over. False when it turned out to exist: the caller plans again from what it holds.
    pub(super) async fn announce_registration(
        &mut self,
        server: &ResolvedServer,
        requested: &[String],
    ) -> Result<bool, ReconcileError> {
        if !server.dialect().server_chooses_client_id() {
            // S4SLegacy writes the id and secret it chose before posting them instead.
            return Ok(true);
        }
        let sent_at = Timestamp::now().to_string();
        self.ctx.remember_registration(&self.uid, &sent_at);
        self.registration_sent_at = Some(sent_at);
        if self.observed_secret.is_some() {
            self.persist(server, requested);
            self.flush().await?;
            return Ok(true);
        }
        let mut secret = render_secret(self.client, BTreeMap::new(), None);
        mark_registration_sent(&mut secret, self.registration_sent_at.as_deref(), None);
        let created = self.create_secret(&secret).await;
        if !matches!(created, Ok(true)) {
            self.registration_sent_at = None;
        }
        created
    }

    /// Creates the client's Secret, which does not exist yet: a create, not an apply, so a Secret of
    /// the user's by that name is refused, never taken over. False when it turned out to exist (it
    /// is read then, and the caller plans again from what it holds).
    pub(super) async fn create_secret(&mut self, secret: &Secret) -> Result<bool, ReconcileError> {
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match self.secrets.create(&params, secret).await {
            Ok(created) => {
                self.observed_secret = Some(created);
                self.secret_written = true;
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                self.observed_secret = self.secrets.get_opt(&secret_name(self.client)).await?;
                Ok(false)
            }
            Err(e) => Err(ReconcileError::SecretWrite(e)),
        }
    }

    /// A registration the Secret says is in flight that this operator did not send (it was sent by an
    /// operator that died or lost its lease waiting for the answer) may have left a client on the
    /// server whose id nobody learnt: it is recorded as an orphan, once.
    pub(super) async fn account_for_unanswered_registration(
        &mut self,
    ) -> Result<(), ReconcileError> {
        let Some(sent_at) = self
            .observed_secret
            .as_ref()
            .and_then(registration_sent_at)
            .map(str::to_owned)
        else {
            return Ok(());
        };
        if self.ctx.knows_registration(&self.uid, &sent_at) {
            return Ok(());
        }
        self.ctx.remember_registration(&self.uid, &sent_at);
        self.record_lost_answer(&sent_at, "AnswerLost").await
    }

    /// Writes the staged Secret. Memory takes the credentials first: it is the write-ahead record, so a
    /// write the apiserver refuses (or a crash after the server answered) loses nothing; the next
    /// reconcile writes the Secret again from memory instead of registering again (review C1/C2).
    pub(super) async fn flush(&mut self) -> Result<(), ReconcileError> {
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
    pub(super) async fn record_secret_write_failure(&mut self, error: &kube::Error) -> Requeue {
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
}
