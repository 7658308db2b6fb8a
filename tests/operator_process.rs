//! The operator as a process: leader election between two instances, health and metrics endpoints,
//! graceful shutdown.

mod common;

use std::time::Duration;

use common::operator::*;
use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde_json::json;
use smart_operator::devserver::Dialect as DevDialect;

async fn namespace_with_s4s_server(prefix: &str) -> (kube::Client, String, AuthServer) {
    let client = client().await;
    install_crds(&client).await;
    let ns = fresh_namespace(&client, prefix).await;
    let server = AuthServer::start(DevDialect::S4s, &[]).await;
    apply(&client, Some(&ns), json!({"apiVersion": "smart.fhir.dev/v1alpha1", "kind": "SmartAuthServer", "metadata": {"name": "dev"}, "spec": {"dialect": "S4S", "fhirBaseUrl": server.fhir_base_url()}}))
        .await
        .unwrap();
    (client, ns, server)
}

fn smart_client(name: &str) -> serde_json::Value {
    json!({"apiVersion": "smart.fhir.dev/v1alpha1", "kind": "SmartClient", "metadata": {"name": name},
           "spec": {"authServerRef": {"name": "dev"}, "redirectUris": ["https://app.example.org/cb"], "scopes": ["launch/patient"]}})
}

fn reconciled_anything(operator: &Operator) -> bool {
    operator.log().contains("planned action=")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_one_instance_reconciles_a_standby_takes_over_and_sigterm_releases_the_lease()
 {
    let (client, ns, _server) = namespace_with_s4s_server("leader").await;
    let election = [
        "--leader-election",
        "--lease-name",
        "smart-test",
        "--lease-duration",
        "4",
    ];
    let mut first = Operator::start(&ns, &election);
    eventually(
        "the first instance leads",
        Duration::from_secs(30),
        || async {
            first
                .log()
                .contains("acquired the leader lease")
                .then_some(())
        },
    )
    .await;
    let mut second = Operator::start(&ns, &election);
    eventually(
        "the second instance waits",
        Duration::from_secs(30),
        || async {
            second
                .log()
                .contains("waiting for the leader lease")
                .then_some(())
        },
    )
    .await;

    create(&client, Some(&ns), smart_client("one"))
        .await
        .unwrap();
    wait_for_ready(&client, &ns, "one", "True", "Ready").await;
    assert!(reconciled_anything(&first), "the leader reconciled");
    assert!(
        !reconciled_anything(&second),
        "the standby must not reconcile"
    );

    // The leader dies without releasing: the standby takes over once the lease expires.
    first.kill_hard();
    let killed_at = std::time::Instant::now();
    eventually(
        "the standby takes over",
        Duration::from_secs(30),
        || async {
            second
                .log()
                .contains("acquired the leader lease")
                .then_some(())
        },
    )
    .await;
    let takeover = killed_at.elapsed();
    assert!(
        takeover <= Duration::from_secs(4 + 3),
        "took over in {takeover:?}, beyond the 4 s lease"
    );
    create(&client, Some(&ns), smart_client("two"))
        .await
        .unwrap();
    wait_for_ready(&client, &ns, "two", "True", "Ready").await;

    // SIGTERM drains and releases the lease, so a successor need not wait for it to expire.
    let status = second.stop().expect("the operator exits on SIGTERM");
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    assert!(
        second.log().contains("released the leader lease"),
        "{}",
        second.log()
    );
    let lease = Api::<Lease>::namespaced(client.clone(), &ns)
        .get("smart-test")
        .await
        .unwrap();
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    assert!(
        holder.is_empty(),
        "the lease still names a holder: {holder}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_endpoints_report_readiness_and_reconcile_and_auth_server_counts() {
    let (client, ns, _server) = namespace_with_s4s_server("metrics").await;
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let mut operator = Operator::start(&ns, &["--metrics-address", &address]);
    let http = reqwest::Client::new();
    let get = |path: &'static str| {
        let http = http.clone();
        let url = format!("http://{address}{path}");
        async move {
            let response = http.get(&url).send().await.ok()?;
            Some((response.status().as_u16(), response.text().await.ok()?))
        }
    };
    eventually("/readyz answers 200", Duration::from_secs(30), || async {
        (get("/readyz").await?.0 == 200).then_some(())
    })
    .await;
    assert_eq!(get("/livez").await.unwrap().0, 200);
    create(&client, Some(&ns), smart_client("secret-app-name"))
        .await
        .unwrap();
    wait_for_ready(&client, &ns, "secret-app-name", "True", "Ready").await;
    let metrics = eventually("reconcile metrics", Duration::from_secs(30), || async {
        let (_, text) = get("/metrics").await?;
        text.contains(
            r#"smart_operator_reconcile_total{controller="smartclient",result="success"}"#,
        )
        .then_some(text)
    })
    .await;
    let server_label = format!("SmartAuthServer/{ns}/dev");
    assert!(metrics.contains(&format!(r#"smart_operator_authserver_requests_total{{server="{server_label}",operation="register",status="ok"}} 1"#)), "{metrics}");
    assert!(metrics.contains("smart_operator_authserver_request_duration_seconds_bucket"));
    assert!(metrics.contains("smart_operator_reconcile_duration_seconds_bucket"));
    assert!(
        !metrics.contains("secret-app-name"),
        "metrics must not carry SmartClient names"
    );
    let status = operator.stop().expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}");
}
