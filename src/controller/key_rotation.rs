//! The keys of a `private_key_jwt` client and their rotation, decided without I/O. A rotation is
//! three writes of the Secret and two RFC 7592 PUTs, each persisted before the next, so a crash at
//! any point resumes and the server never lacks the key the Secret signs with:
//!
//! 1. **MakeNext**: a new key goes to the Secret as the next key. The keys the server should trust
//!    become current + next, so the metadata hash changes and the plan PUTs both (an Update).
//! 2. **Switch**, once the server has both: next becomes current, current becomes previous. The
//!    trusted set is unchanged, so nothing is sent; apps now sign with the new key.
//! 3. After `overlap` the previous key leaves the trusted set: the plan PUTs the current key alone,
//!    and then **DropPrevious** takes it out of the Secret. The Secret holds every key the server
//!    trusts until the server no longer does.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::keys::{SigningAlgorithm, SigningKey};

/// How long a replaced key stays trusted when `signingKey.overlap` is not set.
pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(24 * 3600);

/// The keys a client holds, as its Secret keeps them.
#[derive(Clone, Debug, PartialEq)]
pub struct HeldKeys {
    /// The key apps sign with.
    pub current: SigningKey,
    /// When `current` became the key apps sign with.
    pub current_since: Timestamp,
    /// Made for a rotation: published with `current`, not signed with yet.
    pub next: Option<SigningKey>,
    /// The key `current` replaced: trusted by the server until the overlap ends.
    pub previous: Option<SigningKey>,
    /// The value of `smart.fhir.dev/rotate-key-requested-at` whose rotation these keys come from:
    /// kept with them in the Secret, so a crash before status says so starts no second rotation.
    pub handled_request: Option<String>,
}

/// The next local step of a rotation (the PUTs between them come from the metadata hash).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyStep {
    MakeNext,
    Switch,
    DropPrevious,
}

/// What the spec asks of rotation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RotationPolicy {
    pub algorithm: SigningAlgorithm,
    pub rotate_every: Option<Duration>,
    pub overlap: Duration,
    /// An unhandled `smart.fhir.dev/rotate-key-requested-at`.
    pub requested: bool,
}

/// The keys the server should trust now, ordered by kid (so the set, not its order, is hashed):
/// current and next, and previous until the overlap ends.
pub fn trusted_keys<'a>(
    held: &'a HeldKeys,
    policy: &RotationPolicy,
    now: Timestamp,
) -> Vec<&'a SigningKey> {
    let mut keys: Vec<&SigningKey> = [Some(&held.current), held.next.as_ref()]
        .into_iter()
        .flatten()
        .collect();
    if let Some(previous) = &held.previous
        && now < overlap_ends(held, policy)
    {
        keys.push(previous);
    }
    keys.sort_by(|a, b| a.kid().cmp(b.kid()));
    keys
}

fn overlap_ends(held: &HeldKeys, policy: &RotationPolicy) -> Timestamp {
    held.current_since
        .checked_add(policy.overlap)
        .unwrap_or(held.current_since)
}

/// The next step, for a client whose server holds the trusted keys already (the plan asks only then),
/// and when to look again if none is due.
pub fn next_key_step(
    held: &HeldKeys,
    policy: &RotationPolicy,
    now: Timestamp,
) -> (Option<KeyStep>, Option<Timestamp>) {
    if held.next.is_some() {
        return (Some(KeyStep::Switch), None);
    }
    if held.previous.is_some() {
        let ends = overlap_ends(held, policy);
        return if now >= ends {
            (Some(KeyStep::DropPrevious), None)
        } else {
            (None, Some(ends))
        };
    }
    if policy.requested || held.current.algorithm() != policy.algorithm {
        return (Some(KeyStep::MakeNext), None);
    }
    match policy.rotate_every {
        Some(every) => {
            let due = held.current_since.checked_add(every).unwrap_or(now);
            if now >= due {
                (Some(KeyStep::MakeNext), None)
            } else {
                (None, Some(due))
            }
        }
        None => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RotationPolicy {
        RotationPolicy {
            algorithm: SigningAlgorithm::ES384,
            rotate_every: Some(Duration::from_secs(3600)),
            overlap: Duration::from_secs(600),
            requested: false,
        }
    }

    fn key() -> SigningKey {
        SigningKey::generate(SigningAlgorithm::ES384).unwrap()
    }

    #[test]
    fn a_rotation_runs_make_next_switch_and_drop_with_the_server_trusting_the_secret_key_throughout()
     {
        let t0 = Timestamp::now();
        let policy = policy();
        let mut held = HeldKeys {
            current: key(),
            current_since: t0,
            next: None,
            previous: None,
            handled_request: None,
        };
        // Not due: look again when it is.
        assert_eq!(
            next_key_step(&held, &policy, t0),
            (None, Some(t0 + Duration::from_secs(3600)))
        );
        let due = t0 + Duration::from_secs(3600);
        assert_eq!(
            next_key_step(&held, &policy, due).0,
            Some(KeyStep::MakeNext)
        );

        held.next = Some(key());
        let kids = |keys: Vec<&SigningKey>| -> Vec<String> {
            keys.iter().map(|k| k.kid().to_owned()).collect()
        };
        let published = kids(trusted_keys(&held, &policy, due));
        assert_eq!(
            published.len(),
            2,
            "both keys are published before the switch"
        );
        assert_eq!(next_key_step(&held, &policy, due).0, Some(KeyStep::Switch));

        let old = held.current.clone();
        held.previous = Some(std::mem::replace(
            &mut held.current,
            held.next.take().unwrap(),
        ));
        held.current_since = due;
        let after_switch = kids(trusted_keys(&held, &policy, due));
        assert_eq!(
            after_switch, published,
            "the switch changes nothing on the server"
        );
        assert_eq!(
            next_key_step(&held, &policy, due),
            (None, Some(due + Duration::from_secs(600)))
        );

        let overlap_over = due + Duration::from_secs(600);
        let last = kids(trusted_keys(&held, &policy, overlap_over));
        assert_eq!(
            last,
            vec![held.current.kid().to_owned()],
            "the old key leaves the server first"
        );
        assert!(!last.contains(&old.kid().to_owned()));
        assert_eq!(
            next_key_step(&held, &policy, overlap_over).0,
            Some(KeyStep::DropPrevious)
        );
    }

    #[test]
    fn a_request_or_a_new_algorithm_rotates_now_and_no_schedule_means_never() {
        let t0 = Timestamp::now();
        let held = HeldKeys {
            current: key(),
            current_since: t0,
            next: None,
            previous: None,
            handled_request: None,
        };
        let mut p = policy();
        p.rotate_every = None;
        assert_eq!(next_key_step(&held, &p, t0), (None, None));
        p.requested = true;
        assert_eq!(next_key_step(&held, &p, t0).0, Some(KeyStep::MakeNext));
        p.requested = false;
        p.algorithm = SigningAlgorithm::RS384;
        assert_eq!(next_key_step(&held, &p, t0).0, Some(KeyStep::MakeNext));
    }
}
