//! `smart-dev-server`: a fast, faithful, in-memory SMART on FHIR auth server for tests, demos and
//! benchmarks.
//!
//! It speaks one of the three dialects the operator supports ([`Dialect`]) with the paths, encodings,
//! status codes, JSON shapes and quirks of the real servers (Keycloak-style RFC 7591/7592 and the
//! Sync-for-Science auth-proxy, old and new), and adds an admin API under `/_admin/` to list clients,
//! read request counters, wipe state and inject faults. `docs/dev-server.md` describes the interface.
//!
//! All state lives in memory behind one mutex that is never held across an `.await`: a registration is
//! a map insert plus a few random bytes, so the server keeps up with thousands of registrations per
//! second on loopback.

mod admin;
mod assertion;
mod faults;
mod listener;
mod rfc7591;
mod s4s;
mod s4s_legacy;
mod state;
mod stats;
mod wire;

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use axum::Router;
use axum::serve::Listener as _;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use state::DemoUser;

use listener::{ConnectionHandle, SeverableListener};
use state::AppState;

/// Which real server the dev server imitates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dialect {
    /// RFC 7591/7592 dynamic client registration behind initial access tokens, answering like Keycloak.
    #[value(name = "rfc7591")]
    Rfc7591,
    /// The Sync-for-Science auth-proxy as it runs today: JSON registration, server-chosen UUIDs.
    #[value(name = "s4s")]
    S4s,
    /// The older Sync-for-Science auth-proxy: form-encoded registration, caller-chosen client ids.
    #[value(name = "s4s-legacy")]
    S4sLegacy,
}

/// How to start a dev server.
#[derive(Clone)]
pub struct DevServerConfig {
    pub dialect: Dialect,
    /// Where to listen; port 0 picks a free port (see [`DevServer::local_addr`]).
    pub listen: SocketAddr,
    /// RFC 7591 initial access tokens accepted without limit: no use count, no expiry.
    pub initial_access_tokens: Vec<String>,
    /// S4S users that debug tokens may be minted for. Empty means the auth-proxy's demo user
    /// `daniel-adams` with patient `smart-1288992`.
    pub users: Vec<DemoUser>,
}

impl DevServerConfig {
    /// A server of `dialect` on a free loopback port, with no initial access tokens and the demo user.
    pub fn new(dialect: Dialect) -> Self {
        Self {
            dialect,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            initial_access_tokens: Vec::new(),
            users: Vec::new(),
        }
    }
}

/// A bound, not yet serving, dev server.
pub struct DevServer {
    listener: SeverableListener,
    router: Router,
    local_addr: SocketAddr,
}

impl DevServer {
    /// Binds the listening socket and prepares the routes of the configured dialect.
    pub async fn bind(config: DevServerConfig) -> io::Result<Self> {
        let listener = SeverableListener::bind(config.listen).await?;
        let local_addr = listener.local_addr()?;
        let state = AppState::new(&config, local_addr);
        Ok(Self {
            listener,
            router: router(state),
            local_addr,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then stops accepting and lets in-flight requests finish.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        let service = self
            .router
            .into_make_service_with_connect_info::<ConnectionHandle>();
        axum::serve(self.listener, service)
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Serves on a background task of the current Tokio runtime.
    pub fn spawn(self) -> RunningDevServer {
        let local_addr = self.local_addr;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(self.run_until(async {
            // Either an explicit stop or the handle being dropped ends the server.
            let _ = stopped.await;
        }));
        RunningDevServer {
            local_addr,
            stop: Some(stop),
            task: Some(task),
        }
    }
}

/// A dev server serving on a background task; dropping it stops the server.
pub struct RunningDevServer {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl RunningDevServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// Stops accepting connections and waits for in-flight requests to finish.
    pub async fn stop(mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or_else(|e| Err(io::Error::other(e))),
            None => Ok(()),
        }
    }
}

impl Drop for RunningDevServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn router(state: AppState) -> Router {
    let dialect_routes = match state.dialect {
        Dialect::Rfc7591 => rfc7591::routes(&state),
        Dialect::S4s => s4s::routes(&state),
        Dialect::S4sLegacy => s4s_legacy::routes(&state),
    };
    Router::new()
        .merge(dialect_routes)
        .nest("/_admin", admin::routes())
        .with_state(state)
}
