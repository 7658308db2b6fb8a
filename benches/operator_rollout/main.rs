//! The operator at scale against the real control plane and smart-dev-server (issue 6), with the floor a
//! controller-less client sets in the same run. Run it with `hack/bench` (or `hack/bench --quick`),
//! which builds the binaries, brings up the control plane and writes `target/bench/`.
//!
//! Per dialect and size N, in one run:
//! 1. floor: the harness itself creates N SmartClients and, with the operator's concurrency, registers
//!    each (plus debug token mint and introspection for S4S), applies its Secret and its status;
//! 2. rollout: the operator binary (a child process) gets N SmartClients created at once; a watcher
//!    records when each first shows Ready=True; auth-server requests from `/_admin/stats`, apiserver
//!    requests by verb from the apiserver's own `/metrics`, operator CPU and peak RSS from `/proc`;
//! 3. idle: a quiet window with the N clients: writes seen by watches on the namespace, apiserver
//!    requests by verb, auth-server calls;
//! 4. restart: a new operator process with N healthy clients: time until it planned `Wait` for every
//!    client (its debug log), registrations and token mints made;
//! 5. unrelated load: Secrets the operator does not manage in the watched namespace; RSS of a restarted
//!    operator with and without them.
//!
//! Exit status: 0 when the harness worked and the hard correctness targets held (no idle writes, no
//! restart registrations or mints); 1 when a hard target was missed; 2 when the harness failed.
//! Timing targets are reported as pass/miss only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingAdmissionPolicy, MutatingAdmissionPolicyBinding, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event as KubeEvent;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use smart_operator::authserver::{
    AuthServer, AuthServerClient, ClientCredentials, DebugTokenRequest, HttpClient, HttpSettings,
    ServerEndpoints, discover,
};
use smart_operator::controller::conditions::set_condition;
use smart_operator::controller::desired::{desired_metadata, metadata_hash};
use smart_operator::controller::secret::{
    PublicValues, StoredCredentials, StoredToken, render_data, render_secret, secret_name,
};
use smart_operator::crd::{
    DebugTokenStatus, Dialect, SmartAuthServer, SmartClient, SmartClientStatus, condition,
};
use smart_operator::devserver::{
    DevServer, DevServerConfig, Dialect as DevDialect, RunningDevServer,
};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type Res<T> = Result<T, BoxError>;

pub(crate) const IAT: &str = "bench-initial-access-token";
pub(crate) const FIELD_MANAGER: &str = "smart-operator";
pub(crate) const HARNESS_MANAGER: &str = "smart-operator-bench";
pub(crate) const WRITE_VERBS: [&str; 6] = [
    "POST",
    "PUT",
    "PATCH",
    "APPLY",
    "DELETE",
    "DELETECOLLECTION",
];
/// Resources the operator reads or writes in a scenario; everything else in apiserver metrics is
/// other clients (the controller-manager, other tests sharing the control plane).
pub(crate) const OPERATOR_RESOURCES: [&str; 5] = [
    "smartclients",
    "secrets",
    "events",
    "smartauthservers",
    "clustersmartauthservers",
];

pub(crate) fn bail<T>(message: impl Into<String>) -> Res<T> {
    Err(message.into().into())
}

mod bench;
mod cluster;
mod counts;
mod floor;
mod options;
mod process;
mod report;
mod watch;

use bench::*;
use cluster::*;
use counts::*;
use floor::*;
use options::*;
use process::*;
use report::*;
use watch::*;

async fn run(options: Options) -> Res<bool> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if std::env::var_os("KUBECONFIG").is_none() {
        return bail(
            "KUBECONFIG is not set: run through hack/bench, or eval \"$(hack/control-plane up)\" first",
        );
    }
    if !options.operator.exists() {
        return bail(format!(
            "no operator binary at {} (cargo build --release)",
            options.operator.display()
        ));
    }
    let client = Client::try_default().await?;
    client.apiserver_version().await?;
    install_crds(&client).await?;
    let logs = options.out.join("logs");
    std::fs::create_dir_all(&logs)?;
    let (operator_proxy, operator_kubeconfig, floor_proxy) = if options.direct {
        (None, None, None)
    } else {
        let operator_proxy = CountingProxy::start(client.clone()).await?;
        let kubeconfig = options.out.join("operator-proxy.kubeconfig");
        operator_proxy.write_kubeconfig(&kubeconfig)?;
        let floor_proxy = CountingProxy::start(client.clone()).await?;
        (Some(operator_proxy), Some(kubeconfig), Some(floor_proxy))
    };
    let started = Instant::now();
    let started_at = Timestamp::now();
    let load_at_start = loadavg();
    let mut bench = Bench {
        options: options.clone(),
        client,
        http: reqwest::Client::new(),
        ticks: clock_ticks(),
        logs,
        hard_failures: Vec::new(),
        operator_proxy,
        operator_kubeconfig,
        floor_proxy,
    };
    say(format!(
        "sizes {:?}, dialects {:?}, idle {:?}, {} unrelated Secrets, load {load_at_start}",
        options.sizes, options.dialects, options.idle, options.unrelated
    ));
    // Taken before the scenarios: the binaries were built from this tree, which may change during a
    // long run.
    let revision = Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut scenarios = Vec::new();
    let mut errors = Vec::new();
    for &n in &options.sizes {
        for &dialect in &options.dialects {
            match bench.scenario(dialect, n).await {
                Ok(result) => scenarios.push(result),
                Err(e) => {
                    say(format!("{} N={n} failed: {e}", dialect_name(dialect)));
                    errors.push(format!("{} N={n}: {e}", dialect_name(dialect)));
                }
            }
        }
    }
    let targets = targets(&scenarios);
    let report = json!({
        "name": options.name,
        "started_at": started_at.to_string(),
        "duration_s": started.elapsed().as_secs_f64(),
        "machine": machine(),
        "revision": revision,
        "load_at_start": load_at_start,
        "load_at_end": loadavg(),
        "options": {
            "sizes": options.sizes,
            "dialects": options.dialects.iter().map(|d| dialect_name(*d)).collect::<Vec<_>>(),
            "idle_s": options.idle.as_secs_f64(),
            "unrelated": options.unrelated,
            "concurrency": options.concurrency,
            "create_concurrency": options.create_concurrency,
            "operator": options.operator.display().to_string(),
            "counting_proxy": !options.direct,
        },
        "scenarios": scenarios,
        "targets": targets.iter().map(|t| json!({
            "name": t.name, "value": t.value, "target": t.target, "pass": t.pass, "hard": t.hard,
        })).collect::<Vec<_>>(),
        "hard_failures": bench.hard_failures,
        "errors": errors,
    });
    std::fs::create_dir_all(&options.out)?;
    let json_path = options.out.join(format!("{}.json", options.name));
    let md_path = options.out.join(format!("{}.md", options.name));
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)?;
    let mut md = markdown(&report, &targets);
    if !errors.is_empty() {
        md.push_str("\n## Harness errors\n\n");
        for e in &errors {
            let _ = writeln!(md, "- {e}");
        }
    }
    std::fs::write(&md_path, &md)?;
    println!("{md}");
    say(format!(
        "report: {} and {} ({:.0} s)",
        md_path.display(),
        json_path.display(),
        started.elapsed().as_secs_f64()
    ));
    if !errors.is_empty() {
        return Err(format!("{} scenario(s) failed: {}", errors.len(), errors.join("; ")).into());
    }
    for failure in &bench.hard_failures {
        say(format!("HARD TARGET MISSED: {failure}"));
    }
    Ok(bench.hard_failures.is_empty())
}

fn main() -> std::process::ExitCode {
    let options = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            say(format!("error: {e}"));
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(options)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            say(format!("error: {e}"));
            std::process::ExitCode::from(2)
        }
    }
}
