//! A wiped auth server (an S4S auth-proxy redeployed with an empty database) is noticed by the first
//! existence check that finds a client gone; every other client of that server is checked at once
//! then, instead of each waiting for its own turn over the next interval.

mod common;

use std::time::{Duration, Instant};

use common::operator::*;
use common::scenario::*;
use common::*;
use serde_json::json;
use smart_operator::devserver::Dialect as DevDialect;

const CLIENTS: usize = 10;
const INTERVAL: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_found_gone_has_every_client_of_its_server_checked_at_once() {
    let s = setup(
        "wipe-fast",
        DevDialect::S4s,
        &["--existence-check-interval", "20s"],
    )
    .await;
    // Created a second apart: each client's check comes an interval (plus up to 10 %) after its
    // registration, so their checks are spread over the 10 s it took to create them.
    for i in 0..CLIENTS {
        let name = format!("app-{i}");
        create(&s.client, Some(&s.ns), smart_client(&name, json!({})))
            .await
            .unwrap();
        wait_for_ready(&s.client, &s.ns, &name, "True", "Ready").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    s.server.reset().await;
    let wiped = Instant::now();
    eventually("every client registered again", INTERVAL * 2, || async {
        (s.server.clients().await.len() == CLIENTS).then_some(())
    })
    .await;
    let recovered = wiped.elapsed();
    println!("WIPE-RECOVERY {CLIENTS} clients registered again {recovered:?} after the wipe");
    // The first check comes 10-13 s after the wipe, the last 20-22 s after it: without the fast
    // path recovery takes until the last.
    assert!(
        recovered < Duration::from_millis(16_500),
        "recovered {recovered:?} after the wipe"
    );
}
