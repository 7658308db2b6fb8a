//! Deletion is planned like the live path (`controller/deletion.rs`): transient failures wait and are
//! retried for as long as they last, so a recovered auth server is cleaned up (review C5 and the chaos
//! run's deletions that stayed blocked).

mod common;

use std::time::Duration;

use common::operator::*;
use common::scenario::*;
use common::*;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use smart_operator::crd::SmartAuthServer;
use smart_operator::devserver::Dialect as DevDialect;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_deletion_completes_once_the_server_recovers() {
    let s = setup(
        "del-recover",
        DevDialect::Rfc7591,
        &["--deletion-attempts", "2"],
    )
    .await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    s.server
        .set_faults(json!({"error_rate": 1.0, "error_status": 503, "endpoints": ["delete"]}))
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
    wait_for_event(&s.client, &s.ns, "DeletionBlocked").await;
    s.server.clear_faults().await;
    eventually(
        "the registration is deleted and the SmartClient gone",
        Duration::from_secs(30),
        || async {
            (api(&s).get_opt("app").await.ok()?.is_none() && s.server.clients().await.is_empty())
                .then_some(())
        },
    )
    .await;
    wait_for_event(&s.client, &s.ns, "Deleted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_server_that_is_not_ready_during_deletion_is_waited_for_not_orphaned() {
    let s = setup("del-unready", DevDialect::Rfc7591, &[]).await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    // Discovery now fails: nothing listens on port 9 of the loopback address.
    let servers: Api<SmartAuthServer> = Api::namespaced(s.client.clone(), &s.ns);
    let working = s.server.fhir_base_url();
    servers
        .patch(
            "dev",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"fhirBaseUrl": "http://127.0.0.1:9/fhir"}})),
        )
        .await
        .unwrap();
    eventually(
        "the auth server is not Ready",
        Duration::from_secs(30),
        || async {
            let server = servers.get("dev").await.ok()?;
            let ready = server
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready")?;
            (ready.status == "False").then_some(())
        },
    )
    .await;
    api(&s)
        .delete("app", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        api(&s).get_opt("app").await.unwrap().is_some(),
        "the SmartClient waits for its auth server"
    );
    assert!(
        !events(&s.client, &s.ns)
            .await
            .iter()
            .any(|(r, _)| r == "Orphaned"),
        "a transient failure orphans nothing"
    );
    servers
        .patch(
            "dev",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"fhirBaseUrl": working}})),
        )
        .await
        .unwrap();
    eventually(
        "the registration is deleted once the server is back",
        Duration::from_secs(30),
        || async {
            (api(&s).get_opt("app").await.ok()?.is_none() && s.server.clients().await.is_empty())
                .then_some(())
        },
    )
    .await;
    assert_eq!(s.server.count("delete").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smart_client_deleted_without_its_cleanup_leaves_nothing_in_memory() {
    let s = setup("del-no-finalizer", DevDialect::Rfc7591, &[]).await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    assert_eq!(
        s.operator.metric("smart_operator_clients_remembered").await,
        Some(1.0)
    );
    // The cleanup cannot finish (every delete fails), and someone strips the finalizer: the object
    // goes without the operator's cleanup ever completing.
    s.server
        .set_faults(json!({"error_rate": 1.0, "endpoints": ["delete"]}))
        .await;
    api(&s)
        .delete("app", &DeleteParams::default())
        .await
        .unwrap();
    eventually("a failed delete", Duration::from_secs(10), || async {
        (s.server.count("delete").await >= 1).then_some(())
    })
    .await;
    api(&s)
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    eventually("the SmartClient gone", Duration::from_secs(10), || async {
        api(&s).get_opt("app").await.ok()?.is_none().then_some(())
    })
    .await;
    eventually(
        "memory lets go of the deleted client",
        Duration::from_secs(10),
        || async {
            (s.operator.metric("smart_operator_clients_remembered").await == Some(0.0))
                .then_some(())
        },
    )
    .await;
}
