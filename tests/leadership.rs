//! A leader that cannot renew its Lease stops acting before the Lease can pass to another instance
//! (review C16): kube-lease-manager keeps reporting "leading" when renewals fail, so the operator
//! checks the Lease itself and enforces a renew deadline shorter than the lease.

mod common;

use std::time::{Duration, Instant};

use common::operator::*;
use common::scenario::*;
use common::*;
use serde_json::json;
use smart_operator::devserver::Dialect as DevDialect;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_renewals_fail_stops_calling_auth_servers_within_the_lease() {
    let mut s = setup(
        "lead-deadline",
        DevDialect::S4s,
        &[
            "--leader-election",
            "--lease-name",
            "deadline-test",
            "--lease-duration",
            "6",
            "--existence-check-interval",
            "1s",
        ],
    )
    .await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;

    // From now on the apiserver refuses every renewal of that Lease.
    let refusal = Refusal {
        group: "coordination.k8s.io",
        resource: "leases",
        operations: &["UPDATE"],
        allowed: "object.metadata.name != 'deadline-test'",
        message: "renewal refused by the test",
    };
    let policy = refuse_writes(&s.client, &s.ns, "refuse-lease", &refusal).await;
    let refused_at = Instant::now();
    // The Lease lasts 6 s from its last renewal; the operator must stop before that runs out.
    let stopped = loop {
        if !s.operator.is_running() {
            break refused_at.elapsed();
        }
        assert!(
            refused_at.elapsed() < Duration::from_secs(20),
            "the leader still runs 20 s after its renewals began to fail"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let probes_at_stop = s.server.count("token").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    allow_writes(&policy);
    assert!(
        stopped <= Duration::from_secs(8),
        "stopped {stopped:?} after renewals began to fail (lease 6 s, plus a renewal period at most)"
    );
    assert_eq!(
        s.server.count("token").await,
        probes_at_stop,
        "no auth-server call once it stopped"
    );
    assert!(
        s.operator.log().contains("renew deadline"),
        "the log says why it stopped"
    );
    let _ = s.operator.stop();
}
