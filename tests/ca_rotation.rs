//! An auth server whose certificate and CA are rotated (by cert-manager or trust-manager, say): the
//! operator takes the new CA from its Secret without a restart or an edit of the auth server
//! (review C17: HTTP clients were cached per auth-server resourceVersion and the CA Secret was never
//! read again).

mod common;

use common::operator::*;
use common::scenario::smart_client;
use common::tls::{TlsFront, make_pki};
use common::*;
use serde_json::json;
use smart_operator::devserver::Dialect as DevDialect;

const IAT: &str = "initial-access-token-for-ca-rotation";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_ca_in_its_secret_is_used_without_a_restart() {
    let client = client().await;
    install_crds(&client).await;
    let ns = fresh_namespace(&client, "ca-rotation").await;
    let server = AuthServer::start(DevDialect::Rfc7591, &[IAT]).await;
    let upstream: std::net::SocketAddr = server
        .server
        .base_url()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let dir = repo_root().join("target/test-pki").join(&ns);
    let first = make_pki(&dir.join("first"));
    let front = TlsFront::start("127.0.0.1:0".parse().unwrap(), &first, upstream).await;
    let address = front.address;

    let ca_secret = |pem: &str| json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "auth-ca"}, "stringData": {"ca.crt": pem}});
    apply(&client, Some(&ns), ca_secret(&first.ca_pem))
        .await
        .unwrap();
    apply(&client, Some(&ns), json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "iat"}, "stringData": {"token": IAT}}))
        .await
        .unwrap();
    apply(&client, Some(&ns), json!({
        "apiVersion": "smart.fhir.dev/v1alpha1", "kind": "SmartAuthServer", "metadata": {"name": "dev"},
        "spec": {
            "dialect": "RFC7591",
            "endpoints": {"registration": format!("https://{address}/oauth2/register")},
            "credentials": {"initialAccessTokenSecretRef": {"name": "iat", "key": "token"}},
            "tls": {"caBundleSecretRef": {"name": "auth-ca", "key": "ca.crt"}},
        },
    }))
    .await
    .unwrap();
    let _operator = Operator::start(&ns, &[]);
    create(&client, Some(&ns), smart_client("before", json!({})))
        .await
        .unwrap();
    wait_for_ready(&client, &ns, "before", "True", "Ready").await;

    // The rotation: a new CA and certificate on the same address, the new CA in the Secret.
    front.stop();
    let second = make_pki(&dir.join("second"));
    let _front = TlsFront::start(address, &second, upstream).await;
    apply(&client, Some(&ns), ca_secret(&second.ca_pem))
        .await
        .unwrap();

    create(&client, Some(&ns), smart_client("after", json!({})))
        .await
        .unwrap();
    let ready = wait_for_ready(&client, &ns, "after", "True", "Ready").await;
    assert!(ready.status.unwrap().client_id.is_some());
    assert_eq!(server.count("register").await, 2);
}
