//! A rediscovery that fails for a moment (a 5xx from the metadata endpoint, e.g. while the operator
//! restarts under load) keeps a discovered auth server usable with the endpoints it found before:
//! its clients stay Ready. A spec change of the server still needs a discovery that succeeds.

mod common;

use std::time::Duration;

use common::operator::*;
use common::scenario::*;
use common::*;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use smart_operator::crd::SmartAuthServer;
use smart_operator::devserver::Dialect as DevDialect;

fn ready_reason(server: &SmartAuthServer) -> Option<(String, String)> {
    let c = server
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_rediscovery_failure_keeps_a_discovered_server_and_its_clients_usable() {
    let mut s = setup("rediscover", DevDialect::S4s, &[]).await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    // The metadata endpoint fails; a restarted operator rediscovers every server.
    s.server
        .set_faults(json!({"error_rate": 1.0, "error_status": 503, "endpoints": ["metadata"]}))
        .await;
    let metadata_before = s.server.count("metadata").await;
    s.operator.restart();
    eventually(
        "the rediscovery was tried",
        Duration::from_secs(30),
        || async { (s.server.count("metadata").await > metadata_before).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let servers: Api<SmartAuthServer> = Api::namespaced(s.client.clone(), &s.ns);
    let server = servers.get("dev").await.unwrap();
    assert_eq!(
        ready_reason(&server).map(|(status, _)| status).as_deref(),
        Some("True"),
        "a discovered server stays usable: {:?}",
        server.status
    );
    let app = api(&s).get("app").await.unwrap();
    assert_eq!(
        condition(&app, "Ready")
            .map(|(status, _)| status)
            .as_deref(),
        Some("True")
    );

    // A spec change is not covered by the old discovery.
    servers
        .patch(
            "dev",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"fhirBaseUrl": format!("{}/", s.server.fhir_base_url())}}),
            ),
        )
        .await
        .unwrap();
    eventually(
        "Ready=False after a spec change",
        Duration::from_secs(30),
        || async {
            let server = servers.get("dev").await.ok()?;
            (ready_reason(&server)? == ("False".to_owned(), "DiscoveryFailed".to_owned()))
                .then_some(())
        },
    )
    .await;
    // And once the server answers again it is discovered within seconds, not after a long wait.
    s.server.clear_faults().await;
    eventually("discovered again", Duration::from_secs(20), || async {
        let server = servers.get("dev").await.ok()?;
        (ready_reason(&server)?.0 == "True").then_some(())
    })
    .await;
}
