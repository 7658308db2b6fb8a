//! One scenario of the SmartClient reconciler tests: a fresh namespace, a smart-dev-server of one
//! dialect, a SmartAuthServer `dev` pointing at it, and an operator watching the namespace.

use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use smart_operator::crd::SmartClient;
use smart_operator::devserver::Dialect as DevDialect;

use super::operator::{AuthServer, Operator};
use super::{apply, client, fresh_namespace, install_crds};

pub const IAT: &str = "initial-access-token-for-tests";

pub struct Setup {
    pub client: kube::Client,
    pub ns: String,
    pub server: AuthServer,
    pub operator: Operator,
}

/// A namespace with a dev server of `dialect`, a SmartAuthServer `dev` for it, and an operator.
pub async fn setup(prefix: &str, dialect: DevDialect, operator_args: &[&str]) -> Setup {
    let client = client().await;
    install_crds(&client).await;
    let ns = fresh_namespace(&client, prefix).await;
    let server = AuthServer::start(dialect, &[IAT]).await;
    let crd_dialect = match dialect {
        DevDialect::Rfc7591 => "RFC7591",
        DevDialect::S4s => "S4S",
        DevDialect::S4sLegacy => "S4SLegacy",
    };
    let mut spec = json!({"dialect": crd_dialect, "fhirBaseUrl": server.fhir_base_url()});
    if crd_dialect == "RFC7591" {
        apply(&client, Some(&ns), json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "iat"}, "stringData": {"token": IAT}}))
            .await
            .unwrap();
        spec["credentials"] =
            json!({"initialAccessTokenSecretRef": {"name": "iat", "key": "token"}});
    }
    apply(&client, Some(&ns), json!({"apiVersion": "smart.fhir.dev/v1alpha1", "kind": "SmartAuthServer", "metadata": {"name": "dev"}, "spec": spec}))
        .await
        .unwrap();
    let operator = Operator::start(&ns, operator_args);
    Setup {
        client,
        ns,
        server,
        operator,
    }
}

pub fn smart_client(name: &str, extra: Value) -> Value {
    let mut spec = json!({
        "authServerRef": {"name": "dev"},
        "redirectUris": ["https://app.example.org/callback"],
        "scopes": ["launch/patient", "patient/*.read", "openid"],
    });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        spec[k] = v;
    }
    json!({"apiVersion": "smart.fhir.dev/v1alpha1", "kind": "SmartClient", "metadata": {"name": name}, "spec": spec})
}

/// Creates SmartClient `app` with the default spec, waits for Ready, returns its status.
pub async fn ready_app(s: &Setup) -> smart_operator::crd::SmartClientStatus {
    super::create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    super::operator::wait_for_ready(&s.client, &s.ns, "app", "True", "Ready")
        .await
        .status
        .unwrap()
}

pub fn api(s: &Setup) -> Api<SmartClient> {
    Api::namespaced(s.client.clone(), &s.ns)
}

pub async fn patch_spec(s: &Setup, name: &str, spec: Value) {
    api(s)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": spec})),
        )
        .await
        .unwrap();
}

/// Deletes SmartClient `name` and waits until its registration is gone from the dev server.
pub async fn delete_and_expect_registration_gone(s: &Setup, name: &str) {
    api(s)
        .delete(name, &kube::api::DeleteParams::default())
        .await
        .unwrap();
    super::operator::eventually(
        "the registration is deleted with the SmartClient",
        std::time::Duration::from_secs(30),
        || async { s.server.clients().await.is_empty().then_some(()) },
    )
    .await;
}

/// Sets (or with None removes) an annotation of the SmartClient `name`.
pub async fn annotate(s: &Setup, name: &str, key: &str, value: Option<&str>) {
    api(s)
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&json!({"metadata": {"annotations": {key: value}}})),
        )
        .await
        .unwrap();
}

/// A ValidatingAdmissionPolicy refusing status writes of SmartClients in the namespace: the operator's
/// status write fails after the Secret write succeeded (review C3, window W2).
pub async fn refuse_status_writes(s: &Setup) -> String {
    let refusal = super::Refusal {
        group: "smart.fhir.dev",
        resource: "smartclients/status",
        operations: &["UPDATE"],
        allowed: "false",
        message: "status refused by the test's admission policy",
    };
    let name = super::refuse_writes(&s.client, &s.ns, "refuse-status", &refusal).await;
    // In force once a SmartClient's status write is refused.
    super::create(
        &s.client,
        Some(&s.ns),
        smart_client("status-probe", json!({"authServerRef": {"name": "none"}})),
    )
    .await
    .unwrap();
    let clients = api(s);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let patch = kube::api::Patch::Merge(json!({"status": {"observedGeneration": 0}}));
        let written = clients
            .patch_status("status-probe", &kube::api::PatchParams::default(), &patch)
            .await;
        if written.is_err_and(|e| e.to_string().contains("status refused")) {
            clients
                .delete("status-probe", &kube::api::DeleteParams::default())
                .await
                .unwrap();
            return name;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the status policy never took effect"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
