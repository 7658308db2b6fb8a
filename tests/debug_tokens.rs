//! Debug tokens are re-minted on schedule, never in a loop, and `TokensFresh` tells when they are not
//! fresh (review C11).

mod common;

use std::time::Duration;

use common::operator::*;
use common::scenario::*;
use common::*;
use serde_json::json;
use smart_operator::devserver::Dialect as DevDialect;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_lead_as_long_as_the_lifetime_does_not_mint_in_a_loop() {
    let s = setup("tok-loop", DevDialect::S4s, &[]).await;
    // Passes admission (refreshBefore < lifetime), but with the 10% jitter the lead reaches the lifetime.
    let tokens = json!({"debugTokens": [{"name": "t", "user": "daniel-adams", "patientId": "smart-1288992", "lifetime": "20s", "refreshBefore": "19s"}]});
    create(&s.client, Some(&s.ns), smart_client("app", tokens))
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    let before = s.server.count("debug_token").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let minted = s.server.count("debug_token").await - before;
    // A tenth of the lifetime (2 s) apart at the soonest: at most three in 5 s.
    assert!(minted <= 3, "{minted} mints in 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_fresh_turns_false_while_tokens_cannot_be_re_minted_and_back_after() {
    let s = setup("tok-fresh", DevDialect::S4s, &[]).await;
    let tokens = json!({"debugTokens": [{"name": "t", "user": "daniel-adams", "patientId": "smart-1288992", "lifetime": "4s", "refreshBefore": "2s"}]});
    create(&s.client, Some(&s.ns), smart_client("app", tokens))
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    s.server
        .set_faults(json!({"error_rate": 1.0, "error_status": 503, "endpoints": ["debug_token"]}))
        .await;
    eventually("TokensFresh=False", Duration::from_secs(20), || async {
        let client = api(&s).get("app").await.ok()?;
        (condition(&client, "TokensFresh")?.0 == "False").then_some(())
    })
    .await;
    s.server.clear_faults().await;
    eventually(
        "TokensFresh=True again",
        Duration::from_secs(20),
        || async {
            let client = api(&s).get("app").await.ok()?;
            (condition(&client, "TokensFresh")?.0 == "True").then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_debug_token_takes_its_keys_out_of_the_secret() {
    let s = setup("tok-removed", DevDialect::S4s, &[]).await;
    let tokens = json!({"debugTokens": [
        {"name": "kept", "user": "daniel-adams", "patientId": "smart-1288992"},
        {"name": "gone", "user": "daniel-adams", "patientId": "smart-1288992"},
    ]});
    create(&s.client, Some(&s.ns), smart_client("app", tokens))
        .await
        .unwrap();
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    let secret = get_secret(&s.client, &s.ns, "app-smart-client")
        .await
        .unwrap();
    assert!(secret_value(&secret, "gone_access_token").is_some());

    patch_spec(
        &s,
        "app",
        json!({"debugTokens": [{"name": "kept", "user": "daniel-adams", "patientId": "smart-1288992"}]}),
    )
    .await;
    let mints = s.server.count("debug_token").await;
    eventually(
        "the removed token's keys gone from the Secret",
        Duration::from_secs(20),
        || async {
            let secret = get_secret(&s.client, &s.ns, "app-smart-client").await?;
            let keys: Vec<String> = secret.data?.keys().cloned().collect();
            (!keys.iter().any(|k| k.starts_with("gone_"))
                && keys.iter().any(|k| k == "kept_access_token"))
            .then_some(())
        },
    )
    .await;
    assert_eq!(
        s.server.count("debug_token").await,
        mints,
        "the kept token is not minted again"
    );
}
