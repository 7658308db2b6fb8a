//! A spec change is acted on at once, even during a long backoff (review C17: the backoff of a failure
//! at the old generation used to hold back the fix for up to the backoff cap).

mod common;

use std::time::{Duration, Instant};

use common::operator::*;
use common::scenario::*;
use common::*;
use serde_json::json;
use smart_operator::devserver::Dialect as DevDialect;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_change_does_not_wait_out_the_backoff_of_an_older_generation() {
    let s = setup(
        "fix-in-backoff",
        DevDialect::Rfc7591,
        &["--backoff-base", "60s", "--backoff-cap", "5m"],
    )
    .await;
    s.server
        .set_faults(json!({"error_rate": 1.0, "error_status": 503, "endpoints": ["register"]}))
        .await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, "app", "False", "AuthServerError").await;
    s.server.clear_faults().await;
    let changed = Instant::now();
    patch_spec(&s, "app", json!({"clientName": "fixed by the user"})).await;
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    assert!(
        changed.elapsed() < Duration::from_secs(10),
        "the change was acted on after {:?}, not after the 30-60 s backoff",
        changed.elapsed()
    );
}
