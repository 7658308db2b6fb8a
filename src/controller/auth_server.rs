//! The SmartAuthServer and ClusterSmartAuthServer controllers: run discovery, publish the endpoints and
//! what the operator can do with the server, and say whether SmartClients can use it.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::warn;

use super::conditions::{derive_kstatus_conditions, set_condition};
use super::reconcile::{Context, FIELD_MANAGER, ReconcileError};
use super::resolve::{http_settings, read_secret_key};
use crate::authserver::{HttpClient, ServerEndpoints, discover};
use crate::crd::{
    AuthServerSpec, AuthServerStatus, ClusterSmartAuthServer, Dialect, DiscoveredEndpoints,
    SmartAuthServer, condition,
};

/// How often discovery is refreshed for a healthy server.
const REDISCOVERY_INTERVAL: Duration = Duration::from_secs(600);
/// How soon a failed discovery is retried.
const DISCOVERY_RETRY: Duration = Duration::from_secs(30);
/// How soon a discovery that failed on a transient answer (a 5xx, a timeout) is retried: one
/// request per server, so a short wait floods nothing.
const TRANSIENT_DISCOVERY_RETRY: Duration = Duration::from_secs(5);

/// What the two auth server kinds have in common.
pub trait AuthServerResource:
    Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
    fn server_spec(&self) -> &AuthServerSpec;
    fn server_status(&self) -> Option<&AuthServerStatus>;
    /// Where its credential Secrets are read from: its own namespace, or the operator's for the cluster
    /// kind (so that app teams can never read them).
    fn secrets_namespace(&self, operator_namespace: &str) -> String;
    fn api(client: kube::Client, server: &Self) -> Api<Self>;
}

impl AuthServerResource for SmartAuthServer {
    fn server_spec(&self) -> &AuthServerSpec {
        &self.spec.server
    }
    fn server_status(&self) -> Option<&AuthServerStatus> {
        self.status.as_ref()
    }
    fn secrets_namespace(&self, _operator_namespace: &str) -> String {
        self.namespace().unwrap_or_default()
    }
    fn api(client: kube::Client, server: &Self) -> Api<Self> {
        Api::namespaced(client, &server.namespace().unwrap_or_default())
    }
}

impl AuthServerResource for ClusterSmartAuthServer {
    fn server_spec(&self) -> &AuthServerSpec {
        &self.spec.server
    }
    fn server_status(&self) -> Option<&AuthServerStatus> {
        self.status.as_ref()
    }
    fn secrets_namespace(&self, operator_namespace: &str) -> String {
        operator_namespace.to_owned()
    }
    fn api(client: kube::Client, _server: &Self) -> Api<Self> {
        Api::all(client)
    }
}

/// What the operator can do with a server of this dialect and these endpoints.
pub fn capabilities(dialect: Dialect, endpoints: &ServerEndpoints) -> Vec<String> {
    let mut capabilities = vec!["register"];
    match dialect {
        Dialect::Rfc7591 => capabilities.extend(["read", "update", "delete"]),
        Dialect::S4s | Dialect::S4sLegacy => {
            if endpoints.debug_token.is_some() {
                capabilities.push("debugToken");
            }
            if endpoints.debug_introspect.is_some() {
                capabilities.push("introspect");
            }
        }
    }
    if endpoints.token.is_some() {
        capabilities.push("existenceProbe");
    }
    capabilities.into_iter().map(str::to_owned).collect()
}

/// Whether an auth server's `Ready=False` for `reason` waits for a person (kstatus `Stalled`):
/// discovery failures are retried; a configuration only its author can fix stalls.
pub fn auth_server_stalls(reason: &str) -> bool {
    reason == "InvalidAuthServerConfiguration"
}

/// Whether the server's status holds a discovery of this generation that is in use (Ready).
fn still_discovered(status: &AuthServerStatus, generation: Option<i64>) -> bool {
    status.discovered.is_some()
        && status.observed_generation == generation
        && status
            .conditions
            .iter()
            .any(|c| c.type_ == condition::READY && c.status == "True")
}

pub async fn reconcile_server<K: AuthServerResource>(
    server: Arc<K>,
    ctx: Arc<Context>,
) -> Result<Requeue, ReconcileError> {
    let spec = server.server_spec();
    let now = Timestamp::now();
    let generation = server.meta().generation;
    let mut status = server.server_status().cloned().unwrap_or_default();
    let secrets_namespace = server.secrets_namespace(&ctx.settings.operator_namespace);
    let outcome = async {
        let settings =
            http_settings(&ctx.client, spec, &secrets_namespace, &ctx.settings.http).await?;
        let http = HttpClient::new(&settings)?;
        let endpoints = discover(
            &http,
            spec.dialect,
            spec.fhir_base_url.as_ref().map(|u| u.0.as_str()),
            spec.endpoints.as_ref(),
        )
        .await?;
        // Surface a missing initial access token here, before any client tries to register.
        if let Some(credentials) = &spec.credentials {
            read_secret_key(
                &ctx.client,
                &secrets_namespace,
                &credentials.initial_access_token_secret_ref,
                "the initial access token",
            )
            .await?;
        }
        Ok::<_, ReconcileError>(endpoints)
    }
    .await;
    let requeue = match outcome {
        Ok(endpoints) => {
            status.capabilities = capabilities(spec.dialect, &endpoints);
            status.scopes_supported = endpoints.scopes_supported.clone();
            status.smart_capabilities = endpoints.smart_capabilities.clone();
            status.token_endpoint_auth_methods_supported =
                endpoints.token_endpoint_auth_methods_supported.clone();
            status.token_endpoint_auth_signing_alg_values_supported = endpoints
                .token_endpoint_auth_signing_alg_values_supported
                .clone();
            status.grant_types_supported = endpoints.grant_types_supported.clone();
            status.discovered = Some(DiscoveredEndpoints {
                issuer: endpoints.issuer,
                registration: endpoints.registration,
                token: endpoints.token,
                authorization: endpoints.authorization,
                debug_token: endpoints.debug_token,
                debug_introspect: endpoints.debug_introspect,
            });
            set_condition(
                &mut status.conditions,
                condition::READY,
                true,
                "Discovered",
                "endpoints discovered; SmartClients can register",
                generation,
                now,
            );
            Requeue::requeue(REDISCOVERY_INTERVAL)
        }
        Err(ReconcileError::Kube(e)) => return Err(ReconcileError::Kube(e)),
        // A server discovered for this spec whose refresh fails for a moment keeps the endpoints
        // it had: its clients go on (one 503 while the operator restarted under load made every
        // client of it Ready=False for the retry's 30 s).
        Err(ReconcileError::AuthServer(error))
            if error.is_retryable() && still_discovered(&status, generation) =>
        {
            warn!(server = %server.name_any(), reason = error.reason(), %error, "rediscovery failed; the endpoints discovered before stay in use");
            Requeue::requeue(TRANSIENT_DISCOVERY_RETRY)
        }
        Err(error) => {
            warn!(server = %server.name_any(), reason = error.reason(), %error, "auth server not usable");
            set_condition(
                &mut status.conditions,
                condition::READY,
                false,
                error.reason(),
                error.to_string(),
                generation,
                now,
            );
            let transient = matches!(&error, ReconcileError::AuthServer(e) if e.is_retryable());
            Requeue::requeue(if transient {
                TRANSIENT_DISCOVERY_RETRY
            } else {
                DISCOVERY_RETRY
            })
        }
    };
    status.observed_generation = generation;
    derive_kstatus_conditions(&mut status.conditions, auth_server_stalls, generation, now);
    if server.server_status() != Some(&status) {
        let patch = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": status,
        });
        K::api(ctx.client.clone(), &server)
            .patch_status(
                &server.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
    }
    Ok(requeue)
}

pub fn server_error_policy<K: AuthServerResource>(
    _server: Arc<K>,
    error: &ReconcileError,
    _ctx: Arc<Context>,
) -> Requeue {
    warn!(reason = error.reason(), %error, "auth server reconcile failed");
    Requeue::requeue(DISCOVERY_RETRY)
}
