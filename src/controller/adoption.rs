//! Taking over a registration that exists already (`spec.adopt`): its credentials are read from the
//! Secret the user names, verified with the server, and written to the client's own Secret; from
//! then on it is managed like one the operator registered. Nothing is registered on the way, and a
//! refusal says why.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::EventType;
use secrecy::SecretString;
use tracing::info;

use super::conditions::set_condition;
use super::observed::ObservedAuthServer;
use super::reconcile::{ReconcileError, Run, as_client_credentials};
use super::resolve::ResolvedServer;
use super::secret::{StoredCredentials, secret_name};
use crate::authserver::{AuthServer, AuthServerError, Existence};
use crate::crd::{Dialect, condition};

/// How a registration was confirmed, for the Event.
enum Verified {
    /// RFC 7592 read with the registration access token (which the answer may have rotated).
    ManagementRead,
    /// The existence probe with the client's own credentials.
    Probe,
}

impl Run<'_> {
    /// The adoption step. `Ok(None)` when the registration is taken over (the plan goes on, an
    /// update bringing its metadata in line where the dialect can); `Ok(Some(_))` when it was
    /// refused or cannot be tried yet, with status saying why.
    pub(super) async fn adopt(
        &mut self,
        auth: &ObservedAuthServer,
        server: &ResolvedServer,
        requested: &[String],
        desired_hash: &str,
    ) -> Result<Option<Requeue>, ReconcileError> {
        let Some(source_name) = self
            .client
            .spec
            .adopt
            .as_ref()
            .map(|a| a.secret_name.clone())
        else {
            return Ok(None);
        };
        if source_name == secret_name(self.client) {
            let message = format!(
                "spec.adopt.secretName names the client's own Secret {source_name}: name the Secret holding the existing registration there, and another one (the operator's) in spec.secret.name"
            );
            return Ok(Some(self.record_user_error("InvalidSpec", message).await));
        }
        let Some(source) = self.secrets.get_opt(&source_name).await? else {
            let message = format!(
                "spec.adopt names Secret {source_name}, which does not exist (yet); nothing is registered in the meantime"
            );
            return Ok(Some(
                self.record_waiting("AdoptionSecretNotFound", message).await,
            ));
        };
        let data = source.data.clone().unwrap_or_default();
        let text = |key: &str| {
            data.get(key)
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let Some(client_id) = text("client_id") else {
            let message = format!("Secret {source_name} named by spec.adopt has no client_id key");
            return Ok(Some(
                self.record_user_error("AdoptionRefused", message).await,
            ));
        };
        let mut record = StoredCredentials {
            client_id: client_id.clone(),
            client_secret: text("client_secret").map(SecretString::from),
            registration_access_token: text("registration_access_token").map(SecretString::from),
            registration_client_uri: text("registration_client_uri"),
            ..Default::default()
        };
        let verified = match self.verify_adopted(auth, server, &mut record).await? {
            Ok(verified) => verified,
            Err(why) => {
                let message = format!(
                    "the registration in Secret {source_name} cannot be adopted: {why}; nothing is registered in its place (fix the Secret, or remove spec.adopt to register a new client)"
                );
                return Ok(Some(
                    self.record_user_error("AdoptionRefused", message).await,
                ));
            }
        };
        // RFC 7592 brings the metadata in line with an update (no hash applied yet); a server that
        // cannot be updated keeps what it has, and the client is taken as it is.
        let updatable = server.dialect() == Dialect::Rfc7591
            && record.registration_access_token.is_some()
            && record.registration_client_uri.is_some();
        if !updatable {
            record.applied_metadata_hash = Some(desired_hash.to_owned());
            self.status.applied_metadata_hash = Some(desired_hash.to_owned());
        }
        record.registered_at = record.registered_at.or(Some(self.now));
        self.status.client_id = Some(client_id.clone());
        self.status.registration_client_uri = record.registration_client_uri.clone();
        self.status.client_secret_expires_at = record.secret_expires_at.map(Time);
        self.credentials = Some(record);
        set_condition(
            &mut self.status.conditions,
            condition::REGISTERED,
            true,
            "Adopted",
            format!("adopted from Secret {source_name}"),
            Some(self.generation),
            self.now,
        );
        let existed = self.observed_secret.is_some();
        self.persist(server, requested);
        if existed {
            self.flush().await?;
        } else {
            // A create, never an apply: a Secret of the user's by the target name is refused.
            let secret = self.pending_secret.take().expect("persist staged it");
            self.observed_secret = None;
            if !self.create_secret(&secret).await? {
                self.credentials = None;
                return Ok(None);
            }
        }
        self.ctx.remember(&self.uid, self.credentials.clone());
        self.ctx
            .schedule_existence_check(&self.uid, Timestamp::now());
        let how = match verified {
            Verified::ManagementRead => "its registration access token read it (RFC 7592)",
            Verified::Probe => "the server knows its credentials",
        };
        let then = if updatable {
            "its metadata is brought in line with the spec next"
        } else {
            "the server's metadata is taken as it is (this server cannot update clients)"
        };
        info!(client = %self.client.name_any(), %client_id, "registration adopted");
        self.ctx
            .publish(
                self.client,
                EventType::Normal,
                "Adopted",
                "Adopt",
                format!(
                    "took over client {client_id} from Secret {source_name} ({how}); nothing was registered; {then}"
                ),
            )
            .await;
        Ok(None)
    }

    /// Confirms the registration with the server: `Ok(Err(why))` when the server says it is not
    /// the registration the Secret claims (a user error), `Err` when the server could not be asked.
    async fn verify_adopted(
        &mut self,
        auth: &ObservedAuthServer,
        server: &ResolvedServer,
        record: &mut StoredCredentials,
    ) -> Result<Result<Verified, String>, ReconcileError> {
        let client_id = record.client_id.clone();
        let credentials = as_client_credentials(record);
        let manageable = server.dialect() == Dialect::Rfc7591
            && record.registration_access_token.is_some()
            && record.registration_client_uri.is_some();
        if manageable {
            return Ok(match auth.read(&credentials).await {
                Ok(registered) => {
                    if registered.client_id != client_id {
                        Err(format!(
                            "the registration client URI answers for client {}, not {client_id}",
                            registered.client_id
                        ))
                    } else {
                        // The read may rotate the token: the answer's is the only valid one now.
                        if let Some(token) = registered.registration_access_token {
                            record.registration_access_token = Some(token);
                        }
                        record.secret_expires_at = registered
                            .client_secret_expires_at
                            .and_then(|s| Timestamp::from_second(s).ok());
                        record.registered_at = registered
                            .client_id_issued_at
                            .and_then(|s| Timestamp::from_second(s).ok());
                        Ok(Verified::ManagementRead)
                    }
                }
                Err(AuthServerError::ClientGone) => {
                    Err(format!("the auth server does not know client {client_id}"))
                }
                Err(AuthServerError::RegistrationAccessTokenRejected { status }) => Err(format!(
                    "the auth server refused its registration access token (HTTP {status})"
                )),
                Err(e) if e.is_retryable() => return Err(e.into()),
                Err(e) => Err(e.to_string()),
            });
        }
        if record.client_secret.is_none() {
            return Ok(Err(format!(
                "client {client_id} comes with neither a client secret nor a registration access token and URI, so the server cannot confirm it"
            )));
        }
        Ok(match auth.probe(&credentials).await {
            Ok(Existence::Exists) => Ok(Verified::Probe),
            Ok(Existence::Gone) => Err(format!(
                "the auth server does not know client {client_id} with this secret"
            )),
            Err(e) if e.is_retryable() => return Err(e.into()),
            Err(e) => Err(e.to_string()),
        })
    }
}
