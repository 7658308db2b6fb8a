//! Credential rotation as the reconcile carries it out: the policy from the spec and the request
//! annotation, the step `credential_rotation.rs` decides, the retirement of a replaced registration
//! and its report in status. The replacement itself is a registration (`steps.rs`), sent through
//! the same gate as any other.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use tracing::info;

use super::cleanup::delete_registration;
use super::credential_rotation::{
    CredentialStep, CurrentRegistration, DEFAULT_OVERLAP, PreviousRegistration, RotationPolicy,
    next_credential_step, retires_at, rotation_due_at,
};
use super::deletion::{FailedDelete, after_failed_delete};
use super::reconcile::{ReconcileError, Run};
use super::resolve::ResolvedServer;
use crate::authserver::AuthServerError;
use crate::crd::{PreviousClientStatus, TokenEndpointAuthMethod};

/// Annotation asking for a credential rotation now: any value not yet handled (see
/// `status.lastHandledRotationAt`).
pub const ROTATE_CREDENTIALS_ANNOTATION: &str = "smart.fhir.dev/rotate-credentials-requested-at";

impl Run<'_> {
    /// What the spec asks of rotation; None for clients that hold no client secret to rotate (public
    /// and private_key_jwt clients, and S4SLegacy clients with a fixed id).
    pub(super) fn credential_rotation_policy(&self) -> Option<RotationPolicy> {
        let spec = &self.client.spec;
        let symmetric = !matches!(
            spec.token_endpoint_auth_method,
            Some(TokenEndpointAuthMethod::None | TokenEndpointAuthMethod::PrivateKeyJwt)
        );
        let holds_secret = self
            .credentials
            .as_ref()
            .is_some_and(|c| c.client_secret.is_some());
        if !symmetric || !holds_secret || spec.client_id.is_some() {
            return None;
        }
        let rotation = spec.rotation.clone().unwrap_or_default();
        Some(RotationPolicy {
            every: rotation.every.map(Duration::from),
            overlap: rotation
                .overlap
                .map(Duration::from)
                .unwrap_or(DEFAULT_OVERLAP),
            refresh_before: rotation.refresh_before.map(Duration::from),
            requested: self.credential_rotation_request().is_some(),
        })
    }

    /// An unhandled `smart.fhir.dev/rotate-credentials-requested-at`: the record (which the
    /// rotation's answer was written with) and status both say which value was handled last.
    pub(super) fn credential_rotation_request(&self) -> Option<String> {
        let requested = self
            .client
            .annotations()
            .get(ROTATE_CREDENTIALS_ANNOTATION)?;
        let handled_in_record = self
            .credentials
            .as_ref()
            .and_then(|c| c.handled_rotation_request.as_ref());
        let handled = handled_in_record == Some(requested)
            || self.status.last_handled_rotation_at.as_ref() == Some(requested);
        (!handled).then(|| requested.clone())
    }

    fn current_registration(&self) -> Option<CurrentRegistration> {
        let record = self.credentials.as_ref()?;
        Some(CurrentRegistration {
            registered_at: record.registered_at.unwrap_or(self.now),
            // Records written before the lifecycle was kept: status has the expiry.
            secret_expires_at: record.secret_expires_at.or(self
                .status
                .client_secret_expires_at
                .as_ref()
                .map(|t| t.0)),
            previous_replaced_at: record.previous.as_ref().map(|p| p.replaced_at),
        })
    }

    /// The next rotation step, and when one is due if none is now.
    pub(super) fn credential_step(&self) -> (Option<CredentialStep>, Option<Timestamp>) {
        match (
            self.current_registration(),
            self.credential_rotation_policy(),
        ) {
            (Some(current), Some(policy)) => next_credential_step(&current, &policy, self.now),
            // A replaced registration is retired even when the spec no longer rotates.
            (Some(current), None) if current.previous_replaced_at.is_some() => {
                let policy = RotationPolicy {
                    every: None,
                    overlap: self
                        .client
                        .spec
                        .rotation
                        .as_ref()
                        .and_then(|r| r.overlap)
                        .map(Duration::from)
                        .unwrap_or(DEFAULT_OVERLAP),
                    refresh_before: None,
                    requested: false,
                };
                next_credential_step(&current, &policy, self.now)
            }
            _ => (None, None),
        }
    }

    /// The credentials being replaced by a rotation, as the previous registration from now on.
    pub(super) fn outgoing_registration(&self) -> Option<PreviousRegistration> {
        let record = self.credentials.as_ref()?;
        Some(PreviousRegistration {
            client_id: record.client_id.clone(),
            client_secret: record.client_secret.clone(),
            registration_access_token: record.registration_access_token.clone(),
            registration_client_uri: record.registration_client_uri.clone(),
            replaced_at: self.now,
        })
    }

    /// `status.nextRotationAt`, `status.previousClient` and `status.lastHandledRotationAt` from the
    /// record, and the schedule for the metric.
    pub(super) fn report_rotation(&mut self) {
        let policy = self.credential_rotation_policy();
        let current = self.current_registration();
        self.status.next_rotation_at = match (&current, &policy) {
            (Some(current), Some(policy)) if current.previous_replaced_at.is_none() => {
                rotation_due_at(current, policy).map(Time)
            }
            _ => None,
        };
        let overlap = policy.as_ref().map_or(DEFAULT_OVERLAP, |p| p.overlap);
        self.status.previous_client = self
            .credentials
            .as_ref()
            .and_then(|c| c.previous.as_ref())
            .map(|p| PreviousClientStatus {
                client_id: p.client_id.clone(),
                replaced_at: Time(p.replaced_at),
                retires_at: Time(retires_at(
                    p.replaced_at,
                    &RotationPolicy {
                        every: None,
                        overlap,
                        refresh_before: None,
                        requested: false,
                    },
                )),
            });
        if let Some(handled) = self
            .credentials
            .as_ref()
            .and_then(|c| c.handled_rotation_request.clone())
        {
            self.status.last_handled_rotation_at = Some(handled);
        }
        self.ctx.metrics.set_rotation_schedule(
            &self.uid,
            self.status
                .next_rotation_at
                .as_ref()
                .map(|t| t.0.as_second()),
        );
    }

    /// The end of an overlap: the replaced registration is deleted where the dialect can (the same
    /// rules as a SmartClient's deletion: "already gone" is done, a definite refusal orphans it,
    /// anything else is retried with backoff), else orphaned. An orphan reaches status before the
    /// registration leaves the Secret, so no crash in between loses track of it.
    pub(super) async fn retire_previous(
        &mut self,
        server: &ResolvedServer,
        requested: &[String],
    ) -> Result<(), ReconcileError> {
        let Some(previous) = self.credentials.as_ref().and_then(|c| c.previous.clone()) else {
            return Ok(());
        };
        let client_id = previous.client_id.clone();
        let deletable = server.dialect().manages_clients()
            && previous.registration_access_token.is_some()
            && previous.registration_client_uri.is_some();
        let orphan_reason = if deletable {
            match delete_registration(self.ctx, server, &previous.as_record()).await {
                Ok(()) => None,
                Err(e @ AuthServerError::NotLeader) => return Err(e.into()),
                Err(e) => match after_failed_delete(e.class()) {
                    FailedDelete::LetGoAsRefused => Some(("RetireRefused", e.to_string())),
                    FailedDelete::Retry => return Err(e.into()),
                },
            }
        } else {
            let why = if server.dialect().manages_clients() {
                "the auth server gave no registration access token and URI to delete it with"
                    .to_owned()
            } else {
                format!("{} cannot delete clients", server.dialect())
            };
            Some(("Rotated", why))
        };
        let note = match &orphan_reason {
            None => format!(
                "the overlap is over: client {client_id}, replaced by the rotation, was deleted from the auth server and left the Secret"
            ),
            Some((reason, why)) => {
                self.record_orphan(&client_id, reason, self.now);
                self.write_status().await?;
                format!(
                    "the overlap is over: client {client_id}, replaced by the rotation, left the Secret and stays on the auth server ({why}); it is listed in status.orphanedClients"
                )
            }
        };
        if let Some(record) = self.credentials.as_mut() {
            record.previous = None;
        }
        self.persist(server, requested);
        self.flush().await?;
        info!(client = %self.client.name_any(), %client_id, "replaced registration retired");
        self.ctx
            .publish(
                self.client,
                EventType::Normal,
                "PreviousCredentialsRetired",
                "Rotate",
                note,
            )
            .await;
        Ok(())
    }
}
