//! The real Sync-for-Science auth-proxy (upstream code, unmodified, both API versions) as a child
//! process, started through the peer's own `run.sh` (`../shared/peers/auth-proxy`, prepared by
//! `hack/auth-proxy prepare`, which `hack/test` runs). Each instance has its own free ports and an
//! empty database; [`RealAuthProxy::restart_wiped`] starts it again on the same ports with the
//! database emptied, as a redeployed server would.
//!
//! What the server received is read from its access log (one line per request, path without the
//! query string), so tests count registrations on the server itself, not in the operator.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, repo_root};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// Upstream 66d4796, the seed's API: the operator's `S4SLegacy` dialect.
    Legacy,
    /// Upstream 6157ac3 (HEAD): the operator's `S4S` dialect.
    Current,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Legacy => "legacy",
            Version::Current => "current",
        }
    }

    /// The SmartAuthServer dialect that speaks this version.
    pub fn dialect(self) -> &'static str {
        match self {
            Version::Legacy => "S4SLegacy",
            Version::Current => "S4S",
        }
    }
}

pub struct RealAuthProxy {
    pub version: Version,
    pub port: u16,
    pub fhir_port: u16,
    pub log_path: PathBuf,
    child: Option<Child>,
}

fn peer_dir() -> PathBuf {
    let dir = std::env::var_os("AUTH_PROXY_PEER")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/peers/auth-proxy"));
    assert!(
        dir.join("run.sh").is_file(),
        "no auth-proxy peer at {} (run.sh missing): the real-server tests need \
         ../shared/peers/auth-proxy beside the repo (or AUTH_PROXY_PEER); run them with hack/test",
        dir.display()
    );
    dir
}

fn venv_root() -> PathBuf {
    std::env::var_os("AUTH_PROXY_VENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            PathBuf::from(home).join(".cache/smart-operator/auth-proxy")
        })
}

impl RealAuthProxy {
    /// Starts `version` with its FHIR stub and waits until it answers.
    pub async fn start(version: Version) -> Self {
        let dir = repo_root().join("target/test-logs");
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let mut fhir_port = free_port();
        while fhir_port == port {
            fhir_port = free_port();
        }
        let log_path = dir.join(format!("auth-proxy-{}-{port}.log", version.as_str()));
        let mut server = Self {
            version,
            port,
            fhir_port,
            log_path,
            child: None,
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let child = Command::new(peer_dir().join("run.sh"))
            .args([
                self.version.as_str(),
                &self.port.to_string(),
                &self.fhir_port.to_string(),
            ])
            .env("AUTH_PROXY_VENV_ROOT", venv_root())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start the auth-proxy peer's run.sh");
        self.child = Some(child);
        self.wait_until_answering().await;
    }

    async fn wait_until_answering(&mut self) {
        super::install_crypto_provider();
        let http = reqwest::Client::new();
        let url = format!("{}/oauth/errors", self.base_url());
        // A warm start takes about 3 s; a cold one (pip installs the pins) about 30 s.
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Ok(response) = http.get(&url).send().await
                && response.status().is_success()
            {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "auth-proxy {} exited with {status} before answering; log {}:\n{}",
                    self.version.as_str(),
                    self.log_path.display(),
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "auth-proxy {} did not answer on {url} within 180 s; log {}",
                self.version.as_str(),
                self.log_path.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops the server and starts it again on the same ports with an empty database: every client
    /// and token it knew is gone, as after a redeploy of upstream's container.
    pub async fn restart_wiped(&mut self) {
        self.stop();
        // The FHIR stub watches its parent and exits within a second; wait until its port is free.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpListener::bind(("127.0.0.1", self.fhir_port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the FHIR stub on port {} did not exit with its server",
                self.fhir_port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.spawn().await;
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What a SmartAuthServer names as `fhirBaseUrl`: discovery reads `<it>/metadata`.
    pub fn fhir_base_url(&self) -> String {
        format!("{}/api/fhir", self.base_url())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Requests the server answered, from its access log: `method path` with a status of `status_class`
    /// (`"2"` for any 2xx, `"401"` for exactly 401, `""` for any).
    pub fn count(&self, method: &str, path: &str, status_class: &str) -> usize {
        let request = format!("\"{method} {path} HTTP/1.");
        self.log()
            .lines()
            .filter_map(|line| line.split_once(&request).map(|(_, rest)| rest))
            .filter(|rest| {
                // rest is `1" 201 -`: the HTTP minor version, the quote, the status.
                rest.split_whitespace()
                    .nth(1)
                    .is_some_and(|status| status.starts_with(status_class))
            })
            .count()
    }

    /// Registrations the server accepted (each one a client in its database).
    pub fn registrations(&self) -> usize {
        self.count("POST", "/oauth/register", "2")
    }

    /// Existence probes and other token-endpoint requests it received.
    pub fn token_requests(&self) -> usize {
        self.count("POST", "/oauth/token", "")
    }

    pub fn debug_token_mints(&self) -> usize {
        self.count("POST", "/oauth/debug/token", "2")
    }
}

impl Drop for RealAuthProxy {
    fn drop(&mut self) {
        self.stop();
    }
}
