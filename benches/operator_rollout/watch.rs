//! A watch on the bench namespace that records Ready times and every write.

use super::*;

/// Watches on one namespace: changes seen per kind, and when each SmartClient first was Ready.
pub(crate) struct NamespaceWatch {
    pub(crate) changes: Arc<BTreeMap<&'static str, AtomicU64>>,
    pub(crate) changed_names: Arc<Mutex<Vec<String>>>,
    pub(crate) ready: Arc<Mutex<HashMap<String, Instant>>>,
    pub(crate) synced: Arc<AtomicU64>,
    pub(crate) tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl NamespaceWatch {
    pub(crate) async fn start(client: &Client, namespace: &str) -> Res<Self> {
        let changes: Arc<BTreeMap<&'static str, AtomicU64>> = Arc::new(
            ["smartclients", "secrets", "events"]
                .into_iter()
                .map(|k| (k, AtomicU64::new(0)))
                .collect(),
        );
        let watch = Self {
            changes,
            changed_names: Arc::default(),
            ready: Arc::default(),
            synced: Arc::new(AtomicU64::new(0)),
            tasks: Vec::new(),
        };
        let mut watch = watch;
        let smartclients: Api<SmartClient> = Api::namespaced(client.clone(), namespace);
        let ready = watch.ready.clone();
        watch
            .tasks
            .push(watch.spawn(smartclients, "smartclients", move |object| {
                let is_ready = object
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.iter().find(|c| c.type_ == condition::READY))
                    .is_some_and(|c| c.status == "True");
                if is_ready {
                    let mut ready = ready.lock().unwrap();
                    ready.entry(object.name_any()).or_insert_with(Instant::now);
                }
            }));
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        watch
            .tasks
            .push(watch.spawn(secrets, "secrets", |_: &Secret| {}));
        let events: Api<KubeEvent> = Api::namespaced(client.clone(), namespace);
        watch
            .tasks
            .push(watch.spawn(events, "events", |_: &KubeEvent| {}));
        let deadline = Instant::now() + Duration::from_secs(30);
        while watch.synced.load(Ordering::SeqCst) < 3 {
            if Instant::now() > deadline {
                return bail("the namespace watches did not sync within 30s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(watch)
    }

    pub(crate) fn spawn<K>(
        &self,
        api: Api<K>,
        kind: &'static str,
        on_object: impl Fn(&K) + Send + 'static,
    ) -> tokio::task::JoinHandle<()>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
        K::DynamicType: Default,
    {
        let changes = self.changes.clone();
        let names = self.changed_names.clone();
        let synced = self.synced.clone();
        tokio::spawn(async move {
            let mut first_sync = true;
            let stream = watcher(api, watcher::Config::default());
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::InitApply(object)) => on_object(&object),
                    Ok(watcher::Event::InitDone) => {
                        if first_sync {
                            first_sync = false;
                            synced.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Ok(watcher::Event::Apply(object)) | Ok(watcher::Event::Delete(object)) => {
                        changes[kind].fetch_add(1, Ordering::SeqCst);
                        {
                            let mut names = names.lock().unwrap();
                            if names.len() < 10_000 {
                                names.push(format!("{kind}/{}", object.name_any()));
                            }
                        }
                        on_object(&object);
                    }
                    Ok(watcher::Event::Init) => {}
                    Err(e) => {
                        say(format!("watch on {kind}: {e}"));
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        })
    }

    pub(crate) fn snapshot(&self) -> (BTreeMap<String, u64>, usize) {
        (
            self.changes
                .iter()
                .map(|(k, v)| (k.to_string(), v.load(Ordering::SeqCst)))
                .collect(),
            self.changed_names.lock().unwrap().len(),
        )
    }

    /// Changes since a snapshot, per kind, with a sample of what changed.
    pub(crate) fn since(&self, earlier: &(BTreeMap<String, u64>, usize)) -> Value {
        let (now, names_now) = self.snapshot();
        let by_kind: BTreeMap<String, u64> = now
            .iter()
            .map(|(k, v)| (k.clone(), v - earlier.0.get(k).copied().unwrap_or(0)))
            .collect();
        let total: u64 = by_kind.values().sum();
        let names = self.changed_names.lock().unwrap();
        let mut sample: Vec<String> = names[earlier.1.min(names_now)..names_now.min(names.len())]
            .iter()
            .take(10)
            .cloned()
            .collect();
        sample.dedup();
        json!({"total": total, "by_kind": by_kind, "sample": sample})
    }

    pub(crate) fn ready_count(&self) -> usize {
        self.ready.lock().unwrap().len()
    }

    pub(crate) fn ready_times(&self) -> HashMap<String, Instant> {
        self.ready.lock().unwrap().clone()
    }
}

impl Drop for NamespaceWatch {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
