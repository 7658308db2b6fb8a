//! `smart-dev-server`: a fast, faithful, in-memory SMART on FHIR auth server for tests, demos and
//! benchmarks. Thin: parses the command line and hands over to `smart_operator::devserver`.
//!
//! The first line on stdout is `listening on http://ADDR`, so callers using `--listen 127.0.0.1:0`
//! can learn the port.

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use smart_operator::devserver::{DemoUser, DevServer, DevServerConfig, Dialect};

/// A local SMART on FHIR auth server speaking the RFC 7591, S4S or legacy S4S dialect.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Which auth server to imitate.
    #[arg(long, env = "SMART_DEV_DIALECT", value_enum, default_value = "rfc7591")]
    dialect: Dialect,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "SMART_DEV_LISTEN", default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// RFC 7591 initial access token accepted without limit (repeatable; comma-separated in the
    /// environment). Limited tokens can be added through `POST /_admin/initial-access-tokens`.
    #[arg(
        long = "initial-access-token",
        env = "SMART_DEV_INITIAL_ACCESS_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    initial_access_tokens: Vec<String>,
    /// S4S user allowed in debug-token requests, as USERNAME=PATIENT_ID (repeatable; comma-separated
    /// in the environment). Default: the auth-proxy's demo user daniel-adams=smart-1288992.
    #[arg(long = "user", env = "SMART_DEV_USERS", value_delimiter = ',')]
    users: Vec<DemoUser>,
    /// Log filter (a level such as `info`, or `tracing` directives); requests are logged at `debug`.
    #[arg(long, env = "SMART_DEV_LOG", default_value = "info")]
    log: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match tracing_subscriber::EnvFilter::try_new(&cli.log) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("smart-dev-server: invalid --log {:?}: {e}", cli.log);
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let config = DevServerConfig {
        dialect: cli.dialect,
        listen: cli.listen,
        initial_access_tokens: cli.initial_access_tokens,
        users: cli.users,
    };
    let server = match DevServer::bind(config).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("smart-dev-server: cannot listen on {}: {e}", cli.listen);
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    let announced = writeln!(stdout, "listening on http://{}", server.local_addr())
        .and_then(|()| stdout.flush());
    drop(stdout);
    if let Err(e) = announced {
        eprintln!("smart-dev-server: cannot write to stdout: {e}");
        return ExitCode::FAILURE;
    }
    tracing::info!(dialect = ?cli.dialect, address = %server.local_addr(), "serving");

    match server.run_until(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smart-dev-server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
