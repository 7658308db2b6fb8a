//! What to do next for a SmartClient: a pure function of what it asks for, what its status says, what
//! the operator knows and the time. Everything that talks to the network or the apiserver stays in
//! `reconcile.rs` around it.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::credential_rotation::CredentialStep;
use super::key_rotation::KeyStep;
use super::secret::StoredCredentials;
use crate::crd::{Dialect, RetryStatus, SmartClientStatus, condition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Reasons of user errors: nothing is retried until the spec changes.
pub const USER_ERROR_REASONS: &[&str] = &[
    "InvalidClientMetadata",
    "RejectedByPolicy",
    "UnsupportedByDialect",
    "InvalidSpec",
    "CredentialsLost",
    "RegistrationAnswerUnreadable",
    "UnsupportedByServer",
    "AdoptionRefused",
];

/// Inputs of [`plan_next_action`].
pub struct PlanInput<'a> {
    pub dialect: Dialect,
    pub generation: i64,
    pub desired_hash: &'a str,
    pub status: &'a SmartClientStatus,
    /// What the operator knows (memory, or the Secret read back after a restart).
    pub credentials: Option<&'a StoredCredentials>,
    pub secret_in_sync: bool,
    /// Whether the Secret holds the signing key the client needs (true for clients without one).
    pub signing_key_written: bool,
    /// The next step of a key rotation, and when one is due if none is now (`key_rotation.rs`).
    pub key_step: (Option<KeyStep>, Option<Timestamp>),
    /// `spec.adopt`: a client never registered takes over an existing registration instead.
    pub adopt: bool,
    /// The next step of a credential rotation, and when one is due if none is now
    /// (`credential_rotation.rs`).
    pub credential_step: (Option<CredentialStep>, Option<Timestamp>),
    /// Names of the tokens the operator keeps fresh: debug tokens (S4S dialects) and access tokens
    /// (RFC7591), unique across both.
    pub tokens: Vec<&'a str>,
    pub now: Timestamp,
    /// When the next "does the client still exist" probe is due.
    pub next_existence_check: Timestamp,
}

/// The next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// First registration.
    Register,
    /// Take over the existing registration `spec.adopt` names, instead of a first registration.
    Adopt,
    /// The server forgot the client (or the operator lost its credentials): register again.
    ReRegister,
    /// RFC7591: replace the registration's metadata in place (RFC 7592 PUT).
    Update,
    /// S4S dialects cannot update: register a new client and orphan the old one.
    Replace,
    /// Write the Secret from what the operator knows (it is missing, edited or stale).
    WriteSecret,
    /// A private_key_jwt client: make its key if none is held, and write it to the Secret.
    WriteSigningKey,
    /// A local step of a key rotation (the server is given the keys by an Update in between).
    RotateKey(KeyStep),
    /// A rotation: register the replacement; the current credentials become the previous ones.
    RotateCredentials,
    /// The end of a rotation's overlap: delete (or orphan, recorded) the replaced registration,
    /// then drop it from the Secret.
    RetirePrevious,
    /// Check that the server still knows the client.
    ProbeExistence,
    /// Mint the named debug token.
    MintToken(String),
    /// Healthy: nothing to do now; come back after the duration (None: only on a change).
    Wait(Option<Duration>),
    /// Backing off after failures: try again after the duration.
    Backoff(Duration),
    /// A user error at this generation: nothing happens until the spec changes.
    AwaitSpecChange,
}

/// Decides the next step. Called again after each step until it answers `Wait`.
pub fn plan_next_action(input: &PlanInput) -> Action {
    let status = input.status;
    // A backoff belongs to the generation that failed: a spec change is tried at once, so a user's fix
    // does not wait out the old failure's delay (up to the backoff cap).
    let backoff_is_current = status
        .observed_generation
        .is_none_or(|g| g == input.generation);
    if let Some(at) = status
        .retry
        .as_ref()
        .and_then(|r| r.next_attempt_at.as_ref())
        && at.0 > input.now
        && backoff_is_current
    {
        return Action::Backoff(until(input.now, at.0));
    }
    if blocked_by_user_error(status, input.generation) {
        return Action::AwaitSpecChange;
    }
    // The key reaches the Secret before its public part reaches the server: the server never
    // trusts a key the app cannot find.
    if !input.signing_key_written {
        return Action::WriteSigningKey;
    }
    let Some(credentials) = input.credentials else {
        return match (status.client_id.is_none(), input.adopt) {
            (true, true) => Action::Adopt,
            (true, false) => Action::Register,
            (false, _) => Action::ReRegister,
        };
    };
    // What the operator holds goes to the Secret before anything else reaches the server: a write that
    // failed earlier is retried first, and never answered with a new registration.
    if !input.secret_in_sync {
        return Action::WriteSecret;
    }
    // Credentials the server never confirmed (an S4SLegacy choice written before it was posted): post
    // them again; the dialect tells "already ours" from a refusal.
    if credentials.registration_pending {
        return Action::Register;
    }
    // The record that came with the credentials is the truth; status is its report and may lag (a
    // status write that failed, a restart before it): an up-to-date client is never updated or replaced
    // because of that. Records written before the hash was kept fall back to status.
    let applied_hash = credentials
        .applied_metadata_hash
        .as_deref()
        .or(status.applied_metadata_hash.as_deref());
    if applied_hash != Some(input.desired_hash) {
        // RFC 7591 without RFC 7592 (no registration client URI or token): nothing to update with.
        let manageable = credentials.registration_client_uri.is_some()
            && credentials.registration_access_token.is_some();
        return match input.dialect {
            Dialect::Rfc7591 if manageable => Action::Update,
            Dialect::Rfc7591 | Dialect::S4s | Dialect::S4sLegacy => Action::Replace,
        };
    }
    // Only once the server holds the keys it should trust (the hash above matches): a rotation's
    // next step never gets ahead of the server.
    let (key_step, key_due) = input.key_step;
    if let Some(step) = key_step {
        return Action::RotateKey(step);
    }
    let (credential_step, rotation_due) = input.credential_step;
    match credential_step {
        Some(CredentialStep::Replace) => return Action::RotateCredentials,
        Some(CredentialStep::RetirePrevious) => return Action::RetirePrevious,
        None => {}
    }
    if input.now >= input.next_existence_check {
        return Action::ProbeExistence;
    }
    let mut next_wakeup = input.next_existence_check;
    for due in [key_due, rotation_due].into_iter().flatten() {
        next_wakeup = next_wakeup.min(due);
    }
    for name in &input.tokens {
        let refresh_at = status
            .debug_tokens
            .iter()
            .chain(&status.access_tokens)
            .find(|t| t.name == *name)
            .and_then(|t| t.next_refresh_at.as_ref())
            .map(|t| t.0);
        match refresh_at {
            Some(at) if credentials.tokens.contains_key(*name) && at > input.now => {
                next_wakeup = next_wakeup.min(at);
            }
            _ => return Action::MintToken((*name).to_owned()),
        }
    }
    Action::Wait(Some(until(input.now, next_wakeup)))
}

/// A user error at the current generation waits for the spec to change.
pub fn blocked_by_user_error(status: &SmartClientStatus, generation: i64) -> bool {
    status.conditions.iter().any(|c| {
        c.type_ == condition::READY
            && c.status == "False"
            && USER_ERROR_REASONS.contains(&c.reason.as_str())
            && c.observed_generation == Some(generation)
    })
}

fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
}

/// When to re-mint a token that expires at `expires_at`: `refresh_before` earlier, and a further random
/// part of up to 10% of its lifetime so that tokens minted together do not all renew together.
pub fn refresh_due_at(
    minted_at: Timestamp,
    expires_at: Timestamp,
    refresh_before: Duration,
    jitter_fraction: f64,
) -> Timestamp {
    let lifetime =
        Duration::try_from(expires_at.duration_since(minted_at)).unwrap_or(Duration::ZERO);
    let jitter = lifetime.mul_f64(0.1 * jitter_fraction.clamp(0.0, 1.0));
    let lead = refresh_before.saturating_add(jitter).min(lifetime);
    // Never sooner than a tenth of the lifetime (at least a second) after minting: a lead as long as
    // the lifetime, a server that issues shorter tokens than asked or a server clock far behind would
    // otherwise mint in a loop (review C11: 21 mints in 10 s).
    let earliest = minted_at + lifetime.div_f64(10.0).max(MIN_REMINT_INTERVAL);
    expires_at
        .checked_sub(lead)
        .unwrap_or(minted_at)
        .max(earliest)
}

/// The shortest time between two mints of one debug token.
pub const MIN_REMINT_INTERVAL: Duration = Duration::from_secs(1);

/// Exponential backoff with jitter and a cap: `base * 2^(failures-1)`, capped, then scaled by a random
/// factor in [0.5, 1.0] (jitter_fraction in [0, 1]).
pub fn backoff_delay(
    failures: u32,
    base: Duration,
    cap: Duration,
    jitter_fraction: f64,
) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    let raw = base.saturating_mul(1u32 << exponent).min(cap);
    raw.mul_f64(0.5 + 0.5 * jitter_fraction.clamp(0.0, 1.0))
}

/// One more failure after `previous`: the retry record to keep in status (its count and when to try
/// again) and the delay until then, at least `asked` (a server's `Retry-After`, capped).
pub fn next_retry(
    previous: Option<&RetryStatus>,
    base: Duration,
    cap: Duration,
    asked: Option<Duration>,
    now: Timestamp,
    jitter_fraction: f64,
) -> (RetryStatus, Duration) {
    let failures = previous
        .map_or(0, |r| r.failures.max(0) as u32)
        .saturating_add(1);
    let mut delay = backoff_delay(failures, base, cap, jitter_fraction);
    if let Some(asked) = asked {
        delay = delay.max(asked.min(cap));
    }
    let retry = RetryStatus {
        failures: failures.min(i32::MAX as u32) as i32,
        next_attempt_at: Some(Time(now + delay)),
    };
    (retry, delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::crd::{DebugTokenStatus, RetryStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use std::collections::BTreeMap;

    fn now() -> Timestamp {
        "2026-11-23T12:00:00Z".parse().unwrap()
    }

    fn credentials(tokens: &[&str]) -> StoredCredentials {
        StoredCredentials {
            client_id: "id".into(),
            client_secret: Some("secret".into()),
            registration_access_token: Some("rat".into()),
            registration_client_uri: Some("https://as/register/id".into()),
            tokens: tokens
                .iter()
                .map(|n| {
                    (
                        n.to_string(),
                        super::super::secret::StoredToken {
                            access_token: "at".into(),
                            refresh_token: None,
                            expires_at: None,
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>(),
            applied_metadata_hash: Some("h1".into()),
            registration_pending: false,
            ..Default::default()
        }
    }

    fn healthy_status() -> SmartClientStatus {
        SmartClientStatus {
            client_id: Some("id".into()),
            applied_metadata_hash: Some("h1".into()),
            ..Default::default()
        }
    }

    fn input<'a>(
        status: &'a SmartClientStatus,
        credentials: Option<&'a StoredCredentials>,
    ) -> PlanInput<'a> {
        PlanInput {
            dialect: Dialect::Rfc7591,
            generation: 1,
            desired_hash: "h1",
            status,
            credentials,
            secret_in_sync: true,
            signing_key_written: true,
            key_step: (None, None),
            adopt: false,
            credential_step: (None, None),
            tokens: vec![],
            now: now(),
            next_existence_check: now() + Duration::from_secs(600),
        }
    }

    #[test]
    fn a_signing_key_reaches_the_secret_before_anything_registers_or_updates_with_it() {
        let status = SmartClientStatus::default();
        let mut first = input(&status, None);
        first.signing_key_written = false;
        assert_eq!(plan_next_action(&first), Action::WriteSigningKey);
        first.signing_key_written = true;
        assert_eq!(plan_next_action(&first), Action::Register);

        // A key lost from the Secret of a registered client (or a new algorithm) comes before the
        // update that publishes its public part.
        let record = credentials(&[]);
        let mut registered = input(&status, Some(&record));
        registered.desired_hash = "h2";
        registered.signing_key_written = false;
        assert_eq!(plan_next_action(&registered), Action::WriteSigningKey);
    }

    #[test]
    fn each_failure_doubles_the_delay_up_to_the_cap_and_retry_after_is_honoured() {
        let base = Duration::from_secs(2);
        let cap = Duration::from_secs(60);
        let (first, delay) = next_retry(None, base, cap, None, now(), 1.0);
        assert_eq!((first.failures, delay), (1, base));
        let (second, delay) = next_retry(Some(&first), base, cap, None, now(), 1.0);
        assert_eq!((second.failures, delay), (2, base * 2));
        let (_, asked) = next_retry(
            Some(&second),
            base,
            cap,
            Some(Duration::from_secs(30)),
            now(),
            1.0,
        );
        assert_eq!(asked, Duration::from_secs(30));
        let (_, capped) = next_retry(
            Some(&second),
            base,
            cap,
            Some(Duration::from_secs(600)),
            now(),
            1.0,
        );
        assert_eq!(capped, cap);
    }

    #[test]
    fn a_backoff_holds_back_its_own_generation_only() {
        let mut status = healthy_status();
        status.observed_generation = Some(1);
        status.retry = Some(RetryStatus {
            failures: 3,
            next_attempt_at: Some(Time(now() + Duration::from_secs(120))),
        });
        let creds = credentials(&[]);
        let mut i = input(&status, Some(&creds));
        assert_eq!(
            plan_next_action(&i),
            Action::Backoff(Duration::from_secs(120))
        );
        i.generation = 2;
        i.desired_hash = "h2";
        assert_eq!(plan_next_action(&i), Action::Update);
    }

    #[test]
    fn a_rotation_waits_for_the_secret_and_the_update_and_wakes_the_client_when_due() {
        let status = healthy_status();
        let creds = credentials(&[]);
        let mut i = input(&status, Some(&creds));
        i.credential_step = (Some(CredentialStep::Replace), None);
        assert_eq!(plan_next_action(&i), Action::RotateCredentials);
        i.secret_in_sync = false;
        assert_eq!(plan_next_action(&i), Action::WriteSecret);
        i.secret_in_sync = true;
        i.desired_hash = "h2";
        assert_eq!(plan_next_action(&i), Action::Update);
        i.desired_hash = "h1";
        i.credential_step = (Some(CredentialStep::RetirePrevious), None);
        assert_eq!(plan_next_action(&i), Action::RetirePrevious);
        i.credential_step = (None, Some(now() + Duration::from_secs(60)));
        assert_eq!(
            plan_next_action(&i),
            Action::Wait(Some(Duration::from_secs(60)))
        );
    }

    #[test]
    fn a_client_that_adopts_takes_over_instead_of_registering_and_then_is_managed_as_its_own() {
        let status = SmartClientStatus::default();
        let mut i = input(&status, None);
        i.adopt = true;
        assert_eq!(plan_next_action(&i), Action::Adopt);
        // Adopted (no metadata applied yet): brought in line by an update, never registered.
        let mut adopted = credentials(&[]);
        adopted.applied_metadata_hash = None;
        let healthy = healthy_status();
        let mut i = input(&healthy, Some(&adopted));
        i.adopt = true;
        let mut lagging = healthy_status();
        lagging.applied_metadata_hash = None;
        i.status = &lagging;
        assert_eq!(plan_next_action(&i), Action::Update);
        // A client registered once re-registers when its credentials are lost, adopt or not.
        let mut i = input(&healthy, None);
        i.adopt = true;
        assert_eq!(plan_next_action(&i), Action::ReRegister);
    }

    #[test]
    fn a_new_client_is_registered() {
        let status = SmartClientStatus::default();
        assert_eq!(plan_next_action(&input(&status, None)), Action::Register);
    }

    #[test]
    fn a_healthy_client_waits_for_the_next_existence_check() {
        let status = healthy_status();
        let creds = credentials(&[]);
        assert_eq!(
            plan_next_action(&input(&status, Some(&creds))),
            Action::Wait(Some(Duration::from_secs(600)))
        );
    }

    #[test]
    fn a_metadata_change_updates_rfc7591_and_replaces_s4s() {
        let status = healthy_status();
        let creds = credentials(&[]);
        let mut i = input(&status, Some(&creds));
        i.desired_hash = "h2";
        assert_eq!(plan_next_action(&i), Action::Update);
        i.dialect = Dialect::S4s;
        assert_eq!(plan_next_action(&i), Action::Replace);
    }

    #[test]
    fn a_status_that_lags_the_record_changes_nothing() {
        // The Secret (the record) says h1 was applied; status never got written.
        let status = SmartClientStatus::default();
        let creds = credentials(&[]);
        let mut i = input(&status, Some(&creds));
        i.dialect = Dialect::S4s;
        assert_eq!(
            plan_next_action(&i),
            Action::Wait(Some(Duration::from_secs(600)))
        );
    }

    #[test]
    fn an_unconfirmed_s4s_legacy_choice_is_posted_again() {
        let status = SmartClientStatus::default();
        let mut creds = credentials(&[]);
        creds.applied_metadata_hash = None;
        creds.registration_pending = true;
        let mut i = input(&status, Some(&creds));
        i.dialect = Dialect::S4sLegacy;
        assert_eq!(plan_next_action(&i), Action::Register);
        // Even when status (from before the secret was lost) says the metadata is applied.
        let healthy = healthy_status();
        i.status = &healthy;
        assert_eq!(plan_next_action(&i), Action::Register);
    }

    #[test]
    fn an_rfc7591_client_without_a_management_api_is_replaced_not_updated() {
        let status = healthy_status();
        let creds = credentials(&[]);
        let mut i = input(&status, Some(&creds));
        i.desired_hash = "h2";
        assert_eq!(plan_next_action(&i), Action::Update);
        let mut bare = credentials(&[]);
        bare.registration_client_uri = None;
        bare.registration_access_token = None;
        i.credentials = Some(&bare);
        assert_eq!(plan_next_action(&i), Action::Replace);
    }

    #[test]
    fn lost_credentials_of_a_known_client_re_register() {
        let status = healthy_status();
        assert_eq!(plan_next_action(&input(&status, None)), Action::ReRegister);
    }

    #[test]
    fn credentials_not_yet_in_the_secret_are_written_before_an_update_or_replacement() {
        let status = healthy_status();
        let creds = credentials(&[]);
        let mut i = input(&status, Some(&creds));
        i.secret_in_sync = false;
        i.desired_hash = "h2";
        assert_eq!(plan_next_action(&i), Action::WriteSecret);
        i.dialect = Dialect::S4s;
        assert_eq!(plan_next_action(&i), Action::WriteSecret);
    }

    #[test]
    fn an_edited_secret_is_rewritten_before_anything_else_remote() {
        let status = healthy_status();
        let creds = credentials(&[]);
        let mut i = input(&status, Some(&creds));
        i.secret_in_sync = false;
        i.next_existence_check = now();
        assert_eq!(plan_next_action(&i), Action::WriteSecret);
    }

    #[test]
    fn tokens_are_minted_when_missing_or_due_and_waited_for_otherwise() {
        let mut status = healthy_status();
        let creds = credentials(&["a"]);
        let mut i = input(&status, Some(&creds));
        i.tokens = vec!["a", "b"];
        assert_eq!(
            plan_next_action(&i),
            Action::MintToken("a".into()),
            "no status yet for a"
        );
        status.debug_tokens = vec![DebugTokenStatus {
            name: "a".into(),
            expires_at: None,
            next_refresh_at: Some(Time(now() + Duration::from_secs(30))),
        }];
        let mut i = input(&status, Some(&creds));
        i.tokens = vec!["a", "b"];
        assert_eq!(
            plan_next_action(&i),
            Action::MintToken("b".into()),
            "b is not in the Secret"
        );
        i.tokens = vec!["a"];
        assert_eq!(
            plan_next_action(&i),
            Action::Wait(Some(Duration::from_secs(30)))
        );
    }

    #[test]
    fn backoff_in_status_is_respected() {
        let mut status = healthy_status();
        status.retry = Some(RetryStatus {
            failures: 3,
            next_attempt_at: Some(Time(now() + Duration::from_secs(40))),
        });
        let creds = credentials(&[]);
        assert_eq!(
            plan_next_action(&input(&status, Some(&creds))),
            Action::Backoff(Duration::from_secs(40))
        );
    }

    #[test]
    fn user_errors_wait_for_a_new_generation() {
        let mut status = SmartClientStatus::default();
        status.conditions.push(Condition {
            type_: "Ready".into(),
            status: "False".into(),
            reason: "InvalidClientMetadata".into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: Time(now()),
        });
        assert_eq!(
            plan_next_action(&input(&status, None)),
            Action::AwaitSpecChange
        );
        let mut i = input(&status, None);
        i.generation = 2;
        assert_eq!(plan_next_action(&i), Action::Register);
    }

    #[test]
    fn refresh_is_due_before_expiry_with_bounded_jitter() {
        let minted = now();
        let expires = now() + Duration::from_secs(100);
        let early = refresh_due_at(minted, expires, Duration::from_secs(20), 1.0);
        let late = refresh_due_at(minted, expires, Duration::from_secs(20), 0.0);
        assert_eq!(late, now() + Duration::from_secs(80));
        assert_eq!(early, now() + Duration::from_secs(70));
        // refreshBefore as long as the lifetime: not at once (a mint loop), a tenth of it later.
        assert_eq!(
            refresh_due_at(minted, expires, Duration::from_secs(500), 0.5),
            minted + Duration::from_secs(10)
        );
        // A token that lives 2 s is re-minted a second after minting at the soonest.
        assert_eq!(
            refresh_due_at(
                minted,
                minted + Duration::from_secs(2),
                Duration::from_secs(5),
                1.0
            ),
            minted + MIN_REMINT_INTERVAL
        );
    }

    #[test]
    fn backoff_grows_exponentially_with_jitter_up_to_the_cap() {
        let base = Duration::from_secs(2);
        let cap = Duration::from_secs(60);
        assert_eq!(backoff_delay(1, base, cap, 1.0), Duration::from_secs(2));
        assert_eq!(backoff_delay(3, base, cap, 1.0), Duration::from_secs(8));
        assert_eq!(backoff_delay(3, base, cap, 0.0), Duration::from_secs(4));
        assert_eq!(backoff_delay(30, base, cap, 1.0), cap);
    }
}
