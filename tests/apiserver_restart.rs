//! The apiserver restarts (an upgrade, a crash): SmartClient writes must be admitted at once, and the
//! operator's watches must see changes within seconds, not after a long backoff.
//!
//! A binary of its own: restarting the apiserver would break every other test running beside it.

mod common;

use std::time::{Duration, Instant};

use common::operator::*;
use common::scenario::*;
use common::*;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use smart_operator::devserver::Dialect as DevDialect;

fn restart_apiserver() -> Instant {
    let (ok, _, err) = run_tool(
        &repo_root().join("hack/control-plane").to_string_lossy(),
        &["restart-apiserver"],
    );
    assert!(ok, "hack/control-plane restart-apiserver failed: {err}");
    Instant::now()
}

/// Retries a write the apiserver refuses (or cannot take yet) and returns how long it refused.
async fn patch_until_admitted(s: &Setup, name: &str, patch: serde_json::Value) -> Duration {
    let started = Instant::now();
    loop {
        let refused = match api(s)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return started.elapsed(),
            Err(e) => e.to_string(),
        };
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never admitted: {refused}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn right_after_an_apiserver_restart_writes_are_admitted_and_changes_seen_within_seconds() {
    let s = setup("apiserver-restart", DevDialect::Rfc7591, &[]).await;
    for name in ["app", "doomed"] {
        create(&s.client, Some(&s.ns), smart_client(name, json!({})))
            .await
            .unwrap();
        wait_for_ready(&s.client, &s.ns, name, "True", "Ready").await;
    }

    let ready_at = restart_apiserver();
    let refused_for = patch_until_admitted(
        &s,
        "app",
        json!({"spec": {"clientName": "after the restart"}}),
    )
    .await;
    assert!(
        refused_for < Duration::from_secs(3),
        "a spec change right after /readyz was refused for {refused_for:?}"
    );
    let generation = api(&s).get("app").await.unwrap().metadata.generation;
    eventually(
        "the change applied after the restart",
        Duration::from_secs(120),
        || async {
            let client = api(&s).get("app").await.ok()?;
            let status = client.status.as_ref()?;
            (status.observed_generation == generation
                && condition(&client, "Ready").is_some_and(|(s, _)| s == "True"))
            .then_some(())
        },
    )
    .await;
    let seen_after = ready_at.elapsed();
    println!("APISERVER-RESTART the change was applied {seen_after:?} after /readyz");
    assert!(
        seen_after < Duration::from_secs(10),
        "the operator applied the change {seen_after:?} after the apiserver was back"
    );
    let remote = s.server.clients().await;
    assert!(
        remote
            .iter()
            .any(|c| c["client_name"] == "after the restart"),
        "the server has the new name: {remote:?}"
    );

    // A deletion right after another restart: the finalizer's removal must be admitted too.
    restart_apiserver();
    kube::Api::<smart_operator::crd::SmartClient>::namespaced(s.client.clone(), &s.ns)
        .delete("doomed", &Default::default())
        .await
        .ok();
    let deleting = Instant::now();
    eventually(
        "the deleted client gone",
        Duration::from_secs(60),
        || async {
            api(&s)
                .get_opt("doomed")
                .await
                .ok()
                .and_then(|c| c.is_none().then_some(()))
        },
    )
    .await;
    assert!(
        deleting.elapsed() < Duration::from_secs(10),
        "deletion right after a restart took {:?}",
        deleting.elapsed()
    );
}
