//! A SmartClient's Secret is the operator's own or it is refused (review C8/S2): a Secret the operator
//! did not create, or one another SmartClient controls, is never written, adopted or garbage-collected,
//! and nothing is registered for it.

mod common;

use std::time::Duration;

use common::operator::*;
use common::scenario::*;
use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::json;
use smart_operator::devserver::Dialect as DevDialect;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_secret_of_the_users_is_refused_never_written_and_survives_the_smart_client() {
    let s = setup("own-foreign", DevDialect::Rfc7591, &[]).await;
    apply(
        &s.client,
        Some(&s.ns),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "app-config"},
               "stringData": {"DATABASE_URL": "postgres://db.internal/app"}}),
    )
    .await
    .unwrap();
    create(
        &s.client,
        Some(&s.ns),
        smart_client("app", json!({"secret": {"name": "app-config"}})),
    )
    .await
    .unwrap();

    let refused = wait_for_ready(&s.client, &s.ns, "app", "False", "SecretConflict").await;
    let message = ready_message(&refused);
    assert!(message.contains("app-config"), "{message}");
    wait_for_event(&s.client, &s.ns, "SecretConflict").await;
    assert_eq!(
        s.server.count("register").await,
        0,
        "nothing is registered for a Secret the operator may not write"
    );
    let secret = get_secret(&s.client, &s.ns, "app-config").await.unwrap();
    let keys: Vec<_> = secret.data.clone().unwrap().into_keys().collect();
    assert_eq!(keys, ["DATABASE_URL"], "the user's Secret is untouched");
    assert!(secret.metadata.owner_references.is_none());

    delete_and_wait_until_gone(&s.client, &s.ns, "app").await;
    // The garbage collector acts within a second or two on what it owns; give it ample time.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let secret = get_secret(&s.client, &s.ns, "app-config")
        .await
        .expect("the user's Secret outlives the SmartClient");
    assert_eq!(
        secret_value(&secret, "DATABASE_URL").as_deref(),
        Some("postgres://db.internal/app")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_smart_client_naming_the_same_secret_is_refused_across_restarts() {
    let mut s = setup("own-shared", DevDialect::Rfc7591, &[]).await;
    let shared = json!({"secret": {"name": "shared"}});
    create(&s.client, Some(&s.ns), smart_client("a", shared.clone()))
        .await
        .unwrap();
    let a = wait_for_ready(&s.client, &s.ns, "a", "True", "Ready").await;
    let a_id = a.status.unwrap().client_id.unwrap();
    create(&s.client, Some(&s.ns), smart_client("b", shared))
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, "b", "False", "SecretConflict").await;

    for round in 0..2 {
        let secret = get_secret(&s.client, &s.ns, "shared").await.unwrap();
        assert_eq!(
            secret_value(&secret, "client_id").as_deref(),
            Some(a_id.as_str()),
            "round {round}: the Secret holds a's credentials only"
        );
        assert_eq!(
            s.server.count("register").await,
            1,
            "round {round}: b registered nothing"
        );
        s.operator.restart();
        eventually(
            "the restarted operator reconciled both",
            Duration::from_secs(30),
            || async {
                let log = s.operator.log();
                (log.contains("planned action=Wait")
                    && log.contains("planned action=Register client=b"))
                .then_some(())
            },
        )
        .await;
        wait_for_ready(&s.client, &s.ns, "a", "True", "Ready").await;
        wait_for_ready(&s.client, &s.ns, "b", "False", "SecretConflict").await;
    }
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    let owners = secrets
        .get("shared")
        .await
        .unwrap()
        .metadata
        .owner_references
        .unwrap_or_default();
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(owners[0].name, "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_secret_takes_the_credentials_and_the_old_one_keeps_none() {
    let mut s = setup("own-rename", DevDialect::Rfc7591, &[]).await;
    create(
        &s.client,
        Some(&s.ns),
        smart_client("app", json!({"secret": {"name": "first"}})),
    )
    .await
    .unwrap();
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    let id = secret_value(
        &get_secret(&s.client, &s.ns, "first").await.unwrap(),
        "client_id",
    );
    assert!(id.is_some());

    patch_spec(&s, "app", json!({"secret": {"name": "second"}})).await;
    eventually(
        "the credentials in the new Secret and out of the old one",
        Duration::from_secs(20),
        || async {
            let second = get_secret(&s.client, &s.ns, "second").await?;
            let first = get_secret(&s.client, &s.ns, "first").await?;
            let status = api(&s).get("app").await.ok()?.status?;
            (secret_value(&second, "client_id") == id
                && first.data.unwrap_or_default().is_empty()
                && status.secret_name.as_deref() == Some("second"))
            .then_some(())
        },
    )
    .await;
    assert_eq!(
        s.server.count("register").await,
        1,
        "nothing registered again"
    );
    wait_for_event(&s.client, &s.ns, "SecretRetired").await;

    // Renamed while the operator is down: the restarted operator finds the credentials in the old one.
    s.operator.kill_hard();
    patch_spec(&s, "app", json!({"secret": {"name": "third"}})).await;
    s.operator.restart();
    eventually(
        "the credentials moved to the third Secret",
        Duration::from_secs(20),
        || async {
            let third = get_secret(&s.client, &s.ns, "third").await?;
            let second = get_secret(&s.client, &s.ns, "second").await?;
            (secret_value(&third, "client_id") == id && second.data.unwrap_or_default().is_empty())
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        s.server.count("register").await,
        1,
        "nothing registered again"
    );
}
