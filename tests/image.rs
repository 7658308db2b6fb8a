//! The shipped image runs as the chart's Pod would: `hack/image build` (the Dockerfile's final stage,
//! built by buildah with the static binary in place of the build stage), run with runc under the Deployment's args, env and securityContext
//! (uid 65532, read-only root, no capabilities, no privilege escalation), a ServiceAccount token and
//! the cluster CA at the standard path, `KUBERNETES_SERVICE_HOST`/`PORT` pointing at the local
//! apiserver, host networking. With only the chart's RBAC it must pass `/readyz`, take the Lease and
//! bring a SmartClient to Ready.

mod common;

use std::path::Path;
use std::time::Duration;

use common::operator::{AuthServer, eventually, get_secret, secret_value, wait_for_ready};
use common::{apply, client, free_port, fresh_namespace, install_crds, repo_root, run_tool};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde_json::{Value, json};
use smart_operator::devserver::Dialect as DevDialect;

struct Container {
    id: String,
    child: std::process::Child,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = run_tool("runc", &["kill", &self.id, "KILL"]);
        let _ = self.child.wait();
        let _ = run_tool("runc", &["delete", "--force", &self.id]);
    }
}

struct Release(String);

impl Drop for Release {
    fn drop(&mut self) {
        let _ = run_tool("helm", &["uninstall", &self.0, "--namespace", &self.0]);
        let _ = run_tool("kubectl", &["delete", "namespace", &self.0, "--wait=false"]);
    }
}

/// The Pod template of the chart's Deployment.
fn pod_spec(deployment: &Deployment) -> &k8s_openapi::api::core::v1::PodSpec {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("the Deployment has a Pod template")
}

/// The image's OCI config (`Entrypoint`, `Cmd`, `Env`, `User`, ...) from the OCI layout at `oci`.
fn image_config(oci: &Path) -> Value {
    let read = |path: &Path| -> Value {
        serde_json::from_slice(
            &std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        )
        .unwrap()
    };
    let blob = |digest: &Value| {
        oci.join("blobs")
            .join(digest.as_str().unwrap().replace(':', "/"))
    };
    let index = read(&oci.join("index.json"));
    let manifest = read(&blob(&index["manifests"][0]["digest"]));
    read(&blob(&manifest["config"]["digest"]))["config"].clone()
}

/// The runc config for the Deployment's one container, as the kubelet would start it from `image`
/// (its config): the image's entrypoint unless the container sets `command`, the container's args
/// in place of the image's `Cmd`, the image's env and then the container's, its securityContext,
/// the ServiceAccount files in `sa_dir`, the host's network.
fn runc_config(
    bundle: &Path,
    image: &Value,
    deployment: &Deployment,
    sa_dir: &Path,
    env: Vec<String>,
    metrics: &str,
) -> Value {
    let (ok, _, err) = run_tool("runc", &["spec", "--bundle", bundle.to_str().unwrap()]);
    assert!(ok, "runc spec: {err}");
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    let pod = pod_spec(deployment);
    let container = &pod.containers[0];
    let context = container.security_context.clone().unwrap_or_default();
    let pod_context = pod.security_context.clone().unwrap_or_default();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    };
    let mut args = container
        .command
        .clone()
        .unwrap_or_else(|| strings(&image["Entrypoint"]));
    assert!(
        !args.is_empty(),
        "neither the image nor the chart names a command"
    );
    let container_args = container
        .args
        .clone()
        .unwrap_or_else(|| strings(&image["Cmd"]));
    for arg in container_args {
        args.push(if arg.starts_with("--metrics-address=") {
            format!("--metrics-address={metrics}")
        } else {
            arg
        });
    }
    let uid = context
        .run_as_user
        .or(pod_context.run_as_user)
        .expect("the chart sets runAsUser");
    let gid = context
        .run_as_group
        .or(pod_context.run_as_group)
        .unwrap_or(uid);
    let process = &mut config["process"];
    process["terminal"] = json!(false);
    process["args"] = json!(args);
    process["env"] = json!(
        strings(&image["Env"])
            .into_iter()
            .chain(env)
            .collect::<Vec<_>>()
    );
    process["user"] = json!({"uid": uid, "gid": gid});
    process["noNewPrivileges"] = json!(context.allow_privilege_escalation == Some(false));
    let dropped_all = context
        .capabilities
        .as_ref()
        .and_then(|c| c.drop.as_ref())
        .is_some_and(|d| d.iter().any(|c| c == "ALL"));
    assert!(dropped_all, "the chart drops every capability");
    for set in [
        "bounding",
        "effective",
        "inheritable",
        "permitted",
        "ambient",
    ] {
        process["capabilities"][set] = json!([]);
    }
    config["root"]["readonly"] = json!(context.read_only_root_filesystem == Some(true));
    config["root"]["path"] = json!("rootfs");
    config["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/var/run/secrets/kubernetes.io/serviceaccount",
        "type": "bind",
        "source": sa_dir,
        "options": ["rbind", "ro"],
    }));
    // Host networking: no network namespace.
    let namespaces = config["linux"]["namespaces"].as_array_mut().unwrap();
    namespaces.retain(|n| n["type"] != "network");
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_runs_as_the_charts_pod_and_does_its_job() {
    let root = repo_root();
    let (ok, out, err) = run_tool(root.join("hack/image").to_str().unwrap(), &["build"]);
    assert!(ok, "hack/image build failed:\n{out}\n{err}");

    let client = client().await;
    install_crds(&client).await;
    let namespace = fresh_namespace(&client, "image-run").await;
    let apps = fresh_namespace(&client, "image-run-apps").await;
    let watch = format!("operator.watchNamespaces={{{apps}}}");
    let chart = root.join("charts/smart-operator");
    let (ok, _, err) = run_tool(
        "helm",
        &[
            "install",
            &namespace,
            chart.to_str().unwrap(),
            "--namespace",
            &namespace,
            "--set",
            "crds.enabled=false",
            "--set",
            &watch,
        ],
    );
    let _release = Release(namespace.clone());
    assert!(ok, "helm install: {err}");
    let name = format!("{namespace}-smart-operator");
    let deployment = Api::<Deployment>::namespaced(client.clone(), &namespace)
        .get(&name)
        .await
        .unwrap();

    // What the kubelet would mount and set.
    let work = root.join("target/image-run").join(&namespace);
    let sa_dir = work.join("serviceaccount");
    std::fs::create_dir_all(&sa_dir).unwrap();
    let (ok, token, err) = run_tool(
        "kubectl",
        &["create", "token", &name, "-n", &namespace, "--duration=15m"],
    );
    assert!(ok, "kubectl create token: {err}");
    std::fs::write(sa_dir.join("token"), token.trim()).unwrap();
    std::fs::write(sa_dir.join("namespace"), &namespace).unwrap();
    std::fs::copy(
        root.join("target/control-plane/pki/ca.crt"),
        sa_dir.join("ca.crt"),
    )
    .unwrap();
    let (ok, server, err) = run_tool(
        "kubectl",
        &[
            "config",
            "view",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ],
    );
    assert!(ok, "kubectl config view: {err}");
    let port = server.trim().rsplit(':').next().unwrap().to_owned();
    let pod_name = format!("{name}-pod");
    let mut env = vec![
        "KUBERNETES_SERVICE_HOST=127.0.0.1".to_owned(),
        format!("KUBERNETES_SERVICE_PORT={port}"),
    ];
    let container = &pod_spec(&deployment).containers[0];
    for var in container.env.clone().unwrap_or_default() {
        let value = match (
            &var.value,
            var.value_from.as_ref().and_then(|f| f.field_ref.as_ref()),
        ) {
            (Some(value), _) => value.clone(),
            (None, Some(field)) if field.field_path == "metadata.namespace" => namespace.clone(),
            (None, Some(field)) if field.field_path == "metadata.name" => pod_name.clone(),
            _ => panic!("an env var the test cannot provide: {var:?}"),
        };
        env.push(format!("{}={value}", var.name));
    }
    let metrics = format!("127.0.0.1:{}", free_port());

    let bundle = work.join("bundle");
    let _ = std::fs::remove_dir_all(&bundle);
    std::fs::create_dir_all(&bundle).unwrap();
    let (ok, _, err) = run_tool(
        "cp",
        &[
            "-a",
            root.join("target/image/rootfs").to_str().unwrap(),
            bundle.join("rootfs").to_str().unwrap(),
        ],
    );
    assert!(ok, "copying the image's root filesystem: {err}");
    let image = image_config(&root.join("target/image/oci"));
    assert_eq!(
        image["User"], "65532:65532",
        "the Dockerfile's USER: {image}"
    );
    let config = runc_config(&bundle, &image, &deployment, &sa_dir, env, &metrics);
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();
    let log_path = work.join("operator.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let id = namespace.clone();
    let _container = Container {
        child: std::process::Command::new("runc")
            .args(["run", "--bundle", bundle.to_str().unwrap(), &id])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("start runc"),
        id,
    };
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let ready = format!("http://{metrics}/readyz");
    eventually("/readyz answers 200", Duration::from_secs(30), || async {
        let response = reqwest::get(&ready).await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    eventually(
        "the container holds the chart's Lease",
        Duration::from_secs(30),
        || async {
            let lease = leases.get_opt(&name).await.ok().flatten()?;
            lease
                .spec?
                .holder_identity?
                .starts_with(&pod_name)
                .then_some(())
        },
    )
    .await;

    let server = AuthServer::start(DevDialect::S4s, &[]).await;
    apply(&client, Some(&apps), json!({"apiVersion": "smart.fhir.dev/v1alpha1", "kind": "SmartAuthServer",
        "metadata": {"name": "dev"}, "spec": {"dialect": "S4S", "fhirBaseUrl": server.fhir_base_url()}}))
    .await
    .unwrap();
    apply(&client, Some(&apps), json!({"apiVersion": "smart.fhir.dev/v1alpha1", "kind": "SmartClient",
        "metadata": {"name": "app"},
        "spec": {"authServerRef": {"name": "dev"}, "redirectUris": ["https://app.example.org/cb"], "scopes": ["launch/patient"]}}))
    .await
    .unwrap();
    wait_for_ready(&client, &apps, "app", "True", "Ready").await;
    let secret = get_secret(&client, &apps, "app-smart-client")
        .await
        .unwrap();
    assert!(secret_value(&secret, "client_id").is_some());
    let log_text = read_log();
    assert!(
        !log_text.to_lowercase().contains("forbidden"),
        "the container was refused something; log {}:\n{log_text}",
        log_path.display()
    );
    let _ = run_tool("kubectl", &["delete", "namespace", &apps, "--wait=false"]);
}
