//! Wiring: the Kubernetes client, leader election, the controllers, health and metrics, shutdown.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use futures::future::join_all;
use futures::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::controller::auth_server::{AuthServerResource, reconcile_server, server_error_policy};
use crate::controller::cache::{Caches, cached_watch, watch_backoff};
use crate::controller::context::WipedServer;
use crate::controller::reconcile::{ReconcileError, error_policy, reconcile};
use crate::controller::secret::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::controller::{Context, Settings};
use crate::crd::{AuthServerKind, ClusterSmartAuthServer, SmartAuthServer, SmartClient};
use crate::leadership::{Leadership, deadline_from_lease, renew_deadline};
use crate::telemetry::{ErrorLabels, Health, Metrics, serve};

/// Leader election settings.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    pub lease_name: String,
    pub lease_namespace: String,
    /// Seconds a lease stays valid after its last renewal: how long a dead leader blocks a standby.
    pub lease_duration: u64,
    /// Seconds before expiry that the holder renews.
    pub renew_grace: u64,
}

/// How the operator runs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub settings: Settings,
    /// Namespaces to watch for SmartClients and SmartAuthServers; empty means all.
    pub namespaces: Vec<String>,
    /// Identity in Events and the lease, usually the Pod name.
    pub instance: String,
    pub concurrency: u16,
    pub metrics_address: SocketAddr,
    pub leader_election: Option<LeaderElection>,
    /// Whether this instance reconciles ClusterSmartAuthServers.
    pub cluster_servers: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot connect to Kubernetes: {0}")]
    Connect(#[source] kube::Error),
    #[error("cannot serve health and metrics on {address}: {source}")]
    Serve {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("leader election failed: {0}")]
    LeaderElection(String),
    #[error("lost the leader lease; exiting so that a fresh instance takes part in the election")]
    LostLease,
}

/// Resolves once shutdown was asked for.
async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// First SIGTERM or Ctrl-C drains (controllers finish their reconciles, the lease is released); a
/// second one aborts at once.
fn watch_signals(stop: watch::Sender<bool>) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        for round in 0..2 {
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
            if round == 0 {
                info!("shutting down: finishing running reconciles (signal again to abort)");
                let _ = stop.send(true);
            } else {
                warn!("second signal: aborting");
                std::process::exit(130);
            }
        }
    });
}

pub async fn run(options: RunOptions) -> Result<(), AppError> {
    let client = Client::try_default().await.map_err(AppError::Connect)?;
    let metrics = Arc::new(Metrics::default());
    let health = Health::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    watch_signals(stop_tx.clone());

    let listener = tokio::net::TcpListener::bind(options.metrics_address)
        .await
        .map_err(|source| AppError::Serve {
            address: options.metrics_address,
            source,
        })?;
    let server = tokio::spawn(serve(
        listener,
        metrics.clone(),
        health.clone(),
        stopped(stop_rx.clone()),
    ));

    let result = match &options.leader_election {
        None => {
            run_controllers(
                &client,
                &options,
                metrics.clone(),
                health.clone(),
                Arc::new(Leadership::unbounded()),
                stopped(stop_rx.clone()),
            )
            .await;
            Ok(())
        }
        Some(election) => {
            lead_then_run(
                &client,
                &options,
                election,
                metrics,
                health.clone(),
                stop_rx.clone(),
            )
            .await
        }
    };
    let _ = stop_tx.send(true);
    let _ = server.await;
    info!("stopped");
    result
}

/// Waits for the lease, runs the controllers while holding it, releases it on shutdown.
async fn lead_then_run(
    client: &Client,
    options: &RunOptions,
    election: &LeaderElection,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: watch::Receiver<bool>,
) -> Result<(), AppError> {
    let identity = format!(
        "{}-{}",
        options.instance,
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let manager = LeaseManagerBuilder::new(client.clone(), &election.lease_name)
        .with_namespace(&election.lease_namespace)
        .with_identity(&identity)
        .with_duration(election.lease_duration)
        .with_grace(election.renew_grace)
        .with_field_manager("smart-operator")
        .build()
        .await
        .map_err(|e| AppError::LeaderElection(e.to_string()))?;
    let (mut leading, lease_task) = manager.watch().await;
    // A standby is healthy and ready: it serves its role by waiting.
    health.ready.store(true, Ordering::Relaxed);
    info!(lease = %election.lease_name, namespace = %election.lease_namespace, %identity, "waiting for the leader lease");
    let mut stop_wait = stop.clone();
    loop {
        if *leading.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = leading.changed() => if changed.is_err() {
                health.lease_alive.store(false, Ordering::Relaxed);
                return Err(AppError::LeaderElection("the lease task stopped".into()));
            },
            _ = stop_wait.changed() => if *stop_wait.borrow() {
                drop(leading);
                release(lease_task).await;
                return Ok(());
            },
        }
    }
    info!(%identity, "acquired the leader lease; starting controllers");
    health.ready.store(false, Ordering::Relaxed);
    let deadline = renew_deadline(
        Duration::from_secs(election.lease_duration),
        Duration::from_secs(election.renew_grace),
    );
    let leadership = Arc::new(Leadership::until_confirmed());
    leadership.extend_to(SystemTime::now() + deadline);
    let watchdog = watch_renew_deadline(
        Api::namespaced(client.clone(), &election.lease_namespace),
        election.lease_name.clone(),
        identity.clone(),
        deadline,
        Duration::from_millis((election.renew_grace * 1000 / 4).max(250)),
        leadership.clone(),
    );
    let mut lost_watch = leading.clone();
    let lost = async move {
        let replaced = async {
            while *lost_watch.borrow_and_update() {
                if lost_watch.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = replaced => {},
            _ = watchdog => {},
        }
    };
    let (lost_tx, mut lost_rx) = watch::channel(false);
    let shutdown = {
        let stop = stopped(stop.clone());
        async move {
            tokio::select! {
                _ = stop => {},
                _ = lost => { let _ = lost_tx.send(true); },
            }
        }
    };
    run_controllers(
        client,
        options,
        metrics,
        health,
        leadership.clone(),
        shutdown,
    )
    .await;
    leadership.revoke();
    let lost_lease = *lost_rx.borrow_and_update();
    drop(leading);
    release(lease_task).await;
    if lost_lease {
        Err(AppError::LostLease)
    } else {
        Ok(())
    }
}

/// Resolves when this instance is past its renew deadline: the Lease in the apiserver has not named it
/// as holder with a fresh renew time for longer than the deadline (its renewals fail, or another
/// instance holds it). Until then, every check that finds this instance renewing moves the deadline.
async fn watch_renew_deadline(
    leases: Api<Lease>,
    lease_name: String,
    identity: String,
    deadline: Duration,
    every: Duration,
    leadership: Arc<Leadership>,
) {
    loop {
        match leases.get_opt(&lease_name).await {
            Ok(Some(lease)) => {
                if let Some(until) = deadline_from_lease(&lease, &identity, deadline) {
                    leadership.extend_to(until);
                }
            }
            Ok(None) => {}
            Err(e) => debug!(error = %e, "could not read the leader lease"),
        }
        if !leadership.may_act() {
            warn!(lease = %lease_name, %identity, "past the leader renew deadline: the lease was not renewed in time; no further auth-server calls, stopping");
            leadership.revoke();
            return;
        }
        tokio::time::sleep(every).await;
    }
}

/// Ends the lease task and frees the lease so a standby takes over at once instead of waiting for it
/// to expire.
async fn release(
    task: tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
) {
    match task.await {
        Ok(Ok(manager)) => match manager.release().await {
            Ok(()) => info!("released the leader lease"),
            Err(e) => {
                warn!(error = %e, "could not release the leader lease; it expires on its own")
            }
        },
        Ok(Err(e)) => warn!(error = %e, "leader election ended with an error"),
        Err(e) => warn!(error = %e, "leader election task failed"),
    }
}

/// Runs every controller until `shutdown` resolves, then lets running reconciles finish.
async fn run_controllers(
    client: &Client,
    options: &RunOptions,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    leadership: Arc<Leadership>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "smart-operator".into(),
            instance: Some(options.instance.clone()),
        },
    );
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    let scopes: Vec<Option<String>> = if options.namespaces.is_empty() {
        vec![None]
    } else {
        options.namespaces.iter().cloned().map(Some).collect()
    };
    info!(namespaces = ?options.namespaces, "starting controllers (empty: all namespaces)");
    // First the watches of every scope, so that one Context sees all their stores.
    let mut caches = Caches::default();
    let mut watches = Vec::new();
    for namespace in &scopes {
        let (clients, client_events) = cached_watch::<SmartClient>(
            scoped(client, namespace.as_deref()),
            watcher::Config::default().any_semantic(),
        );
        let (secrets, secret_events) = cached_watch::<Secret>(
            scoped(client, namespace.as_deref()),
            watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")),
        );
        let (servers, server_events) = cached_watch::<SmartAuthServer>(
            scoped(client, namespace.as_deref()),
            watcher::Config::default(),
        );
        let (cluster_servers, cluster_server_events) = cached_watch::<ClusterSmartAuthServer>(
            Api::all(client.clone()),
            watcher::Config::default(),
        );
        caches.secrets.push(secrets);
        caches.servers.push(servers);
        caches.cluster_servers.push(cluster_servers);
        watches.push((
            namespace.clone(),
            clients,
            client_events,
            secret_events,
            server_events,
            cluster_server_events,
        ));
    }
    let ctx = Arc::new(Context::new(
        client.clone(),
        recorder,
        options.settings.clone(),
        metrics,
        caches,
        leadership,
    ));
    let mut controllers: Vec<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>> = Vec::new();
    let mut stores = Vec::new();
    let client_stores: Vec<Store<SmartClient>> = watches.iter().map(|w| w.1.clone()).collect();
    for (namespace, store, client_events, secret_events, server_events, cluster_server_events) in
        watches
    {
        let client_events =
            forget_deleted_clients(client_events, ctx.clone(), client_stores.clone());
        stores.push(store.clone());
        let (by_namespaced, by_cluster) = (store.clone(), store.clone());
        let store_for_alarms = store.clone();
        let config = kube::runtime::controller::Config::default().concurrency(options.concurrency);
        controllers.push(Box::pin(
            Controller::for_stream(client_events.applied_objects(), store)
                .with_config(config)
                // kube pauses the merged trigger streams on any watch error, growing to 30 s by
                // default: after an apiserver restart every reconcile waited out that pause.
                .trigger_backoff(watch_backoff())
                .owns_stream(secret_events.touched_objects())
                .watches_stream(
                    server_events.touched_objects(),
                    move |server: SmartAuthServer| {
                        clients_of(
                            &by_namespaced,
                            AuthServerKind::SmartAuthServer,
                            &server.name_any(),
                            server.namespace(),
                        )
                    },
                )
                .watches_stream(
                    cluster_server_events.touched_objects(),
                    move |server: ClusterSmartAuthServer| {
                        clients_of(
                            &by_cluster,
                            AuthServerKind::ClusterSmartAuthServer,
                            &server.name_any(),
                            None,
                        )
                    },
                )
                .reconcile_on(clients_of_wiped_servers(
                    ctx.wipe_alarms(),
                    store_for_alarms,
                ))
                .graceful_shutdown_on(shutdown.clone())
                .run(observed_reconcile, error_policy, ctx.clone())
                .for_each(|_| async {}),
        ));
        controllers.push(server_controller(
            scoped::<SmartAuthServer>(client, namespace.as_deref()),
            ctx.clone(),
            shutdown.clone(),
        ));
    }
    if options.cluster_servers {
        controllers.push(server_controller(
            Api::<ClusterSmartAuthServer>::all(client.clone()),
            ctx.clone(),
            shutdown.clone(),
        ));
    }
    tokio::spawn(async move {
        for store in stores {
            // The store's readiness signal wakes only its latest waiter (the controller's runner also
            // waits on it), so poll again now and then instead of waiting once.
            loop {
                match tokio::time::timeout(
                    std::time::Duration::from_millis(250),
                    store.wait_until_ready(),
                )
                .await
                {
                    Ok(Ok(())) => break,
                    Ok(Err(_)) => return,
                    Err(_) => continue,
                }
            }
        }
        info!("watches synced; ready");
        health.ready.store(true, Ordering::Relaxed);
    });
    join_all(controllers).await;
}

/// Memory follows the SmartClients that exist: a deleted one is forgotten when the watch reports it,
/// and after every (re-)list whatever no store holds any more (a deletion missed while the watch was
/// down). The finalizer's cleanup forgets too, but it never runs for an object whose finalizer was
/// stripped by hand.
fn forget_deleted_clients(
    events: impl Stream<Item = Result<watcher::Event<SmartClient>, watcher::Error>> + Send + 'static,
    ctx: Arc<Context>,
    stores: Vec<Store<SmartClient>>,
) -> impl Stream<Item = Result<watcher::Event<SmartClient>, watcher::Error>> + Send + 'static {
    events.inspect(move |event| match event {
        Ok(watcher::Event::Delete(client)) => ctx.forget(&client.uid().unwrap_or_default()),
        Ok(watcher::Event::InitDone) => {
            let existing: HashSet<String> = stores
                .iter()
                .flat_map(|store| store.state())
                .filter_map(|client| client.uid())
                .collect();
            ctx.forget_absent(|uid| existing.contains(uid));
        }
        _ => {}
    })
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn server_controller<K: AuthServerResource>(
    api: Api<K>,
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(
        Controller::new(api, watcher::Config::default())
            .trigger_backoff(watch_backoff())
            .graceful_shutdown_on(shutdown)
            .run(
                |server, ctx: Arc<Context>| async move {
                    let started = Instant::now();
                    let result = reconcile_server::<K>(server, ctx.clone()).await;
                    record(&ctx, "authserver", &result, started);
                    result
                },
                server_error_policy::<K>,
                ctx,
            )
            .for_each(|_| async {}),
    )
}

async fn observed_reconcile(
    client: Arc<SmartClient>,
    ctx: Arc<Context>,
) -> Result<Requeue, ReconcileError> {
    let started = Instant::now();
    let result = reconcile(client, ctx.clone()).await;
    record(&ctx, "smartclient", &result, started);
    result
}

fn record(
    ctx: &Context,
    controller: &'static str,
    result: &Result<Requeue, ReconcileError>,
    started: Instant,
) {
    let outcome = match result {
        Ok(_) => "success",
        Err(e) => {
            ctx.metrics
                .reconcile_errors
                .get_or_create(&ErrorLabels {
                    controller,
                    reason: e.reason(),
                })
                .inc();
            debug!(controller, reason = e.reason(), "reconcile error");
            "error"
        }
    };
    ctx.metrics
        .observe_reconcile(controller, outcome, started.elapsed());
}

/// The SmartClients that refer to an auth server, to reconcile them when it changes.
/// The clients (in `store`) of each server suspected wiped, for a reconcile each: their existence
/// checks are due at once.
fn clients_of_wiped_servers(
    alarms: tokio::sync::broadcast::Receiver<WipedServer>,
    store: Store<SmartClient>,
) -> impl Stream<Item = ObjectRef<SmartClient>> + Send + 'static {
    futures::stream::unfold(alarms, |mut alarms| async move {
        loop {
            match alarms.recv().await {
                Ok(server) => return Some((server, alarms)),
                // Missed alarms: the clients' own checks still come within the interval.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .flat_map(move |server: WipedServer| {
        futures::stream::iter(clients_of(
            &store,
            server.kind,
            &server.name,
            server.namespace,
        ))
    })
}

fn clients_of(
    store: &kube::runtime::reflector::Store<SmartClient>,
    kind: AuthServerKind,
    name: &str,
    namespace: Option<String>,
) -> Vec<ObjectRef<SmartClient>> {
    store
        .state()
        .iter()
        .filter(|c| c.spec.auth_server_ref.kind == kind && c.spec.auth_server_ref.name == name)
        .filter(|c| namespace.is_none() || c.namespace() == namespace)
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}
