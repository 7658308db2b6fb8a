//! Rotation of a client's credentials, decided without I/O. A rotation is a new registration that
//! replaces the current one; the replaced registration is kept (in the record, in the Secret as
//! `previous_*`) for the overlap, so apps that have not read the new credentials keep working, and
//! is then retired: deleted on the server where the dialect can (RFC 7592), else orphaned and
//! recorded. Each step is one write of the Secret, made before the next remote call:
//!
//! 1. **Replace**: the replacement is registered through the same gate as any registration (the
//!    Secret says a registration is in flight before it is sent); its answer goes to the Secret
//!    with the replaced credentials as `previous_*`, in one write.
//! 2. **RetirePrevious**, once the overlap is over: the replaced registration is deleted (or its
//!    orphan record reaches status), and only then does it leave the Secret.
//!
//! No rotation starts while a replaced registration is still held, so there are never two: a
//! rotation asked for during an overlap ends that overlap first.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use secrecy::SecretString;

use super::plan::refresh_due_at;

/// How long replaced credentials stay registered when `rotation.overlap` is not set.
pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(24 * 3600);

/// A registration a rotation replaced, kept for the overlap.
#[derive(Clone, Debug)]
pub struct PreviousRegistration {
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    pub registration_access_token: Option<SecretString>,
    pub registration_client_uri: Option<String>,
    /// When the current credentials replaced it: the start of the overlap.
    pub replaced_at: Timestamp,
}

impl PreviousRegistration {
    /// As a record of its own, for the calls that delete it.
    pub fn as_record(&self) -> super::secret::StoredCredentials {
        super::secret::StoredCredentials {
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            registration_access_token: self.registration_access_token.clone(),
            registration_client_uri: self.registration_client_uri.clone(),
            ..Default::default()
        }
    }
}

/// What the spec asks of rotation.
#[derive(Clone, Debug, PartialEq)]
pub struct RotationPolicy {
    pub every: Option<Duration>,
    pub overlap: Duration,
    /// How long before `client_secret_expires_at` to rotate; None: a fifth of the lifetime.
    pub refresh_before: Option<Duration>,
    /// An unhandled `smart.fhir.dev/rotate-credentials-requested-at`.
    pub requested: bool,
}

/// The facts of the current registration a schedule is reckoned from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CurrentRegistration {
    pub registered_at: Timestamp,
    pub secret_expires_at: Option<Timestamp>,
    /// When the replaced registration it holds was replaced, if one is held.
    pub previous_replaced_at: Option<Timestamp>,
}

/// The next step of a rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialStep {
    Replace,
    RetirePrevious,
}

/// When the replaced registration is retired: the overlap after it was replaced.
pub fn retires_at(replaced_at: Timestamp, policy: &RotationPolicy) -> Timestamp {
    replaced_at
        .checked_add(policy.overlap)
        .unwrap_or(replaced_at)
}

/// When the current credentials are due for rotation: `every` after they were registered, or
/// `refreshBefore` their secret expires, whichever comes first; None when nothing schedules one.
/// Never sooner than a tenth of the secret's lifetime after it was issued (see [`refresh_due_at`]),
/// so a server that issues short-lived secrets gets no rotation loop.
pub fn rotation_due_at(
    current: &CurrentRegistration,
    policy: &RotationPolicy,
) -> Option<Timestamp> {
    let scheduled = policy
        .every
        .and_then(|every| current.registered_at.checked_add(every).ok());
    let ahead_of_expiry = current.secret_expires_at.map(|expires| {
        let lifetime = Duration::try_from(expires.duration_since(current.registered_at))
            .unwrap_or(Duration::ZERO);
        let lead = policy.refresh_before.unwrap_or(lifetime / 5);
        refresh_due_at(current.registered_at, expires, lead, 0.0)
    });
    match (scheduled, ahead_of_expiry) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The next step now, and when to look again if none is due.
pub fn next_credential_step(
    current: &CurrentRegistration,
    policy: &RotationPolicy,
    now: Timestamp,
) -> (Option<CredentialStep>, Option<Timestamp>) {
    let due = rotation_due_at(current, policy);
    if let Some(replaced_at) = current.previous_replaced_at {
        // The overlap ends early when the current credentials are due themselves (an overlap longer
        // than a short-lived secret): they are rotated on time, after the retirement.
        let at = retires_at(replaced_at, policy);
        let at = due.map_or(at, |due| at.min(due));
        return if policy.requested || now >= at {
            (Some(CredentialStep::RetirePrevious), None)
        } else {
            (None, Some(at))
        };
    }
    if policy.requested {
        return (Some(CredentialStep::Replace), None);
    }
    match due {
        Some(due) if now >= due => (Some(CredentialStep::Replace), None),
        due => (None, due),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Timestamp {
        "2026-12-02T00:00:00Z".parse().unwrap()
    }

    fn policy() -> RotationPolicy {
        RotationPolicy {
            every: Some(Duration::from_secs(3600)),
            overlap: Duration::from_secs(600),
            refresh_before: None,
            requested: false,
        }
    }

    fn current() -> CurrentRegistration {
        CurrentRegistration {
            registered_at: t0(),
            secret_expires_at: None,
            previous_replaced_at: None,
        }
    }

    #[test]
    fn a_rotation_replaces_when_due_then_retires_the_replaced_registration_after_the_overlap() {
        let hour = Duration::from_secs(3600);
        assert_eq!(
            next_credential_step(&current(), &policy(), t0()),
            (None, Some(t0() + hour))
        );
        assert_eq!(
            next_credential_step(&current(), &policy(), t0() + hour).0,
            Some(CredentialStep::Replace)
        );
        let replaced = CurrentRegistration {
            registered_at: t0() + hour,
            secret_expires_at: None,
            previous_replaced_at: Some(t0() + hour),
        };
        let overlap_ends = t0() + hour + Duration::from_secs(600);
        assert_eq!(
            next_credential_step(&replaced, &policy(), t0() + hour),
            (None, Some(overlap_ends)),
            "the replaced registration waits out the overlap"
        );
        assert_eq!(
            next_credential_step(&replaced, &policy(), overlap_ends).0,
            Some(CredentialStep::RetirePrevious)
        );
    }

    #[test]
    fn a_request_during_an_overlap_retires_first_so_there_are_never_two_replaced_registrations() {
        let mut p = policy();
        p.requested = true;
        let held = CurrentRegistration {
            previous_replaced_at: Some(t0()),
            ..current()
        };
        assert_eq!(
            next_credential_step(&held, &p, t0()).0,
            Some(CredentialStep::RetirePrevious)
        );
        assert_eq!(
            next_credential_step(&current(), &p, t0()).0,
            Some(CredentialStep::Replace)
        );
    }

    #[test]
    fn an_overlap_longer_than_the_secret_lives_ends_when_the_current_secret_is_due() {
        let mut p = policy();
        p.every = None;
        p.overlap = Duration::from_secs(24 * 3600);
        let held = CurrentRegistration {
            registered_at: t0(),
            secret_expires_at: Some(t0() + Duration::from_secs(100)),
            previous_replaced_at: Some(t0()),
        };
        assert_eq!(
            next_credential_step(&held, &p, t0()),
            (None, Some(t0() + Duration::from_secs(80)))
        );
        assert_eq!(
            next_credential_step(&held, &p, t0() + Duration::from_secs(80)).0,
            Some(CredentialStep::RetirePrevious)
        );
    }

    #[test]
    fn an_expiring_secret_is_rotated_ahead_of_its_expiry_and_never_in_a_loop() {
        let mut p = policy();
        p.every = None;
        let expiring = CurrentRegistration {
            secret_expires_at: Some(t0() + Duration::from_secs(1000)),
            ..current()
        };
        // Default lead: a fifth of the lifetime.
        assert_eq!(
            rotation_due_at(&expiring, &p),
            Some(t0() + Duration::from_secs(800))
        );
        p.refresh_before = Some(Duration::from_secs(100));
        assert_eq!(
            rotation_due_at(&expiring, &p),
            Some(t0() + Duration::from_secs(900))
        );
        // A lead longer than the lifetime: a tenth of the lifetime after issue, not at once.
        p.refresh_before = Some(Duration::from_secs(5000));
        assert_eq!(
            rotation_due_at(&expiring, &p),
            Some(t0() + Duration::from_secs(100))
        );
        // The earlier of the schedule and the expiry.
        p.every = Some(Duration::from_secs(50));
        assert_eq!(
            rotation_due_at(&expiring, &p),
            Some(t0() + Duration::from_secs(50))
        );
        p.every = None;
        assert_eq!(
            rotation_due_at(&current(), &p),
            None,
            "nothing schedules it"
        );
    }
}
