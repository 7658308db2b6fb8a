//! Wiring: the Kubernetes client, the three controllers and shutdown.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Client, ResourceExt};
use tracing::{debug, info};

use crate::controller::auth_server::{reconcile_server, server_error_policy};
use crate::controller::reconcile::{error_policy, reconcile};
use crate::controller::secret::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::controller::{Context, Settings};
use crate::crd::{AuthServerKind, ClusterSmartAuthServer, SmartAuthServer, SmartClient};

/// How the operator runs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub settings: Settings,
    /// Namespaces to watch for SmartClients and SmartAuthServers; empty means all.
    pub namespaces: Vec<String>,
    /// Identity in Events (`reportingInstance`), usually the Pod name.
    pub instance: String,
    pub concurrency: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot connect to Kubernetes: {0}")]
    Connect(#[source] kube::Error),
    #[error(
        "watching more than one namespace is not supported yet; pass one --watch-namespace or none"
    )]
    ManyNamespaces,
}

pub async fn run(options: RunOptions) -> Result<(), AppError> {
    let client = Client::try_default().await.map_err(AppError::Connect)?;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "smart-operator".into(),
            instance: Some(options.instance.clone()),
        },
    );
    let ctx = Arc::new(Context::new(
        client.clone(),
        recorder,
        options.settings.clone(),
    ));
    let namespace = match options.namespaces.as_slice() {
        [] => None,
        [one] => Some(one.clone()),
        _ => return Err(AppError::ManyNamespaces),
    };
    let scoped = |client: &Client| -> (Api<SmartClient>, Api<Secret>, Api<SmartAuthServer>) {
        match &namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
            ),
        }
    };
    let (clients, secrets, servers) = scoped(&client);
    info!(
        namespace = namespace.as_deref().unwrap_or("<all>"),
        "starting controllers"
    );

    let controller = Controller::new(clients, watcher::Config::default().any_semantic());
    let store = controller.store();
    let by_namespaced_server = store.clone();
    let by_cluster_server = store;
    let managed_secrets =
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
    let config = kube::runtime::controller::Config::default().concurrency(options.concurrency);
    let client_controller = controller
        .with_config(config.clone())
        .owns(secrets, managed_secrets)
        .watches(
            servers.clone(),
            watcher::Config::default(),
            move |server: SmartAuthServer| {
                clients_of(
                    &by_namespaced_server,
                    AuthServerKind::SmartAuthServer,
                    &server.name_any(),
                    server.namespace(),
                )
            },
        )
        .watches(
            Api::<ClusterSmartAuthServer>::all(client.clone()),
            watcher::Config::default(),
            move |server: ClusterSmartAuthServer| {
                clients_of(
                    &by_cluster_server,
                    AuthServerKind::ClusterSmartAuthServer,
                    &server.name_any(),
                    None,
                )
            },
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(error) = result {
                debug!(%error, "smartclient reconcile error");
            }
        });
    let server_controller = Controller::new(servers, watcher::Config::default())
        .shutdown_on_signal()
        .run(
            reconcile_server::<SmartAuthServer>,
            server_error_policy::<SmartAuthServer>,
            ctx.clone(),
        )
        .for_each(|_| async {});
    let cluster_server_controller = Controller::new(
        Api::<ClusterSmartAuthServer>::all(client.clone()),
        watcher::Config::default(),
    )
    .shutdown_on_signal()
    .run(
        reconcile_server::<ClusterSmartAuthServer>,
        server_error_policy::<ClusterSmartAuthServer>,
        ctx.clone(),
    )
    .for_each(|_| async {});
    tokio::join!(
        client_controller,
        server_controller,
        cluster_server_controller
    );
    info!("controllers stopped");
    Ok(())
}

/// The SmartClients that refer to an auth server, to reconcile them when it changes.
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
