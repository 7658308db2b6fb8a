//! The Helm chart (`charts/smart-operator`): its copy of `crds/` is current, it lints, renders what it
//! should, refuses bad values, passes flags the binary accepts, installs on the real control plane, and
//! grants the operator's ServiceAccount exactly the access it needs (`kubectl auth can-i`).
//!
//! helm and kubectl come from the control plane's bin dir, which `hack/test` (or
//! `eval "$(hack/control-plane up)"`) puts on PATH. Installs never `--wait`: the control plane has no
//! scheduler or kubelet, so the operator's Pod never runs; the tests check the objects the apiserver
//! accepted instead. Each install uses its own release and namespace and is uninstalled at the end (or,
//! after a failure, when its guard is dropped).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use common::operator::{
    AuthServer, eventually, get_secret, secret_value, wait_for_event, wait_for_ready,
};
use common::{
    apply, client, fresh_namespace, install_crds, read_yaml_file, repo_root, run_tool,
    yaml_documents,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use smart_operator::crd::SmartClient;
use smart_operator::devserver::Dialect as DevDialect;

/// Kubernetes versions the chart is linted and rendered for: the oldest it supports (Chart.yaml
/// `kubeVersion`: ValidatingAdmissionPolicy is GA since 1.30) and the control plane's.
const KUBE_VERSIONS: [&str; 2] = ["1.30.0", "1.36.0"];
/// Passed to `helm template` and `helm lint`: a helm built from source (as hack/lib/tools.sh does)
/// assumes Kubernetes v1.20 when it renders offline, which Chart.yaml's kubeVersion refuses.
const RENDER_KUBE_VERSION: &str = "1.36.0";

/// Every optional feature at once (a ServiceMonitor needs the Prometheus Operator's CRD, so this set is
/// only linted and rendered, never installed).
const ALL_FEATURES: &[&str] = &[
    "metrics.serviceMonitor.enabled=true",
    "metrics.serviceMonitor.interval=30s",
    "podDisruptionBudget.enabled=true",
    "networkPolicy.enabled=true",
    "replicaCount=2",
    "operator.watchNamespaces={apps-a,apps-b}",
];

fn chart_dir() -> PathBuf {
    repo_root().join("charts/smart-operator")
}

fn chart() -> String {
    chart_dir().to_string_lossy().into_owned()
}

/// Runs helm; panics with its output when it fails.
fn helm(args: &[&str]) -> String {
    let (ok, out, err) = helm_result(args);
    assert!(ok, "helm {} failed:\n{err}\n{out}", args.join(" "));
    out
}

/// Runs helm from PATH (`run_tool` panics, saying how to get it, when there is none).
fn helm_result(args: &[&str]) -> (bool, String, String) {
    run_tool("helm", args)
}

/// `--set` arguments for helm.
fn set_args<'a>(values: &[&'a str]) -> Vec<&'a str> {
    values.iter().flat_map(|v| ["--set", *v]).collect()
}

/// `helm template` with `values`, as release `release` in namespace `ops`; Ok(objects) or Err(stderr).
fn try_render(values: &[&str]) -> Result<Vec<Value>, String> {
    try_render_for(RENDER_KUBE_VERSION, values)
}

fn try_render_for(kube_version: &str, values: &[&str]) -> Result<Vec<Value>, String> {
    let chart = chart();
    let mut args = vec![
        "template",
        "release",
        chart.as_str(),
        "--namespace",
        "ops",
        "--kube-version",
        kube_version,
    ];
    args.extend(set_args(values));
    let (ok, out, err) = helm_result(&args);
    if ok {
        Ok(yaml_documents(&out))
    } else {
        Err(err)
    }
}

fn render(values: &[&str]) -> Vec<Value> {
    try_render(values).unwrap_or_else(|e| panic!("helm template with {values:?} failed:\n{e}"))
}

fn kind_and_name(object: &Value) -> (String, String) {
    (
        object["kind"].as_str().unwrap_or_default().to_owned(),
        object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// How many objects of each kind.
fn kinds(objects: &[Value]) -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for object in objects {
        *kinds.entry(kind_and_name(object).0).or_insert(0) += 1;
    }
    kinds
}

fn only<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let mut matching = objects.iter().filter(|o| o["kind"] == kind);
    let first = matching
        .next()
        .unwrap_or_else(|| panic!("no {kind} rendered"));
    assert!(matching.next().is_none(), "more than one {kind} rendered");
    first
}

fn operator_container(objects: &[Value]) -> &Value {
    let containers = &only(objects, "Deployment")["spec"]["template"]["spec"]["containers"];
    assert_eq!(
        containers.as_array().map(Vec::len),
        Some(1),
        "one container"
    );
    &containers[0]
}

fn args_of(objects: &[Value]) -> Vec<String> {
    operator_container(objects)["args"]
        .as_array()
        .expect("container args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_owned())
        .collect()
}

fn assert_args_contain(args: &[String], expected: &[&str]) {
    let missing: Vec<_> = expected
        .iter()
        .filter(|e| !args.iter().any(|a| a == *e))
        .collect();
    assert!(missing.is_empty(), "{missing:?} missing from {args:?}");
}

/// The generated files, as the chart must carry them: name → content.
fn yaml_files(dir: &std::path::Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

/// Panics, before anything touches the shared control plane, when the chart's copy of crds/ is stale:
/// installing a stale copy would roll the shared CRDs back under every other test.
fn assert_chart_crds_match_generated() {
    let generated = yaml_files(&repo_root().join("crds"));
    let in_chart = yaml_files(&chart_dir().join("files/crds"));
    let differing: Vec<_> = generated
        .keys()
        .chain(in_chart.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|name| generated.get(*name) != in_chart.get(*name))
        .collect();
    assert!(
        !generated.is_empty() && differing.is_empty(),
        "charts/smart-operator/files/crds differs from crds/ in {differing:?}: run \
         charts/smart-operator/sync-crds.sh"
    );
}

#[test]
fn chart_carries_an_exact_copy_of_the_generated_crds() {
    assert_chart_crds_match_generated();
}

#[test]
fn chart_passes_helm_lint_with_defaults_and_with_every_optional_feature() {
    let chart = chart();
    for kube_version in KUBE_VERSIONS {
        for values in [
            &[][..],
            ALL_FEATURES,
            &["crds.enabled=false", "rbac.create=false"],
        ] {
            let mut args = vec![
                "lint",
                chart.as_str(),
                "--strict",
                "--namespace",
                "ops",
                "--kube-version",
                kube_version,
            ];
            args.extend(set_args(values));
            let out = helm(&args);
            assert!(
                out.contains("0 chart(s) failed"),
                "helm lint {values:?} on {kube_version}:\n{out}"
            );
        }
    }
}

#[test]
fn chart_renders_the_operator_its_rbac_and_the_api_by_default() {
    let objects = render(&[]);
    let expected: BTreeMap<String, usize> = [
        ("ClusterRole", 4),
        ("ClusterRoleBinding", 2),
        ("CustomResourceDefinition", 3),
        ("Deployment", 1),
        ("MutatingAdmissionPolicy", 1),
        ("MutatingAdmissionPolicyBinding", 1),
        ("Role", 1),
        ("RoleBinding", 1),
        ("Service", 1),
        ("ServiceAccount", 1),
        ("ValidatingAdmissionPolicy", 2),
        ("ValidatingAdmissionPolicyBinding", 2),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_owned(), n))
    .collect();
    assert_eq!(kinds(&objects), expected);
    for object in &objects {
        assert_eq!(
            object["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "Helm",
            "{:?} lacks the chart's labels",
            kind_and_name(object)
        );
    }
}

/// MutatingAdmissionPolicy is GA from 1.36: older clusters get everything else, and the operator adds
/// the finalizer itself there.
#[test]
fn the_finalizer_policy_renders_only_for_kubernetes_1_36_and_later() {
    let old = kinds(&try_render_for("1.35.0", &[]).unwrap());
    assert!(!old.contains_key("MutatingAdmissionPolicy"), "{old:?}");
    assert!(
        !old.contains_key("MutatingAdmissionPolicyBinding"),
        "{old:?}"
    );
    assert_eq!(old.get("ValidatingAdmissionPolicy"), Some(&2), "{old:?}");
    let current = render(&[]);
    let policy = only(&current, "MutatingAdmissionPolicy");
    assert_eq!(policy["spec"]["failurePolicy"], "Ignore");
    assert_eq!(
        only(&current, "MutatingAdmissionPolicyBinding")["spec"]["policyName"],
        policy["metadata"]["name"]
    );
}

#[test]
fn optional_features_render_only_when_switched_on() {
    let optional = ["ServiceMonitor", "PodDisruptionBudget", "NetworkPolicy"];
    let defaults = kinds(&render(&[]));
    for kind in optional {
        assert!(!defaults.contains_key(kind), "{kind} rendered by default");
    }
    let all = render(ALL_FEATURES);
    for kind in optional {
        only(&all, kind);
    }
    let monitor = only(&all, "ServiceMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["interval"], "30s");

    let policy = only(&all, "NetworkPolicy");
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(
        policy["spec"]["ingress"],
        json!([{"ports": [{"port": "metrics", "protocol": "TCP"}]}]),
        "ingress only to the metrics port"
    );
    let egress_ports: BTreeSet<i64> = policy["spec"]["egress"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rule| rule["ports"].as_array().unwrap().clone())
        .map(|p| p["port"].as_i64().unwrap())
        .collect();
    assert_eq!(
        egress_ports,
        BTreeSet::from([53, 443, 6443]),
        "egress: DNS, the apiserver (Service and endpoint port) and https auth servers"
    );

    let none = kinds(&render(&["crds.enabled=false", "rbac.create=false"]));
    for kind in [
        "CustomResourceDefinition",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "MutatingAdmissionPolicy",
        "MutatingAdmissionPolicyBinding",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    ] {
        assert!(
            !none.contains_key(kind),
            "{kind} rendered although switched off"
        );
    }

    let borrowed = render(&["serviceAccount.create=false", "serviceAccount.name=shared"]);
    assert!(!kinds(&borrowed).contains_key("ServiceAccount"));
    assert_eq!(
        only(&borrowed, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"],
        "shared"
    );
}

/// The rendered CRDs and policies are the generated files plus the chart's labels and, with crds.keep,
/// the resource policy: parsing and re-emitting them in the template changes nothing else.
#[test]
fn chart_crds_are_the_generated_ones_with_labels_and_the_keep_policy() {
    let generated: Vec<Value> = yaml_files(&repo_root().join("crds"))
        .keys()
        .flat_map(|name| read_yaml_file(&repo_root().join("crds").join(name)))
        .collect();
    let api_kinds = [
        "CustomResourceDefinition",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "MutatingAdmissionPolicy",
        "MutatingAdmissionPolicyBinding",
    ];
    for keep in [true, false] {
        let rendered: BTreeMap<(String, String), Value> = render(&[&format!("crds.keep={keep}")])
            .into_iter()
            .filter(|o| api_kinds.contains(&o["kind"].as_str().unwrap_or_default()))
            .map(|o| (kind_and_name(&o), o))
            .collect();
        assert_eq!(
            rendered.len(),
            generated.len(),
            "one rendered object per generated one"
        );
        for original in &generated {
            let key = kind_and_name(original);
            let mut object = rendered
                .get(&key)
                .unwrap_or_else(|| panic!("{key:?} is not rendered"))
                .clone();
            let metadata = object["metadata"].as_object_mut().unwrap();
            let annotations = metadata.remove("annotations").unwrap_or(Value::Null);
            // The finalizer policy is the operator's behaviour, not API: it goes with the operator, or
            // SmartClients created afterwards would get a finalizer nobody removes.
            let kept = keep && !key.0.starts_with("Mutating");
            assert_eq!(
                annotations["helm.sh/resource-policy"].as_str(),
                kept.then_some("keep"),
                "{key:?} with crds.keep={keep}"
            );
            let mut labels = metadata.remove("labels").unwrap_or(json!({}));
            assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm");
            let original_labels = &original["metadata"]["labels"];
            labels
                .as_object_mut()
                .unwrap()
                .retain(|k, _| original_labels.get(k).is_some());
            if !labels.as_object().unwrap().is_empty() {
                metadata.insert("labels".into(), labels);
            }
            assert!(
                object == *original,
                "{key:?} differs from crds/ after rendering:\nrendered: {object:#}\ngenerated: {original:#}"
            );
        }
    }
}

#[test]
fn values_schema_and_checks_refuse_bad_values_with_the_offending_key() {
    let cases: &[(&[&str], &str)] = &[
        (&["operator.log.format=xml"], "/operator/log/format"),
        (&["operator.backoff.cap=5minutes"], "/operator/backoff/cap"),
        (
            &["operator.existenceCheckInterval=often"],
            "/operator/existenceCheckInterval",
        ),
        (&["operator.concurrency=0"], "/operator/concurrency"),
        (
            &["operator.watchNamespaces={Not_A_Namespace}"],
            "/operator/watchNamespaces/0",
        ),
        (&["replicaCount=-1"], "/replicaCount"),
        (&["metrics.port=80"], "/metrics/port"),
        (&["image.digest=latest"], "/image/digest"),
        (&["image.pullPolicy=Sometimes"], "/image/pullPolicy"),
        (&["crds.enabled=yes"], "/crds/enabled"),
        (
            &["leaderElection.leaseDuration=1"],
            "/leaderElection/leaseDuration",
        ),
        (
            &["networkPolicy.egress.authServers.ports={0}"],
            "/networkPolicy/egress/authServers/ports/0",
        ),
        (
            &["podDisruptionBudget.maxUnavailable=half"],
            "/podDisruptionBudget/maxUnavailable",
        ),
        (
            &["operator.logLevel=debug"],
            "additional properties 'logLevel'",
        ),
        (&["typo=1"], "additional properties 'typo'"),
        // What the schema cannot express, the templates check.
        (
            &["replicaCount=2", "leaderElection.enabled=false"],
            "needs leaderElection.enabled",
        ),
        (
            &[
                "podDisruptionBudget.enabled=true",
                "podDisruptionBudget.maxUnavailable=null",
            ],
            "set one of minAvailable and maxUnavailable",
        ),
        (
            &[
                "metrics.serviceMonitor.enabled=true",
                "metrics.service.enabled=false",
            ],
            "needs metrics.service.enabled",
        ),
        (
            &["serviceAccount.create=false"],
            "serviceAccount.name is required",
        ),
    ];
    for (values, expected) in cases {
        match try_render(values) {
            Ok(_) => panic!("helm template accepted {values:?}"),
            Err(error) => assert!(
                error.contains(expected),
                "refusing {values:?} should mention {expected:?}; helm said:\n{error}"
            ),
        }
    }
    // And reasonable values pass.
    render(&[
        "operator.backoff.cap=1h30m",
        "operator.httpTimeout=2.5s",
        "podDisruptionBudget.enabled=true",
        "podDisruptionBudget.minAvailable=50%",
        "image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ]);
}

#[test]
fn deployment_is_hardened_and_wires_the_downward_api_probes_and_metrics_port() {
    let objects = render(&[]);
    let pod = &only(&objects, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "release-smart-operator");
    assert_eq!(pod["automountServiceAccountToken"], true);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(
        only(&objects, "ServiceAccount")["automountServiceAccountToken"],
        false,
        "only the operator's Pod mounts the token"
    );

    let container = operator_container(&objects);
    assert_eq!(
        container["image"], "smart-operator:0.1.0",
        "appVersion is the default tag"
    );
    let security = &container["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["runAsUser"], 65532);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["privileged"], false);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    for bound in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"][bound][resource].is_string(),
                "resources.{bound}.{resource} is set"
            );
        }
    }

    let env: BTreeMap<&str, &Value> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap(),
                &e["valueFrom"]["fieldRef"]["fieldPath"],
            )
        })
        .collect();
    assert_eq!(env["POD_NAMESPACE"], "metadata.namespace");
    assert_eq!(env["POD_NAME"], "metadata.name");

    assert_eq!(
        container["ports"],
        json!([{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}])
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"],
        json!({"path": "/livez", "port": "metrics"})
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "metrics"})
    );
    let service = only(&objects, "Service");
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}])
    );

    let args = args_of(&objects);
    assert_eq!(args[0], "run");
    assert_args_contain(
        &args,
        &[
            "--metrics-address=0.0.0.0:8080",
            "--leader-election",
            "--lease-name=release-smart-operator",
            "--lease-namespace=ops",
            "--log-format=json",
        ],
    );
    assert!(
        !args.iter().any(|a| a.starts_with("--watch-namespace")),
        "all namespaces by default: {args:?}"
    );
}

#[test]
fn values_become_operator_flags() {
    let objects = render(&[
        "operator.watchNamespaces={team-a,team-b}",
        "operator.log.level=smart_operator=debug\\,info",
        "operator.log.format=text",
        "operator.existenceCheckInterval=30m",
        "operator.backoff.base=1s",
        "operator.backoff.cap=10m",
        "operator.deletionAttempts=9",
        "operator.httpTimeout=20s",
        "operator.concurrency=4",
        "metrics.port=9090",
        "leaderElection.leaseName=smart-lease",
        "leaderElection.leaseDuration=30",
    ]);
    assert_args_contain(
        &args_of(&objects),
        &[
            "--watch-namespace=team-a,team-b",
            "--log=smart_operator=debug,info",
            "--log-format=text",
            "--existence-check-interval=30m",
            "--backoff-base=1s",
            "--backoff-cap=10m",
            "--deletion-attempts=9",
            "--http-timeout=20s",
            "--concurrency=4",
            "--metrics-address=0.0.0.0:9090",
            "--lease-name=smart-lease",
            "--lease-duration=30",
        ],
    );
    assert_eq!(
        operator_container(&objects)["ports"][0]["containerPort"],
        9090
    );

    let single = render(&["leaderElection.enabled=false"]);
    let args = args_of(&single);
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--lease") || a == "--leader-election"),
        "no leader election flags: {args:?}"
    );
    assert_eq!(
        only(&single, "Deployment")["spec"]["strategy"]["type"],
        "Recreate",
        "without leader election a rollout must not overlap two operators"
    );
    assert!(!kinds(&single).contains_key("Role"), "no Lease, no Role");
}

/// The chart and the binary agree on flags: the rendered arguments parse (clap checks every flag and
/// value as it reads them, before it reaches `--help`).
#[test]
fn the_binary_accepts_the_flags_the_chart_passes() {
    for values in [
        &[][..],
        ALL_FEATURES,
        &["leaderElection.enabled=false", "operator.log.format=text"],
    ] {
        let args = args_of(&render(values));
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_smart-operator"))
            .args(&args)
            .arg("--help")
            .output()
            .expect("runs smart-operator");
        assert!(
            output.status.success(),
            "smart-operator refuses the chart's arguments {args:?} (values {values:?}):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// An installed release, uninstalled (and its namespace deleted) when dropped, also after a failure.
struct Release {
    name: String,
    namespace: String,
    installed: bool,
}

impl Release {
    /// Installs the chart as release `<namespace>` into the fresh `namespace` (without --wait).
    fn install(namespace: &str, values: &[&str], extra: &[&str]) -> Self {
        // Marked installed from the start: a half-finished install is uninstalled too.
        let release = Self {
            name: namespace.to_owned(),
            namespace: namespace.to_owned(),
            installed: true,
        };
        let chart = chart();
        let mut args = vec![
            "install",
            release.name.as_str(),
            chart.as_str(),
            "--namespace",
            namespace,
        ];
        args.extend(set_args(values));
        args.extend(extra);
        helm(&args);
        release
    }

    fn fullname(&self) -> String {
        format!("{}-smart-operator", self.name)
    }

    fn service_account(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace,
            self.fullname()
        )
    }

    /// `kubectl auth can-i` as the operator's ServiceAccount, with the groups its token carries (so
    /// what every authenticated client may do counts too).
    fn can(&self, query: &str) -> bool {
        let user = format!("--as={}", self.service_account());
        let own_group = format!("--as-group=system:serviceaccounts:{}", self.namespace);
        let mut args = vec!["auth", "can-i"];
        args.extend(query.split_whitespace());
        args.extend([
            user.as_str(),
            "--as-group=system:serviceaccounts",
            own_group.as_str(),
            "--as-group=system:authenticated",
        ]);
        let (_, out, err) = run_tool("kubectl", &args);
        match out.trim() {
            "yes" => true,
            "no" => false,
            _ => panic!("kubectl auth can-i {query}: unexpected answer:\n{out}\n{err}"),
        }
    }

    fn assert_access(&self, allowed: &[String], denied: &[String]) {
        let wrong: Vec<String> = allowed
            .iter()
            .filter(|q| !self.can(q))
            .map(|q| format!("cannot {q}"))
            .chain(
                denied
                    .iter()
                    .filter(|q| self.can(q))
                    .map(|q| format!("CAN {q}")),
            )
            .collect();
        assert!(
            wrong.is_empty(),
            "{} has the wrong access:\n  {}",
            self.service_account(),
            wrong.join("\n  ")
        );
    }

    fn uninstall(mut self) -> String {
        self.installed = false;
        helm(&["uninstall", &self.name, "--namespace", &self.namespace])
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if self.installed {
            let _ = run_tool(
                "helm",
                &["uninstall", &self.name, "--namespace", &self.namespace],
            );
        }
        let _ = run_tool(
            "kubectl",
            &[
                "delete",
                "namespace",
                &self.namespace,
                "--wait=false",
                "--ignore-not-found",
            ],
        );
    }
}

fn strings(queries: &[&str]) -> Vec<String> {
    queries.iter().map(|q| q.to_string()).collect()
}

async fn assert_exists<K>(api: Api<K>, name: &str)
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if let Err(e) = api.get(name).await {
        panic!("{} {name} is not in the apiserver: {e}", K::kind(&()));
    }
}

/// `kubectl auth can-i` as a person: `user`, authenticated.
fn person_can(user: &str, query: &str) -> bool {
    let as_user = format!("--as={user}");
    let mut args = vec!["auth", "can-i"];
    args.extend(query.split_whitespace());
    args.extend([as_user.as_str(), "--as-group=system:authenticated"]);
    let (_, out, err) = run_tool("kubectl", &args);
    match out.trim() {
        "yes" => true,
        "no" => false,
        _ => panic!("kubectl auth can-i {query} as {user}: unexpected answer:\n{out}\n{err}"),
    }
}

#[tokio::test]
async fn namespace_viewers_and_editors_get_smart_clients_through_the_default_roles() {
    let client = client().await;
    let namespace = fresh_namespace(&client, "chart-aggregate").await;
    let _release = Release::install(&namespace, &["crds.enabled=false"], &[]);
    let ns = namespace.as_str();
    for (user, role) in [
        ("vera-viewer", "view"),
        ("eddie-editor", "edit"),
        ("ada-admin", "admin"),
    ] {
        apply(&client, Some(ns), json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": format!("{user}-{role}")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        }))
        .await
        .unwrap();
    }
    let matrix: &[(&str, &str, bool)] = &[
        ("vera-viewer", "list smartclients.smart.fhir.dev", true),
        ("vera-viewer", "get smartauthservers.smart.fhir.dev", true),
        ("vera-viewer", "create smartclients.smart.fhir.dev", false),
        ("vera-viewer", "delete smartclients.smart.fhir.dev", false),
        ("eddie-editor", "create smartclients.smart.fhir.dev", true),
        ("eddie-editor", "patch smartclients.smart.fhir.dev", true),
        ("eddie-editor", "delete smartclients.smart.fhir.dev", true),
        ("eddie-editor", "list smartclients.smart.fhir.dev", true),
        ("eddie-editor", "get smartauthservers.smart.fhir.dev", true),
        (
            "eddie-editor",
            "create smartauthservers.smart.fhir.dev",
            false,
        ),
        (
            "eddie-editor",
            "patch smartauthservers.smart.fhir.dev",
            false,
        ),
        (
            "eddie-editor",
            "patch smartclients.smart.fhir.dev --subresource=status",
            false,
        ),
        ("ada-admin", "create smartclients.smart.fhir.dev", true),
        ("ada-admin", "create smartauthservers.smart.fhir.dev", false),
        ("ada-admin", "delete smartauthservers.smart.fhir.dev", false),
    ];
    let question = |query: &str| format!("{query} -n {ns}");
    // The aggregation controller fills the default roles a moment after the chart's roles exist.
    eventually(
        "the default roles carry the chart's rules",
        Duration::from_secs(30),
        || async {
            person_can(
                "eddie-editor",
                &question("create smartclients.smart.fhir.dev"),
            )
            .then_some(())
        },
    )
    .await;
    let wrong: Vec<String> = matrix
        .iter()
        .filter(|(user, query, allowed)| person_can(user, &question(query)) != *allowed)
        .map(|(user, query, allowed)| {
            format!("{user} {} {query}", if *allowed { "cannot" } else { "CAN" })
        })
        .collect();
    assert!(wrong.is_empty(), "wrong access:\n  {}", wrong.join("\n  "));
    // Cluster-wide, nobody bound only in a namespace gets anything.
    assert!(!person_can(
        "eddie-editor",
        "list clustersmartauthservers.smart.fhir.dev"
    ));
}

#[tokio::test]
async fn install_creates_the_operator_and_rbac_that_grants_exactly_what_it_needs() {
    let client = client().await;
    let namespace = fresh_namespace(&client, "chart-rbac").await;
    // The API is managed outside this release here: other tests apply crds/ to the shared control plane.
    let release = Release::install(&namespace, &["crds.enabled=false"], &[]);
    let name = release.fullname();

    let ns = namespace.as_str();
    assert_exists(Api::<Deployment>::namespaced(client.clone(), ns), &name).await;
    assert_exists(Api::<ServiceAccount>::namespaced(client.clone(), ns), &name).await;
    assert_exists(
        Api::<Service>::namespaced(client.clone(), ns),
        &format!("{name}-metrics"),
    )
    .await;
    assert_exists(Api::<Role>::namespaced(client.clone(), ns), &name).await;
    assert_exists(Api::<RoleBinding>::namespaced(client.clone(), ns), &name).await;
    for cluster_name in [name.clone(), format!("{name}-namespaced")] {
        assert_exists(Api::<ClusterRole>::all(client.clone()), &cluster_name).await;
        assert_exists(
            Api::<ClusterRoleBinding>::all(client.clone()),
            &cluster_name,
        )
        .await;
    }

    let lease = format!("leases.coordination.k8s.io/{name} -n {ns}");
    let allowed = [
        // SmartClients in every namespace: watch, finalizer, status.
        "list smartclients.smart.fhir.dev --all-namespaces".to_owned(),
        "watch smartclients.smart.fhir.dev --all-namespaces".to_owned(),
        "patch smartclients.smart.fhir.dev -n some-app".to_owned(),
        "patch smartclients.smart.fhir.dev --subresource=status -n some-app".to_owned(),
        // Auth servers: watch and status.
        "watch smartauthservers.smart.fhir.dev --all-namespaces".to_owned(),
        "patch smartauthservers.smart.fhir.dev --subresource=status -n some-app".to_owned(),
        "watch clustersmartauthservers.smart.fhir.dev".to_owned(),
        "patch clustersmartauthservers.smart.fhir.dev --subresource=status".to_owned(),
        // Client Secrets in any namespace, credential Secrets.
        "create secrets -n some-app".to_owned(),
        "patch secrets -n some-app".to_owned(),
        "watch secrets --all-namespaces".to_owned(),
        "get secrets -n some-app".to_owned(),
        format!("get secrets -n {ns}"),
        // allowedNamespaces, Events, the Lease.
        "get namespaces/some-app".to_owned(),
        "create events.events.k8s.io -n some-app".to_owned(),
        "patch events.events.k8s.io -n default".to_owned(),
        format!("create leases.coordination.k8s.io -n {ns}"),
        format!("get {lease}"),
        format!("update {lease}"),
        format!("patch {lease}"),
    ];
    let denied = [
        // Never the API itself, RBAC, or workloads.
        "create customresourcedefinitions.apiextensions.k8s.io".to_owned(),
        "update customresourcedefinitions.apiextensions.k8s.io".to_owned(),
        "delete customresourcedefinitions.apiextensions.k8s.io".to_owned(),
        "create validatingadmissionpolicies.admissionregistration.k8s.io".to_owned(),
        "create clusterroles.rbac.authorization.k8s.io".to_owned(),
        "create clusterrolebindings.rbac.authorization.k8s.io".to_owned(),
        format!("create roles.rbac.authorization.k8s.io -n {ns}"),
        format!("create rolebindings.rbac.authorization.k8s.io -n {ns}"),
        "escalate clusterroles.rbac.authorization.k8s.io".to_owned(),
        "bind clusterroles.rbac.authorization.k8s.io".to_owned(),
        "impersonate serviceaccounts --all-namespaces".to_owned(),
        "impersonate users".to_owned(),
        format!("create pods -n {ns}"),
        "create pods -n some-app".to_owned(),
        format!("create deployments.apps -n {ns}"),
        format!("create serviceaccounts/token -n {ns}"),
        "list configmaps --all-namespaces".to_owned(),
        "get nodes".to_owned(),
        // Only what it needs of its own kinds: SmartClients and auth servers belong to their authors.
        "create smartclients.smart.fhir.dev -n some-app".to_owned(),
        "delete smartclients.smart.fhir.dev -n some-app".to_owned(),
        "update smartclients.smart.fhir.dev -n some-app".to_owned(),
        "update smartclients.smart.fhir.dev --subresource=status -n some-app".to_owned(),
        "update smartauthservers.smart.fhir.dev --subresource=status -n some-app".to_owned(),
        "update clustersmartauthservers.smart.fhir.dev --subresource=status".to_owned(),
        // Secrets: server-side apply only; never update or delete one, anywhere (review S4).
        "delete secrets -n some-app".to_owned(),
        format!("delete secrets -n {ns}"),
        "update secrets -n some-app".to_owned(),
        "deletecollection secrets -n some-app".to_owned(),
        "update smartauthservers.smart.fhir.dev -n some-app".to_owned(),
        "create smartauthservers.smart.fhir.dev -n some-app".to_owned(),
        "update clustersmartauthservers.smart.fhir.dev".to_owned(),
        "delete clustersmartauthservers.smart.fhir.dev".to_owned(),
        // Namespaces: read one, nothing more.
        "list namespaces".to_owned(),
        "delete namespaces/some-app".to_owned(),
        "create namespaces".to_owned(),
        // Events: write only, and only events.k8s.io.
        "list events.events.k8s.io -n some-app".to_owned(),
        "create events -n some-app".to_owned(),
        // Leases: its own, in its own namespace.
        "update leases.coordination.k8s.io/kube-controller-manager -n kube-system".to_owned(),
        "create leases.coordination.k8s.io -n some-app".to_owned(),
        format!("update leases.coordination.k8s.io/{name} -n some-app"),
        format!("update leases.coordination.k8s.io/another-lease -n {ns}"),
        format!("delete {lease}"),
    ];
    release.assert_access(&allowed, &denied);

    let out = release.uninstall();
    assert!(out.contains("uninstalled"), "helm uninstall: {out}");
    let roles: Api<ClusterRole> = Api::all(client.clone());
    assert!(
        roles.get_opt(&name).await.unwrap().is_none(),
        "uninstall removes the ClusterRoles"
    );
}

#[tokio::test]
async fn watching_some_namespaces_grants_namespaced_access_only_there() {
    let client = client().await;
    let namespace = fresh_namespace(&client, "chart-watch").await;
    let watched = fresh_namespace(&client, "chart-watched").await;
    let _cleanup_watched = NamespaceGuard(watched.clone());
    // Optional features that use built-in APIs go through apiserver validation here too.
    let watch = format!("operator.watchNamespaces={{{watched}}}");
    let release = Release::install(
        &namespace,
        &[
            "crds.enabled=false",
            &watch,
            "replicaCount=2",
            "podDisruptionBudget.enabled=true",
            "networkPolicy.enabled=true",
        ],
        &[],
    );
    let name = release.fullname();
    assert_exists(
        Api::<RoleBinding>::namespaced(client.clone(), &watched),
        &format!("{name}-namespaced"),
    )
    .await;
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    assert!(
        bindings
            .get_opt(&format!("{name}-namespaced"))
            .await
            .unwrap()
            .is_none(),
        "no cluster-wide binding of the namespaced permissions"
    );
    let ns = namespace.as_str();
    let w = watched.as_str();
    let allowed = strings(&[
        &format!("list smartclients.smart.fhir.dev -n {w}"),
        &format!("patch smartclients.smart.fhir.dev --subresource=status -n {w}"),
        &format!("watch smartauthservers.smart.fhir.dev -n {w}"),
        &format!("create secrets -n {w}"),
        &format!("watch secrets -n {w}"),
        // ClusterSmartAuthServer credential Secrets stay readable in the operator's namespace.
        &format!("get secrets -n {ns}"),
        // Cluster-scoped needs are unchanged.
        "watch clustersmartauthservers.smart.fhir.dev",
        "get namespaces",
        "create events.events.k8s.io -n default",
    ]);
    let denied = strings(&[
        "list smartclients.smart.fhir.dev --all-namespaces",
        "list smartclients.smart.fhir.dev -n some-app",
        "list secrets --all-namespaces",
        "create secrets -n some-app",
        "get secrets -n some-app",
        &format!("create secrets -n {ns}"),
        &format!("list secrets -n {ns}"),
    ]);
    release.assert_access(&allowed, &denied);
    release.uninstall();
}

struct NamespaceGuard(String);

impl Drop for NamespaceGuard {
    fn drop(&mut self) {
        let _ = run_tool(
            "kubectl",
            &[
                "delete",
                "namespace",
                &self.0,
                "--wait=false",
                "--ignore-not-found",
            ],
        );
    }
}

/// The Pod the Deployment would create passes the `restricted` Pod Security Standard. There is no
/// ReplicaSet controller here, so the Pod template is submitted as a Pod by a server-side dry run into a
/// namespace that enforces `restricted`.
#[tokio::test]
async fn operator_pod_passes_the_restricted_pod_security_standard() {
    let client = client().await;
    let namespace = fresh_namespace(&client, "chart-psa").await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            &namespace,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            }}})),
        )
        .await
        .unwrap();
    let release = Release::install(&namespace, &["crds.enabled=false"], &[]);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let deployment = deployments.get(&release.fullname()).await.unwrap();
    let template = deployment.spec.unwrap().template;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "pod-security-check", "labels": template.metadata.unwrap().labels},
        "spec": template.spec,
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    if let Err(e) = pods.create(&params, &pod).await {
        panic!("the operator Pod violates the restricted Pod Security Standard: {e}");
    }
    // And a Pod that breaks the standard is refused there, so the check above means something.
    let mut privileged = pod.clone();
    privileged.spec.as_mut().unwrap().containers[0]
        .security_context
        .as_mut()
        .unwrap()
        .allow_privilege_escalation = Some(true);
    assert!(
        pods.create(&params, &privileged).await.is_err(),
        "namespace {namespace} does not enforce the restricted standard"
    );
    release.uninstall();
}

/// The CRDs usually exist already (applied by `kubectl apply --server-side -f crds/`, as other tests
/// here do). Helm refuses to adopt objects without its ownership metadata; `--take-ownership`
/// (helm ≥ 3.17) adopts them with an ordinary update, so the content goes through apiserver validation
/// like a fresh install. With `crds.keep` (the default) uninstalling leaves them — which is also what
/// keeps this test from deleting the API under every other test.
#[tokio::test]
async fn install_with_crds_adopts_existing_ones_and_uninstall_keeps_them() {
    // A stale copy would roll the shared CRDs back: refuse before touching the control plane.
    assert_chart_crds_match_generated();
    let rendered = render(&[]);
    let api_objects: Vec<(String, String)> = rendered
        .iter()
        .filter(|o| o["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep")
        .map(kind_and_name)
        .collect();
    assert_eq!(
        api_objects.len(),
        7,
        "every CRD and admission policy must carry the keep policy before this test may uninstall"
    );

    let client = client().await;
    install_crds(&client).await;
    let namespace = fresh_namespace(&client, "chart-crds").await;

    let chart = chart();
    let (ok, _, err) = helm_result(&["install", &namespace, &chart, "--namespace", &namespace]);
    if ok {
        helm(&["uninstall", &namespace, "--namespace", &namespace]);
    }
    assert!(
        !ok && err.contains("invalid ownership metadata"),
        "without --take-ownership helm should refuse to adopt the existing CRDs; it said:\n{err}"
    );

    let release = Release::install(&namespace, &["crds.keep=true"], &["--take-ownership"]);
    assert_exists(
        Api::<Deployment>::namespaced(client.clone(), &namespace),
        &release.fullname(),
    )
    .await;
    for (kind, name) in &api_objects {
        let object = get_dynamic(&client, kind, name).await;
        let annotations = object.metadata.annotations.unwrap_or_default();
        assert_eq!(
            annotations.get("meta.helm.sh/release-name"),
            Some(&release.name),
            "{kind} {name} is adopted by the release"
        );
        assert_eq!(
            annotations
                .get("helm.sh/resource-policy")
                .map(String::as_str),
            Some("keep")
        );
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in smart_operator::crd::all_crds() {
        let name = crd.metadata.name.unwrap();
        let served = crds.get(&name).await.unwrap();
        let established = served
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        assert!(established, "CRD {name} is Established after the install");
    }

    let out = release.uninstall();
    for (kind, name) in &api_objects {
        assert!(
            out.contains(name.as_str()),
            "helm uninstall should report keeping {kind} {name}:\n{out}"
        );
        get_dynamic(&client, kind, name).await;
    }
}

async fn get_dynamic(client: &kube::Client, kind: &str, name: &str) -> DynamicObject {
    let (group, plural) = match kind {
        "CustomResourceDefinition" => ("apiextensions.k8s.io", "customresourcedefinitions"),
        "ValidatingAdmissionPolicy" => (
            "admissionregistration.k8s.io",
            "validatingadmissionpolicies",
        ),
        "ValidatingAdmissionPolicyBinding" => (
            "admissionregistration.k8s.io",
            "validatingadmissionpolicybindings",
        ),
        "MutatingAdmissionPolicy" => ("admissionregistration.k8s.io", "mutatingadmissionpolicies"),
        "MutatingAdmissionPolicyBinding" => (
            "admissionregistration.k8s.io",
            "mutatingadmissionpolicybindings",
        ),
        other => panic!("unexpected kind {other}"),
    };
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", kind), plural);
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    api.get(name)
        .await
        .unwrap_or_else(|e| panic!("{kind} {name} is not in the apiserver: {e}"))
}

/// The real binary, run with the arguments of the installed Deployment and authenticated as the chart's
/// ServiceAccount, does its whole job with the chart's RBAC and nothing more: it takes the Lease,
/// registers a client, writes its Secret, status and Events, and removes its finalizer on delete. (The
/// can-i matrix checks the rules as written; this checks that they suffice.) It watches one namespace
/// so that it leaves other tests' SmartClients alone; like every operator the tests start, it still
/// reconciles all ClusterSmartAuthServers for the few seconds it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_does_its_job_with_only_the_charts_permissions() {
    let client = client().await;
    install_crds(&client).await;
    let namespace = fresh_namespace(&client, "chart-run").await;
    let apps = fresh_namespace(&client, "chart-run-apps").await;
    let _cleanup_apps = NamespaceGuard(apps.clone());
    let watch = format!("operator.watchNamespaces={{{apps}}}");
    let release = Release::install(&namespace, &["crds.enabled=false", &watch], &[]);
    let name = release.fullname();

    let deployment = Api::<Deployment>::namespaced(client.clone(), &namespace)
        .get(&name)
        .await
        .unwrap();
    let container = deployment.spec.unwrap().template.spec.unwrap().containers[0].clone();
    let args: Vec<String> = container
        .args
        .unwrap()
        .into_iter()
        .map(|a| {
            if a.starts_with("--metrics-address=") {
                // Any free loopback port; the log says which.
                "--metrics-address=127.0.0.1:0".to_owned()
            } else {
                a
            }
        })
        .collect();
    let kubeconfig = service_account_kubeconfig(&namespace, &name);
    let log_dir = repo_root().join("target/test-logs");
    std::fs::create_dir_all(&log_dir).unwrap();
    let log_path = log_dir.join(format!("chart-operator-{namespace}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let operator = ChildGuard(
        std::process::Command::new(env!("CARGO_BIN_EXE_smart-operator"))
            .args(&args)
            .env("KUBECONFIG", &kubeconfig)
            .env("POD_NAMESPACE", &namespace)
            .env("POD_NAME", format!("{name}-pod"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("start the operator binary"),
    );
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    eventually(
        "the operator holds the chart's Lease",
        Duration::from_secs(30),
        || async {
            let lease = leases.get_opt(&name).await.ok().flatten()?;
            let holder = lease.spec?.holder_identity?;
            holder.starts_with(&format!("{name}-pod")).then_some(())
        },
    )
    .await;
    let address = served_address(&read_log()).expect("the operator logs where it serves /readyz");
    let ready = format!("http://{address}/readyz");
    eventually("/readyz answers 200", Duration::from_secs(30), || async {
        let response = reqwest::get(&ready).await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;

    let server = AuthServer::start(DevDialect::S4s, &[]).await;
    apply(
        &client,
        Some(&apps),
        json!({"apiVersion": "smart.fhir.dev/v1alpha1", "kind": "SmartAuthServer",
               "metadata": {"name": "dev"},
               "spec": {"dialect": "S4S", "fhirBaseUrl": server.fhir_base_url()}}),
    )
    .await
    .unwrap();
    apply(
        &client,
        Some(&apps),
        json!({"apiVersion": "smart.fhir.dev/v1alpha1", "kind": "SmartClient",
               "metadata": {"name": "app"},
               "spec": {"authServerRef": {"name": "dev"},
                        "redirectUris": ["https://app.example.org/cb"],
                        "scopes": ["launch/patient"]}}),
    )
    .await
    .unwrap();
    wait_for_ready(&client, &apps, "app", "True", "Ready").await;
    let secret = get_secret(&client, &apps, "app-smart-client")
        .await
        .expect("the operator wrote the client's Secret");
    assert!(secret_value(&secret, "client_id").is_some());
    wait_for_event(&client, &apps, "Registered").await;

    let clients: Api<SmartClient> = Api::namespaced(client.clone(), &apps);
    clients.delete("app", &Default::default()).await.unwrap();
    eventually(
        "the finalizer is removed",
        Duration::from_secs(30),
        || async {
            clients
                .get_opt("app")
                .await
                .ok()
                .and_then(|c| c.is_none().then_some(()))
        },
    )
    .await;

    // An RBAC refusal reads "… is forbidden: User "system:serviceaccount:…" cannot …".
    let log_text = read_log();
    assert!(
        !log_text.to_lowercase().contains("forbidden"),
        "the operator was refused something; log {}:\n{log_text}",
        log_path.display()
    );
    // Stopped before the uninstall takes its permissions away.
    drop(operator);
    let _ = std::fs::remove_file(&kubeconfig);
    release.uninstall();
}

/// Where the operator serves /readyz, from its (JSON) log line "serving /metrics, /livez and /readyz".
fn served_address(log: &str) -> Option<String> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|entry| {
            entry["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("serving /metrics"))
        })
        .and_then(|entry| entry["fields"]["address"].as_str().map(str::to_owned))
}

/// A kubeconfig for the current control plane that authenticates with a short-lived token of the
/// ServiceAccount, as the operator's Pod would.
fn service_account_kubeconfig(namespace: &str, service_account: &str) -> PathBuf {
    let (ok, token, err) = run_tool(
        "kubectl",
        &[
            "create",
            "token",
            service_account,
            "-n",
            namespace,
            "--duration=15m",
        ],
    );
    assert!(ok, "kubectl create token: {err}");
    let (ok, config, err) = run_tool(
        "kubectl",
        &[
            "config",
            "view",
            "--raw",
            "--minify",
            "--flatten",
            "-o",
            "json",
        ],
    );
    assert!(ok, "kubectl config view: {err}");
    let mut config: Value = serde_json::from_str(&config).unwrap();
    config["users"][0]["user"] = json!({"token": token.trim()});
    let path = std::env::temp_dir().join(format!("chart-{namespace}.kubeconfig"));
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    path
}

/// Kills a child process when dropped, also after a failure.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
