//! metav1 Conditions: set one, keeping `lastTransitionTime` unless the status really changed (pure).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// Sets a condition in `conditions`. `lastTransitionTime` moves only when `status` flips.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if status { "True" } else { "False" };
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            if existing.status != status {
                existing.last_transition_time = Time(now);
            }
            existing.status = status.to_owned();
            existing.reason = reason.to_owned();
            existing.message = message;
            existing.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            observed_generation: generation,
            last_transition_time: Time(now),
        }),
    }
}

/// Derives the conditions kstatus reads (the status library of Flux, Helm 4's `--wait`, kpt and
/// Argo CD's generic health) from `Ready`, so no writer of status has to remember them:
/// `Stalled=True` (Failed to kstatus) when `Ready` is False for a reason that `stalls`, or
/// `DeletionBlocked` is True: only a person can fix it, and the message is the server's words;
/// `Reconciling=True` (InProgress) while anything else keeps `Ready` from True: a first
/// registration, a backoff, an auth server that is not there yet; neither once `Ready` is True.
pub fn derive_kstatus_conditions(
    conditions: &mut Vec<Condition>,
    stalls: impl Fn(&str) -> bool,
    generation: Option<i64>,
    now: Timestamp,
) {
    use crate::crd::condition::{DELETION_BLOCKED, READY, RECONCILING, STALLED};
    let ready = find(conditions, READY).cloned();
    let blocked = find(conditions, DELETION_BLOCKED)
        .filter(|c| c.status == "True")
        .cloned();
    let stalled_by = blocked.or_else(|| {
        ready
            .clone()
            .filter(|r| r.status != "True" && stalls(&r.reason))
    });
    let (keep, drop) = match (&stalled_by, &ready) {
        (Some(cause), _) => {
            set_condition(
                conditions,
                STALLED,
                true,
                &cause.reason,
                cause.message.clone(),
                generation,
                now,
            );
            (STALLED, RECONCILING)
        }
        (None, Some(ready)) if ready.status == "True" => {
            conditions.retain(|c| c.type_ != RECONCILING && c.type_ != STALLED);
            return;
        }
        (None, Some(ready)) => {
            set_condition(
                conditions,
                RECONCILING,
                true,
                &ready.reason,
                ready.message.clone(),
                generation,
                now,
            );
            (RECONCILING, STALLED)
        }
        (None, None) => {
            set_condition(
                conditions,
                RECONCILING,
                true,
                "Progressing",
                "not reconciled yet",
                generation,
                now,
            );
            (RECONCILING, STALLED)
        }
    };
    debug_assert_ne!(keep, drop);
    conditions.retain(|c| c.type_ != drop);
}

/// The condition of a type, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether a condition of that type is True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(status: bool, reason: &str) -> Vec<Condition> {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            "Ready",
            status,
            reason,
            "the server's words",
            Some(3),
            Timestamp::now(),
        );
        conditions
    }

    fn kstatus(conditions: &[Condition]) -> Vec<(String, String, String)> {
        let mut out: Vec<_> = conditions
            .iter()
            .filter(|c| c.type_ == "Reconciling" || c.type_ == "Stalled")
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn kstatus_conditions_follow_ready() {
        let stalled = |reason: &str| reason == "RejectedByPolicy";
        let mut healthy = ready(true, "Ready");
        derive_kstatus_conditions(&mut healthy, stalled, Some(3), Timestamp::now());
        assert!(kstatus(&healthy).is_empty());

        let mut refused = ready(false, "RejectedByPolicy");
        derive_kstatus_conditions(&mut refused, stalled, Some(3), Timestamp::now());
        assert_eq!(
            kstatus(&refused),
            [("Stalled".into(), "True".into(), "RejectedByPolicy".into())]
        );
        assert_eq!(
            find(&refused, "Stalled").unwrap().message,
            "the server's words"
        );
        assert_eq!(
            find(&refused, "Stalled").unwrap().observed_generation,
            Some(3)
        );

        let mut backing_off = ready(false, "AuthServerError");
        derive_kstatus_conditions(&mut backing_off, stalled, Some(3), Timestamp::now());
        assert_eq!(
            kstatus(&backing_off),
            [(
                "Reconciling".into(),
                "True".into(),
                "AuthServerError".into()
            )]
        );

        let mut fresh = Vec::new();
        derive_kstatus_conditions(&mut fresh, stalled, Some(1), Timestamp::now());
        assert_eq!(
            kstatus(&fresh),
            [("Reconciling".into(), "True".into(), "Progressing".into())]
        );

        // Recovered: both go; a blocked deletion stalls whatever Ready says.
        derive_kstatus_conditions(&mut refused, stalled, Some(3), Timestamp::now());
        let mut recovered = refused.clone();
        set_condition(
            &mut recovered,
            "Ready",
            true,
            "Ready",
            "",
            Some(3),
            Timestamp::now(),
        );
        derive_kstatus_conditions(&mut recovered, stalled, Some(3), Timestamp::now());
        assert!(kstatus(&recovered).is_empty());
        set_condition(
            &mut recovered,
            "DeletionBlocked",
            true,
            "AuthServerError",
            "503",
            Some(3),
            Timestamp::now(),
        );
        derive_kstatus_conditions(&mut recovered, stalled, Some(3), Timestamp::now());
        assert_eq!(
            kstatus(&recovered),
            [("Stalled".into(), "True".into(), "AuthServerError".into())]
        );
    }

    #[test]
    fn transition_time_moves_only_on_status_changes() {
        let t0: Timestamp = "2026-11-23T12:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-11-23T12:05:00Z".parse().unwrap();
        let mut conditions = Vec::new();
        set_condition(&mut conditions, "Ready", false, "Pending", "", Some(1), t0);
        set_condition(
            &mut conditions,
            "Ready",
            false,
            "StillPending",
            "x",
            Some(1),
            t1,
        );
        assert_eq!(conditions[0].last_transition_time.0, t0);
        assert_eq!(conditions[0].reason, "StillPending");
        set_condition(
            &mut conditions,
            "Ready",
            true,
            "Registered",
            "",
            Some(1),
            t1,
        );
        assert_eq!(conditions[0].last_transition_time.0, t1);
        assert!(is_true(&conditions, "Ready"));
    }
}
