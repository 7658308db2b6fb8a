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
