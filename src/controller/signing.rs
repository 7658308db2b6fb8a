//! The signing key of a `private_key_jwt` client as the reconcile keeps it: made by the operator,
//! held in memory from that moment, and in the Secret before any registration or update publishes
//! its public part, so the server never trusts a key the Secret lacks.

use std::collections::BTreeMap;

use kube::api::PostParams;
use kube::runtime::events::EventType;

use super::desired::wanted_signing_algorithm;
use super::reconcile::{FIELD_MANAGER, ReconcileError, Run};
use super::resolve::ResolvedServer;
use super::secret::{
    read_signing_key, render_secret, render_signing_key, secret_name, written_key_id,
};
use crate::keys::SigningKey;

impl Run<'_> {
    /// The key this client holds: memory, else the Secret the operator owns (after a restart). A key
    /// of another algorithm than the spec's is none: a new one is made and registered in its place.
    pub(super) fn take_signing_key(&mut self) {
        let Some(algorithm) = wanted_signing_algorithm(self.client) else {
            self.signing_key = None;
            return;
        };
        let remembered = self
            .ctx
            .remembered_signing_key(&self.uid)
            .filter(|k| k.algorithm() == algorithm);
        self.signing_key = remembered.or_else(|| {
            let recovered =
                read_signing_key(self.observed_secret.as_ref()?, self.client, algorithm)?;
            self.ctx
                .remember_signing_key(&self.uid, Some(recovered.clone()));
            Some(recovered)
        });
    }

    /// Whether the Secret holds the key the client signs with (always true for clients without one).
    pub(super) fn signing_key_written(&self) -> bool {
        if wanted_signing_algorithm(self.client).is_none() {
            return true;
        }
        let (Some(key), Some(observed)) = (&self.signing_key, &self.observed_secret) else {
            return false;
        };
        written_key_id(observed, self.client).as_deref() == Some(key.kid())
    }

    /// Makes the key if none is held, then writes it to the Secret: a create for a Secret that does
    /// not exist yet (so a Secret of the user's by that name is refused, never taken over), else the
    /// staged write of everything the operator holds. False when the Secret turned out to exist: the
    /// caller plans again from what it holds.
    pub(super) async fn write_signing_key(
        &mut self,
        server: &ResolvedServer,
        requested: &[String],
    ) -> Result<bool, ReconcileError> {
        let Some(algorithm) = wanted_signing_algorithm(self.client) else {
            return Ok(true);
        };
        if self.signing_key.is_none() {
            let key = SigningKey::generate(algorithm).map_err(ReconcileError::SigningKey)?;
            self.ctx.remember_signing_key(&self.uid, Some(key.clone()));
            let note = format!(
                "made a {} key pair (kid {}); its private key goes to Secret {} before the server is given the public key",
                algorithm.jwa_name(),
                key.kid(),
                secret_name(self.client)
            );
            self.signing_key = Some(key);
            self.ctx
                .publish(
                    self.client,
                    EventType::Normal,
                    "SigningKeyCreated",
                    "CreateKey",
                    note,
                )
                .await;
        }
        if self.observed_secret.is_some() {
            self.persist(server, requested);
            self.flush().await?;
            return Ok(true);
        }
        let mut data = BTreeMap::new();
        render_signing_key(self.client, self.signing_key.as_ref(), &mut data);
        let secret = render_secret(self.client, data, None);
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match self.secrets.create(&params, &secret).await {
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
}
