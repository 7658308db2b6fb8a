//! Finalization of a SmartClient: gathers the facts, asks [`plan_deletion`] what to do, does it and
//! records it. The decision lives in `deletion.rs`; this file only talks to the apiserver and the
//! auth server.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::conditions::set_condition;
use super::deletion::{
    DeletionInput, DeletionStep, FailedDelete, OrphanReason, ServerResolution, after_failed_delete,
    deletion_blocked, plan_deletion,
};
use super::plan::next_retry;
use super::reconcile::{
    ABANDON_ANNOTATION, Context, ReconcileError, as_client_credentials, observe_only,
};
use super::report::write_client_status;
use super::resolve::{ResolveError, ResolvedServer, resolve_server};
use super::secret::{StoredCredentials, read_credentials, secret_name};
use crate::authserver::{AuthServer, AuthServerError, Existence};
use crate::crd::{SmartClient, condition};

/// What a finalization step came to.
pub enum Cleanup {
    /// Done: the finalizer may go.
    Done,
    /// Not yet: keep the finalizer and come back.
    Pending(Requeue),
}

pub async fn cleanup(client: &SmartClient, ctx: &Context) -> Result<Cleanup, ReconcileError> {
    let uid = client.uid().unwrap_or_default();
    // This operator's last status write, which the watch may not have brought back yet: a stale
    // status would retry a failed delete before its backoff is over.
    let status = ctx.latest_status(client);
    let record = known_record(client, ctx, &uid).await?;
    let client_id = status
        .client_id
        .clone()
        .or_else(|| record.as_ref().map(|r| r.client_id.clone()));
    let resolved = resolve_server(
        &ctx.client,
        &ctx.caches,
        client,
        &ctx.settings.operator_namespace,
    )
    .await;
    let server = match &resolved {
        Ok(server) => ServerResolution::Resolved(server.dialect()),
        Err(e @ (ResolveError::NotFound { .. } | ResolveError::NotAllowed { .. })) => {
            ServerResolution::Gone(e.to_string())
        }
        Err(e) => ServerResolution::Unavailable(e.to_string()),
    };
    let credentials = record.filter(|r| Some(&r.client_id) == client_id.as_ref());
    let now = Timestamp::now();
    let step = plan_deletion(&DeletionInput {
        abandon_annotation: client
            .annotations()
            .get(ABANDON_ANNOTATION)
            .is_some_and(|v| v == "true"),
        observe_only: observe_only(client),
        policy: client.spec.deletion_policy.unwrap_or_default(),
        client_id: client_id.as_deref(),
        server,
        credentials_known: credentials.is_some(),
        management_api: credentials.as_ref().is_some_and(|c| {
            c.registration_client_uri.is_some() && c.registration_access_token.is_some()
        }),
        retry: status.retry.as_ref(),
        now,
    });
    let client_id = client_id.unwrap_or_default();
    let server_label = resolved
        .as_ref()
        .map(|s| s.metric_label())
        .unwrap_or_else(|_| client.spec.auth_server_ref.name.clone());
    match step {
        DeletionStep::LetGo => Ok(let_go(ctx, &uid)),
        DeletionStep::Orphan(reason) => {
            if let Some(previous) = credentials.as_ref().and_then(|c| c.previous.as_ref()) {
                announce_orphan(client, ctx, &previous.client_id, &server_label, &reason);
            }
            orphan(client, ctx, &uid, &client_id, &server_label, &reason);
            Ok(Cleanup::Done)
        }
        DeletionStep::Wait(after) => Ok(Cleanup::Pending(Requeue::requeue(after))),
        DeletionStep::Postpone(why) => {
            record_failure(
                client,
                ctx,
                &client_id,
                status,
                now,
                &why,
                "AuthServerNotUsable",
            )
            .await
        }
        DeletionStep::Delete => {
            // The plan deletes only with a resolved server and known credentials.
            let (Ok(server), Some(credentials)) = (resolved, credentials) else {
                return Ok(Cleanup::Pending(Requeue::requeue(
                    ctx.settings.backoff_base,
                )));
            };
            // A rotation's replaced registration goes first, by the same rules; while it cannot be
            // deleted (a retryable failure) the finalizer stays, so it is never left untracked.
            if let Some(previous) = &credentials.previous {
                let previous_id = previous.client_id.clone();
                match delete_registration(ctx, &server, &previous.as_record()).await {
                    Ok(()) => {
                        info!(client = %client.name_any(), client_id = %previous_id, "replaced registration deleted");
                    }
                    Err(AuthServerError::NotLeader) => {
                        return Err(AuthServerError::NotLeader.into());
                    }
                    Err(error) => match after_failed_delete(error.class()) {
                        FailedDelete::LetGoAsRefused => {
                            let reason = OrphanReason::Refused(error.to_string());
                            announce_orphan(client, ctx, &previous_id, &server_label, &reason);
                        }
                        FailedDelete::Retry => {
                            let why = error.to_string();
                            return record_failure(
                                client,
                                ctx,
                                &previous_id,
                                status,
                                now,
                                &why,
                                error.reason(),
                            )
                            .await;
                        }
                    },
                }
            }
            match delete_registration(ctx, &server, &credentials).await {
                Ok(()) => {
                    info!(client = %client.name_any(), %client_id, server = %server_label, "registration deleted");
                    ctx.publish(
                        client,
                        EventType::Normal,
                        "Deleted",
                        "Delete",
                        format!("client {client_id} was deleted from the auth server"),
                    )
                    .await;
                    Ok(let_go(ctx, &uid))
                }
                // Past the renew deadline: another instance may lead; record nothing.
                Err(AuthServerError::NotLeader) => Err(AuthServerError::NotLeader.into()),
                Err(error) => match after_failed_delete(error.class()) {
                    FailedDelete::LetGoAsRefused => {
                        let reason = OrphanReason::Refused(error.to_string());
                        orphan(client, ctx, &uid, &client_id, &server_label, &reason);
                        Ok(Cleanup::Done)
                    }
                    FailedDelete::Retry => {
                        let why = error.to_string();
                        record_failure(client, ctx, &client_id, status, now, &why, error.reason())
                            .await
                    }
                },
            }
        }
    }
}

/// The credentials the operator holds for the client: memory, else the Secret it owns.
async fn known_record(
    client: &SmartClient,
    ctx: &Context,
    uid: &str,
) -> Result<Option<StoredCredentials>, ReconcileError> {
    if let Some(remembered) = ctx.remembered(uid) {
        return Ok(Some(remembered));
    }
    let secrets: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &client.namespace().unwrap_or_default());
    Ok(secrets
        .get_opt(&secret_name(client))
        .await?
        .and_then(|s| read_credentials(&s, client, &[])))
}

/// RFC 7592 DELETE; "already gone" is success. A rejected registration access token is told apart
/// from a deleted client by the existence probe.
pub(super) async fn delete_registration(
    ctx: &Context,
    server: &ResolvedServer,
    credentials: &StoredCredentials,
) -> Result<(), AuthServerError> {
    let auth = ctx.auth_server(server, false).await.map_err(|e| match e {
        ReconcileError::AuthServer(e) => e,
        other => AuthServerError::Configuration {
            detail: other.to_string(),
        },
    })?;
    let credentials = as_client_credentials(credentials);
    match auth.delete(&credentials).await {
        Ok(()) | Err(AuthServerError::ClientGone) => Ok(()),
        Err(AuthServerError::RegistrationAccessTokenRejected { status }) => {
            match auth.probe(&credentials).await? {
                Existence::Gone => Ok(()),
                Existence::Exists => {
                    Err(AuthServerError::RegistrationAccessTokenRejected { status })
                }
            }
        }
        Err(e) => Err(e),
    }
}

fn let_go(ctx: &Context, uid: &str) -> Cleanup {
    ctx.forget(uid);
    Cleanup::Done
}

/// Leaves the registration on the server and records it: an Event, and a log line that outlives
/// Events (which a terminating namespace may refuse).
fn orphan(
    client: &SmartClient,
    ctx: &Context,
    uid: &str,
    client_id: &str,
    server: &str,
    reason: &OrphanReason,
) {
    announce_orphan(client, ctx, client_id, server, reason);
    let_go(ctx, uid);
}

/// The Event and log line of one registration left on the server.
fn announce_orphan(
    client: &SmartClient,
    ctx: &Context,
    client_id: &str,
    server: &str,
    reason: &OrphanReason,
) {
    let note = reason.note(client_id);
    info!(client = %client.name_any(), %client_id, %server, %note, "registration orphaned");
    ctx.events.publish(
        kube::runtime::events::Event {
            type_: EventType::Normal,
            reason: "Orphaned".into(),
            note: Some(note),
            action: "Delete".into(),
            secondary: None,
        },
        client.object_ref(&()),
    );
}

/// A failed attempt: backoff in status, `DeletionBlocked` once the failures are many, and retries go
/// on at the capped backoff so a recovered server is cleaned up.
async fn record_failure(
    client: &SmartClient,
    ctx: &Context,
    client_id: &str,
    mut status: crate::crd::SmartClientStatus,
    now: Timestamp,
    why: &str,
    reason: &str,
) -> Result<Cleanup, ReconcileError> {
    let (retry, delay) = next_retry(
        status.retry.as_ref(),
        ctx.settings.backoff_base,
        ctx.settings.backoff_cap,
        None,
        now,
        rand::random(),
    );
    let failures = retry.failures.max(0) as u32;
    status.retry = Some(retry);
    let blocked = deletion_blocked(failures, ctx.settings.deletion_attempts);
    let already_blocked = status
        .conditions
        .iter()
        .any(|c| c.type_ == condition::DELETION_BLOCKED && c.status == "True");
    if blocked {
        set_condition(
            &mut status.conditions,
            condition::DELETION_BLOCKED,
            true,
            reason,
            format!(
                "deleting client {client_id} failed {failures} times ({why}); retrying every {}s at most; fix the auth server, or annotate {ABANDON_ANNOTATION}=true to leave the registration there",
                ctx.settings.backoff_cap.as_secs()
            ),
            client.metadata.generation,
            now,
        );
        if !already_blocked {
            warn!(client = %client.name_any(), %client_id, failures, %why, "deletion blocked; still retrying");
            ctx.publish(
                client,
                EventType::Warning,
                "DeletionBlocked",
                "Delete",
                format!(
                    "deleting client {client_id} failed {failures} times: {why}; still retrying"
                ),
            )
            .await;
        }
    }
    write_client_status(ctx, client, &mut status).await?;
    Ok(Cleanup::Pending(Requeue::requeue(delay)))
}
