//! Granted versus requested (issue 13 item 6): a server that grants fewer scopes than asked for is
//! said so, in a condition naming the missing scopes and an Event, and the Secret's `scope` key
//! shows what was granted, never what was asked.

mod common;

use common::operator::*;
use common::scenario::*;
use serde_json::json;
use smart_operator::devserver::Dialect as DevDialect;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_the_server_leaves_out_are_named_and_the_secret_shows_the_granted_ones() {
    let s = setup("granted", DevDialect::Rfc7591, &[]).await;
    s.server
        .set_policy(
            json!({"allowed_scopes": ["openid", "launch/patient"], "on_disallowed": "narrow"}),
        )
        .await;
    let status = ready_app(&s).await;
    let granted = condition_in(&status, "ScopesGranted");
    assert_eq!(
        (granted.status.as_str(), granted.reason.as_str()),
        ("False", "ScopesNarrowed"),
        "{granted:?}"
    );
    assert!(granted.message.contains("patient/*.read"), "{granted:?}");
    assert!(
        !granted.message.contains("openid"),
        "only the missing ones: {granted:?}"
    );
    let note = wait_for_event(&s.client, &s.ns, "ScopesNarrowed").await;
    assert!(note.contains("patient/*.read"), "{note}");
    let secret = get_secret(&s.client, &s.ns, "app-smart-client")
        .await
        .unwrap();
    let mut scope: Vec<String> = secret_value(&secret, "scope")
        .unwrap()
        .split(' ')
        .map(str::to_owned)
        .collect();
    scope.sort();
    assert_eq!(scope, ["launch/patient", "openid"]);

    // Everything granted: True.
    s.server.set_policy(json!({})).await;
    patch_spec(&s, "app", json!({"clientName": "again"})).await;
    eventually(
        "ScopesGranted=True once every scope is granted",
        std::time::Duration::from_secs(30),
        || async {
            let client = api(&s).get("app").await.ok()?;
            let status = client.status?;
            status
                .conditions
                .iter()
                .any(|c| c.type_ == "ScopesGranted" && c.status == "True")
                .then_some(())
        },
    )
    .await;
}
