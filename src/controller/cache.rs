//! The reflector stores a SmartClient reconcile reads instead of asking the apiserver each time: the
//! auth servers and the operator's own Secrets. The watches that fill them are the same ones that
//! trigger reconciles, so a store is at least as new as the event that started a reconcile. A store
//! can still lag the operator's own latest write, so a reconcile confirms with a live read before it
//! acts on what a store says (see `reconcile.rs`).

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::warn;

use crate::crd::{ClusterSmartAuthServer, SmartAuthServer};

/// Annotation `kubectl apply` keeps a copy of the whole object in; the operator never reads it.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Stores of every watched scope (all namespaces, or one store per watched namespace).
#[derive(Clone, Default)]
pub struct Caches {
    pub servers: Vec<Store<SmartAuthServer>>,
    pub cluster_servers: Vec<Store<ClusterSmartAuthServer>>,
    /// Secrets labelled as managed by the operator; nothing else is cached.
    pub secrets: Vec<Store<Secret>>,
}

impl Caches {
    pub fn server(&self, namespace: &str, name: &str) -> Option<Arc<SmartAuthServer>> {
        let key = ObjectRef::new(name).within(namespace);
        self.servers.iter().find_map(|s| s.get(&key))
    }

    pub fn cluster_server(&self, name: &str) -> Option<Arc<ClusterSmartAuthServer>> {
        let key = ObjectRef::new(name);
        self.cluster_servers.iter().find_map(|s| s.get(&key))
    }

    pub fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        let key = ObjectRef::new(name).within(namespace);
        self.secrets.iter().find_map(|s| s.get(&key))
    }
}

/// A watch of `api` that keeps a trimmed copy of every object in the returned store, with its own
/// backoff on watch errors. The errors are logged here and go no further: a controller pauses all its
/// trigger streams on any error it sees, so one watch's trouble (an apiserver answering 410 Gone for
/// a while after a restart) would hold up the reconciles every other watch asks for. The stream must
/// be polled (by a controller) for the store to fill.
pub fn cached_watch<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + Unpin + 'static,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&()).into_owned();
    let events = watcher(api, config)
        .backoff(watch_backoff())
        .modify(trim)
        .reflect(writer)
        .filter(move |event| {
            if let Err(error) = event {
                warn!(watch = %kind, %error, "watch failed; retrying");
            }
            std::future::ready(event.is_ok())
        })
        .boxed();
    (reader, events)
}

/// Backoff of a watch that failed: kube's default grows to 30 s, which after an apiserver restart kept
/// spec changes waiting 38–94 s (issue 11's chaos run). An operator's few watches can retry sooner:
/// 0.5 s growing to 4 s with jitter, back to 0.5 s after a minute without failures. Each watch and
/// each controller's merged trigger stream (which kube pauses on any error) uses it.
pub fn watch_backoff() -> ResetTimerBackoff<watcher::ExponentialBackoff> {
    let builder = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(4))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(builder.into(), Duration::from_secs(60))
}

/// Drops what the operator never reads and what makes up most of a small object's size: managed
/// fields and kubectl's last-applied copy.
pub fn trim<K: Resource>(object: &mut K) {
    object.managed_fields_mut().clear();
    object.annotations_mut().remove(LAST_APPLIED);
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    #[test]
    fn trimming_keeps_labels_and_other_annotations() {
        let mut secret = Secret::default();
        secret.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        secret
            .annotations_mut()
            .insert(LAST_APPLIED.into(), "{}".into());
        secret
            .annotations_mut()
            .insert("smart.fhir.dev/abandon-registration".into(), "true".into());
        secret.labels_mut().insert("team".into(), "a".into());
        trim(&mut secret);
        assert!(secret.managed_fields().is_empty());
        assert_eq!(
            secret.annotations().keys().collect::<Vec<_>>(),
            ["smart.fhir.dev/abandon-registration"]
        );
        assert_eq!(secret.labels().len(), 1);
    }
}
