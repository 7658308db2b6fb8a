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

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

const IAT: &str = "bench-initial-access-token";
const FIELD_MANAGER: &str = "smart-operator";
const HARNESS_MANAGER: &str = "smart-operator-bench";
const WRITE_VERBS: [&str; 6] = [
    "POST",
    "PUT",
    "PATCH",
    "APPLY",
    "DELETE",
    "DELETECOLLECTION",
];
/// Resources the operator reads or writes in a scenario; everything else in apiserver metrics is
/// other clients (the controller-manager, other tests sharing the control plane).
const OPERATOR_RESOURCES: [&str; 5] = [
    "smartclients",
    "secrets",
    "events",
    "smartauthservers",
    "clustersmartauthservers",
];

fn bail<T>(message: impl Into<String>) -> Res<T> {
    Err(message.into().into())
}

// -------------------------------------------------------------------------------------------------
// Options

#[derive(Clone, Debug)]
struct Options {
    quick: bool,
    sizes: Vec<usize>,
    dialects: Vec<Dialect>,
    idle: Duration,
    unrelated: usize,
    concurrency: usize,
    create_concurrency: usize,
    operator: PathBuf,
    out: PathBuf,
    name: String,
    keep: bool,
    /// Connect the operator and the floor straight to the apiserver instead of through the counting
    /// proxy (exact request counts are then not available).
    direct: bool,
}

fn parse_duration(text: &str) -> Res<Duration> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| text.split_at(i))
        .unwrap_or((text, "s"));
    let value: f64 = number.parse()?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" | "" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return bail(format!("not a duration: {text} (use 10s, 5m, 1h)")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_dialect(text: &str) -> Res<Dialect> {
    match text.to_ascii_lowercase().as_str() {
        "rfc7591" => Ok(Dialect::Rfc7591),
        "s4s" => Ok(Dialect::S4s),
        "s4slegacy" | "s4s-legacy" => Ok(Dialect::S4sLegacy),
        other => bail(format!(
            "unknown dialect {other} (rfc7591, s4s, s4s-legacy)"
        )),
    }
}

const USAGE: &str = "operator_rollout [--quick] [--sizes 100,1000,5000] [--dialects rfc7591,s4s] \
[--idle 5m] [--unrelated 10000] [--concurrency 32] [--create-concurrency 64] [--operator PATH] \
[--out target/bench] [--name full|quick] [--keep] [--direct]";

fn parse_options() -> Res<Options> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` appends --bench to the arguments of harness = false targets.
    args.retain(|a| a != "--bench");
    let quick = args.iter().any(|a| a == "--quick");
    let mut options = Options {
        quick,
        sizes: if quick {
            vec![50]
        } else {
            vec![100, 1000, 5000]
        },
        dialects: vec![Dialect::Rfc7591, Dialect::S4s],
        idle: Duration::from_secs(if quick { 10 } else { 300 }),
        unrelated: if quick { 500 } else { 10_000 },
        concurrency: 32,
        create_concurrency: 64,
        operator: PathBuf::from(env!("CARGO_BIN_EXE_smart-operator")),
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench"),
        name: if quick { "quick" } else { "full" }.into(),
        keep: false,
        direct: false,
    };
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].clone();
        let mut value = || -> Res<String> {
            i += 1;
            args.get(i)
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value").into())
        };
        match flag.as_str() {
            "--quick" => {}
            "--keep" => options.keep = true,
            "--direct" => options.direct = true,
            "--sizes" => {
                options.sizes = value()?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()?
            }
            "--dialects" => {
                options.dialects = value()?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(parse_dialect)
                    .collect::<Res<_>>()?
            }
            "--idle" => options.idle = parse_duration(&value()?)?,
            "--unrelated" => options.unrelated = value()?.parse()?,
            "--concurrency" => options.concurrency = value()?.parse()?,
            "--create-concurrency" => options.create_concurrency = value()?.parse()?,
            "--operator" => options.operator = PathBuf::from(value()?),
            "--out" => options.out = PathBuf::from(value()?),
            "--name" => options.name = value()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return bail(format!("unknown argument {other}\nusage: {USAGE}")),
        }
        i += 1;
    }
    if options.sizes.is_empty() || options.dialects.is_empty() {
        return bail("--sizes and --dialects must name at least one value");
    }
    Ok(options)
}

fn say(message: impl AsRef<str>) {
    eprintln!("[bench] {}", message.as_ref());
}

// -------------------------------------------------------------------------------------------------
// Machine and processes

fn read_proc(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn loadavg() -> String {
    read_proc("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn meminfo_kib(key: &str) -> u64 {
    read_proc("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn machine() -> Value {
    let cpu = read_proc("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "mem_total_mib": meminfo_kib("MemTotal:") / 1024,
        "mem_available_mib": meminfo_kib("MemAvailable:") / 1024,
        "kernel": read_proc("/proc/sys/kernel/osrelease").trim(),
    })
}

/// CPU seconds (user + system) of a process so far.
fn cpu_seconds(pid: u32, ticks: f64) -> f64 {
    let stat = read_proc(&format!("/proc/{pid}/stat"));
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let stime: f64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (utime + stime) / ticks
}

/// A `Vm*:` line of /proc/PID/status, in KiB.
fn vm_kib(pid: u32, key: &str) -> u64 {
    read_proc(&format!("/proc/{pid}/status"))
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The operator binary as a child process, logging to a file.
struct OperatorProcess {
    child: Child,
    pid: u32,
    log_path: PathBuf,
    started: Instant,
    metrics_url: Option<String>,
    log_offset: u64,
    log_rest: String,
}

impl OperatorProcess {
    fn start(
        options: &Options,
        namespace: &str,
        log: &str,
        log_path: PathBuf,
        kubeconfig: Option<&Path>,
    ) -> Res<Self> {
        let file = std::fs::File::create(&log_path)?;
        let concurrency = options.concurrency.to_string();
        let args = [
            "run",
            "--watch-namespace",
            namespace,
            "--operator-namespace",
            namespace,
            "--metrics-address",
            "127.0.0.1:0",
            "--watch-cluster-servers",
            "false",
            "--concurrency",
            &concurrency,
            "--log",
            log,
        ];
        let started = Instant::now();
        let mut command = Command::new(&options.operator);
        command.args(args);
        if let Some(kubeconfig) = kubeconfig {
            command.env("KUBECONFIG", kubeconfig);
        }
        let child = command
            .stdout(file.try_clone()?)
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", options.operator.display()))?;
        Ok(Self {
            pid: child.id(),
            child,
            log_path,
            started,
            metrics_url: None,
            log_offset: 0,
            log_rest: String::new(),
        })
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// New complete log lines since the last call.
    fn new_log_lines(&mut self) -> Vec<String> {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut file) = std::fs::File::open(&self.log_path) else {
            return Vec::new();
        };
        if file.seek(SeekFrom::Start(self.log_offset)).is_err() {
            return Vec::new();
        }
        let mut buffer = Vec::new();
        let _ = file.read_to_end(&mut buffer);
        self.log_offset += buffer.len() as u64;
        self.log_rest.push_str(&String::from_utf8_lossy(&buffer));
        let mut lines: Vec<String> = self.log_rest.split('\n').map(str::to_owned).collect();
        self.log_rest = lines.pop().unwrap_or_default();
        lines
    }

    /// Waits for the "serving /metrics" line and remembers the address.
    async fn wait_for_metrics(&mut self) -> Res<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let text_of = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
        loop {
            let log = text_of(&self.log_path);
            if let Some(address) = log
                .lines()
                .find(|l| l.contains("serving /metrics"))
                .and_then(|line| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix("address="))
                })
            {
                let url = format!("http://{address}/metrics");
                self.metrics_url = Some(url.clone());
                return Ok(url);
            }
            if !self.alive() {
                return bail(format!(
                    "the operator exited at start:\n{}",
                    self.log_tail()
                ));
            }
            if Instant::now() > deadline {
                return bail(format!(
                    "the operator logged no metrics address within 30s:\n{}",
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn cpu(&self, ticks: f64) -> f64 {
        cpu_seconds(self.pid, ticks)
    }

    fn peak_rss_kib(&self) -> u64 {
        vm_kib(self.pid, "VmHWM:")
    }

    fn rss_kib(&self) -> u64 {
        vm_kib(self.pid, "VmRSS:")
    }

    /// SIGTERM, then wait; SIGKILL after 20 s.
    async fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        say(format!(
            "operator {} did not stop within 20s of SIGTERM; killing it",
            self.pid
        ));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `name{labels} value` lines of one metric family from Prometheus text.
fn prometheus_samples(text: &str, family: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(family) else {
            continue;
        };
        let (labels, value) = if let Some(rest) = rest.strip_prefix('{') {
            match rest.rsplit_once('}') {
                Some((labels, value)) => (labels, value),
                None => continue,
            }
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue;
        };
        let Ok(value) = value.trim().split(' ').next().unwrap_or("").parse::<f64>() else {
            continue;
        };
        let mut map = BTreeMap::new();
        for pair in labels.split("\",") {
            if let Some((k, v)) = pair.split_once("=\"") {
                map.insert(k.trim().to_owned(), v.trim_end_matches('"').to_owned());
            }
        }
        out.push((map, value));
    }
    out
}

async fn operator_reconciles(http: &reqwest::Client, url: &str) -> BTreeMap<String, f64> {
    let text = match http.get(url).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => return BTreeMap::new(),
    };
    let mut out = BTreeMap::new();
    for (labels, value) in prometheus_samples(&text, "smart_operator_reconcile_total") {
        if labels.get("controller").map(String::as_str) == Some("smartclient") {
            let key = labels.get("result").cloned().unwrap_or_default();
            *out.entry(key).or_default() += value;
        }
    }
    for (labels, value) in prometheus_samples(&text, "smart_operator_authserver_requests_total") {
        let key = format!(
            "authserver:{}:{}",
            labels.get("operation").cloned().unwrap_or_default(),
            labels.get("status").cloned().unwrap_or_default()
        );
        *out.entry(key).or_default() += value;
    }
    out
}

// -------------------------------------------------------------------------------------------------
// Counters: apiserver /metrics, dev server /_admin/stats, watches on the namespace

/// `apiserver_request_total` summed by (verb, resource[/subresource]).
#[derive(Clone, Default)]
struct ApiCounts(BTreeMap<(String, String), f64>);

impl ApiCounts {
    async fn scrape(client: &Client) -> Res<Self> {
        let request = axum::http::Request::get("/metrics").body(Vec::new())?;
        let text = client.request_text(request).await?;
        let mut counts = BTreeMap::new();
        for (labels, value) in prometheus_samples(&text, "apiserver_request_total") {
            let resource = labels.get("resource").cloned().unwrap_or_default();
            if resource.is_empty() {
                continue; // non-resource URLs (/metrics, /healthz, discovery)
            }
            let sub = labels.get("subresource").cloned().unwrap_or_default();
            let resource = if sub.is_empty() {
                resource
            } else {
                format!("{resource}/{sub}")
            };
            let verb = labels.get("verb").cloned().unwrap_or_default();
            *counts.entry((verb, resource)).or_default() += value;
        }
        Ok(Self(counts))
    }

    fn minus(&self, earlier: &ApiCounts) -> ApiCounts {
        let mut out = BTreeMap::new();
        for (key, value) in &self.0 {
            let diff = value - earlier.0.get(key).copied().unwrap_or(0.0);
            if diff > 0.0 {
                out.insert(key.clone(), diff);
            }
        }
        ApiCounts(out)
    }

    fn operator_resource(resource: &str) -> bool {
        let base = resource.split('/').next().unwrap_or("");
        OPERATOR_RESOURCES.contains(&base)
    }

    /// By verb, only resources the operator touches.
    fn by_verb(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for ((verb, resource), value) in &self.0 {
            if Self::operator_resource(resource) {
                *out.entry(verb.clone()).or_default() += *value as u64;
            }
        }
        out
    }

    fn by_resource_verb(&self) -> BTreeMap<String, u64> {
        self.0
            .iter()
            .filter(|((_, r), _)| Self::operator_resource(r))
            .map(|((v, r), n)| (format!("{v} {r}"), *n as u64))
            .collect()
    }

    fn writes(&self) -> u64 {
        self.by_verb()
            .iter()
            .filter(|(v, _)| WRITE_VERBS.contains(&v.as_str()))
            .map(|(_, n)| n)
            .sum()
    }

    /// Writes to other resources (leases excepted, which the controller-manager renews every few
    /// seconds): a sign that other clients shared the control plane during the window.
    fn foreign_writes(&self) -> u64 {
        self.0
            .iter()
            .filter(|((v, r), _)| {
                WRITE_VERBS.contains(&v.as_str())
                    && !Self::operator_resource(r)
                    && !r.starts_with("leases")
            })
            .map(|(_, n)| *n as u64)
            .sum()
    }

    fn total(&self) -> u64 {
        self.by_verb().values().sum()
    }

    fn subtract(&mut self, verb: &str, resource: &str, count: f64) {
        if let Some(value) = self.0.get_mut(&(verb.to_owned(), resource.to_owned())) {
            *value = (*value - count).max(0.0);
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "by_verb": self.by_verb(),
            "by_resource": self.by_resource_verb(),
            "writes": self.writes(),
            "total": self.total(),
            "foreign_writes": self.foreign_writes(),
        })
    }
}

/// A plain-HTTP proxy on loopback in front of the apiserver that counts every request by (verb,
/// resource): the exact requests of one client (the operator, or the floor), where the apiserver's
/// own metrics also count everyone else on a shared control plane. Requests go upstream through the
/// harness's kube client (its TLS client certificate); watch responses are streamed through.
struct CountingProxy {
    address: std::net::SocketAddr,
    counts: Arc<Mutex<BTreeMap<(String, String), f64>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct ProxyState {
    upstream: Client,
    counts: Arc<Mutex<BTreeMap<(String, String), f64>>>,
}

/// apiserver-style verb and `resource[/subresource]` of a request.
fn classify(
    method: &axum::http::Method,
    uri: &axum::http::Uri,
    headers: &axum::http::HeaderMap,
) -> (String, String) {
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let rest: &[&str] = match segments.first() {
        Some(&"api") if segments.len() >= 2 => &segments[2..],
        Some(&"apis") if segments.len() >= 3 => &segments[3..],
        _ => return (method.as_str().to_owned(), String::new()),
    };
    let rest = if rest.len() >= 3 && rest[0] == "namespaces" {
        &rest[2..]
    } else {
        rest
    };
    let resource = rest.first().copied().unwrap_or("");
    let named = rest.len() >= 2;
    let resource = match rest.get(2) {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_owned(),
    };
    let query = uri.query().unwrap_or("");
    let watch = query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1");
    let apply = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/apply-patch"));
    let verb = match method.as_str() {
        "GET" if watch => "WATCH",
        "GET" if !named => "LIST",
        "PATCH" if apply => "APPLY",
        "DELETE" if !named => "DELETECOLLECTION",
        other => other,
    };
    (verb.to_owned(), resource)
}

async fn forward(
    axum::extract::State(state): axum::extract::State<ProxyState>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let (parts, body) = request.into_parts();
    let key = classify(&parts.method, &parts.uri, &parts.headers);
    *state.counts.lock().unwrap().entry(key).or_default() += 1.0;
    let bytes = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(bytes) => bytes,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let mut upstream = axum::http::Request::builder()
        .method(parts.method)
        .uri(path);
    for (name, value) in &parts.headers {
        if name != header::HOST && name != header::CONNECTION && name != header::CONTENT_LENGTH {
            upstream = upstream.header(name, value);
        }
    }
    let upstream = match upstream.body(kube::client::Body::from(bytes.to_vec())) {
        Ok(request) => request,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    match state.upstream.send(upstream).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            parts.headers.remove(header::TRANSFER_ENCODING);
            parts.headers.remove(header::CONNECTION);
            axum::response::Response::from_parts(parts, axum::body::Body::new(body))
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

impl CountingProxy {
    async fn start(upstream: Client) -> Res<Self> {
        let counts: Arc<Mutex<BTreeMap<(String, String), f64>>> = Arc::default();
        let state = ProxyState {
            upstream,
            counts: counts.clone(),
        };
        let app = axum::Router::new().fallback(forward).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                say(format!("counting proxy stopped: {e}"));
            }
        });
        Ok(Self {
            address,
            counts,
            task,
        })
    }

    fn counts(&self) -> ApiCounts {
        ApiCounts(self.counts.lock().unwrap().clone())
    }

    /// A kubeconfig that points at the proxy (plain HTTP on loopback, no credentials).
    fn write_kubeconfig(&self, path: &Path) -> Res<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: bench-proxy\n  cluster:\n    server: http://{}\n\
             users:\n- name: bench-proxy\n  user: {{}}\ncontexts:\n- name: bench-proxy\n  context:\n    \
             cluster: bench-proxy\n    user: bench-proxy\ncurrent-context: bench-proxy\n",
            self.address
        );
        std::fs::write(path, text)?;
        Ok(())
    }

    /// A kube client that goes through the proxy.
    fn client(&self) -> Res<Client> {
        let config = kube::Config::new(format!("http://{}", self.address).parse()?);
        Ok(Client::try_from(config)?)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Requests per endpoint of the dev server.
#[derive(Clone, Default)]
struct AuthCounts(BTreeMap<String, u64>);

impl AuthCounts {
    async fn fetch(http: &reqwest::Client, server: &RunningDevServer) -> Res<Self> {
        let stats: Value = http
            .get(format!("{}/_admin/stats", server.base_url()))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let mut out = BTreeMap::new();
        if let Some(endpoints) = stats["endpoints"].as_object() {
            for (name, value) in endpoints {
                out.insert(name.clone(), value["total"].as_u64().unwrap_or(0));
            }
        }
        Ok(Self(out))
    }

    fn minus(&self, earlier: &AuthCounts) -> AuthCounts {
        AuthCounts(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v - earlier.0.get(k).copied().unwrap_or(0)))
                .filter(|(_, v)| *v > 0)
                .collect(),
        )
    }

    fn get(&self, endpoint: &str) -> u64 {
        self.0.get(endpoint).copied().unwrap_or(0)
    }

    fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Calls other than debug token (re-)mints and the introspection that follows each.
    fn excluding_mints(&self) -> u64 {
        self.total() - self.get("debug_token") - self.get("introspect")
    }

    fn to_json(&self) -> Value {
        json!({"total": self.total(), "by_endpoint": self.0})
    }
}

/// Watches on one namespace: changes seen per kind, and when each SmartClient first was Ready.
struct NamespaceWatch {
    changes: Arc<BTreeMap<&'static str, AtomicU64>>,
    changed_names: Arc<Mutex<Vec<String>>>,
    ready: Arc<Mutex<HashMap<String, Instant>>>,
    synced: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl NamespaceWatch {
    async fn start(client: &Client, namespace: &str) -> Res<Self> {
        let changes: Arc<BTreeMap<&'static str, AtomicU64>> = Arc::new(
            ["smartclients", "secrets", "events"]
                .into_iter()
                .map(|k| (k, AtomicU64::new(0)))
                .collect(),
        );
        let watch = Self {
            changes,
            changed_names: Arc::default(),
            ready: Arc::default(),
            synced: Arc::new(AtomicU64::new(0)),
            tasks: Vec::new(),
        };
        let mut watch = watch;
        let smartclients: Api<SmartClient> = Api::namespaced(client.clone(), namespace);
        let ready = watch.ready.clone();
        watch
            .tasks
            .push(watch.spawn(smartclients, "smartclients", move |object| {
                let is_ready = object
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.iter().find(|c| c.type_ == condition::READY))
                    .is_some_and(|c| c.status == "True");
                if is_ready {
                    let mut ready = ready.lock().unwrap();
                    ready.entry(object.name_any()).or_insert_with(Instant::now);
                }
            }));
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        watch
            .tasks
            .push(watch.spawn(secrets, "secrets", |_: &Secret| {}));
        let events: Api<KubeEvent> = Api::namespaced(client.clone(), namespace);
        watch
            .tasks
            .push(watch.spawn(events, "events", |_: &KubeEvent| {}));
        let deadline = Instant::now() + Duration::from_secs(30);
        while watch.synced.load(Ordering::SeqCst) < 3 {
            if Instant::now() > deadline {
                return bail("the namespace watches did not sync within 30s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(watch)
    }

    fn spawn<K>(
        &self,
        api: Api<K>,
        kind: &'static str,
        on_object: impl Fn(&K) + Send + 'static,
    ) -> tokio::task::JoinHandle<()>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
        K::DynamicType: Default,
    {
        let changes = self.changes.clone();
        let names = self.changed_names.clone();
        let synced = self.synced.clone();
        tokio::spawn(async move {
            let mut first_sync = true;
            let stream = watcher(api, watcher::Config::default());
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::InitApply(object)) => on_object(&object),
                    Ok(watcher::Event::InitDone) => {
                        if first_sync {
                            first_sync = false;
                            synced.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Ok(watcher::Event::Apply(object)) | Ok(watcher::Event::Delete(object)) => {
                        changes[kind].fetch_add(1, Ordering::SeqCst);
                        {
                            let mut names = names.lock().unwrap();
                            if names.len() < 10_000 {
                                names.push(format!("{kind}/{}", object.name_any()));
                            }
                        }
                        on_object(&object);
                    }
                    Ok(watcher::Event::Init) => {}
                    Err(e) => {
                        say(format!("watch on {kind}: {e}"));
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        })
    }

    fn snapshot(&self) -> (BTreeMap<String, u64>, usize) {
        (
            self.changes
                .iter()
                .map(|(k, v)| (k.to_string(), v.load(Ordering::SeqCst)))
                .collect(),
            self.changed_names.lock().unwrap().len(),
        )
    }

    /// Changes since a snapshot, per kind, with a sample of what changed.
    fn since(&self, earlier: &(BTreeMap<String, u64>, usize)) -> Value {
        let (now, names_now) = self.snapshot();
        let by_kind: BTreeMap<String, u64> = now
            .iter()
            .map(|(k, v)| (k.clone(), v - earlier.0.get(k).copied().unwrap_or(0)))
            .collect();
        let total: u64 = by_kind.values().sum();
        let names = self.changed_names.lock().unwrap();
        let mut sample: Vec<String> = names[earlier.1.min(names_now)..names_now.min(names.len())]
            .iter()
            .take(10)
            .cloned()
            .collect();
        sample.dedup();
        json!({"total": total, "by_kind": by_kind, "sample": sample})
    }

    fn ready_count(&self) -> usize {
        self.ready.lock().unwrap().len()
    }

    fn ready_times(&self) -> HashMap<String, Instant> {
        self.ready.lock().unwrap().clone()
    }
}

impl Drop for NamespaceWatch {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

// -------------------------------------------------------------------------------------------------
// Objects

fn dev_dialect(dialect: Dialect) -> DevDialect {
    match dialect {
        Dialect::Rfc7591 => DevDialect::Rfc7591,
        Dialect::S4s => DevDialect::S4s,
        Dialect::S4sLegacy => DevDialect::S4sLegacy,
    }
}

fn dialect_name(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Rfc7591 => "RFC7591",
        Dialect::S4s => "S4S",
        Dialect::S4sLegacy => "S4SLegacy",
    }
}

fn client_name(i: usize) -> String {
    format!("bench-{i:05}")
}

fn smart_client(i: usize, dialect: Dialect) -> Res<SmartClient> {
    let mut spec = json!({
        "authServerRef": {"name": "dev"},
        "clientName": format!("Bench client {i}"),
        "redirectUris": [format!("https://app-{i}.example.org/callback")],
        "scopes": ["openid", "fhirUser", "launch/patient", "patient/Observation.rs", "offline_access"],
    });
    if dialect == Dialect::S4sLegacy {
        spec["clientId"] = json!(format!("bench-{i:05}"));
    }
    if dialect != Dialect::Rfc7591 {
        spec["debugTokens"] = json!([{
            "name": "daniel", "user": "daniel-adams", "patientId": "smart-1288992", "lifetime": "1h"
        }]);
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "smart.fhir.dev/v1alpha1",
        "kind": "SmartClient",
        "metadata": {"name": client_name(i)},
        "spec": spec,
    }))?)
}

async fn install_crds(client: &Client) -> Res<()> {
    let params = PatchParams::apply(HARNESS_MANAGER).force();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in smart_operator::crd::all_crds() {
        let name = crd.name_any();
        crds.patch(&name, &params, &Patch::Apply(&crd)).await?;
    }
    for crd in smart_operator::crd::all_crds() {
        let name = crd.name_any();
        let established = kube::runtime::wait::await_condition(
            crds.clone(),
            &name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        tokio::time::timeout(Duration::from_secs(60), established)
            .await
            .map_err(|_| format!("CRD {name} not Established within 60s"))??;
    }
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    for p in smart_operator::crd::admission::all_policies() {
        policies
            .patch(&p.policy.name_any(), &params, &Patch::Apply(&p.policy))
            .await?;
        bindings
            .patch(&p.binding.name_any(), &params, &Patch::Apply(&p.binding))
            .await?;
    }
    // As the chart installs it on Kubernetes 1.36+: new SmartClients carry the finalizer already.
    let finalizer = smart_operator::crd::admission::finalizer_policy();
    Api::<MutatingAdmissionPolicy>::all(client.clone())
        .patch(
            &finalizer.policy.name_any(),
            &params,
            &Patch::Apply(&finalizer.policy),
        )
        .await?;
    Api::<MutatingAdmissionPolicyBinding>::all(client.clone())
        .patch(
            &finalizer.binding.name_any(),
            &params,
            &Patch::Apply(&finalizer.binding),
        )
        .await?;
    // On a fresh control plane creates are refused (503) for a second or two until the apiserver has
    // the CRD schema the finalizer policy needs: wait until a dry-run create comes back finalized.
    let probe = smart_client(0, Dialect::Rfc7591)?;
    let api: Api<SmartClient> = Api::namespaced(client.clone(), "default");
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match api.create(&dry_run, &probe).await {
            Ok(created) if !created.finalizers().is_empty() => return Ok(()),
            outcome if Instant::now() > deadline => {
                return bail(format!(
                    "SmartClients are not created with the finalizer 30s after the policies: {:?}",
                    outcome.map(|c| c.finalizers().to_vec())
                ));
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn create_namespace(client: &Client, name: &str) -> Res<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(name).await?.is_some() {
        delete_namespace(client, name, Duration::from_secs(120)).await?;
    }
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"smart.fhir.dev/bench": "true"}}
    }))?;
    namespaces.create(&PostParams::default(), &ns).await?;
    Ok(())
}

/// Asks for a namespace's deletion without waiting for it.
async fn start_namespace_deletion(client: &Client, name: &str) -> Res<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    match namespaces.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes the finalizers of every SmartClient of a namespace no operator watches.
async fn release_finalizers(client: &Client, namespace: &str, concurrency: usize) -> Res<()> {
    let api: Api<SmartClient> = Api::namespaced(client.clone(), namespace);
    let names: Vec<String> = api
        .list_metadata(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|c| !c.finalizers().is_empty())
        .map(|c| c.name_any())
        .collect();
    let patch = Patch::Merge(json!({ "metadata": { "finalizers": null } }));
    futures::stream::iter(names)
        .map(|name| {
            let (api, patch) = (&api, &patch);
            async move { api.patch(&name, &PatchParams::default(), patch).await }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// Deletes every SmartClient of a namespace and waits until they are gone (their finalizers handled).
async fn delete_smart_clients(
    client: &Client,
    namespace: &str,
    timeout: Duration,
) -> Res<Duration> {
    let api: Api<SmartClient> = Api::namespaced(client.clone(), namespace);
    let started = Instant::now();
    api.delete_collection(&DeleteParams::default(), &Default::default())
        .await?;
    loop {
        let left = api
            .list_metadata(&kube::api::ListParams::default().limit(1))
            .await?;
        if left.items.is_empty() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            return bail(format!(
                "SmartClients of {namespace} still there after {timeout:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Deletes a namespace and waits until it is gone; returns how long that took.
async fn delete_namespace(client: &Client, name: &str, timeout: Duration) -> Res<Duration> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let started = Instant::now();
    match namespaces.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Duration::ZERO),
        Err(e) => return Err(e.into()),
    }
    while namespaces.get_opt(name).await?.is_some() {
        if started.elapsed() > timeout {
            return bail(format!("namespace {name} still exists after {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(started.elapsed())
}

/// The dev server's SmartAuthServer `dev` (and its initial access token Secret for RFC 7591).
async fn create_auth_server(
    client: &Client,
    namespace: &str,
    dialect: Dialect,
    server: &RunningDevServer,
) -> Res<()> {
    let mut spec = json!({
        "dialect": dialect_name(dialect),
        "fhirBaseUrl": format!("{}/fhir", server.base_url()),
    });
    if dialect == Dialect::Rfc7591 {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "dev-iat"},
            "stringData": {"token": IAT},
        }))?;
        secrets.create(&PostParams::default(), &secret).await?;
        spec["credentials"] =
            json!({"initialAccessTokenSecretRef": {"name": "dev-iat", "key": "token"}});
    }
    let servers: Api<SmartAuthServer> = Api::namespaced(client.clone(), namespace);
    let object: SmartAuthServer = serde_json::from_value(json!({
        "apiVersion": "smart.fhir.dev/v1alpha1",
        "kind": "SmartAuthServer",
        "metadata": {"name": "dev"},
        "spec": spec,
    }))?;
    servers.create(&PostParams::default(), &object).await?;
    Ok(())
}

async fn wait_for_auth_server_ready(
    client: &Client,
    namespace: &str,
    operator: &mut OperatorProcess,
) -> Res<()> {
    let servers: Api<SmartAuthServer> = Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let server = servers.get("dev").await?;
        let ready = server
            .status
            .as_ref()
            .map(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == condition::READY && c.status == "True")
            })
            .unwrap_or(false);
        if ready {
            return Ok(());
        }
        if !operator.alive() {
            return bail(format!("the operator exited:\n{}", operator.log_tail()));
        }
        if Instant::now() > deadline {
            return bail(format!(
                "SmartAuthServer {namespace}/dev not Ready within 60s: {:?}",
                server.status
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates SmartClients 0..n with `concurrency` requests in flight, recording when each create
/// returned and handing each created object to `created` (the floor's workers). Retries refused or
/// failed creates a few times (the apiserver may shed load); returns the number of create requests.
async fn create_clients(
    client: &Client,
    namespace: &str,
    n: usize,
    dialect: Dialect,
    concurrency: usize,
    created_at: Arc<Mutex<HashMap<String, Instant>>>,
    created: Option<futures::channel::mpsc::UnboundedSender<SmartClient>>,
) -> Res<u64> {
    let api: Api<SmartClient> = Api::namespaced(client.clone(), namespace);
    let requests = Arc::new(AtomicU64::new(0));
    futures::stream::iter(0..n)
        .map(|i| {
            let (api, created_at, created, requests) = (
                api.clone(),
                created_at.clone(),
                created.clone(),
                requests.clone(),
            );
            async move {
                let object = smart_client(i, dialect)?;
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    requests.fetch_add(1, Ordering::Relaxed);
                    match api.create(&PostParams::default(), &object).await {
                        Ok(object) => {
                            created_at
                                .lock()
                                .unwrap()
                                .insert(object.name_any(), Instant::now());
                            if let Some(tx) = &created {
                                let _ = tx.unbounded_send(object);
                            }
                            return Ok::<(), BoxError>(());
                        }
                        Err(e) if attempt < 5 => {
                            say(format!("create {} failed ({e}); retrying", client_name(i)));
                            tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(requests.load(Ordering::Relaxed))
}

/// Waits until the watch saw every one of `n` SmartClients Ready; fails on timeout or a dead operator.
async fn wait_all_ready(
    watch: &NamespaceWatch,
    n: usize,
    timeout: Duration,
    mut operator: Option<&mut OperatorProcess>,
) -> Res<()> {
    let deadline = Instant::now() + timeout;
    let mut last_report = Instant::now();
    while watch.ready_count() < n {
        if let Some(operator) = operator.as_deref_mut()
            && !operator.alive()
        {
            return bail(format!(
                "the operator exited during the rollout:\n{}",
                operator.log_tail()
            ));
        }
        if Instant::now() > deadline {
            return bail(format!(
                "only {}/{n} SmartClients Ready after {timeout:?}",
                watch.ready_count()
            ));
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            say(format!("  {} / {n} Ready", watch.ready_count()));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Total time (first create to last Ready) and per-object latency (create returned to Ready seen).
fn latencies(
    started: Instant,
    created_at: &HashMap<String, Instant>,
    ready: &HashMap<String, Instant>,
) -> Value {
    let mut per_object: Vec<f64> = created_at
        .iter()
        .filter_map(|(name, created)| {
            ready
                .get(name)
                .map(|r| r.saturating_duration_since(*created).as_secs_f64())
        })
        .collect();
    per_object.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let last_ready = ready
        .values()
        .map(|r| r.saturating_duration_since(started).as_secs_f64())
        .fold(0.0, f64::max);
    let last_created = created_at
        .values()
        .map(|c| c.saturating_duration_since(started).as_secs_f64())
        .fold(0.0, f64::max);
    json!({
        "all_ready_s": last_ready,
        "creates_done_s": last_created,
        "latency_p50_s": percentile(&per_object, 50.0),
        "latency_p99_s": percentile(&per_object, 99.0),
        "latency_max_s": per_object.last().copied().unwrap_or(0.0),
    })
}

// -------------------------------------------------------------------------------------------------
// The floor: the same work without a controller

struct Floor {
    kube: Client,
    auth: AuthServerClient,
    endpoints: ServerEndpoints,
    fhir_base_url: String,
    dialect: Dialect,
}

impl Floor {
    /// Registers (mints and introspects a debug token for S4S), applies the Secret, applies status.
    async fn handle(&self, object: SmartClient) -> Res<()> {
        let namespace = object.namespace().unwrap_or_default();
        let name = object.name_any();
        let now = Timestamp::now();
        let generation = object.metadata.generation.unwrap_or(1);
        let desired = desired_metadata(&object)?;
        let chosen = (self.dialect == Dialect::S4sLegacy).then(|| ClientCredentials {
            client_id: object
                .spec
                .client_id
                .clone()
                .unwrap_or_else(|| name.clone()),
            client_secret: Some(smart_operator::controller::desired::generate_client_secret()),
            registration_access_token: None,
            registration_client_uri: None,
        });
        let registered = self.auth.register(&desired, chosen.as_ref()).await?;
        let mut credentials = StoredCredentials {
            client_id: registered.client_id.clone(),
            client_secret: registered
                .client_secret
                .clone()
                .or_else(|| chosen.as_ref().and_then(|c| c.client_secret.clone())),
            registration_access_token: registered.registration_access_token.clone(),
            registration_client_uri: registered.registration_client_uri.clone(),
            tokens: BTreeMap::new(),
            applied_metadata_hash: Some(metadata_hash(&desired, self.dialect)),
            registration_pending: false,
        };
        let mut status = SmartClientStatus {
            observed_generation: Some(generation),
            client_id: Some(registered.client_id.clone()),
            registration_client_uri: registered.registration_client_uri.clone(),
            client_id_issued_at: registered
                .client_id_issued_at
                .and_then(|s| Timestamp::from_second(s).ok())
                .map(Time),
            granted_scopes: registered.granted_scopes.clone().unwrap_or_default(),
            applied_metadata_hash: Some(metadata_hash(&desired, self.dialect)),
            secret_name: Some(secret_name(&object)),
            ..Default::default()
        };
        for token in object.spec.debug_tokens.iter().flatten() {
            let client = ClientCredentials {
                client_id: credentials.client_id.clone(),
                client_secret: credentials.client_secret.clone(),
                registration_access_token: None,
                registration_client_uri: None,
            };
            let lifetime = token
                .lifetime
                .map(Duration::from)
                .unwrap_or(Duration::from_secs(3600));
            let request = DebugTokenRequest {
                user: token.user.clone(),
                patient_id: token.patient_id.clone(),
                scopes: desired.scopes.clone(),
                lifetime,
            };
            let grant = self.auth.mint_debug_token(&client, &request).await?;
            let info = self.auth.introspect(&grant.access_token).await?;
            let expires_at = info
                .expires_at
                .and_then(|t| Timestamp::try_from(t).ok())
                .unwrap_or(now + lifetime);
            credentials.tokens.insert(
                token.name.clone(),
                StoredToken {
                    access_token: grant.access_token,
                    refresh_token: grant.refresh_token,
                    expires_at: Some(expires_at.to_string()),
                },
            );
            status.debug_tokens.push(DebugTokenStatus {
                name: token.name.clone(),
                expires_at: Some(Time(expires_at)),
                next_refresh_at: Some(Time(expires_at - lifetime / 5)),
            });
        }
        let public = PublicValues {
            token_endpoint: self.endpoints.token.clone(),
            fhir_base_url: Some(self.fhir_base_url.clone()),
            scope: desired.scopes.join(" "),
        };
        let secret = render_secret(
            &object,
            render_data(&object, &credentials, &public),
            Some(&credentials),
        );
        let secrets: Api<Secret> = Api::namespaced(self.kube.clone(), &namespace);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        secrets
            .patch(&secret_name(&object), &params, &Patch::Apply(&secret))
            .await?;
        let c = &mut status.conditions;
        set_condition(
            c,
            condition::REGISTERED,
            true,
            "Registered",
            "registered with SmartAuthServer dev",
            Some(generation),
            now,
        );
        set_condition(
            c,
            condition::SECRET_SYNCED,
            true,
            "SecretWritten",
            "the Secret holds the credentials",
            Some(generation),
            now,
        );
        if !status.debug_tokens.is_empty() {
            set_condition(
                c,
                condition::TOKENS_FRESH,
                true,
                "TokensFresh",
                "debug tokens minted",
                Some(generation),
                now,
            );
        }
        set_condition(
            c,
            condition::READY,
            true,
            "Ready",
            "registered and the Secret is up to date",
            Some(generation),
            now,
        );
        let api: Api<SmartClient> = Api::namespaced(self.kube.clone(), &namespace);
        let patch = json!({
            "apiVersion": "smart.fhir.dev/v1alpha1",
            "kind": "SmartClient",
            "status": status,
        });
        api.patch_status(&name, &params, &Patch::Apply(&patch))
            .await?;
        Ok(())
    }
}

// -------------------------------------------------------------------------------------------------
// One scenario

struct Bench {
    options: Options,
    client: Client,
    http: reqwest::Client,
    ticks: f64,
    logs: PathBuf,
    hard_failures: Vec<String>,
    /// Counts the operator's requests (None with --direct).
    operator_proxy: Option<CountingProxy>,
    operator_kubeconfig: Option<PathBuf>,
    /// Counts the floor's requests (None with --direct).
    floor_proxy: Option<CountingProxy>,
}

impl Bench {
    /// CPU seconds so far of the control plane's processes and of this harness (dev server, watches,
    /// proxies, the floor's client).
    fn cpu_snapshot(&self) -> BTreeMap<String, f64> {
        let run = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/control-plane/run");
        let mut out = BTreeMap::new();
        for component in ["kube-apiserver", "etcd", "kube-controller-manager"] {
            if let Some(pid) = std::fs::read_to_string(run.join(format!("{component}.pid")))
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok())
            {
                out.insert(component.to_owned(), cpu_seconds(pid, self.ticks));
            }
        }
        out.insert(
            "harness".into(),
            cpu_seconds(std::process::id(), self.ticks),
        );
        out
    }

    fn cpu_since(&self, earlier: &BTreeMap<String, f64>) -> Value {
        let now = self.cpu_snapshot();
        json!(
            now.iter()
                .map(|(k, v)| (
                    k.clone(),
                    ((v - earlier.get(k).copied().unwrap_or(0.0)) * 100.0).round() / 100.0
                ))
                .collect::<BTreeMap<_, _>>()
        )
    }

    /// The operator's requests so far (exact), or nothing with --direct.
    fn operator_requests(&self) -> ApiCounts {
        self.operator_proxy
            .as_ref()
            .map(CountingProxy::counts)
            .unwrap_or_default()
    }

    fn rollout_timeout(&self, n: usize) -> Duration {
        Duration::from_secs(120) + Duration::from_millis(100 * n as u64)
    }

    async fn floor(&self, dialect: Dialect, n: usize, server: &RunningDevServer) -> Res<Value> {
        let namespace = format!("bench-floor-{}-{n}", dialect_name(dialect).to_lowercase());
        create_namespace(&self.client, &namespace).await?;
        create_auth_server(&self.client, &namespace, dialect, server).await?;
        let http = HttpClient::new(&HttpSettings::default())?;
        let fhir_base_url = format!("{}/fhir", server.base_url());
        let endpoints = discover(&http, dialect, Some(&fhir_base_url), None).await?;
        let initial_token =
            (dialect == Dialect::Rfc7591).then(|| secrecy::SecretString::from(IAT.to_owned()));
        let kube = match &self.floor_proxy {
            Some(proxy) => proxy.client()?,
            None => self.client.clone(),
        };
        let requests_before = self
            .floor_proxy
            .as_ref()
            .map(CountingProxy::counts)
            .unwrap_or_default();
        let floor = Arc::new(Floor {
            kube,
            auth: AuthServerClient::new(dialect, http, &endpoints, initial_token)?,
            endpoints,
            fhir_base_url,
            dialect,
        });
        let watch = NamespaceWatch::start(&self.client, &namespace).await?;
        let auth_before = AuthCounts::fetch(&self.http, server).await?;
        let api_before = ApiCounts::scrape(&self.client).await?;
        let cpu_before = self.cpu_snapshot();
        let created_at = Arc::new(Mutex::new(HashMap::new()));
        let (tx, rx) = futures::channel::mpsc::unbounded::<SmartClient>();
        let started = Instant::now();
        let workers = {
            let floor = floor.clone();
            let concurrency = self.options.concurrency;
            tokio::spawn(async move {
                rx.map(|object| {
                    let floor = floor.clone();
                    async move { floor.handle(object).await }
                })
                .buffer_unordered(concurrency)
                .try_collect::<Vec<()>>()
                .await
                .map(|_| ())
            })
        };
        let creates = create_clients(
            &self.client,
            &namespace,
            n,
            dialect,
            self.options.create_concurrency,
            created_at.clone(),
            Some(tx),
        )
        .await?;
        workers.await??;
        wait_all_ready(&watch, n, self.rollout_timeout(n), None).await?;
        let mut result = latencies(started, &created_at.lock().unwrap(), &watch.ready_times());
        let api = ApiCounts::scrape(&self.client).await?.minus(&api_before);
        let auth = AuthCounts::fetch(&self.http, server)
            .await?
            .minus(&auth_before);
        result["create_requests"] = json!(creates);
        if let Some(proxy) = &self.floor_proxy {
            result["requests"] = proxy.counts().minus(&requests_before).to_json();
        }
        result["apiserver"] = api.to_json();
        result["auth_server"] = auth.to_json();
        result["cpu_s"] = self.cpu_since(&cpu_before);
        drop(watch);
        // No operator handles these: take off the finalizer the admission policy put on.
        release_finalizers(&self.client, &namespace, self.options.create_concurrency).await?;
        if self.options.quick {
            start_namespace_deletion(&self.client, &namespace).await?;
        } else if !self.options.keep {
            delete_namespace(&self.client, &namespace, Duration::from_secs(300)).await?;
        }
        Ok(result)
    }

    async fn start_operator(&self, namespace: &str, log: &str, tag: &str) -> Res<OperatorProcess> {
        let path = self.logs.join(format!("operator-{namespace}-{tag}.log"));
        let mut operator = OperatorProcess::start(
            &self.options,
            namespace,
            log,
            path,
            self.operator_kubeconfig.as_deref(),
        )?;
        operator.wait_for_metrics().await?;
        Ok(operator)
    }

    /// Restarts the operator (debug log) and waits until it planned Wait for every client.
    async fn restart(
        &self,
        operator: OperatorProcess,
        namespace: &str,
        n: usize,
        tag: &str,
    ) -> Res<(OperatorProcess, f64)> {
        operator.stop().await;
        let path = self.logs.join(format!("operator-{namespace}-{tag}.log"));
        let mut operator = OperatorProcess::start(
            &self.options,
            namespace,
            "smart_operator=debug,info",
            path,
            self.operator_kubeconfig.as_deref(),
        )?;
        let mut waiting: HashSet<String> = HashSet::new();
        let deadline = Instant::now() + self.rollout_timeout(n);
        while waiting.len() < n {
            for line in operator.new_log_lines() {
                if line.contains("planned action=Wait")
                    && let Some(name) = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("client="))
                {
                    waiting.insert(name.to_owned());
                }
            }
            if waiting.len() >= n {
                break;
            }
            if !operator.alive() {
                return bail(format!(
                    "the restarted operator exited:\n{}",
                    operator.log_tail()
                ));
            }
            if Instant::now() > deadline {
                return bail(format!(
                    "after a restart only {}/{n} clients reached Wait",
                    waiting.len()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let elapsed = operator.started.elapsed().as_secs_f64();
        operator.wait_for_metrics().await?;
        Ok((operator, elapsed))
    }

    async fn scenario(&mut self, dialect: Dialect, n: usize) -> Res<Value> {
        let label = format!("{} N={n}", dialect_name(dialect));
        let scenario_started = Instant::now();
        say(format!("=== {label} (load {})", loadavg()));
        let mut config = DevServerConfig::new(dev_dialect(dialect));
        config.initial_access_tokens = vec![IAT.to_owned()];
        let server = DevServer::bind(config).await?.spawn();
        let mut out = json!({
            "dialect": dialect_name(dialect),
            "n": n,
            "load_at_start": loadavg(),
        });

        // 2. The floor, first, in a namespace of its own that is gone before the operator starts.
        say(format!("{label}: floor"));
        let floor = self.floor(dialect, n, &server).await?;
        say(format!(
            "{label}: floor all Ready in {:.2}s",
            floor["all_ready_s"].as_f64().unwrap_or(0.0)
        ));
        out["floor"] = floor;

        // 1. Rollout.
        let namespace = format!("bench-{}-{n}", dialect_name(dialect).to_lowercase());
        create_namespace(&self.client, &namespace).await?;
        create_auth_server(&self.client, &namespace, dialect, &server).await?;
        let mut operator = self.start_operator(&namespace, "info", "rollout").await?;
        wait_for_auth_server_ready(&self.client, &namespace, &mut operator).await?;
        let watch = NamespaceWatch::start(&self.client, &namespace).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        say(format!("{label}: rollout"));
        let cpu_before = operator.cpu(self.ticks);
        let others_cpu_before = self.cpu_snapshot();
        let auth_before = AuthCounts::fetch(&self.http, &server).await?;
        let api_before = ApiCounts::scrape(&self.client).await?;
        let requests_before = self.operator_requests();
        let metrics_url = operator.metrics_url.clone().unwrap_or_default();
        let created_at = Arc::new(Mutex::new(HashMap::new()));
        let started = Instant::now();
        let creates = create_clients(
            &self.client,
            &namespace,
            n,
            dialect,
            self.options.create_concurrency,
            created_at.clone(),
            None,
        )
        .await?;
        wait_all_ready(&watch, n, self.rollout_timeout(n), Some(&mut operator)).await?;
        let mut rollout = latencies(started, &created_at.lock().unwrap(), &watch.ready_times());
        let cpu = operator.cpu(self.ticks) - cpu_before;
        let mut api = ApiCounts::scrape(&self.client).await?.minus(&api_before);
        let auth = AuthCounts::fetch(&self.http, &server)
            .await?
            .minus(&auth_before);
        let api_all = api.to_json();
        api.subtract("POST", "smartclients", creates as f64);
        rollout["create_requests"] = json!(creates);
        rollout["apiserver_including_creates"] = api_all;
        rollout["apiserver_operator"] = api.to_json();
        if self.operator_proxy.is_some() {
            let requests = self.operator_requests().minus(&requests_before);
            rollout["requests"] = requests.to_json();
            rollout["requests_per_client"] = json!(requests.total() as f64 / n as f64);
        }
        rollout["auth_server"] = auth.to_json();
        rollout["operator_cpu_s"] = json!(cpu);
        rollout["cpu_s"] = self.cpu_since(&others_cpu_before);
        rollout["operator_reconciles"] = json!(operator_reconciles(&self.http, &metrics_url).await);
        rollout["load"] = json!(loadavg());
        say(format!(
            "{label}: all Ready in {:.2}s (p50 {:.3}s, p99 {:.3}s), operator CPU {cpu:.2}s",
            rollout["all_ready_s"].as_f64().unwrap_or(0.0),
            rollout["latency_p50_s"].as_f64().unwrap_or(0.0),
            rollout["latency_p99_s"].as_f64().unwrap_or(0.0),
        ));

        // Trailing work after the last Ready (reconciles triggered by the operator's own writes).
        let settle = if self.options.quick {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(10)
        };
        let settle_before = (
            watch.snapshot(),
            ApiCounts::scrape(&self.client).await?,
            self.operator_requests(),
        );
        tokio::time::sleep(settle).await;
        let settle_api = ApiCounts::scrape(&self.client)
            .await?
            .minus(&settle_before.1);
        rollout["after_ready"] = json!({
            "window_s": settle.as_secs_f64(),
            "namespace_changes": watch.since(&settle_before.0),
            "apiserver": settle_api.to_json(),
            "requests": self.operator_requests().minus(&settle_before.2).to_json(),
        });
        rollout["operator_peak_rss_mib"] = json!(mib(operator.peak_rss_kib()));
        out["rollout"] = rollout;
        let floor_s = out["floor"]["all_ready_s"].as_f64().unwrap_or(0.0);
        let operator_s = out["rollout"]["all_ready_s"].as_f64().unwrap_or(0.0);
        out["ratio"] = json!(if floor_s > 0.0 {
            operator_s / floor_s
        } else {
            0.0
        });

        // 3. Idle.
        say(format!("{label}: idle for {:?}", self.options.idle));
        let idle_watch = watch.snapshot();
        let idle_api = ApiCounts::scrape(&self.client).await?;
        let idle_auth = AuthCounts::fetch(&self.http, &server).await?;
        let idle_cpu = operator.cpu(self.ticks);
        let idle_requests = self.operator_requests();
        let idle_others_cpu = self.cpu_snapshot();
        let reconciles_before = operator_reconciles(&self.http, &metrics_url).await;
        let idle_started = Instant::now();
        tokio::time::sleep(self.options.idle).await;
        let minutes = idle_started.elapsed().as_secs_f64() / 60.0;
        let api = ApiCounts::scrape(&self.client).await?.minus(&idle_api);
        let auth = AuthCounts::fetch(&self.http, &server)
            .await?
            .minus(&idle_auth);
        let changes = watch.since(&idle_watch);
        let requests = self.operator_requests().minus(&idle_requests);
        let reconciles_after = operator_reconciles(&self.http, &metrics_url).await;
        let reconciles: BTreeMap<String, f64> = reconciles_after
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v - reconciles_before.get(k).copied().unwrap_or(0.0),
                )
            })
            .filter(|(_, v)| *v > 0.0)
            .collect();
        let idle_writes = changes["total"].as_u64().unwrap_or(0);
        let idle_auth_calls = auth.excluding_mints();
        out["idle"] = json!({
            "window_s": self.options.idle.as_secs_f64(),
            "namespace_changes": changes,
            "namespace_writes_per_min": idle_writes as f64 / minutes,
            "apiserver": api.to_json(),
            "apiserver_writes_per_min": api.writes() as f64 / minutes,
            "requests": requests.to_json(),
            "operator_writes_per_min": requests.writes() as f64 / minutes,
            "operator_requests_per_min": requests.total() as f64 / minutes,
            "auth_server": auth.to_json(),
            "auth_calls_per_min_excluding_mints": idle_auth_calls as f64 / minutes,
            "token_remints": auth.get("debug_token"),
            "operator_cpu_s": operator.cpu(self.ticks) - idle_cpu,
            "cpu_s": self.cpu_since(&idle_others_cpu),
            "operator_reconciles": reconciles,
        });
        if idle_writes > 0 {
            self.hard_failures.push(format!(
                "{label}: {idle_writes} writes to the namespace while idle"
            ));
        }
        if requests.writes() > 0 {
            self.hard_failures.push(format!(
                "{label}: the operator sent {} write requests while idle ({:?})",
                requests.writes(),
                requests.by_resource_verb()
            ));
        }
        for endpoint in ["register", "update", "delete"] {
            if auth.get(endpoint) > 0 {
                self.hard_failures.push(format!(
                    "{label}: {} auth-server {endpoint} calls while idle",
                    auth.get(endpoint)
                ));
            }
        }
        if self.operator_proxy.is_none() && api.foreign_writes() > 0 {
            say(format!(
                "{label}: note: {} writes by other clients of the control plane during the idle window",
                api.foreign_writes()
            ));
        }
        out["rollout"]["operator_peak_rss_after_idle_mib"] = json!(mib(operator.peak_rss_kib()));

        // 4. Restart.
        say(format!("{label}: restart"));
        let restart_watch = watch.snapshot();
        let restart_api = ApiCounts::scrape(&self.client).await?;
        let restart_auth = AuthCounts::fetch(&self.http, &server).await?;
        let restart_requests = self.operator_requests();
        let (operator, restart_s) = self.restart(operator, &namespace, n, "restart").await?;
        let restart_cpu = operator.cpu(self.ticks);
        tokio::time::sleep(settle).await;
        let api = ApiCounts::scrape(&self.client).await?.minus(&restart_api);
        let auth = AuthCounts::fetch(&self.http, &server)
            .await?
            .minus(&restart_auth);
        let registrations = auth.get("register");
        let mints = auth.get("debug_token");
        let without_unrelated = (operator.peak_rss_kib(), operator.rss_kib());
        out["restart"] = json!({
            "all_reconciled_s": restart_s,
            "registrations": registrations,
            "token_mints": mints,
            "auth_server": auth.to_json(),
            "apiserver": api.to_json(),
            "requests": self.operator_requests().minus(&restart_requests).to_json(),
            "namespace_changes": watch.since(&restart_watch),
            "operator_cpu_to_reconciled_s": restart_cpu,
            "operator_peak_rss_mib": mib(without_unrelated.0),
            "operator_reconciles": operator_reconciles(&self.http, operator.metrics_url.as_deref().unwrap_or("")).await,
        });
        if registrations > 0 || mints > 0 {
            self.hard_failures.push(format!(
                "{label}: restart made {registrations} registrations and {mints} token mints"
            ));
        }
        say(format!(
            "{label}: restart reconciled all in {restart_s:.2}s; registrations {registrations}, mints {mints}"
        ));

        // 5. Unrelated Secrets.
        let u = self.options.unrelated;
        say(format!("{label}: {u} unrelated Secrets"));
        let created =
            create_unrelated_secrets(&self.client, &namespace, u, self.options.create_concurrency)
                .await?;
        let unrelated_requests = self.operator_requests();
        let (operator, unrelated_restart_s) =
            self.restart(operator, &namespace, n, "unrelated").await?;
        tokio::time::sleep(settle).await;
        let unrelated_requests = self.operator_requests().minus(&unrelated_requests);
        let with_unrelated = (operator.peak_rss_kib(), operator.rss_kib());
        out["unrelated"] = json!({
            "secrets": u,
            "create_s": created,
            "peak_rss_without_mib": mib(without_unrelated.0),
            "peak_rss_with_mib": mib(with_unrelated.0),
            "rss_without_mib": mib(without_unrelated.1),
            "rss_with_mib": mib(with_unrelated.1),
            "peak_rss_added_mib": mib(with_unrelated.0) - mib(without_unrelated.0),
            "restart_all_reconciled_s": unrelated_restart_s,
            "restart_requests": unrelated_requests.to_json(),
        });
        say(format!(
            "{label}: peak RSS {:.1} MiB without, {:.1} MiB with {u} unrelated Secrets",
            mib(without_unrelated.0),
            mib(with_unrelated.0)
        ));

        // Cleanup, with the operator running so that finalizers are handled.
        drop(watch);
        if self.options.quick {
            // The operator handles the finalizers; the rest goes in the background.
            let took =
                delete_smart_clients(&self.client, &namespace, Duration::from_secs(120)).await?;
            out["cleanup_s"] = json!(took.as_secs_f64());
            start_namespace_deletion(&self.client, &namespace).await?;
        } else if !self.options.keep {
            let timeout = Duration::from_secs(120) + Duration::from_millis(50 * n as u64);
            match delete_namespace(&self.client, &namespace, timeout).await {
                Ok(took) => out["cleanup_s"] = json!(took.as_secs_f64()),
                Err(e) => say(format!("cleanup of {namespace}: {e}")),
            }
        }
        operator.stop().await;
        let _ = server.stop().await;
        out["scenario_s"] = json!(scenario_started.elapsed().as_secs_f64());
        out["load_at_end"] = json!(loadavg());
        Ok(out)
    }
}

/// Secrets the operator has no business with (no managed-by label), about 1 KiB each.
async fn create_unrelated_secrets(
    client: &Client,
    namespace: &str,
    count: usize,
    concurrency: usize,
) -> Res<f64> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let started = Instant::now();
    let payload = ByteString("x".repeat(1024).into_bytes());
    futures::stream::iter(0..count)
        .map(|i| {
            let (api, payload) = (api.clone(), payload.clone());
            async move {
                let mut secret: Secret = serde_json::from_value(json!({
                    "metadata": {"name": format!("unrelated-{i:05}"), "labels": {"app": "unrelated"}},
                }))?;
                secret.data = Some(BTreeMap::from([("payload".to_owned(), payload)]));
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match api.create(&PostParams::default(), &secret).await {
                        Ok(_) => return Ok::<(), BoxError>(()),
                        Err(kube::Error::Api(s)) if s.code == 409 => return Ok(()),
                        Err(_) if attempt < 5 => {
                            tokio::time::sleep(Duration::from_millis(200 * attempt)).await
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(started.elapsed().as_secs_f64())
}

// -------------------------------------------------------------------------------------------------
// Report

struct Target {
    name: String,
    value: String,
    target: String,
    pass: bool,
    hard: bool,
}

fn targets(scenarios: &[Value]) -> Vec<Target> {
    let mut out = Vec::new();
    for s in scenarios {
        let label = format!("{} N={}", s["dialect"].as_str().unwrap_or(""), s["n"]);
        let n = s["n"].as_u64().unwrap_or(0);
        let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        if n == 1000 {
            let ratio = f(&s["ratio"]);
            out.push(Target {
                name: format!("{label}: operator/floor time"),
                value: format!("{ratio:.2}"),
                target: "≤ 1.3".into(),
                pass: ratio <= 1.3,
                hard: false,
            });
        }
        let limit = match n {
            1000 => Some(40.0),
            5000 => Some(150.0),
            _ => None,
        };
        if let Some(limit) = limit {
            let rss = f(&s["rollout"]["operator_peak_rss_after_idle_mib"]);
            out.push(Target {
                name: format!("{label}: operator peak RSS"),
                value: format!("{rss:.1} MiB = {:.1} MB", rss * 1.048_576),
                target: format!("≤ {limit} MB"),
                pass: rss * 1.048_576 <= limit,
                hard: false,
            });
        }
        let writes = s["idle"]["namespace_changes"]["total"]
            .as_u64()
            .unwrap_or(0);
        out.push(Target {
            name: format!("{label}: idle writes"),
            value: writes.to_string(),
            target: "0".into(),
            pass: writes == 0,
            hard: true,
        });
        let calls = f(&s["idle"]["auth_calls_per_min_excluding_mints"]);
        out.push(Target {
            name: format!("{label}: idle auth-server calls/min (no re-mints)"),
            value: format!("{calls:.1}"),
            target: "0".into(),
            pass: calls == 0.0,
            hard: false,
        });
        let reg = s["restart"]["registrations"].as_u64().unwrap_or(0);
        let mints = s["restart"]["token_mints"].as_u64().unwrap_or(0);
        out.push(Target {
            name: format!("{label}: restart registrations / mints"),
            value: format!("{reg} / {mints}"),
            target: "0 / 0".into(),
            pass: reg == 0 && mints == 0,
            hard: true,
        });
        let added = f(&s["unrelated"]["peak_rss_added_mib"]);
        out.push(Target {
            name: format!(
                "{label}: RSS added by {} unrelated Secrets",
                s["unrelated"]["secrets"]
            ),
            value: format!("{added:+.1} MiB (peak RSS)"),
            target: "< 5 MB".into(),
            pass: added * 1.048_576 < 5.0,
            hard: false,
        });
    }
    out
}

fn fmt_verbs(v: &Value) -> String {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn markdown(report: &Value, targets: &[Target]) -> String {
    let mut md = String::new();
    let m = &report["machine"];
    let _ = writeln!(
        md,
        "# smart-operator benchmark ({})\n",
        report["name"].as_str().unwrap_or("")
    );
    let _ = writeln!(
        md,
        "{} · {} cores ({}) · {} MiB RAM · load {} at start, {} at end · {:.0} s · operator concurrency {}, {} creates in flight\n",
        report["started_at"].as_str().unwrap_or(""),
        m["nproc"],
        m["cpu"].as_str().unwrap_or(""),
        m["mem_total_mib"],
        report["load_at_start"].as_str().unwrap_or(""),
        report["load_at_end"].as_str().unwrap_or(""),
        report["duration_s"].as_f64().unwrap_or(0.0),
        report["options"]["concurrency"],
        report["options"]["create_concurrency"],
    );
    let _ = writeln!(
        md,
        "## Targets\n\n| target | value | goal | result |\n|---|---|---|---|"
    );
    for t in targets {
        let mark = match (t.pass, t.hard) {
            (true, _) => "✅ pass",
            (false, true) => "❌ MISS (hard)",
            (false, false) => "❌ miss",
        };
        let _ = writeln!(md, "| {} | {} | {} | {mark} |", t.name, t.value, t.target);
    }
    let _ = writeln!(
        md,
        "\n## Rollout and floor\n\n| dialect | N | operator all Ready | p50 | p99 | floor all Ready | floor p50 | floor p99 | ratio | operator CPU | peak RSS | auth requests (operator / floor) |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let scenarios = report["scenarios"].as_array().cloned().unwrap_or_default();
    for s in &scenarios {
        let r = &s["rollout"];
        let f = &s["floor"];
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} s | {:.3} s | {:.3} s | {:.2} s | {:.3} s | {:.3} s | {:.2} | {:.2} s | {:.1} MiB | {} / {} |",
            s["dialect"].as_str().unwrap_or(""),
            s["n"],
            r["all_ready_s"].as_f64().unwrap_or(0.0),
            r["latency_p50_s"].as_f64().unwrap_or(0.0),
            r["latency_p99_s"].as_f64().unwrap_or(0.0),
            f["all_ready_s"].as_f64().unwrap_or(0.0),
            f["latency_p50_s"].as_f64().unwrap_or(0.0),
            f["latency_p99_s"].as_f64().unwrap_or(0.0),
            s["ratio"].as_f64().unwrap_or(0.0),
            r["operator_cpu_s"].as_f64().unwrap_or(0.0),
            r["operator_peak_rss_after_idle_mib"]
                .as_f64()
                .unwrap_or(0.0),
            r["auth_server"]["total"],
            f["auth_server"]["total"],
        );
    }
    let _ = writeln!(
        md,
        "\n## Apiserver requests during the rollout\n\nOperator and floor: every request each sent, counted by the proxy in front of the apiserver (exact; the N creates are the harness's and not included). apiserver /metrics: `apiserver_request_total` over the same window for the resources the operator uses, N creates subtracted, including any other client of the control plane.\n\n| dialect | N | operator | per client | floor | per client | apiserver /metrics | operator reconciles |\n|---|---|---|---|---|---|---|---|"
    );
    for s in &scenarios {
        let n = s["n"].as_f64().unwrap_or(1.0).max(1.0);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.1} | {} | {:.1} | {} | {} |",
            s["dialect"].as_str().unwrap_or(""),
            s["n"],
            fmt_verbs(&s["rollout"]["requests"]["by_verb"]),
            s["rollout"]["requests"]["total"].as_f64().unwrap_or(0.0) / n,
            fmt_verbs(&s["floor"]["requests"]["by_verb"]),
            s["floor"]["requests"]["total"].as_f64().unwrap_or(0.0) / n,
            fmt_verbs(&s["rollout"]["apiserver_operator"]["by_verb"]),
            fmt_verbs(&s["rollout"]["operator_reconciles"]),
        );
    }
    let _ = writeln!(
        md,
        "\n## Idle, restart, unrelated Secrets\n\n| dialect | N | idle window | operator requests/min (writes/min) | namespace changes/min | auth calls/min (no re-mints) | restart: all reconciled | registrations / mints | restart requests | RSS without / with unrelated Secrets |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for s in &scenarios {
        let i = &s["idle"];
        let r = &s["restart"];
        let u = &s["unrelated"];
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} s | {:.1} ({:.1}) | {:.1} | {:.1} | {:.2} s | {} / {} | {} | {:.1} / {:.1} MiB peak ({} Secrets) |",
            s["dialect"].as_str().unwrap_or(""),
            s["n"],
            i["window_s"].as_f64().unwrap_or(0.0),
            i["operator_requests_per_min"].as_f64().unwrap_or(f64::NAN),
            i["operator_writes_per_min"].as_f64().unwrap_or(f64::NAN),
            i["namespace_writes_per_min"].as_f64().unwrap_or(0.0),
            i["auth_calls_per_min_excluding_mints"]
                .as_f64()
                .unwrap_or(0.0),
            r["all_reconciled_s"].as_f64().unwrap_or(0.0),
            r["registrations"],
            r["token_mints"],
            fmt_verbs(&r["requests"]["by_verb"]),
            u["peak_rss_without_mib"].as_f64().unwrap_or(0.0),
            u["peak_rss_with_mib"].as_f64().unwrap_or(0.0),
            u["secrets"],
        );
    }
    let _ = writeln!(
        md,
        "\nNamespace changes are additions, modifications and deletions of SmartClients, Secrets and \
         Events seen by watches on the bench namespace. Full figures (requests by resource, \
         apiserver /metrics per window, operator reconcile counters): the JSON next to this file."
    );
    md
}

// -------------------------------------------------------------------------------------------------

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
