//! The Secret in the app's shape (issue 14 item 5): the SMART launch keys apps need, and extra keys
//! rendered from templates (a `.env` file, a JSON config) out of the same values.

mod common;

use common::operator::*;
use common::scenario::*;
use common::*;
use serde_json::{Value, json};
use smart_operator::devserver::Dialect as DevDialect;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_carries_the_launch_keys_and_the_templated_files() {
    let s = setup("shape", DevDialect::Rfc7591, &[]).await;
    let template = json!({
        "app.env": "CLIENT_ID={{ client_id }}\nCLIENT_SECRET={{ client_secret }}\nTOKEN_URL={{ token_endpoint }}\n",
        "smart.json": "{{ {'clientId': client_id, 'issuer': issuer, 'authorize': authorization_endpoint, 'fhir': fhir_base_url, 'scope': scope} | tojson }}",
    });
    create(
        &s.client,
        Some(&s.ns),
        smart_client(
            "app",
            json!({"secret": {"template": template, "type": "smart.fhir.dev/smart-client"}}),
        ),
    )
    .await
    .unwrap();
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    let secret = get_secret(&s.client, &s.ns, "app-smart-client")
        .await
        .unwrap();
    assert_eq!(secret.type_.as_deref(), Some("smart.fhir.dev/smart-client"));
    let value = |key: &str| secret_value(&secret, key).unwrap_or_else(|| panic!("no {key}"));
    let base = s.server.server.base_url();
    assert_eq!(value("issuer"), base);
    assert_eq!(
        value("authorization_endpoint"),
        format!("{base}/oauth2/authorize")
    );
    let client_id = value("client_id");
    assert_eq!(
        value("app.env"),
        format!(
            "CLIENT_ID={client_id}\nCLIENT_SECRET={}\nTOKEN_URL={base}/oauth2/token\n",
            value("client_secret")
        )
    );
    let config: Value = serde_json::from_str(&value("smart.json")).expect("valid JSON");
    assert_eq!(config["clientId"], json!(client_id));
    assert_eq!(config["issuer"], json!(base));
    assert_eq!(
        config["authorize"],
        json!(format!("{base}/oauth2/authorize"))
    );
    assert_eq!(config["fhir"], json!(s.server.fhir_base_url()));
    assert_eq!(config["scope"], json!(value("scope")));

    // A template that does not parse, or names a value there is none of: a user error before
    // anything is sent, naming the key.
    for (name, broken) in [
        ("unclosed", "{{ client_id"),
        ("unknown", "{{ client_password }}"),
    ] {
        create(
            &s.client,
            Some(&s.ns),
            smart_client(name, json!({"secret": {"template": {"app.env": broken}}})),
        )
        .await
        .unwrap();
        let status = wait_for_ready(&s.client, &s.ns, name, "False", "InvalidSpec")
            .await
            .status
            .unwrap();
        let ready = condition_in(&status, "Ready");
        assert!(
            ready.message.contains("spec.secret.template") && ready.message.contains("app.env"),
            "{name}: {ready:?}"
        );
    }
    assert_eq!(
        s.server.count("register").await,
        1,
        "the broken ones sent nothing"
    );
}
