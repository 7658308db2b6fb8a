//! Running the operator binary and a smart-dev-server for integration tests, and reading what a user
//! could observe: objects, conditions, Events, Secrets and the requests the auth server received.

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Secret};
use kube::Client;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use smart_operator::crd::SmartClient;
use smart_operator::devserver::{DevServer, DevServerConfig, Dialect, RunningDevServer};

use super::repo_root;

static OPERATOR_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The operator binary, watching one namespace, as a child process whose logs go to a file.
pub struct Operator {
    child: Option<Child>,
    pub log_path: PathBuf,
    namespace: String,
    extra_args: Vec<String>,
}

impl Operator {
    /// Starts the operator for `namespace` with fast timings suited to tests; `extra_args` override them.
    pub fn start(namespace: &str, extra_args: &[&str]) -> Self {
        let mut operator = Self {
            child: None,
            log_path: PathBuf::new(),
            namespace: namespace.to_owned(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        operator.spawn();
        operator
    }

    fn spawn(&mut self) {
        let dir = repo_root().join("target/test-logs");
        std::fs::create_dir_all(&dir).unwrap();
        let n = OPERATOR_COUNTER.fetch_add(1, Ordering::SeqCst);
        self.log_path = dir.join(format!("operator-{}-{n}.log", self.namespace));
        let log = std::fs::File::create(&self.log_path).unwrap();
        // Fast timings for tests; a test's own flags replace these (clap refuses repeated flags).
        let defaults = [
            ("--existence-check-interval", "1h"),
            ("--backoff-base", "200ms"),
            ("--backoff-cap", "2s"),
            ("--http-timeout", "2s"),
            ("--log", "smart_operator=debug,info"),
            ("--metrics-address", "127.0.0.1:0"),
            // Tests run many operators on one control plane; only those that test cluster servers
            // reconcile them, or they would fight over their status.
            ("--watch-cluster-servers", "false"),
        ];
        let mut args: Vec<String> = vec![
            "run".into(),
            "--watch-namespace".into(),
            self.namespace.clone(),
            "--operator-namespace".into(),
            self.namespace.clone(),
        ];
        for (flag, value) in defaults {
            if !self.extra_args.iter().any(|a| a == flag) {
                args.extend([flag.to_owned(), value.to_owned()]);
            }
        }
        args.extend(self.extra_args.iter().cloned());
        let child = Command::new(env!("CARGO_BIN_EXE_smart-operator"))
            .args(&args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start the operator binary");
        self.child = Some(child);
    }

    /// Stops the operator with SIGTERM (as Kubernetes does) and waits for it to exit; returns its exit
    /// status, or None if it had to be killed after 10 s.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Whether the process is still alive (it has not crashed or exited).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the operator without warning (a crashed Pod or a lost node).
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again with the same arguments (a restart).
    pub fn restart(&mut self) {
        let _ = self.stop();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The operator's `/metrics` text (the address is the one its log names).
    pub async fn metrics(&self) -> String {
        let log = self.log();
        let address = log
            .lines()
            .rev()
            .find_map(|line| {
                line.contains("serving /metrics")
                    .then(|| line.split("address=").nth(1))
                    .flatten()
            })
            .map(|a| a.split_whitespace().next().unwrap_or_default().to_owned())
            .expect("the operator logs its metrics address");
        reqwest::get(format!("http://{address}/metrics"))
            .await
            .expect("metrics endpoint answers")
            .text()
            .await
            .unwrap()
    }

    /// One sample of `/metrics`, by its full name (labels included, if any).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        self.metrics().await.lines().find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok()).flatten()
        })
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A smart-dev-server in this test process, with a client for its admin API.
pub struct AuthServer {
    pub server: RunningDevServer,
    http: reqwest::Client,
}

impl AuthServer {
    pub async fn start(dialect: Dialect, initial_access_tokens: &[&str]) -> Self {
        super::install_crypto_provider();
        let mut config = DevServerConfig::new(dialect);
        config.initial_access_tokens = initial_access_tokens
            .iter()
            .map(|s| s.to_string())
            .collect();
        let server = DevServer::bind(config)
            .await
            .expect("bind the dev server")
            .spawn();
        Self {
            server,
            http: reqwest::Client::new(),
        }
    }

    pub fn fhir_base_url(&self) -> String {
        format!("{}/fhir", self.server.base_url())
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/_admin/{path}", self.server.base_url());
        let mut request = self.http.request(method, &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("admin {path}: {e}"));
        assert!(
            response.status().is_success(),
            "admin {path} answered {}",
            response.status()
        );
        response.json::<Value>().await.unwrap_or(Value::Null)
    }

    pub async fn stats(&self) -> Value {
        self.admin(reqwest::Method::GET, "stats", None).await
    }

    /// Requests received by one endpoint (`register`, `update`, `debug_token`, ...).
    pub async fn count(&self, endpoint: &str) -> u64 {
        self.stats().await["endpoints"][endpoint]["total"]
            .as_u64()
            .unwrap_or(0)
    }

    pub async fn clients(&self) -> Vec<Value> {
        self.admin(reqwest::Method::GET, "clients", None).await["clients"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub async fn reset(&self) {
        self.admin(reqwest::Method::POST, "reset", None).await;
    }

    pub async fn set_faults(&self, plan: Value) {
        self.admin(reqwest::Method::PUT, "faults", Some(plan)).await;
    }

    pub async fn clear_faults(&self) {
        self.admin(reqwest::Method::DELETE, "faults", None).await;
    }

    pub async fn set_policy(&self, policy: Value) {
        self.admin(reqwest::Method::PUT, "policy", Some(policy))
            .await;
    }

    pub async fn add_initial_access_token(&self, token: &str, count: u32) {
        self.admin(
            reqwest::Method::POST,
            "initial-access-tokens",
            Some(json!({"token": token, "count": count})),
        )
        .await;
    }
}

/// Polls `probe` until it returns Some, or panics after `timeout` saying what never happened.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The status of a condition of a SmartClient, with its reason.
/// The condition of `type_` in a status; panics naming it when there is none.
pub fn condition_in<'a>(
    status: &'a smart_operator::crd::SmartClientStatus,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {:?}", status.conditions))
}

pub fn condition(client: &SmartClient, type_: &str) -> Option<(String, String)> {
    client
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// Waits until a SmartClient's Ready condition has `status` and `reason`, and returns it. On timeout
/// the panic shows the last Ready condition seen.
pub async fn wait_for_ready(
    client: &Client,
    namespace: &str,
    name: &str,
    status: &str,
    reason: &str,
) -> SmartClient {
    let api: Api<SmartClient> = Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    loop {
        if let Some(object) = api.get_opt(name).await.ok().flatten() {
            last = object
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned());
            if last
                .as_ref()
                .is_some_and(|c| c.status == status && c.reason == reason)
            {
                return object;
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for SmartClient {namespace}/{name} Ready={status} reason={reason}; last Ready: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn get_secret(client: &Client, namespace: &str, name: &str) -> Option<Secret> {
    Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .unwrap()
}

/// A Secret's value as text.
pub fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

/// Events about objects in the namespace, as `reason: note`.
pub async fn events(client: &Client, namespace: &str) -> Vec<(String, String)> {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

/// Waits for an Event with this reason in the namespace.
pub async fn wait_for_event(client: &Client, namespace: &str, reason: &str) -> String {
    eventually(
        &format!("an Event with reason {reason} in {namespace}"),
        Duration::from_secs(30),
        || async {
            events(client, namespace)
                .await
                .into_iter()
                .find(|(r, _)| r == reason)
                .map(|(_, note)| note)
        },
    )
    .await
}

/// The message of a SmartClient's Ready condition ("" when it has none).
pub fn ready_message(client: &SmartClient) -> String {
    client
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// Deletes a SmartClient and waits until it is gone (its finalizer done).
pub async fn delete_and_wait_until_gone(client: &Client, namespace: &str, name: &str) {
    let api: Api<SmartClient> = Api::namespaced(client.clone(), namespace);
    api.delete(name, &kube::api::DeleteParams::default())
        .await
        .unwrap();
    eventually(
        &format!("SmartClient {namespace}/{name} is gone"),
        Duration::from_secs(30),
        || async { api.get_opt(name).await.ok()?.is_none().then_some(()) },
    )
    .await;
}

/// Waits until a rotation's overlap is over for `secret`: `previous_client_id` left it. Returns it.
pub async fn wait_for_retirement(client: &Client, namespace: &str, secret: &str) -> Secret {
    eventually(
        "previous_* leave the Secret",
        Duration::from_secs(30),
        || async {
            let held = get_secret(client, namespace, secret).await?;
            secret_value(&held, "previous_client_id")
                .is_none()
                .then_some(held)
        },
    )
    .await
}

/// Waits until SmartClient `name` lists `client_id` in `status.orphanedClients` for `reason`.
pub async fn wait_for_orphan(
    client: &Client,
    namespace: &str,
    name: &str,
    client_id: &str,
    reason: &str,
) -> smart_operator::crd::SmartClientStatus {
    let clients: kube::Api<SmartClient> = kube::Api::namespaced(client.clone(), namespace);
    eventually(
        &format!("{client_id} recorded as orphaned ({reason})"),
        Duration::from_secs(30),
        || async {
            let status = clients.get(name).await.ok()?.status?;
            status
                .orphaned_clients
                .iter()
                .any(|o| o.client_id == client_id && o.reason == reason)
                .then_some(status)
        },
    )
    .await
}
