//! The smart-operator binary. Thin: parses the command line, sets up TLS and logging, and hands over
//! to the library.

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use smart_operator::app::{LeaderElection, RunOptions, run};
use smart_operator::controller::Settings;

/// Kubernetes operator that registers SMART on FHIR OAuth clients declaratively.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers (in a cluster, or against the current kubeconfig).
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions and admission policies as YAML (pipe to `kubectl apply -f -`).
    Crd,
    /// Print the version.
    Version,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Namespace the operator runs in; ClusterSmartAuthServer credential Secrets are read only from here.
    #[arg(long, env = "POD_NAMESPACE", default_value = "smart-operator")]
    operator_namespace: String,
    /// Watch only these namespaces for SmartClients and SmartAuthServers (comma-separated or repeated;
    /// default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE", value_delimiter = ',')]
    watch_namespace: Vec<String>,
    /// Reconcile ClusterSmartAuthServers (discovery and status). Turn off in extra operator instances
    /// that share a cluster with another one that does.
    #[arg(long, env = "SMART_WATCH_CLUSTER_SERVERS", default_value_t = true, action = clap::ArgAction::Set)]
    watch_cluster_servers: bool,
    /// Where to serve /metrics, /livez and /readyz.
    #[arg(long, env = "SMART_METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    metrics_address: std::net::SocketAddr,
    /// Run only while holding a Lease, so that several replicas can run with one active.
    #[arg(long, env = "SMART_LEADER_ELECTION", default_value_t = false)]
    leader_election: bool,
    /// Name of the leader election Lease.
    #[arg(long, env = "SMART_LEASE_NAME", default_value = "smart-operator")]
    lease_name: String,
    /// Namespace of the leader election Lease (default: the operator namespace).
    #[arg(long, env = "SMART_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Seconds a Lease stays valid after its last renewal: the longest a dead leader blocks a standby.
    #[arg(long, env = "SMART_LEASE_DURATION", default_value_t = 15)]
    lease_duration: u64,
    /// Name in Events' reportingInstance, usually the Pod name.
    #[arg(long, env = "POD_NAME", default_value = "smart-operator")]
    instance: String,
    /// How often to check that each client still exists on its auth server (Go duration).
    #[arg(long, env = "SMART_EXISTENCE_CHECK_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    existence_check_interval: Duration,
    /// First delay after an auth server failure; doubles per failure (with jitter).
    #[arg(long, env = "SMART_BACKOFF_BASE", default_value = "2s", value_parser = parse_duration)]
    backoff_base: Duration,
    /// Longest delay between retries after auth server failures.
    #[arg(long, env = "SMART_BACKOFF_CAP", default_value = "5m", value_parser = parse_duration)]
    backoff_cap: Duration,
    /// Failed attempts to delete a registration before the SmartClient reports DeletionBlocked (the
    /// retries go on at the capped backoff).
    #[arg(long, env = "SMART_DELETION_ATTEMPTS", default_value_t = 5)]
    deletion_attempts: u32,
    /// Timeout of each request to an auth server.
    #[arg(long, env = "SMART_HTTP_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    http_timeout: Duration,
    /// SmartClients reconciled at once.
    #[arg(long, env = "SMART_CONCURRENCY", default_value_t = 16)]
    concurrency: u16,
    /// Log format.
    #[arg(long, env = "SMART_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `smart_operator=debug,info`.
    #[arg(long, env = "SMART_LOG", default_value = "info")]
    log: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    text.parse::<kube::core::Duration>()
        .map(Duration::from)
        .map_err(|e| format!("not a duration like 30s, 5m or 1h: {e}"))
}

fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: log collectors and tests read plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // One TLS provider for kube and reqwest, chosen explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().command {
        Command::Run(args) => {
            init_logging(args.log_format, &args.log);
            let mut settings = Settings {
                operator_namespace: args.operator_namespace,
                existence_check_interval: args.existence_check_interval,
                backoff_base: args.backoff_base,
                backoff_cap: args.backoff_cap,
                deletion_attempts: args.deletion_attempts,
                ..Settings::default()
            };
            settings.http.request_timeout = args.http_timeout;
            let leader_election = args.leader_election.then(|| LeaderElection {
                lease_name: args.lease_name.clone(),
                lease_namespace: args
                    .lease_namespace
                    .clone()
                    .unwrap_or_else(|| settings.operator_namespace.clone()),
                lease_duration: args.lease_duration.max(2),
                renew_grace: (args.lease_duration / 3).max(1),
            });
            let options = RunOptions {
                settings,
                namespaces: args
                    .watch_namespace
                    .into_iter()
                    .filter(|n| !n.is_empty())
                    .collect(),
                instance: args.instance,
                concurrency: args.concurrency,
                metrics_address: args.metrics_address,
                leader_election,
                cluster_servers: args.watch_cluster_servers,
            };
            match run(options).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("smart-operator: {error}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Crd => match smart_operator::manifests::rendered() {
            Ok(documents) => {
                print!("{}", smart_operator::manifests::as_stream(&documents));
                std::process::ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("smart-operator: {error}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Version => {
            println!("smart-operator {}", env!("CARGO_PKG_VERSION"));
            std::process::ExitCode::SUCCESS
        }
    }
}
