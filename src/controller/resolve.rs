//! Reading what a reconcile needs from the apiserver: the auth server a SmartClient refers to (with the
//! trust checks), its credentials, and the client's Secret.

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::Api;
use kube::core::{Selector, SelectorExt};
use kube::{Client, ResourceExt};
use secrecy::SecretString;
use std::sync::Arc;

use super::cache::Caches;
use super::conditions::is_true;
use crate::authserver::{HttpSettings, ServerEndpoints};
use crate::crd::{
    AuthServerKind, AuthServerSpec, AuthServerStatus, ClusterSmartAuthServer, Dialect,
    SecretKeyRef, SmartAuthServer, SmartClient, condition,
};

/// Why a SmartClient cannot use its auth server right now. None of these makes a remote call.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{kind} {name} does not exist")]
    NotFound { kind: &'static str, name: String },
    #[error(
        "ClusterSmartAuthServer {name} does not admit namespace {namespace} (see its spec.allowedNamespaces)"
    )]
    NotAllowed { name: String, namespace: String },
    #[error("{kind} {name} is not Ready: {message}")]
    NotReady {
        kind: &'static str,
        name: String,
        message: String,
    },
    #[error("cannot read Secret {namespace}/{name} (key {key}) for {purpose}: {detail}")]
    CredentialSecret {
        namespace: String,
        name: String,
        key: String,
        purpose: &'static str,
        detail: String,
    },
    #[error("kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
}

impl ResolveError {
    pub fn reason(&self) -> &'static str {
        match self {
            ResolveError::NotFound { .. } => "AuthServerNotFound",
            ResolveError::NotAllowed { .. } => "AuthServerNotAllowed",
            ResolveError::NotReady { .. } => "AuthServerNotReady",
            ResolveError::CredentialSecret { .. } => "AuthServerCredentialsUnavailable",
            ResolveError::Kube(_) => "KubernetesApiError",
        }
    }
}

/// An auth server as a SmartClient sees it.
#[derive(Clone, Debug)]
pub struct ResolvedServer {
    pub kind: &'static str,
    pub name: String,
    pub uid: String,
    /// Identifies this server's configuration; an HTTP client built for one fingerprint is reused.
    pub fingerprint: String,
    pub spec: AuthServerSpec,
    pub endpoints: ServerEndpoints,
    /// Namespace its credential Secrets are read from.
    pub secrets_namespace: String,
}

impl ResolvedServer {
    pub fn dialect(&self) -> Dialect {
        self.spec.dialect
    }

    /// `SmartAuthServer/<namespace>/<name>` or `ClusterSmartAuthServer/<name>`, for metrics.
    pub fn metric_label(&self) -> String {
        if self.kind == "SmartAuthServer" {
            format!("{}/{}/{}", self.kind, self.secrets_namespace, self.name)
        } else {
            format!("{}/{}", self.kind, self.name)
        }
    }
}

/// Resolves `spec.authServerRef` and applies the trust model: same-namespace SmartAuthServer, or a
/// ClusterSmartAuthServer whose `allowedNamespaces` admits the client's namespace.
/// Reads the server from the caches; a miss is confirmed with a live read (the store may not have
/// synced yet), so "not found" is never a cache artefact.
pub async fn resolve_server(
    client: &Client,
    caches: &Caches,
    smart_client: &SmartClient,
    operator_namespace: &str,
) -> Result<ResolvedServer, ResolveError> {
    let namespace = smart_client.namespace().unwrap_or_default();
    let reference = &smart_client.spec.auth_server_ref;
    let (kind, spec, status, uid, generation, resource_version, secrets_namespace) =
        match reference.kind {
            AuthServerKind::SmartAuthServer => {
                let server = match caches.server(&namespace, &reference.name) {
                    Some(server) => server,
                    None => {
                        let api: Api<SmartAuthServer> = Api::namespaced(client.clone(), &namespace);
                        Arc::new(api.get_opt(&reference.name).await?.ok_or_else(|| {
                            ResolveError::NotFound {
                                kind: "SmartAuthServer",
                                name: reference.name.clone(),
                            }
                        })?)
                    }
                };
                (
                    "SmartAuthServer",
                    server.spec.server.clone(),
                    server.status.clone(),
                    server.uid(),
                    server.metadata.generation,
                    server.resource_version(),
                    namespace.clone(),
                )
            }
            AuthServerKind::ClusterSmartAuthServer => {
                let server = match caches.cluster_server(&reference.name) {
                    Some(server) => server,
                    None => {
                        let api: Api<ClusterSmartAuthServer> = Api::all(client.clone());
                        Arc::new(api.get_opt(&reference.name).await?.ok_or_else(|| {
                            ResolveError::NotFound {
                                kind: "ClusterSmartAuthServer",
                                name: reference.name.clone(),
                            }
                        })?)
                    }
                };
                // Least privilege: the operator may get namespaces but not list or watch them, so the
                // labels are read live; only clients of ClusterSmartAuthServers pay for it.
                let namespaces: Api<Namespace> = Api::all(client.clone());
                let labels = namespaces.get(&namespace).await?.labels().clone();
                if !namespace_admitted(server.spec.allowed_namespaces.as_ref(), &labels) {
                    return Err(ResolveError::NotAllowed {
                        name: reference.name.clone(),
                        namespace,
                    });
                }
                (
                    "ClusterSmartAuthServer",
                    server.spec.server.clone(),
                    server.status.clone(),
                    server.uid(),
                    server.metadata.generation,
                    server.resource_version(),
                    operator_namespace.to_owned(),
                )
            }
        };
    let status = status.unwrap_or_default();
    let ready =
        is_true(&status.conditions, condition::READY) && status.observed_generation == generation;
    if !ready {
        let message = super::conditions::find(&status.conditions, condition::READY)
            .map(|c| c.message.clone())
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "discovery has not completed".to_owned());
        return Err(ResolveError::NotReady {
            kind,
            name: reference.name.clone(),
            message,
        });
    }
    Ok(ResolvedServer {
        kind,
        name: reference.name.clone(),
        uid: uid.unwrap_or_default(),
        fingerprint: format!(
            "{kind}/{}/{}",
            reference.name,
            resource_version.unwrap_or_default()
        ),
        endpoints: endpoints_from_status(&status),
        spec,
        secrets_namespace,
    })
}

/// Whether a ClusterSmartAuthServer's selector admits a namespace with these labels. No selector admits
/// nothing; an empty selector admits everything.
pub fn namespace_admitted(
    selector: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    let Some(selector) = selector else {
        return false;
    };
    match Selector::try_from(selector.clone()) {
        Ok(selector) => selector.matches(labels),
        // An invalid selector admits nothing rather than everything.
        Err(_) => false,
    }
}

/// The endpoints the auth server controller published.
pub fn endpoints_from_status(status: &AuthServerStatus) -> ServerEndpoints {
    let discovered = status.discovered.clone().unwrap_or_default();
    ServerEndpoints {
        issuer: discovered.issuer,
        registration: discovered.registration,
        token: discovered.token,
        authorization: discovered.authorization,
        debug_token: discovered.debug_token,
        debug_introspect: discovered.debug_introspect,
        scopes_supported: status.scopes_supported.clone(),
        smart_capabilities: status.smart_capabilities.clone(),
        token_endpoint_auth_methods_supported: status.token_endpoint_auth_methods_supported.clone(),
        token_endpoint_auth_signing_alg_values_supported: status
            .token_endpoint_auth_signing_alg_values_supported
            .clone(),
        grant_types_supported: status.grant_types_supported.clone(),
    }
}

/// Reads one key of a Secret as a credential.
pub async fn read_secret_key(
    client: &Client,
    namespace: &str,
    reference: &SecretKeyRef,
    purpose: &'static str,
) -> Result<SecretString, ResolveError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let error = |detail: String| ResolveError::CredentialSecret {
        namespace: namespace.to_owned(),
        name: reference.name.clone(),
        key: reference.key.clone(),
        purpose,
        detail,
    };
    let secret = api
        .get_opt(&reference.name)
        .await?
        .ok_or_else(|| error("the Secret does not exist".into()))?;
    let bytes = secret
        .data
        .and_then(|mut d| d.remove(&reference.key))
        .ok_or_else(|| error("the key is missing".into()))?;
    let value = String::from_utf8(bytes.0).map_err(|_| error("the value is not UTF-8".into()))?;
    Ok(SecretString::from(value.trim().to_owned()))
}

/// HTTP settings for a server, with its CA bundle loaded.
pub async fn http_settings(
    client: &Client,
    spec: &AuthServerSpec,
    secrets_namespace: &str,
    base: &HttpSettings,
) -> Result<HttpSettings, ResolveError> {
    let mut settings = base.clone();
    if let Some(tls) = &spec.tls {
        if let Some(pem) = &tls.ca_bundle {
            settings.ca_bundle_pem = Some(pem.clone());
        } else if let Some(reference) = &tls.ca_bundle_secret_ref {
            let pem =
                read_secret_key(client, secrets_namespace, reference, "the CA bundle").await?;
            settings.ca_bundle_pem = Some(secrecy::ExposeSecret::expose_secret(&pem).to_owned());
        }
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use std::collections::BTreeMap;

    #[test]
    fn cluster_servers_admit_no_namespace_without_a_selector_and_all_with_an_empty_one() {
        let labels = BTreeMap::from([("team".to_owned(), "a".to_owned())]);
        assert!(!namespace_admitted(None, &labels));
        assert!(namespace_admitted(Some(&LabelSelector::default()), &labels));
        let selector = LabelSelector {
            match_labels: Some(BTreeMap::from([("team".to_owned(), "b".to_owned())])),
            ..Default::default()
        };
        assert!(!namespace_admitted(Some(&selector), &labels));
    }
}
