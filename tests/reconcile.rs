//! The SmartClient reconciler on the real control plane with smart-dev-server: what a user can observe
//! (objects, conditions, Events, Secrets) and what the auth server received.

mod common;

use std::time::Duration;

use common::operator::*;
use common::scenario::*;
use common::*;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use smart_operator::controller::reconcile::FINALIZER;
use smart_operator::devserver::Dialect as DevDialect;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc7591_client_is_registered_and_its_credentials_land_in_an_owned_secret() {
    let s = setup("reg-rfc", DevDialect::Rfc7591, &[]).await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    let ready = wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    let status = ready.status.unwrap();
    let client_id = status.client_id.clone().expect("status.clientId");
    assert_eq!(status.secret_name.as_deref(), Some("app-smart-client"));
    assert!(status.registration_client_uri.is_some());

    let secret = get_secret(&s.client, &s.ns, "app-smart-client")
        .await
        .expect("the Secret exists");
    assert_eq!(
        secret_value(&secret, "client_id").as_deref(),
        Some(client_id.as_str())
    );
    let remote = s.server.clients().await;
    assert_eq!(remote.len(), 1, "exactly one registration");
    assert_eq!(
        remote[0]["client_secret"].as_str(),
        secret_value(&secret, "client_secret").as_deref()
    );
    assert_eq!(
        remote[0]["registration_access_token"].as_str(),
        secret_value(&secret, "registration_access_token").as_deref()
    );
    assert_eq!(
        secret_value(&secret, "fhir_base_url").as_deref(),
        Some(s.server.fhir_base_url().as_str())
    );
    let labels = secret.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("smart-operator")
    );
    let owner = &secret.metadata.owner_references.clone().unwrap_or_default()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("SmartClient", Some(true))
    );
    assert!(
        wait_for_event(&s.client, &s.ns, "Registered")
            .await
            .contains(&client_id)
    );
    // What users and pipelines type:
    let (ok, out, err) = run_tool(
        "kubectl",
        &[
            "wait",
            "--for=condition=Ready",
            "smc/app",
            "-n",
            &s.ns,
            "--timeout=30s",
        ],
    );
    assert!(
        ok && out.contains("condition met"),
        "kubectl wait failed: {out}{err}"
    );
}

/// The admission policy usually puts the finalizer on at creation; where it is missing (older clusters,
/// or someone removed it) the operator puts it back, and registers only once it is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_finalizer_is_put_back_and_nothing_is_registered_twice() {
    let s = setup("finalizer", DevDialect::Rfc7591, &[]).await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    api(&s)
        .patch(
            "app",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    let restored = eventually(
        "the operator puts its finalizer back",
        Duration::from_secs(30),
        || async {
            api(&s)
                .get("app")
                .await
                .ok()
                .filter(|c| c.finalizers().iter().any(|f| f == FINALIZER))
        },
    )
    .await;
    assert_eq!(restored.finalizers(), [FINALIZER]);
    assert_eq!(s.server.clients().await.len(), 1, "no second registration");
    // With the finalizer back, deletion still cleans up the registration.
    delete_and_expect_registration_gone(&s, "app").await;
}

/// The initial access token is read once and reused; when the server refuses the cached one (used up,
/// and replaced in its Secret), the operator reads the Secret again at once instead of backing off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_initial_access_token_is_picked_up_without_a_failure() {
    let s = setup("iat-rotate", DevDialect::Rfc7591, &[]).await;
    let use_token = |token: &'static str| {
        let (client, ns) = (s.client.clone(), s.ns.clone());
        async move {
            apply(&client, Some(&ns), json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "iat"}, "stringData": {"token": token}}))
                .await
                .unwrap();
        }
    };
    s.server.add_initial_access_token("single-use-a", 1).await;
    use_token("single-use-a").await;
    create(&s.client, Some(&s.ns), smart_client("first", json!({})))
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, "first", "True", "Ready").await;

    s.server.add_initial_access_token("single-use-b", 1).await;
    use_token("single-use-b").await;
    create(&s.client, Some(&s.ns), smart_client("second", json!({})))
        .await
        .unwrap();
    let second = wait_for_ready(&s.client, &s.ns, "second", "True", "Ready").await;
    let status = second.status.unwrap();
    assert!(
        status.retry.is_none(),
        "no failure recorded: {:?}",
        status.retry
    );
    assert_eq!(s.server.clients().await.len(), 2);
    assert_eq!(
        s.server.count("register").await,
        3,
        "one refused attempt with the used-up token, then one with the new token"
    );
    // Both registrations are announced; the refusal never surfaced as a failure.
    let registered = eventually("two Registered Events", Duration::from_secs(30), || async {
        let events = events(&s.client, &s.ns).await;
        (events.iter().filter(|(r, _)| r == "Registered").count() == 2).then_some(events)
    })
    .await;
    assert!(
        !registered
            .iter()
            .any(|(reason, _)| reason == "InitialAccessTokenRejected"),
        "{registered:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_state_makes_no_remote_call_and_no_write() {
    let s = setup("steady", DevDialect::Rfc7591, &[]).await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    let ready = wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    // Let the writes of the first reconcile settle, then take the baseline.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_stats = s.server.stats().await["total"].clone();
    let secret_rv = get_secret(&s.client, &s.ns, "app-smart-client")
        .await
        .unwrap()
        .metadata
        .resource_version;
    let status_before = api(&s).get("app").await.unwrap().status;
    // An unrelated change wakes the controller up: it must reconcile without calling anyone or writing.
    api(&s)
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"touched": "yes"}}})),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        s.server.stats().await["total"],
        before_stats,
        "the auth server got requests in steady state"
    );
    assert_eq!(
        get_secret(&s.client, &s.ns, "app-smart-client")
            .await
            .unwrap()
            .metadata
            .resource_version,
        secret_rv,
        "the Secret was rewritten"
    );
    assert_eq!(
        api(&s).get("app").await.unwrap().status,
        status_before,
        "status was rewritten"
    );
    assert!(
        s.operator.log().contains("planned action=Wait"),
        "the operator did reconcile the change"
    );
    drop(ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc7591_spec_change_is_one_put_and_the_rotated_token_is_persisted() {
    let s = setup("update", DevDialect::Rfc7591, &[]).await;
    let first = ready_app(&s).await;
    let old_rat = secret_value(
        &get_secret(&s.client, &s.ns, "app-smart-client")
            .await
            .unwrap(),
        "registration_access_token",
    );
    patch_spec(
        &s,
        "app",
        json!({"scopes": ["launch/patient", "patient/*.read", "openid", "fhirUser"]}),
    )
    .await;
    let updated = eventually(
        "the new metadata is applied",
        Duration::from_secs(30),
        || async {
            let status = api(&s).get("app").await.ok()?.status?;
            (status.applied_metadata_hash != first.applied_metadata_hash).then_some(status)
        },
    )
    .await;
    assert_eq!(
        updated.client_id, first.client_id,
        "updated in place, same client"
    );
    assert_eq!(s.server.count("update").await, 1, "exactly one PUT");
    assert_eq!(
        s.server.count("register").await,
        1,
        "no second registration"
    );
    let remote = s.server.clients().await;
    assert!(remote[0]["scope"].as_str().unwrap().contains("fhirUser"));
    let secret = get_secret(&s.client, &s.ns, "app-smart-client")
        .await
        .unwrap();
    let new_rat = secret_value(&secret, "registration_access_token");
    assert_ne!(
        new_rat, old_rat,
        "the rotated registration access token was persisted"
    );
    assert_eq!(
        remote[0]["registration_access_token"].as_str(),
        new_rat.as_deref()
    );
    wait_for_event(&s.client, &s.ns, "Updated").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4s_spec_change_registers_a_visible_replacement_and_reports_the_orphan() {
    let s = setup("replace", DevDialect::S4s, &[]).await;
    let first = ready_app(&s).await;
    patch_spec(
        &s,
        "app",
        json!({"redirectUris": ["https://app.example.org/new-callback"]}),
    )
    .await;
    let replaced = eventually("a replacement client", Duration::from_secs(30), || async {
        let status = api(&s).get("app").await.ok()?.status?;
        (status.client_id != first.client_id && status.client_id.is_some()).then_some(status)
    })
    .await;
    let old_id = first.client_id.unwrap();
    assert!(
        replaced
            .orphaned_clients
            .iter()
            .any(|o| o.client_id == old_id && o.reason == "Replaced")
    );
    assert!(
        wait_for_event(&s.client, &s.ns, "Replaced")
            .await
            .contains("orphaned")
    );
    assert_eq!(s.server.count("register").await, 2);
    let secret = get_secret(&s.client, &s.ns, "app-smart-client")
        .await
        .unwrap();
    assert_eq!(secret_value(&secret, "client_id"), replaced.client_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_or_edited_secret_is_restored_without_registering_again() {
    let s = setup("drift", DevDialect::Rfc7591, &[]).await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    let original = get_secret(&s.client, &s.ns, "app-smart-client")
        .await
        .unwrap();
    let secret_value_before = secret_value(&original, "client_secret");

    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(s.client.clone(), &s.ns);
    secrets
        .delete("app-smart-client", &DeleteParams::default())
        .await
        .unwrap();
    let restored = eventually(
        "the deleted Secret is back",
        Duration::from_secs(30),
        || async {
            get_secret(&s.client, &s.ns, "app-smart-client")
                .await
                .filter(|s| s.metadata.uid != original.metadata.uid)
        },
    )
    .await;
    assert_eq!(
        secret_value(&restored, "client_secret"),
        secret_value_before
    );

    secrets
        .patch(
            "app-smart-client",
            &PatchParams::default(),
            &Patch::Merge(&json!({"stringData": {"client_secret": "tampered"}})),
        )
        .await
        .unwrap();
    eventually(
        "the edited value is rewritten",
        Duration::from_secs(30),
        || async {
            let secret = get_secret(&s.client, &s.ns, "app-smart-client").await?;
            (secret_value(&secret, "client_secret") == secret_value_before).then_some(())
        },
    )
    .await;
    assert_eq!(
        s.server.count("register").await,
        1,
        "restoring needs no second registration"
    );
    wait_for_event(&s.client, &s.ns, "SecretRestored").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_auth_server_is_detected_by_the_existence_check_and_the_client_re_registered() {
    let s = setup(
        "wiped",
        DevDialect::S4s,
        &["--existence-check-interval", "2s"],
    )
    .await;
    let first = ready_app(&s).await;
    s.server.reset().await;
    let second = eventually(
        "re-registration after the wipe",
        Duration::from_secs(30),
        || async {
            let status = api(&s).get("app").await.ok()?.status?;
            (status.client_id != first.client_id && status.client_id.is_some()).then_some(status)
        },
    )
    .await;
    wait_for_event(&s.client, &s.ns, "ReRegistered").await;
    assert_eq!(
        s.server.clients().await.len(),
        1,
        "the wiped server knows the client again"
    );
    let secret = get_secret(&s.client, &s.ns, "app-smart-client")
        .await
        .unwrap();
    assert_eq!(secret_value(&secret, "client_id"), second.client_id);
    assert!(
        s.server.count("token").await >= 1,
        "existence was probed at the token endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inconclusive_existence_check_is_retried_and_never_registers_again() {
    let s = setup(
        "probe-unknown",
        DevDialect::S4s,
        &["--existence-check-interval", "1s"],
    )
    .await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    let first = wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    let secret_version = get_secret(&s.client, &s.ns, "app-smart-client")
        .await
        .unwrap()
        .metadata
        .resource_version;
    // A gateway in front of the token endpoint answers 401 by itself: not the server's invalid_client.
    s.server
        .set_faults(json!({"error_rate": 1.0, "error_status": 401, "endpoints": ["token"]}))
        .await;
    let unknown = wait_for_ready(&s.client, &s.ns, "app", "False", "ExistenceUnknown").await;
    eventually(
        "several inconclusive checks",
        Duration::from_secs(30),
        || async { (s.server.count("token").await >= 3).then_some(()) },
    )
    .await;
    s.server.clear_faults().await;
    let recovered = wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;

    assert_eq!(
        s.server.count("register").await,
        1,
        "nothing registered again"
    );
    assert_eq!(
        unknown.status.as_ref().unwrap().client_id,
        first.status.as_ref().unwrap().client_id
    );
    assert_eq!(
        recovered.status.as_ref().unwrap().client_id,
        first.status.as_ref().unwrap().client_id
    );
    assert!(
        recovered.status.as_ref().unwrap().retry.is_none(),
        "a conclusive check clears the backoff"
    );
    assert_eq!(
        get_secret(&s.client, &s.ns, "app-smart-client")
            .await
            .unwrap()
            .metadata
            .resource_version,
        secret_version,
        "the Secret was never rewritten"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_tokens_are_minted_introspected_and_re_minted_before_expiry() {
    let s = setup("tokens", DevDialect::S4s, &[]).await;
    let tokens = json!({"debugTokens": [{"name": "daniel", "user": "daniel-adams", "patientId": "smart-1288992", "lifetime": "4s", "refreshBefore": "2s"}]});
    create(&s.client, Some(&s.ns), smart_client("app", tokens))
        .await
        .unwrap();
    let ready = wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    let status = ready.status.unwrap();
    let token_status = status
        .debug_tokens
        .iter()
        .find(|t| t.name == "daniel")
        .expect("status.debugTokens[daniel]");
    let expires_at = token_status.expires_at.clone().expect("expiresAt").0;
    let next_refresh_at = token_status
        .next_refresh_at
        .clone()
        .expect("nextRefreshAt")
        .0;
    assert!(
        next_refresh_at < expires_at,
        "renewal is scheduled before expiry"
    );
    let first = secret_value(
        &get_secret(&s.client, &s.ns, "app-smart-client")
            .await
            .unwrap(),
        "daniel_access_token",
    )
    .expect("token in the Secret");
    assert_eq!(
        condition(&api(&s).get("app").await.unwrap(), "TokensFresh")
            .map(|c| c.0)
            .as_deref(),
        Some("True")
    );
    let renewed = eventually(
        "the token is re-minted",
        Duration::from_secs(15),
        || async {
            let token = secret_value(
                &get_secret(&s.client, &s.ns, "app-smart-client").await?,
                "daniel_access_token",
            )?;
            (token != first).then_some(token)
        },
    )
    .await;
    assert_ne!(renewed, first);
    assert!(
        s.server.count("introspect").await >= 2,
        "expiry is read by introspection"
    );
    let mints = s.server.count("debug_token").await;
    assert!(
        (2..=4).contains(&mints),
        "re-minted on schedule, not in a loop: {mints} mints"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_errors_are_reported_and_not_retried_until_the_spec_changes() {
    let s = setup("user-error", DevDialect::Rfc7591, &[]).await;
    s.server
        .set_policy(
            json!({"allowed_scopes": ["openid", "launch/patient"], "on_disallowed": "reject"}),
        )
        .await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    let refused = wait_for_ready(&s.client, &s.ns, "app", "False", "RejectedByPolicy").await;
    let message = refused
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message;
    assert!(
        message.contains("insufficient_scope"),
        "the server's reason is shown: {message}"
    );
    let attempts = s.server.count("register").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        s.server.count("register").await,
        attempts,
        "no retry without a spec change"
    );
    wait_for_event(&s.client, &s.ns, "RejectedByPolicy").await;
    patch_spec(&s, "app", json!({"scopes": ["openid", "launch/patient"]})).await;
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_back_off_exponentially_and_recover() {
    let s = setup("backoff", DevDialect::Rfc7591, &[]).await;
    s.server
        .set_faults(json!({"error_rate": 1.0, "error_status": 503, "endpoints": ["register"]}))
        .await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    let failing = wait_for_ready(&s.client, &s.ns, "app", "False", "AuthServerError").await;
    assert!(
        failing
            .status
            .unwrap()
            .retry
            .is_some_and(|r| r.failures >= 1)
    );
    let start = s.server.count("register").await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let attempts = s.server.count("register").await - start;
    // Backoff 200ms doubling to a 2s cap: at most ~6 attempts in 6 s; a hot loop would make hundreds.
    assert!((1..=8).contains(&attempts), "{attempts} attempts in 6 s");
    let failures = api(&s)
        .get("app")
        .await
        .unwrap()
        .status
        .unwrap()
        .retry
        .unwrap()
        .failures;
    assert!(
        failures >= 3,
        "failures are counted in status (so backoff survives restarts): {failures}"
    );
    s.server.clear_faults().await;
    let ready = wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    assert!(
        ready.status.unwrap().retry.is_none(),
        "a success clears the backoff"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_missing_or_unready_server_means_no_remote_call() {
    let s = setup(
        "trust",
        DevDialect::Rfc7591,
        &["--watch-cluster-servers", "true"],
    )
    .await;
    let mut missing = smart_client("missing", json!({}));
    missing["spec"]["authServerRef"] = json!({"name": "nope"});
    create(&s.client, Some(&s.ns), missing).await.unwrap();
    wait_for_ready(&s.client, &s.ns, "missing", "False", "AuthServerNotFound").await;

    let cluster_name = format!("{}-cluster", s.ns);
    apply(&s.client, None, json!({"apiVersion": "smart.fhir.dev/v1alpha1", "kind": "ClusterSmartAuthServer", "metadata": {"name": cluster_name}, "spec": {"dialect": "RFC7591", "fhirBaseUrl": s.server.fhir_base_url(), "credentials": {"initialAccessTokenSecretRef": {"name": "iat", "key": "token"}}}}))
        .await
        .unwrap();
    let mut not_allowed = smart_client("not-allowed", json!({}));
    not_allowed["spec"]["authServerRef"] =
        json!({"kind": "ClusterSmartAuthServer", "name": cluster_name});
    create(&s.client, Some(&s.ns), not_allowed).await.unwrap();
    wait_for_ready(
        &s.client,
        &s.ns,
        "not-allowed",
        "False",
        "AuthServerNotAllowed",
    )
    .await;
    assert_eq!(s.server.count("register").await, 0);
    // Admitting the namespace lets it through without touching the SmartClient.
    let servers: Api<smart_operator::crd::ClusterSmartAuthServer> = Api::all(s.client.clone());
    servers
        .patch(&cluster_name, &PatchParams::default(), &Patch::Merge(&json!({"spec": {"allowedNamespaces": {"matchLabels": {"kubernetes.io/metadata.name": s.ns}}}})))
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, "not-allowed", "True", "Ready").await;
    servers
        .delete(&cluster_name, &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_follows_the_policy_and_never_hangs() {
    let s = setup("delete", DevDialect::Rfc7591, &[]).await;
    create(&s.client, Some(&s.ns), smart_client("gone", json!({})))
        .await
        .unwrap();
    create(
        &s.client,
        Some(&s.ns),
        smart_client("kept", json!({"deletionPolicy": "Orphan"})),
    )
    .await
    .unwrap();
    wait_for_ready(&s.client, &s.ns, "gone", "True", "Ready").await;
    wait_for_ready(&s.client, &s.ns, "kept", "True", "Ready").await;
    assert_eq!(s.server.clients().await.len(), 2);
    api(&s)
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    api(&s)
        .delete("kept", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "both SmartClients are gone",
        Duration::from_secs(30),
        || async {
            (api(&s).get_opt("gone").await.ok()?.is_none()
                && api(&s).get_opt("kept").await.ok()?.is_none())
            .then_some(())
        },
    )
    .await;
    let remaining = s.server.clients().await;
    assert_eq!(
        remaining.len(),
        1,
        "Delete removed one registration, Orphan kept the other"
    );
    assert_eq!(s.server.count("delete").await, 1);
    wait_for_event(&s.client, &s.ns, "Deleted").await;
    wait_for_event(&s.client, &s.ns, "Orphaned").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_deletion_reports_deletion_blocked_and_the_annotation_lets_go() {
    let s = setup(
        "blocked",
        DevDialect::Rfc7591,
        &["--deletion-attempts", "2"],
    )
    .await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    s.server
        .set_faults(json!({"error_rate": 1.0, "error_status": 500, "endpoints": ["delete"]}))
        .await;
    api(&s)
        .delete("app", &DeleteParams::default())
        .await
        .unwrap();
    eventually("DeletionBlocked", Duration::from_secs(30), || async {
        let object = api(&s).get_opt("app").await.ok()??;
        (condition(&object, "DeletionBlocked")
            .map(|c| c.0)
            .as_deref()
            == Some("True"))
        .then_some(())
    })
    .await;
    // DeletionBlocked reports a long failure; the retries go on at the capped backoff (2 s here, with
    // jitter down to 1 s): one to six more in 5 s, not a hot loop.
    let attempts = s.server.count("delete").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let later = s.server.count("delete").await;
    assert!(
        (attempts + 1..=attempts + 6).contains(&later),
        "retries go on, capped: {attempts} then {later}"
    );
    api(&s)
        .patch("app", &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"annotations": {"smart.fhir.dev/abandon-registration": "true"}}})))
        .await
        .unwrap();
    eventually(
        "the SmartClient is let go",
        Duration::from_secs(30),
        || async { api(&s).get_opt("app").await.ok()?.is_none().then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_full_of_smart_clients_does_not_hang() {
    let s = setup("ns-delete", DevDialect::Rfc7591, &[]).await;
    for i in 0..5 {
        create(
            &s.client,
            Some(&s.ns),
            smart_client(&format!("app-{i}"), json!({})),
        )
        .await
        .unwrap();
    }
    for i in 0..5 {
        wait_for_ready(&s.client, &s.ns, &format!("app-{i}"), "True", "Ready").await;
    }
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(s.client.clone());
    namespaces
        .delete(&s.ns, &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the namespace is deleted",
        Duration::from_secs(60),
        || async {
            namespaces
                .get_opt(&s.ns)
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_operator_makes_no_registration_and_no_token_mint() {
    let mut s = setup("restart", DevDialect::S4s, &[]).await;
    let n = 50;
    for i in 0..n {
        let tokens = json!({"debugTokens": [{"name": "t", "user": "daniel-adams", "patientId": "smart-1288992", "lifetime": "1h"}]});
        create(
            &s.client,
            Some(&s.ns),
            smart_client(&format!("app-{i}"), tokens),
        )
        .await
        .unwrap();
    }
    for i in 0..n {
        wait_for_ready(&s.client, &s.ns, &format!("app-{i}"), "True", "Ready").await;
    }
    let _ = s.operator.stop();
    let registers = s.server.count("register").await;
    let mints = s.server.count("debug_token").await;
    assert_eq!((registers, mints), (n, n));
    s.operator.restart();
    // The restarted operator reconciles every client once it has synced its watches.
    eventually(
        "the restarted operator reconciled every client",
        Duration::from_secs(60),
        || async {
            (s.operator.log().matches("planned action=Wait").count() >= n as usize).then_some(())
        },
    )
    .await;
    assert_eq!(
        s.server.count("register").await,
        registers,
        "no registration after a restart"
    );
    assert_eq!(
        s.server.count("debug_token").await,
        mints,
        "no token mint after a restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4s_legacy_client_uses_a_chosen_id_and_a_strong_secret_and_survives_a_wipe() {
    let s = setup(
        "legacy",
        DevDialect::S4sLegacy,
        &["--existence-check-interval", "2s"],
    )
    .await;
    create(
        &s.client,
        Some(&s.ns),
        smart_client("app", json!({"clientId": "growth-chart-dev"})),
    )
    .await
    .unwrap();
    let ready = wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    assert_eq!(
        ready.status.unwrap().client_id.as_deref(),
        Some("growth-chart-dev")
    );
    let secret = get_secret(&s.client, &s.ns, "app-smart-client")
        .await
        .unwrap();
    let client_secret = secret_value(&secret, "client_secret").unwrap();
    assert!(client_secret.len() >= 32 && client_secret.chars().all(|c| c.is_ascii_alphanumeric()));
    let remote = s.server.clients().await;
    assert_eq!(
        remote[0]["client_secret"].as_str(),
        Some(client_secret.as_str())
    );

    // The wipe this test is named for: the same id and the same secret come back.
    s.server.reset().await;
    let remote = eventually(
        "the client registered again after the wipe",
        Duration::from_secs(30),
        || async {
            let clients = s.server.clients().await;
            (!clients.is_empty()).then_some(clients)
        },
    )
    .await;
    assert_eq!(remote[0]["client_id"].as_str(), Some("growth-chart-dev"));
    assert_eq!(
        remote[0]["client_secret"].as_str(),
        Some(client_secret.as_str()),
        "mounted credentials keep working after a wipe"
    );
    let secret = get_secret(&s.client, &s.ns, "app-smart-client")
        .await
        .unwrap();
    assert_eq!(secret_value(&secret, "client_secret"), Some(client_secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_servers_publish_discovered_endpoints_capabilities_and_readiness() {
    let s = setup("servers", DevDialect::Rfc7591, &[]).await;
    let s4s = AuthServer::start(DevDialect::S4s, &[]).await;
    apply(&s.client, Some(&s.ns), json!({"apiVersion": "smart.fhir.dev/v1alpha1", "kind": "SmartAuthServer", "metadata": {"name": "s4s"}, "spec": {"dialect": "S4S", "fhirBaseUrl": s4s.fhir_base_url()}}))
        .await
        .unwrap();
    // Nothing listens on port 9 of loopback: discovery fails and the server says so.
    apply(&s.client, Some(&s.ns), json!({"apiVersion": "smart.fhir.dev/v1alpha1", "kind": "SmartAuthServer", "metadata": {"name": "down"}, "spec": {"dialect": "S4S", "fhirBaseUrl": "http://127.0.0.1:9/fhir"}}))
        .await
        .unwrap();
    let servers: Api<smart_operator::crd::SmartAuthServer> =
        Api::namespaced(s.client.clone(), &s.ns);
    let status_of = |name: &'static str, ready: &'static str| {
        let servers = servers.clone();
        async move {
            eventually(
                &format!("SmartAuthServer {name} Ready={ready}"),
                Duration::from_secs(30),
                || async {
                    let status = servers.get(name).await.ok()?.status?;
                    status
                        .conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == ready)
                        .then_some(status)
                },
            )
            .await
        }
    };
    let dcr = status_of("dev", "True").await;
    let discovered = dcr.discovered.clone().unwrap();
    assert_eq!(
        discovered.registration,
        Some(format!("{}/oauth2/register", s.server.server.base_url()))
    );
    assert!(discovered.token.is_some() && discovered.issuer.is_some());
    for capability in ["register", "read", "update", "delete", "existenceProbe"] {
        assert!(
            dcr.capabilities.iter().any(|c| c == capability),
            "RFC7591 lacks {capability}: {:?}",
            dcr.capabilities
        );
    }
    let s4s_status = status_of("s4s", "True").await;
    let discovered = s4s_status.discovered.unwrap();
    assert_eq!(
        discovered.debug_token,
        Some(format!("{}/oauth/debug/token", s4s.server.base_url()))
    );
    for capability in ["register", "debugToken", "introspect", "existenceProbe"] {
        assert!(
            s4s_status.capabilities.iter().any(|c| c == capability),
            "S4S lacks {capability}"
        );
    }
    assert!(!s4s_status.capabilities.iter().any(|c| c == "update"));
    let down = status_of("down", "False").await;
    let reason = &down
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .reason;
    assert_eq!(reason, "DiscoveryFailed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_state_survives_an_operator_restart() {
    let mut s = setup(
        "backoff-restart",
        DevDialect::Rfc7591,
        &["--backoff-base", "1s", "--backoff-cap", "30s"],
    )
    .await;
    s.server
        .set_faults(json!({"error_rate": 1.0, "error_status": 503, "endpoints": ["register"]}))
        .await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    let before = eventually("three failed attempts", Duration::from_secs(30), || async {
        let retry = api(&s).get("app").await.ok()?.status?.retry?;
        (retry.failures >= 3).then_some(retry)
    })
    .await;
    s.operator.restart();
    let attempts = s.server.count("register").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // After 3 failures the next attempt is 2–4 s away (1 s doubling, jitter ≥ 50%); a restart that
    // forgot the backoff would retry at once.
    let after = api(&s)
        .get("app")
        .await
        .unwrap()
        .status
        .unwrap()
        .retry
        .unwrap();
    assert!(
        s.server.count("register").await - attempts <= 1,
        "the restarted operator retried early"
    );
    assert!(
        after.failures >= before.failures,
        "the failure count was not reset by the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_events_or_status_even_at_trace_level() {
    let s = setup(
        "leaks",
        DevDialect::Rfc7591,
        &["--log", "trace", "--existence-check-interval", "2s"],
    )
    .await;
    let s4s = AuthServer::start(DevDialect::S4s, &[]).await;
    apply(&s.client, Some(&s.ns), json!({"apiVersion": "smart.fhir.dev/v1alpha1", "kind": "SmartAuthServer", "metadata": {"name": "s4s"}, "spec": {"dialect": "S4S", "fhirBaseUrl": s4s.fhir_base_url()}}))
        .await
        .unwrap();
    create(&s.client, Some(&s.ns), smart_client("dcr", json!({})))
        .await
        .unwrap();
    let mut with_token = smart_client(
        "s4s",
        json!({"debugTokens": [{"name": "t", "user": "daniel-adams", "patientId": "smart-1288992", "lifetime": "3s", "refreshBefore": "1s"}]}),
    );
    with_token["spec"]["authServerRef"] = json!({"name": "s4s"});
    create(&s.client, Some(&s.ns), with_token).await.unwrap();
    wait_for_ready(&s.client, &s.ns, "dcr", "True", "Ready").await;
    wait_for_ready(&s.client, &s.ns, "s4s", "True", "Ready").await;
    let mut secrets = vec![IAT.to_owned()];
    let mut collect = |secret: &k8s_openapi::api::core::v1::Secret| {
        for (key, value) in secret.data.clone().unwrap_or_default() {
            if key == "client_secret"
                || key.ends_with("access_token")
                || key.ends_with("refresh_token")
            {
                secrets.push(String::from_utf8(value.0).unwrap());
            }
        }
    };
    collect(
        &get_secret(&s.client, &s.ns, "dcr-smart-client")
            .await
            .unwrap(),
    );
    // An update rotates the registration access token; both the old and the new one must stay hidden.
    patch_spec(&s, "dcr", json!({"scopes": ["openid", "launch/patient"]})).await;
    eventually("the update is applied", Duration::from_secs(30), || async {
        (s.server.count("update").await == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await; // a token renewal and some existence probes
    collect(
        &get_secret(&s.client, &s.ns, "dcr-smart-client")
            .await
            .unwrap(),
    );
    collect(
        &get_secret(&s.client, &s.ns, "s4s-smart-client")
            .await
            .unwrap(),
    );
    api(&s)
        .delete("dcr", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the dcr client is deleted",
        Duration::from_secs(30),
        || async { api(&s).get_opt("dcr").await.ok()?.is_none().then_some(()) },
    )
    .await;
    secrets.retain(|v| v.len() >= 8);
    assert!(
        secrets.len() >= 7,
        "collected the secrets to look for: {}",
        secrets.len()
    );

    let log = s.operator.log();
    assert!(log.contains("TRACE"), "the operator logged at trace level");
    let events = events(&s.client, &s.ns).await;
    let statuses = serde_json::to_string(
        &api(&s)
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|c| &c.status)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let servers: Api<smart_operator::crd::SmartAuthServer> =
        Api::namespaced(s.client.clone(), &s.ns);
    let server_statuses = serde_json::to_string(
        &servers
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|c| &c.status)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let events = format!("{events:?}");
    use base64::Engine as _;
    for secret in &secrets {
        let encoded = base64::engine::general_purpose::STANDARD.encode(secret);
        for (place, text) in [
            ("operator log", &log),
            ("Events", &events),
            ("SmartClient status", &statuses),
            ("SmartAuthServer status", &server_statuses),
        ] {
            assert!(
                !text.contains(secret.as_str()),
                "a secret value appears in the {place}"
            );
            assert!(
                !text.contains(&encoded),
                "a base64-encoded secret value appears in the {place}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_name_keys_labels_and_annotations_follow_the_spec() {
    let s = setup("byo-secret", DevDialect::Rfc7591, &[]).await;
    let secret_spec = json!({"secret": {
        "name": "lab-results-oauth",
        "keys": {"client_id": "OAUTH_CLIENT_ID", "client_secret": "OAUTH_CLIENT_SECRET", "token_endpoint": "OAUTH_TOKEN_URL"},
        "labels": {"team": "labs"},
        "annotations": {"reloader.stakater.com/match": "true"},
    }});
    create(&s.client, Some(&s.ns), smart_client("app", secret_spec))
        .await
        .unwrap();
    let ready = wait_for_ready(&s.client, &s.ns, "app", "True", "Ready")
        .await
        .status
        .unwrap();
    assert_eq!(ready.secret_name.as_deref(), Some("lab-results-oauth"));
    let secret = get_secret(&s.client, &s.ns, "lab-results-oauth")
        .await
        .expect("the Secret has the chosen name");
    assert_eq!(secret_value(&secret, "OAUTH_CLIENT_ID"), ready.client_id);
    assert!(secret_value(&secret, "OAUTH_CLIENT_SECRET").is_some());
    assert!(secret_value(&secret, "OAUTH_TOKEN_URL").is_some_and(|u| u.ends_with("/oauth2/token")));
    assert!(
        secret_value(&secret, "client_id").is_none(),
        "renamed keys are not also written under their default names"
    );
    assert_eq!(
        secret
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .get("team")
            .map(String::as_str),
        Some("labs")
    );
    assert_eq!(
        secret
            .metadata
            .annotations
            .as_ref()
            .unwrap()
            .get("reloader.stakater.com/match")
            .map(String::as_str),
        Some("true")
    );
    assert!(
        get_secret(&s.client, &s.ns, "app-smart-client")
            .await
            .is_none(),
        "no Secret under the default name"
    );
}
