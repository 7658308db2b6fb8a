//! The signing keys of a `private_key_jwt` client as the reconcile keeps them: made by the operator,
//! held in memory from that moment, and in the Secret before any registration or update publishes
//! their public parts, so the server never trusts a key the Secret lacks; rotated in the steps
//! `key_rotation.rs` decides.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::events::EventType;

use super::desired::{wanted_signing_algorithm, with_signing_keys};
use super::key_rotation::{
    DEFAULT_OVERLAP, HeldKeys, KeyStep, RotationPolicy, next_key_step, trusted_keys,
};
use super::reconcile::{ReconcileError, Run};
use super::resolve::ResolvedServer;
use super::secret::{
    annotate_signing_keys, read_signing_keys, render_secret, render_signing_keys, secret_name,
    signing_keys_in_secret,
};
use crate::crd::SigningKeyStatus;
use crate::keys::SigningKey;

/// Annotation asking for a key rotation now: any value not yet handled (see
/// `status.lastHandledKeyRotationAt`).
pub const ROTATE_KEY_ANNOTATION: &str = "smart.fhir.dev/rotate-key-requested-at";

impl Run<'_> {
    /// The keys this client holds: memory, else the Secret the operator owns (after a restart).
    pub(super) fn take_signing_keys(&mut self) {
        if wanted_signing_algorithm(self.client).is_none() {
            self.signing_keys = None;
            return;
        }
        self.signing_keys = self.ctx.remembered_signing_keys(&self.uid).or_else(|| {
            let recovered = read_signing_keys(self.observed_secret.as_ref()?, self.client)?;
            self.ctx
                .remember_signing_keys(&self.uid, Some(recovered.clone()));
            Some(recovered)
        });
        self.report_signing_keys();
    }

    /// What the spec asks of the keys, with an unhandled rotation request.
    pub(super) fn rotation_policy(&self) -> Option<RotationPolicy> {
        let algorithm = wanted_signing_algorithm(self.client)?;
        let spec = self.client.spec.signing_key.clone().unwrap_or_default();
        Some(RotationPolicy {
            algorithm,
            rotate_every: spec.rotate_every.map(Duration::from),
            overlap: spec.overlap.map(Duration::from).unwrap_or(DEFAULT_OVERLAP),
            requested: self.rotation_request().is_some(),
        })
    }

    fn rotation_request(&self) -> Option<String> {
        let requested = self.client.annotations().get(ROTATE_KEY_ANNOTATION)?;
        let handled_with_keys = self
            .signing_keys
            .as_ref()
            .and_then(|k| k.handled_request.as_ref());
        let handled = handled_with_keys == Some(requested)
            || self.status.last_handled_key_rotation_at.as_ref() == Some(requested);
        (!handled).then(|| requested.clone())
    }

    /// The keys the server should trust now (none for clients without keys).
    pub(super) fn trusted_signing_keys(&self) -> Vec<&SigningKey> {
        match (&self.signing_keys, self.rotation_policy()) {
            (Some(held), Some(policy)) => trusted_keys(held, &policy, self.now),
            _ => Vec::new(),
        }
    }

    /// What the server is to hold: the spec's metadata and the public keys it should trust now.
    pub(super) fn desired_with_keys(
        &self,
        spec_metadata: &crate::authserver::ClientMetadata,
    ) -> crate::authserver::ClientMetadata {
        match &self.signing_keys {
            Some(_) => with_signing_keys(spec_metadata.clone(), &self.trusted_signing_keys()),
            None => spec_metadata.clone(),
        }
    }

    /// A client assertion for the token endpoint, signed with the current key, made for one request
    /// (None for clients without keys, or a server without a token endpoint).
    pub(super) fn fresh_assertion(
        &self,
        server: &ResolvedServer,
        client_id: &str,
    ) -> Result<Option<secrecy::SecretString>, ReconcileError> {
        let (Some(held), Some(audience)) = (&self.signing_keys, &server.endpoints.token) else {
            return Ok(None);
        };
        Ok(Some(held.current.client_assertion(
            client_id,
            audience,
            std::time::SystemTime::now(),
        )?))
    }

    /// The next rotation step, and when one is due if none is now.
    pub(super) fn key_step(&self) -> (Option<KeyStep>, Option<Timestamp>) {
        match (&self.signing_keys, self.rotation_policy()) {
            (Some(held), Some(policy)) => next_key_step(held, &policy, self.now),
            _ => (None, None),
        }
    }

    /// Whether the Secret holds the keys the client has (always true for clients without keys).
    pub(super) fn signing_key_written(&self) -> bool {
        if wanted_signing_algorithm(self.client).is_none() {
            return true;
        }
        match (&self.signing_keys, &self.observed_secret) {
            (Some(held), Some(observed)) => signing_keys_in_secret(observed, self.client, held),
            _ => false,
        }
    }

    /// Makes the first key if none is held, then writes the keys to the Secret: a create for a
    /// Secret that does not exist yet (so a Secret of the user's by that name is refused, never
    /// taken over), else the staged write of everything the operator holds. False when the Secret
    /// turned out to exist: the caller plans again from what it holds.
    pub(super) async fn write_signing_key(
        &mut self,
        server: &ResolvedServer,
        requested: &[String],
    ) -> Result<bool, ReconcileError> {
        let Some(algorithm) = wanted_signing_algorithm(self.client) else {
            return Ok(true);
        };
        if self.signing_keys.is_none() {
            let key = self.make_key(algorithm, "its first key").await?;
            self.hold(HeldKeys {
                current: key,
                current_since: Timestamp::now(),
                next: None,
                previous: None,
                handled_request: None,
            });
        }
        if self.observed_secret.is_some() {
            self.persist(server, requested);
            self.flush().await?;
            return Ok(true);
        }
        let mut data = BTreeMap::new();
        render_signing_keys(self.client, self.signing_keys.as_ref(), &mut data);
        let mut secret = render_secret(self.client, data, None);
        annotate_signing_keys(&mut secret, self.signing_keys.as_ref());
        self.create_secret(&secret).await
    }

    /// One local step of a rotation, written to the Secret before anything else happens.
    pub(super) async fn rotate_key(
        &mut self,
        step: KeyStep,
        server: &ResolvedServer,
        requested: &[String],
    ) -> Result<(), ReconcileError> {
        let Some(mut held) = self.signing_keys.clone() else {
            return Ok(());
        };
        let (reason, note) = match step {
            KeyStep::MakeNext => {
                let algorithm =
                    wanted_signing_algorithm(self.client).unwrap_or(held.current.algorithm());
                if let Some(requested) = self.rotation_request() {
                    held.handled_request = Some(requested);
                }
                let next = self
                    .make_key(algorithm, "the next key of a rotation")
                    .await?;
                let note = format!(
                    "rotation started: next key {} goes to the Secret, then the server is given it beside {}",
                    next.kid(),
                    held.current.kid()
                );
                held.next = Some(next);
                ("SigningKeyRotationStarted", note)
            }
            KeyStep::Switch => {
                let Some(next) = held.next.take() else {
                    return Ok(());
                };
                let note = format!(
                    "the server trusts key {}: it is now the Secret's private_key; key {} stays trusted for the overlap",
                    next.kid(),
                    held.current.kid()
                );
                held.previous = Some(std::mem::replace(&mut held.current, next));
                held.current_since = Timestamp::now();
                ("SigningKeySwitched", note)
            }
            KeyStep::DropPrevious => {
                let Some(previous) = held.previous.take() else {
                    return Ok(());
                };
                (
                    "SigningKeyRetired",
                    format!(
                        "the server no longer trusts key {}: it left the Secret",
                        previous.kid()
                    ),
                )
            }
        };
        self.hold(held);
        self.persist(server, requested);
        self.flush().await?;
        self.ctx
            .publish(self.client, EventType::Normal, reason, "RotateKey", note)
            .await;
        Ok(())
    }

    async fn make_key(
        &self,
        algorithm: crate::keys::SigningAlgorithm,
        what: &str,
    ) -> Result<SigningKey, ReconcileError> {
        let key = SigningKey::generate(algorithm).map_err(ReconcileError::SigningKey)?;
        let note = format!(
            "made {what}: {} (kid {}); its private key goes to Secret {} before the server is given the public key",
            algorithm.jwa_name(),
            key.kid(),
            secret_name(self.client)
        );
        self.ctx
            .publish(
                self.client,
                kube::runtime::events::EventType::Normal,
                "SigningKeyCreated",
                "CreateKey",
                note,
            )
            .await;
        Ok(key)
    }

    /// Holds `held` from now on, in memory first: a failed Secret write loses no key.
    fn hold(&mut self, held: HeldKeys) {
        self.ctx
            .remember_signing_keys(&self.uid, Some(held.clone()));
        self.signing_keys = Some(held);
        self.report_signing_keys();
    }

    /// `status.signingKeys` from the keys held.
    fn report_signing_keys(&mut self) {
        if let Some(handled) = self
            .signing_keys
            .as_ref()
            .and_then(|k| k.handled_request.clone())
        {
            self.status.last_handled_key_rotation_at = Some(handled);
        }
        self.status.signing_keys = match &self.signing_keys {
            None => Vec::new(),
            Some(held) => {
                let entry =
                    |key: &SigningKey, state: &str, since: Option<Timestamp>| SigningKeyStatus {
                        kid: key.kid().to_owned(),
                        algorithm: key.algorithm().jwa_name().to_owned(),
                        state: state.to_owned(),
                        since: since.map(Time),
                    };
                [
                    Some(entry(&held.current, "Current", Some(held.current_since))),
                    held.next.as_ref().map(|k| entry(k, "Next", None)),
                    held.previous.as_ref().map(|k| entry(k, "Previous", None)),
                ]
                .into_iter()
                .flatten()
                .collect()
            }
        };
    }
}
