//! Whatever an auth server hands out is kept until it is in the Secret (review C1/C2/C3): a Secret
//! write that fails is retried from memory with backoff and reported, never dropped, and never answered
//! with a second registration.

mod common;

use std::time::{Duration, Instant};

use common::operator::*;
use common::scenario::*;
use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use smart_operator::devserver::Dialect as DevDialect;

/// A ValidatingAdmissionPolicy refusing `operations` on the Secret `secret` in the namespace: stands in
/// for an admission webhook outage, a policy engine or a quota refusing the write.
async fn refuse_secret_writes(s: &Setup, secret: &str, operations: &[&str]) -> String {
    // A second Secret, `policy-probe`, is refused alike: a dry-run write of it shows when the policy
    // is in force, even for updates of a Secret that does not exist yet.
    let allowed =
        format!("object.metadata.name != '{secret}' && object.metadata.name != 'policy-probe'");
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    let probe: Secret = serde_json::from_value(
        json!({"metadata": {"name": "policy-probe"}, "stringData": {"k": "v"}}),
    )
    .unwrap();
    if !operations.contains(&"CREATE") {
        secrets
            .create(&PostParams::default(), &probe)
            .await
            .unwrap();
    }
    let refusal = Refusal {
        group: "",
        resource: "secrets",
        operations,
        allowed: &allowed,
        message: "refused by the test's admission policy",
    };
    let name = refuse_writes(&s.client, &s.ns, "refuse-secret", &refusal).await;
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let refusing = |e: &kube::Error| e.to_string().contains("refused by the test's");
    loop {
        let in_force = if operations.contains(&"CREATE") {
            let create = secrets.create(&dry_run, &probe).await;
            create.as_ref().err().is_some_and(refusing)
        } else {
            let params = kube::api::PatchParams {
                dry_run: true,
                ..Default::default()
            };
            let patch = kube::api::Patch::Merge(json!({"metadata": {"labels": {"probe": "x"}}}));
            let update = secrets.patch("policy-probe", &params, &patch).await;
            update.as_ref().err().is_some_and(refusing)
        };
        if in_force {
            return name;
        }
        assert!(Instant::now() < deadline, "the policy never took effect");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn allow_secret_writes(name: &str) {
    allow_writes(name);
}

fn condition_of(
    client: &smart_operator::crd::SmartClient,
    type_: &str,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    client
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_that_cannot_be_created_stops_the_registration_before_it_is_sent() {
    let s = setup("wal-create", DevDialect::Rfc7591, &[]).await;
    let policy = refuse_secret_writes(&s, "app-smart-client", &["CREATE"]).await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    eventually(
        "SecretSynced=False with the apiserver's reason",
        Duration::from_secs(30),
        || async {
            let client = api(&s).get("app").await.ok()?;
            let synced = condition_of(&client, "SecretSynced")?;
            (synced.status == "False"
                && synced.reason == "SecretWriteFailed"
                && synced
                    .message
                    .contains("refused by the test's admission policy"))
            .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        s.server.count("register").await,
        0,
        "nothing is registered whose credentials could not be kept"
    );
    allow_secret_writes(&policy).await;
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    assert_eq!(s.server.count("register").await, 1);
}

/// A private_key_jwt client's key is in the Secret before the server is given its public part: a
/// Secret that cannot be created registers nothing, and the key that goes out once it can is the key
/// the operator made first (held in memory meanwhile), the one the Secret then holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_key_that_cannot_be_written_is_registered_nowhere() {
    use secrecy::SecretString;
    use smart_operator::keys::{SigningAlgorithm, SigningKey};
    let s = setup("wal-key", DevDialect::Rfc7591, &[]).await;
    let policy = refuse_secret_writes(&s, "svc-smart-client", &["CREATE"]).await;
    let mut service = smart_client(
        "svc",
        json!({"grantTypes": ["client_credentials"], "scopes": ["system/*.read"],
               "tokenEndpointAuthMethod": "private_key_jwt", "signingKey": {}}),
    );
    service["spec"]
        .as_object_mut()
        .unwrap()
        .remove("redirectUris");
    create(&s.client, Some(&s.ns), service).await.unwrap();
    wait_for_event(&s.client, &s.ns, "SigningKeyCreated").await;
    eventually(
        "SecretSynced=False with the apiserver's reason",
        Duration::from_secs(30),
        || async {
            let client = api(&s).get("svc").await.ok()?;
            let synced = condition_of(&client, "SecretSynced")?;
            (synced.status == "False" && synced.reason == "SecretWriteFailed").then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        s.server.count("register").await,
        0,
        "no public key is registered whose private key is not in the Secret"
    );
    allow_secret_writes(&policy).await;
    wait_for_ready(&s.client, &s.ns, "svc", "True", "Ready").await;
    assert_eq!(s.server.count("register").await, 1);
    let secret = get_secret(&s.client, &s.ns, "svc-smart-client")
        .await
        .unwrap();
    let key = SigningKey::from_pem(
        SigningAlgorithm::ES384,
        SecretString::from(secret_value(&secret, "private_key").unwrap()),
    )
    .unwrap();
    let registered = &s.server.clients().await[0];
    assert_eq!(registered["jwks"]["keys"][0]["kid"], key.kid());
    let made: Vec<String> = events(&s.client, &s.ns)
        .await
        .into_iter()
        .filter(|(reason, _)| reason == "SigningKeyCreated")
        .map(|(_, note)| note)
        .collect();
    assert_eq!(
        made.len(),
        1,
        "one key made, kept across the failed writes: {made:?}"
    );
    assert!(made[0].contains(key.kid()), "{made:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_secret_write_keeps_the_credentials_and_registers_nothing_more() {
    let s = setup("wal-refused", DevDialect::Rfc7591, &[]).await;
    // The Secret is created (empty, saying a registration is in flight) and every write after that
    // is refused: the credentials the server hands out cannot be written.
    let policy = refuse_secret_writes(&s, "app-smart-client", &["UPDATE"]).await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();

    let reported = eventually(
        "SecretSynced=False with the apiserver's reason",
        Duration::from_secs(30),
        || async {
            let client = api(&s).get("app").await.ok()?;
            let synced = condition_of(&client, "SecretSynced")?;
            (synced.status == "False" && synced.reason == "SecretWriteFailed").then_some(client)
        },
    )
    .await;
    let message = condition_of(&reported, "SecretSynced").unwrap().message;
    assert!(
        message.contains("refused by the test's admission policy"),
        "{message}"
    );
    let registered_id = reported
        .status
        .unwrap()
        .client_id
        .expect("status names the client id");
    // Several retries at the test's backoff (200 ms up to 2 s).
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        s.server.count("register").await,
        1,
        "a failed Secret write is retried from memory, not answered with a new registration"
    );

    allow_secret_writes(&policy).await;
    let ready = wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    assert_eq!(ready.status.unwrap().client_id, Some(registered_id.clone()));
    assert_eq!(s.server.count("register").await, 1);
    let secret = get_secret(&s.client, &s.ns, "app-smart-client")
        .await
        .unwrap();
    let remote = s.server.clients().await;
    assert_eq!(remote.len(), 1);
    assert_eq!(
        secret_value(&secret, "client_id").as_deref(),
        Some(registered_id.as_str())
    );
    assert_eq!(
        remote[0]["client_secret"].as_str(),
        secret_value(&secret, "client_secret").as_deref(),
        "the Secret holds the credentials the server handed out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_registration_access_token_that_cannot_be_written_is_not_lost() {
    let s = setup("wal-rat", DevDialect::Rfc7591, &[]).await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    let policy = refuse_secret_writes(&s, "app-smart-client", &["UPDATE"]).await;
    patch_spec(
        &s,
        "app",
        json!({"clientName": "renamed while Secret writes fail"}),
    )
    .await;
    eventually(
        "the PUT happened and the Secret write failed",
        Duration::from_secs(30),
        || async {
            let client = api(&s).get("app").await.ok()?;
            let synced = condition_of(&client, "SecretSynced")?;
            (s.server.count("update").await >= 1 && synced.reason == "SecretWriteFailed")
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    allow_secret_writes(&policy).await;
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;

    let remote = s.server.clients().await;
    let secret = get_secret(&s.client, &s.ns, "app-smart-client")
        .await
        .unwrap();
    assert_eq!(
        remote[0]["registration_access_token"].as_str(),
        secret_value(&secret, "registration_access_token").as_deref(),
        "the Secret holds the token the PUT rotated to"
    );
    assert_eq!(s.server.count("update").await, 1, "one PUT, not retried");
    // The client can still be deleted with that token.
    delete_and_expect_registration_gone(&s, "app").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smart_client_name_longer_than_a_label_value_still_gets_its_secret() {
    let s = setup("wal-long", DevDialect::Rfc7591, &[]).await;
    let name = format!("a-{}app", "very-long-application-name-".repeat(3));
    assert!(name.len() > 63);
    create(&s.client, Some(&s.ns), smart_client(&name, json!({})))
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, &name, "True", "Ready").await;
    assert_eq!(s.server.count("register").await, 1);
    let secret = get_secret(&s.client, &s.ns, &format!("{name}-smart-client"))
        .await
        .expect("the Secret");
    let label = secret.metadata.labels.unwrap()["smart.fhir.dev/client"].clone();
    assert!(label.len() <= 63, "{label}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_labels_and_annotations_that_no_secret_could_carry_are_refused_at_admission() {
    let s = setup("wal-labels", DevDialect::Rfc7591, &[]).await;
    for (field, secret) in [
        ("labels", json!({"labels": {"team": "Labs & Results"}})),
        ("labels", json!({"labels": {"bad key!": "x"}})),
        ("annotations", json!({"annotations": {"not a key": "x"}})),
    ] {
        let refused = create(
            &s.client,
            Some(&s.ns),
            smart_client("app", json!({"secret": secret})),
        )
        .await
        .expect_err("refused at admission");
        assert!(
            refused
                .to_string()
                .contains(&format!("spec.secret.{field}")),
            "{refused}"
        );
    }
    assert_eq!(s.server.count("register").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s4s_client_whose_status_cannot_be_written_is_registered_once_across_a_crash() {
    let mut s = setup("wal-status", DevDialect::S4s, &[]).await;
    let policy = refuse_status_writes(&s).await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    // Created empty (a registration in flight) before the registration, then with the credentials.
    let secret = eventually(
        "the Secret holds the credentials",
        Duration::from_secs(30),
        || async {
            get_secret(&s.client, &s.ns, "app-smart-client")
                .await
                .filter(|secret| secret_value(secret, "client_id").is_some())
        },
    )
    .await;
    // The status write keeps failing; retries must not replace the client.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        s.server.count("register").await,
        1,
        "no replacement while status lags"
    );
    // A crash in this window, then a new operator that finds only the Secret.
    s.operator.kill_hard();
    allow_secret_writes(&policy).await;
    s.operator.restart();
    let ready = wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    let client_id = secret_value(&secret, "client_id").unwrap();
    assert_eq!(
        ready.status.unwrap().client_id.as_deref(),
        Some(client_id.as_str())
    );
    assert_eq!(
        s.server.count("register").await,
        1,
        "the owned Secret is the truth after a restart, even when status never named the client"
    );
    let now = get_secret(&s.client, &s.ns, "app-smart-client")
        .await
        .unwrap();
    assert_eq!(secret_value(&now, "client_id"), Some(client_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_deleted_after_an_operator_restart_is_restored_not_registered_again() {
    let mut s = setup("wal-restart", DevDialect::Rfc7591, &[]).await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    let original = get_secret(&s.client, &s.ns, "app-smart-client")
        .await
        .unwrap();
    s.operator.restart();
    eventually(
        "the restarted operator reconciled the client",
        Duration::from_secs(30),
        || async {
            s.operator
                .log()
                .contains("planned action=Wait")
                .then_some(())
        },
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    secrets
        .delete("app-smart-client", &DeleteParams::default())
        .await
        .unwrap();
    let restored = eventually(
        "the Secret is restored",
        Duration::from_secs(30),
        || async {
            get_secret(&s.client, &s.ns, "app-smart-client")
                .await
                .filter(|s| s.metadata.uid != original.metadata.uid)
        },
    )
    .await;
    for key in ["client_id", "client_secret", "registration_access_token"] {
        assert_eq!(
            secret_value(&restored, key),
            secret_value(&original, key),
            "{key}"
        );
    }
    assert_eq!(
        s.server.count("register").await,
        1,
        "restored, not registered again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s4s_legacy_secret_lost_while_the_operator_was_down_is_reported_as_credentials_lost() {
    let mut s = setup("wal-lost", DevDialect::S4sLegacy, &[]).await;
    create(
        &s.client,
        Some(&s.ns),
        smart_client("app", json!({"clientId": "growth-chart-fixed"})),
    )
    .await
    .unwrap();
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    let original = s.server.clients().await[0]["client_secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let _ = s.operator.stop();
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    secrets
        .delete("app-smart-client", &DeleteParams::default())
        .await
        .unwrap();
    s.operator.restart();
    let lost = wait_for_ready(&s.client, &s.ns, "app", "False", "CredentialsLost").await;
    let message = condition_of(&lost, "Ready").unwrap().message;
    assert!(message.contains("growth-chart-fixed"), "{message}");
    let remote = s.server.clients().await;
    assert_eq!(remote.len(), 1);
    assert_eq!(
        remote[0]["client_secret"].as_str(),
        Some(original.as_str()),
        "the registration on the server is never overwritten"
    );
    // A user error: no retry loop while nothing changes.
    let attempts = s.server.count("register").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(s.server.count("register").await, attempts);
}

/// Review C7: on a server that re-signs the registration access token on every RFC 7592 GET (older
/// Keycloak), the existence check of a public client must keep the new token, or the next update and
/// the deletion fail with a dead one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_access_token_rotated_by_the_existence_check_is_kept() {
    let s = setup(
        "wal-rotate-get",
        DevDialect::Rfc7591,
        &["--existence-check-interval", "1s"],
    )
    .await;
    s.server
        .set_policy(json!({"rotate_token_on_read": true}))
        .await;
    create(
        &s.client,
        Some(&s.ns),
        smart_client("app", json!({"tokenEndpointAuthMethod": "none"})),
    )
    .await
    .unwrap();
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    eventually(
        "several existence checks by GET",
        Duration::from_secs(30),
        || async { (s.server.count("read").await >= 3).then_some(()) },
    )
    .await;
    patch_spec(&s, "app", json!({"clientName": "renamed after rotations"})).await;
    eventually(
        "the update went through",
        Duration::from_secs(30),
        || async {
            let remote = s.server.clients().await;
            (remote.first()?["client_name"] == "renamed after rotations").then_some(())
        },
    )
    .await;
    delete_and_expect_registration_gone(&s, "app").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_edited_while_the_operator_was_down_are_not_taken_as_its_own() {
    let mut s = setup(
        "wal-edited",
        DevDialect::S4s,
        &["--existence-check-interval", "2s"],
    )
    .await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    let original = get_secret(&s.client, &s.ns, "app-smart-client")
        .await
        .unwrap();
    s.operator.kill_hard();
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    secrets
        .patch(
            "app-smart-client",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&json!({"stringData": {"client_secret": "edited by hand"}})),
        )
        .await
        .unwrap();
    s.operator.restart();
    let refused = eventually(
        "Ready=False SecretEdited",
        Duration::from_secs(30),
        || async {
            let client = api(&s).get("app").await.ok()?;
            condition(&client, "Ready")
                .filter(|(status, _)| status == "False")
                .and_then(|_| {
                    let c = client
                        .status
                        .as_ref()?
                        .conditions
                        .iter()
                        .find(|c| c.type_ == "Ready")?;
                    (c.reason == "SecretEdited").then(|| c.message.clone())
                })
        },
    )
    .await;
    assert!(refused.contains("edited"), "{refused}");
    // Several existence-check intervals: nothing registered in place of the edited client.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        s.server.count("register").await,
        1,
        "nothing registered again"
    );

    // Restoring the original value is all it takes.
    secrets
        .patch(
            "app-smart-client",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&json!({"data": {"client_secret": original.data.as_ref().unwrap()["client_secret"]}})),
        )
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    assert_eq!(s.server.count("register").await, 1);
}
