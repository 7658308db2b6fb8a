//! Whether this instance may call auth servers now (review C16).
//!
//! kube-lease-manager reports losing the Lease only when another holder shows up, not when its own
//! renewals fail, and a leader that cannot reach the apiserver would go on acting after a standby took
//! over. So the operator checks the Lease itself, as client-go's renew deadline does: this instance
//! may act only until `renewTime + renew deadline` of the last Lease that names it as holder, and the
//! renew deadline ends before the Lease expires. Every remote call goes through the one gate that
//! checks it ([`crate::controller::observed::ObservedAuthServer`]), and a call still running at the
//! deadline is abandoned.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::coordination::v1::Lease;

#[derive(Debug)]
pub struct Leadership {
    /// Unix milliseconds until which this instance may act; `i64::MAX` without leader election.
    deadline_ms: AtomicI64,
}

fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis().min(i64::MAX as u128) as i64)
        .unwrap_or(0)
}

impl Leadership {
    /// Without leader election: always.
    pub fn unbounded() -> Self {
        Self {
            deadline_ms: AtomicI64::new(i64::MAX),
        }
    }

    /// With leader election: not until a Lease naming this instance extends it.
    pub fn until_confirmed() -> Self {
        Self {
            deadline_ms: AtomicI64::new(0),
        }
    }

    pub fn may_act(&self) -> bool {
        unix_ms(SystemTime::now()) < self.deadline_ms.load(Ordering::Relaxed)
    }

    /// How long this instance may still act (None: without a bound).
    pub fn remaining(&self) -> Option<Duration> {
        let deadline = self.deadline_ms.load(Ordering::Relaxed);
        if deadline == i64::MAX {
            return None;
        }
        let left = deadline.saturating_sub(unix_ms(SystemTime::now())).max(0);
        Some(Duration::from_millis(left as u64))
    }

    pub fn extend_to(&self, until: SystemTime) {
        self.deadline_ms
            .fetch_max(unix_ms(until), Ordering::Relaxed);
    }

    pub fn revoke(&self) {
        self.deadline_ms.store(0, Ordering::Relaxed);
    }
}

/// The deadline a Lease grants `identity`: its renew time plus the renew deadline, when it names
/// `identity` as holder; None otherwise.
pub fn deadline_from_lease(
    lease: &Lease,
    identity: &str,
    renew_deadline: Duration,
) -> Option<SystemTime> {
    let spec = lease.spec.as_ref()?;
    if spec.holder_identity.as_deref() != Some(identity) {
        return None;
    }
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?;
    let renewed: SystemTime = renewed.0.into();
    Some(renewed + renew_deadline)
}

/// The renew deadline for a Lease of `duration` renewed `grace` before it expires: halfway between the
/// expected renewal and the expiry, so one late renewal is tolerated and the instance stops before a
/// standby may take over.
pub fn renew_deadline(duration: Duration, grace: Duration) -> Duration {
    duration.saturating_sub(grace / 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn lease(holder: &str, renewed: SystemTime) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                renew_time: Some(MicroTime(renewed.try_into().unwrap())),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_lease_naming_this_instance_extends_its_deadline() {
        let renewed = UNIX_EPOCH + Duration::from_secs(1_000);
        let deadline = Duration::from_secs(5);
        assert_eq!(
            deadline_from_lease(&lease("me", renewed), "me", deadline),
            Some(renewed + deadline)
        );
        assert_eq!(
            deadline_from_lease(&lease("other", renewed), "me", deadline),
            None
        );
        assert_eq!(deadline_from_lease(&Lease::default(), "me", deadline), None);
    }

    #[test]
    fn the_renew_deadline_ends_before_the_lease_expires_and_after_the_next_renewal() {
        let (duration, grace) = (Duration::from_secs(15), Duration::from_secs(5));
        let deadline = renew_deadline(duration, grace);
        assert!(deadline < duration);
        assert!(deadline > duration - grace);
    }

    #[test]
    fn a_revoked_or_unconfirmed_leadership_may_not_act() {
        assert!(Leadership::unbounded().may_act());
        let bounded = Leadership::until_confirmed();
        assert!(!bounded.may_act());
        bounded.extend_to(SystemTime::now() + Duration::from_secs(60));
        assert!(bounded.may_act());
        bounded.revoke();
        assert!(!bounded.may_act());
    }
}
