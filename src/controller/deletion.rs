//! What to do with a SmartClient that is being deleted: a pure function of the policy, what resolves,
//! what the operator knows and the failures so far, planned like the live path (`plan.rs`). The driver
//! (`cleanup.rs`) gathers the facts, carries out the step and records it.
//!
//! The rules, in order: an explicit abandon lets go; nothing registered lets go; `deletionPolicy:
//! Orphan` leaves the registration; an auth server that is definitely gone, a dialect that cannot
//! delete, or credentials that are gone leave it too (recorded as an orphan); a transient failure
//! (resolve or server) waits with capped backoff and is retried for as long as it lasts, so a
//! recovered server is cleaned up. `DeletionBlocked` reports a long run of failures without ending
//! the retries. Only the abandon annotation or a definite refusal by the server lets go of a
//! registration that could still be deleted.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::authserver::ErrorClass;
use crate::crd::{DeletionPolicy, Dialect, RetryStatus};

/// How the auth server resolved for this deletion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerResolution {
    /// Found and usable: its dialect.
    Resolved(Dialect),
    /// Definitely not there for this client (deleted, or no longer admitting the namespace): no
    /// deletion can ever reach it.
    Gone(String),
    /// Not usable now (not Ready, a discovery blip, an apiserver error): try again later.
    Unavailable(String),
}

/// The facts a deletion is decided on.
#[derive(Clone, Debug)]
pub struct DeletionInput<'a> {
    pub abandon_annotation: bool,
    /// `smart.fhir.dev/observe-only: "true"`: the operator only reads; it deletes nothing.
    pub observe_only: bool,
    pub policy: DeletionPolicy,
    /// The client id the operator knows of (status, or the record in the Secret when status lags).
    pub client_id: Option<&'a str>,
    pub server: ServerResolution,
    /// Whether the credentials needed to delete that client (its record) are at hand.
    pub credentials_known: bool,
    /// Whether the record has what RFC 7592 needs (a registration client URI and access token); a
    /// server that offers no management API handed out neither.
    pub management_api: bool,
    pub retry: Option<&'a RetryStatus>,
    pub now: Timestamp,
}

/// Why a registration stays on the server although its SmartClient goes away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrphanReason {
    Abandoned,
    ObserveOnly,
    PolicyOrphan,
    AuthServerGone(String),
    DialectCannotDelete(Dialect),
    /// An RFC 7591 server that offers no RFC 7592 management (no registration client URI or token).
    NoManagementApi,
    CredentialsGone,
    /// The server refused the deletion itself (a user-class answer: policy, unsupported).
    Refused(String),
}

impl OrphanReason {
    /// The Event text (never a credential: only the client id and the server's reason).
    pub fn note(&self, client_id: &str) -> String {
        match self {
            OrphanReason::Abandoned => format!(
                "smart.fhir.dev/abandon-registration=true: client {client_id} is left on the auth server"
            ),
            OrphanReason::ObserveOnly => format!(
                "smart.fhir.dev/observe-only=true: the operator deletes nothing; client {client_id} is left on the auth server"
            ),
            OrphanReason::PolicyOrphan => {
                format!("deletionPolicy Orphan: client {client_id} stays registered")
            }
            OrphanReason::AuthServerGone(why) => {
                format!("cannot delete client {client_id}: {why}; it is left on the auth server")
            }
            OrphanReason::DialectCannotDelete(dialect) => format!(
                "{dialect} cannot delete clients: client {client_id} is left on the auth server"
            ),
            OrphanReason::NoManagementApi => format!(
                "the auth server offers no RFC 7592 management (no registration client URI or access token): client {client_id} is left on it"
            ),
            OrphanReason::CredentialsGone => format!(
                "the credentials of client {client_id} are gone (Secret deleted): it is left on the auth server"
            ),
            OrphanReason::Refused(why) => format!(
                "the auth server refused to delete client {client_id} ({why}): it is left there"
            ),
        }
    }
}

/// The next step of a deletion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeletionStep {
    /// Nothing was registered: remove the finalizer.
    LetGo,
    /// Leave the registration, record why, remove the finalizer.
    Orphan(OrphanReason),
    /// Backing off after a failure: come back after the duration.
    Wait(Duration),
    /// The auth server is unavailable now: count a failure and come back with backoff.
    Postpone(String),
    /// Delete the registration on the auth server.
    Delete,
}

pub fn plan_deletion(input: &DeletionInput) -> DeletionStep {
    if input.abandon_annotation {
        return DeletionStep::Orphan(OrphanReason::Abandoned);
    }
    if input.observe_only && input.client_id.is_some() {
        return DeletionStep::Orphan(OrphanReason::ObserveOnly);
    }
    if input.client_id.is_none() {
        return DeletionStep::LetGo;
    }
    if input.policy == DeletionPolicy::Orphan {
        return DeletionStep::Orphan(OrphanReason::PolicyOrphan);
    }
    let dialect = match &input.server {
        ServerResolution::Gone(why) => {
            return DeletionStep::Orphan(OrphanReason::AuthServerGone(why.clone()));
        }
        ServerResolution::Unavailable(why) => {
            if let Some(wait) = backoff_left(input) {
                return DeletionStep::Wait(wait);
            }
            return DeletionStep::Postpone(why.clone());
        }
        ServerResolution::Resolved(dialect) => *dialect,
    };
    if !dialect.manages_clients() {
        return DeletionStep::Orphan(OrphanReason::DialectCannotDelete(dialect));
    }
    if !input.credentials_known {
        return DeletionStep::Orphan(OrphanReason::CredentialsGone);
    }
    if !input.management_api {
        return DeletionStep::Orphan(OrphanReason::NoManagementApi);
    }
    if let Some(wait) = backoff_left(input) {
        return DeletionStep::Wait(wait);
    }
    DeletionStep::Delete
}

fn backoff_left(input: &DeletionInput) -> Option<Duration> {
    let at = input.retry?.next_attempt_at.as_ref()?.0;
    (at > input.now).then(|| Duration::try_from(at.duration_since(input.now)).unwrap_or_default())
}

/// What a failed delete means: a user-class answer is the server's definite refusal (it will not
/// change by asking again), anything else is retried.
pub fn after_failed_delete(class: ErrorClass) -> FailedDelete {
    match class {
        ErrorClass::User => FailedDelete::LetGoAsRefused,
        ErrorClass::Retryable | ErrorClass::Credential => FailedDelete::Retry,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailedDelete {
    Retry,
    LetGoAsRefused,
}

/// Whether `failures` in a row are a long failure that a person should see (`DeletionBlocked`); the
/// retries go on regardless.
pub fn deletion_blocked(failures: u32, attempts_before_reporting: u32) -> bool {
    failures >= attempts_before_reporting
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn now() -> Timestamp {
        "2026-12-01T12:00:00Z".parse().unwrap()
    }

    fn input(server: ServerResolution) -> DeletionInput<'static> {
        DeletionInput {
            abandon_annotation: false,
            observe_only: false,
            policy: DeletionPolicy::Delete,
            client_id: Some("id-1"),
            server,
            credentials_known: true,
            management_api: true,
            retry: None,
            now: now(),
        }
    }

    fn rfc7591() -> ServerResolution {
        ServerResolution::Resolved(Dialect::Rfc7591)
    }

    #[test]
    fn a_known_client_on_a_server_that_can_delete_is_deleted() {
        assert_eq!(plan_deletion(&input(rfc7591())), DeletionStep::Delete);
    }

    #[test]
    fn observe_only_deletes_nothing() {
        let mut i = input(rfc7591());
        i.observe_only = true;
        assert_eq!(
            plan_deletion(&i),
            DeletionStep::Orphan(OrphanReason::ObserveOnly)
        );
    }

    #[test]
    fn the_abandon_annotation_lets_go_whatever_else_holds() {
        let mut i = input(ServerResolution::Unavailable("down".into()));
        i.abandon_annotation = true;
        assert_eq!(
            plan_deletion(&i),
            DeletionStep::Orphan(OrphanReason::Abandoned)
        );
    }

    #[test]
    fn nothing_registered_lets_go_without_a_call() {
        let mut i = input(rfc7591());
        i.client_id = None;
        assert_eq!(plan_deletion(&i), DeletionStep::LetGo);
    }

    #[test]
    fn the_orphan_policy_and_dialects_that_cannot_delete_orphan() {
        let mut i = input(rfc7591());
        i.policy = DeletionPolicy::Orphan;
        assert_eq!(
            plan_deletion(&i),
            DeletionStep::Orphan(OrphanReason::PolicyOrphan)
        );
        let i = input(ServerResolution::Resolved(Dialect::S4s));
        assert_eq!(
            plan_deletion(&i),
            DeletionStep::Orphan(OrphanReason::DialectCannotDelete(Dialect::S4s))
        );
    }

    #[test]
    fn a_server_that_is_gone_orphans_but_one_that_is_down_is_retried() {
        let gone = input(ServerResolution::Gone(
            "SmartAuthServer dev does not exist".into(),
        ));
        assert!(matches!(
            plan_deletion(&gone),
            DeletionStep::Orphan(OrphanReason::AuthServerGone(_))
        ));
        // Review C5: a discovery blip or an apiserver error during deletion used to orphan.
        let down = input(ServerResolution::Unavailable("discovery failed".into()));
        assert_eq!(
            plan_deletion(&down),
            DeletionStep::Postpone("discovery failed".into())
        );
    }

    #[test]
    fn lost_credentials_orphan() {
        let mut i = input(rfc7591());
        i.credentials_known = false;
        assert_eq!(
            plan_deletion(&i),
            DeletionStep::Orphan(OrphanReason::CredentialsGone)
        );
    }

    #[test]
    fn a_server_without_rfc7592_orphans_without_a_call() {
        let mut i = input(rfc7591());
        i.management_api = false;
        assert_eq!(
            plan_deletion(&i),
            DeletionStep::Orphan(OrphanReason::NoManagementApi)
        );
    }

    #[test]
    fn backoff_is_waited_out_and_then_the_delete_is_tried_again_however_many_failures() {
        let later = RetryStatus {
            failures: 50,
            next_attempt_at: Some(Time(now() + Duration::from_secs(30))),
        };
        let mut i = input(rfc7591());
        i.retry = Some(&later);
        assert_eq!(
            plan_deletion(&i),
            DeletionStep::Wait(Duration::from_secs(30))
        );
        let due = RetryStatus {
            failures: 50,
            next_attempt_at: Some(Time(now())),
        };
        i.retry = Some(&due);
        assert_eq!(plan_deletion(&i), DeletionStep::Delete);
    }

    #[test]
    fn only_a_definite_refusal_ends_the_retries() {
        assert_eq!(
            after_failed_delete(ErrorClass::Retryable),
            FailedDelete::Retry
        );
        assert_eq!(
            after_failed_delete(ErrorClass::Credential),
            FailedDelete::Retry
        );
        assert_eq!(
            after_failed_delete(ErrorClass::User),
            FailedDelete::LetGoAsRefused
        );
        assert!(!deletion_blocked(4, 5));
        assert!(deletion_blocked(5, 5));
    }
}
