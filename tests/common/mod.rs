//! Shared harness for integration tests against the real control plane that `hack/test` starts.
//!
//! Nothing here skips: without a reachable apiserver every test fails with a message saying how to
//! start one.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod auth_proxy;
pub mod backend;
pub mod operator;
pub mod scenario;
pub mod tls;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::Scope;
use kube::{Client, Discovery};
use serde_json::Value;

pub const FIELD_MANAGER: &str = "smart-operator-tests";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Installs the process's rustls crypto provider (as main.rs does) so reqwest clients can be built.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client for the test control plane, or a panic that says how to get one.
pub async fn client() -> Client {
    if std::env::var_os("KUBECONFIG").is_none() {
        panic!(
            "KUBECONFIG is not set: integration tests need the real control plane. Run them with \
             `hack/test`, or `eval \"$(hack/control-plane up)\"` first."
        );
    }
    let client = Client::try_default()
        .await
        .unwrap_or_else(|e| panic!("cannot build a client from KUBECONFIG: {e}"));
    client
        .apiserver_version()
        .await
        .unwrap_or_else(|e| panic!("the control plane in KUBECONFIG does not answer: {e}"));
    client
}

/// Parses every YAML document of a file (or string) into JSON values, skipping empty documents.
pub fn yaml_documents(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .unwrap_or_else(|e| panic!("invalid YAML: {e}\n{yaml}"))
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

pub fn read_yaml_file(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    yaml_documents(&text)
}

/// Applies the generated `crds/` directory (CRDs and admission policies) by server-side apply and
/// waits until every CRD is Established. Idempotent, so each test can call it.
pub async fn install_crds(client: &Client) {
    let dir = repo_root().join("crds");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    // CRDs first: the policies' paramKind refers to them.
    let (policies, crds): (Vec<_>, Vec<_>) = files.into_iter().partition(|p| {
        p.file_name()
            .unwrap()
            .to_string_lossy()
            .contains("admissionpolicy-")
    });
    for file in crds.iter().chain(&policies) {
        for doc in read_yaml_file(file) {
            apply(client, None, doc)
                .await
                .unwrap_or_else(|e| panic!("applying {}: {e}", file.display()));
        }
        if crds.last() == Some(file) {
            wait_until_established(client).await;
        }
    }
    wait_until_smart_clients_can_be_created(client).await;
}

async fn wait_until_established(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in smart_operator::crd::all_crds() {
        let name = crd.metadata.name.unwrap();
        let established = kube::runtime::wait::await_condition(
            crds.clone(),
            &name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .unwrap_or_else(|_| panic!("CRD {name} not Established within 30s"))
            .unwrap();
    }
}

/// On a fresh control plane, SmartClient creates are refused (503, "There can be a delay ...") for a
/// second or two after the finalizer admission policy arrives, until the apiserver has published the
/// CRD's schema the policy needs. Waits until a dry-run create goes through with the policy in force,
/// as a user would retry.
async fn wait_until_smart_clients_can_be_created(client: &Client) {
    let probe: smart_operator::crd::SmartClient = serde_json::from_value(serde_json::json!({
        "apiVersion": "smart.fhir.dev/v1alpha1", "kind": "SmartClient",
        "metadata": {"name": "create-probe", "namespace": "default"},
        "spec": {"authServerRef": {"name": "none"}, "clientName": "probe",
                 "redirectUris": ["https://app.example.com/cb"], "scopes": ["openid"]},
    }))
    .unwrap();
    let api: Api<smart_operator::crd::SmartClient> = Api::namespaced(client.clone(), "default");
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        // Done when the policy is in force too: the dry-run answer carries its finalizer.
        let outcome = api.create(&dry_run, &probe).await.map(|created| {
            created
                .metadata
                .finalizers
                .unwrap_or_default()
                .iter()
                .any(|f| f == smart_operator::crd::admission::CLEANUP_FINALIZER)
        });
        if let Ok(true) = outcome {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SmartClients are not created with the finalizer 30s after the CRDs and policies were applied: {outcome:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The API of a GVK as the apiserver's discovery sees it (so a CRD that is not served fails here).
pub async fn api_for(
    client: &Client,
    gvk: &GroupVersionKind,
    namespace: Option<&str>,
) -> Api<DynamicObject> {
    let discovery = Discovery::new(client.clone())
        .filter(&[gvk.group.as_str()])
        .run()
        .await
        .unwrap();
    let (resource, capabilities) = discovery
        .resolve_gvk(gvk)
        .unwrap_or_else(|| panic!("the apiserver does not serve {gvk:?}"));
    dynamic_api(
        client,
        &resource,
        capabilities.scope == Scope::Namespaced,
        namespace,
    )
}

fn dynamic_api(
    client: &Client,
    resource: &ApiResource,
    namespaced: bool,
    namespace: Option<&str>,
) -> Api<DynamicObject> {
    match (namespaced, namespace) {
        (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, resource),
        (true, None) => Api::default_namespaced_with(client.clone(), resource),
        (false, _) => Api::all_with(client.clone(), resource),
    }
}

fn gvk_of(doc: &Value) -> GroupVersionKind {
    let api_version = doc["apiVersion"].as_str().expect("apiVersion");
    let kind = doc["kind"].as_str().expect("kind");
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    GroupVersionKind::gvk(group, version, kind)
}

/// Server-side applies one object (into `namespace` when it is namespaced).
pub async fn apply(
    client: &Client,
    namespace: Option<&str>,
    doc: Value,
) -> Result<DynamicObject, kube::Error> {
    let api = api_for(client, &gvk_of(&doc), namespace).await;
    let name = doc["metadata"]["name"]
        .as_str()
        .expect("metadata.name")
        .to_owned();
    let object: DynamicObject = serde_json::from_value(doc).expect("a Kubernetes object");
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&object),
    )
    .await
}

/// Creates one object (into `namespace` when it is namespaced) the way `kubectl create` does: a POST
/// with strict field validation, so unknown fields are errors rather than silently pruned.
pub async fn create(
    client: &Client,
    namespace: Option<&str>,
    doc: Value,
) -> Result<DynamicObject, kube::Error> {
    let api = api_for(client, &gvk_of(&doc), namespace).await;
    let body = serde_json::to_vec(&doc).expect("JSON");
    let mut request = kube::core::Request::new(api.resource_url())
        .create(&PostParams::default(), body)
        .expect("a create request");
    let uri = format!("{}?fieldValidation=Strict", request.uri().path());
    *request.uri_mut() = uri.parse().expect("a valid URI");
    client.request::<DynamicObject>(request).await
}

/// Replaces one existing object's spec with a JSON merge patch.
pub async fn merge_patch(
    client: &Client,
    namespace: Option<&str>,
    doc: &Value,
    patch: Value,
) -> Result<DynamicObject, kube::Error> {
    let api = api_for(client, &gvk_of(doc), namespace).await;
    let name = doc["metadata"]["name"].as_str().expect("metadata.name");
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
}

static NAMESPACE_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh namespace for one test (tests share one control plane and run in parallel).
pub async fn fresh_namespace(client: &Client, prefix: &str) -> String {
    let name = format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NAMESPACE_COUNTER.fetch_add(1, Ordering::SeqCst)
    );
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    name
}

/// Runs a command from the control plane's bin dir (kubectl, helm) and returns (success, stdout, stderr).
pub fn run_tool(program: &str, args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} (is the control plane's bin dir on PATH?): {e}")
        });
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// What a test's admission policy refuses: `operations` on `resource` of API `group` ("" for core) in
/// one namespace, where `allowed` (a CEL expression over `object`) is false.
pub struct Refusal<'a> {
    pub group: &'a str,
    pub resource: &'a str,
    pub operations: &'a [&'a str],
    pub allowed: &'a str,
    pub message: &'a str,
}

/// Installs a ValidatingAdmissionPolicy and binding for `refusal` in `namespace`: a stand-in for a
/// webhook outage, a policy engine or a quota refusing writes. Returns the name [`allow_writes`] takes.
pub async fn refuse_writes(
    client: &Client,
    namespace: &str,
    name: &str,
    refusal: &Refusal<'_>,
) -> String {
    let name = format!("{name}-{namespace}");
    apply(client, None, serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {"failurePolicy": "Fail",
                 "matchConstraints": {"resourceRules": [{"apiGroups": [refusal.group], "apiVersions": ["*"], "operations": refusal.operations, "resources": [refusal.resource]}]},
                 "validations": [{"expression": refusal.allowed, "message": refusal.message}]}
    }))
    .await
    .unwrap();
    apply(client, None, serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}}
    }))
    .await
    .unwrap();
    name
}

/// Removes what [`refuse_writes`] installed.
pub fn allow_writes(name: &str) {
    let (ok, _, err) = run_tool(
        "kubectl",
        &[
            "delete",
            "validatingadmissionpolicybinding,validatingadmissionpolicy",
            name,
            "--ignore-not-found",
        ],
    );
    assert!(ok, "kubectl delete the policy {name}: {err}");
}

/// A free loopback port (bound and released; good enough for a test on one machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
