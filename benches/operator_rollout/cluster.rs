//! Setting up and tearing down what a scenario needs on the control plane.

use super::*;

pub(crate) fn dev_dialect(dialect: Dialect) -> DevDialect {
    match dialect {
        Dialect::Rfc7591 => DevDialect::Rfc7591,
        Dialect::S4s => DevDialect::S4s,
        Dialect::S4sLegacy => DevDialect::S4sLegacy,
    }
}

pub(crate) fn dialect_name(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Rfc7591 => "RFC7591",
        Dialect::S4s => "S4S",
        Dialect::S4sLegacy => "S4SLegacy",
    }
}

pub(crate) fn client_name(i: usize) -> String {
    format!("bench-{i:05}")
}

pub(crate) fn smart_client(i: usize, dialect: Dialect) -> Res<SmartClient> {
    let mut spec = json!({
        "authServerRef": {"name": "dev"},
        "clientName": format!("Bench client {i}"),
        "redirectUris": [format!("https://app-{i}.example.org/callback")],
        "scopes": ["openid", "fhirUser", "launch/patient", "patient/Observation.rs", "offline_access"],
    });
    if dialect == Dialect::S4sLegacy {
        spec["clientId"] = json!(format!("bench-{i:05}"));
    }
    if dialect != Dialect::Rfc7591 {
        spec["debugTokens"] = json!([{
            "name": "daniel", "user": "daniel-adams", "patientId": "smart-1288992", "lifetime": "1h"
        }]);
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "smart.fhir.dev/v1alpha1",
        "kind": "SmartClient",
        "metadata": {"name": client_name(i)},
        "spec": spec,
    }))?)
}

pub(crate) async fn install_crds(client: &Client) -> Res<()> {
    let params = PatchParams::apply(HARNESS_MANAGER).force();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in smart_operator::crd::all_crds() {
        let name = crd.name_any();
        crds.patch(&name, &params, &Patch::Apply(&crd)).await?;
    }
    for crd in smart_operator::crd::all_crds() {
        let name = crd.name_any();
        let established = kube::runtime::wait::await_condition(
            crds.clone(),
            &name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        tokio::time::timeout(Duration::from_secs(60), established)
            .await
            .map_err(|_| format!("CRD {name} not Established within 60s"))??;
    }
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    for p in smart_operator::crd::admission::all_policies() {
        policies
            .patch(&p.policy.name_any(), &params, &Patch::Apply(&p.policy))
            .await?;
        bindings
            .patch(&p.binding.name_any(), &params, &Patch::Apply(&p.binding))
            .await?;
    }
    // As the chart installs it on Kubernetes 1.36+: new SmartClients carry the finalizer already.
    let finalizer = smart_operator::crd::admission::finalizer_policy();
    Api::<MutatingAdmissionPolicy>::all(client.clone())
        .patch(
            &finalizer.policy.name_any(),
            &params,
            &Patch::Apply(&finalizer.policy),
        )
        .await?;
    Api::<MutatingAdmissionPolicyBinding>::all(client.clone())
        .patch(
            &finalizer.binding.name_any(),
            &params,
            &Patch::Apply(&finalizer.binding),
        )
        .await?;
    // On a fresh control plane creates are refused (503) for a second or two until the apiserver has
    // the CRD schema the finalizer policy needs: wait until a dry-run create comes back finalized.
    let probe = smart_client(0, Dialect::Rfc7591)?;
    let api: Api<SmartClient> = Api::namespaced(client.clone(), "default");
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match api.create(&dry_run, &probe).await {
            Ok(created) if !created.finalizers().is_empty() => return Ok(()),
            outcome if Instant::now() > deadline => {
                return bail(format!(
                    "SmartClients are not created with the finalizer 30s after the policies: {:?}",
                    outcome.map(|c| c.finalizers().to_vec())
                ));
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

pub(crate) async fn create_namespace(client: &Client, name: &str) -> Res<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(name).await?.is_some() {
        delete_namespace(client, name, Duration::from_secs(120)).await?;
    }
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"smart.fhir.dev/bench": "true"}}
    }))?;
    namespaces.create(&PostParams::default(), &ns).await?;
    Ok(())
}

/// Asks for a namespace's deletion without waiting for it.
pub(crate) async fn start_namespace_deletion(client: &Client, name: &str) -> Res<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    match namespaces.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes the finalizers of every SmartClient of a namespace no operator watches.
pub(crate) async fn release_finalizers(
    client: &Client,
    namespace: &str,
    concurrency: usize,
) -> Res<()> {
    let api: Api<SmartClient> = Api::namespaced(client.clone(), namespace);
    let names: Vec<String> = api
        .list_metadata(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|c| !c.finalizers().is_empty())
        .map(|c| c.name_any())
        .collect();
    let patch = Patch::Merge(json!({ "metadata": { "finalizers": null } }));
    futures::stream::iter(names)
        .map(|name| {
            let (api, patch) = (&api, &patch);
            async move { api.patch(&name, &PatchParams::default(), patch).await }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// Deletes every SmartClient of a namespace and waits until they are gone (their finalizers handled).
pub(crate) async fn delete_smart_clients(
    client: &Client,
    namespace: &str,
    timeout: Duration,
) -> Res<Duration> {
    let api: Api<SmartClient> = Api::namespaced(client.clone(), namespace);
    let started = Instant::now();
    api.delete_collection(&DeleteParams::default(), &Default::default())
        .await?;
    loop {
        let left = api
            .list_metadata(&kube::api::ListParams::default().limit(1))
            .await?;
        if left.items.is_empty() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            return bail(format!(
                "SmartClients of {namespace} still there after {timeout:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Deletes a namespace and waits until it is gone; returns how long that took.
pub(crate) async fn delete_namespace(
    client: &Client,
    name: &str,
    timeout: Duration,
) -> Res<Duration> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let started = Instant::now();
    match namespaces.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Duration::ZERO),
        Err(e) => return Err(e.into()),
    }
    while namespaces.get_opt(name).await?.is_some() {
        if started.elapsed() > timeout {
            return bail(format!("namespace {name} still exists after {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(started.elapsed())
}

/// The dev server's SmartAuthServer `dev` (and its initial access token Secret for RFC 7591).
pub(crate) async fn create_auth_server(
    client: &Client,
    namespace: &str,
    dialect: Dialect,
    server: &RunningDevServer,
) -> Res<()> {
    let mut spec = json!({
        "dialect": dialect_name(dialect),
        "fhirBaseUrl": format!("{}/fhir", server.base_url()),
    });
    if dialect == Dialect::Rfc7591 {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "dev-iat"},
            "stringData": {"token": IAT},
        }))?;
        secrets.create(&PostParams::default(), &secret).await?;
        spec["credentials"] =
            json!({"initialAccessTokenSecretRef": {"name": "dev-iat", "key": "token"}});
    }
    let servers: Api<SmartAuthServer> = Api::namespaced(client.clone(), namespace);
    let object: SmartAuthServer = serde_json::from_value(json!({
        "apiVersion": "smart.fhir.dev/v1alpha1",
        "kind": "SmartAuthServer",
        "metadata": {"name": "dev"},
        "spec": spec,
    }))?;
    servers.create(&PostParams::default(), &object).await?;
    Ok(())
}

pub(crate) async fn wait_for_auth_server_ready(
    client: &Client,
    namespace: &str,
    operator: &mut OperatorProcess,
) -> Res<()> {
    let servers: Api<SmartAuthServer> = Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let server = servers.get("dev").await?;
        let ready = server
            .status
            .as_ref()
            .map(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == condition::READY && c.status == "True")
            })
            .unwrap_or(false);
        if ready {
            return Ok(());
        }
        if !operator.alive() {
            return bail(format!("the operator exited:\n{}", operator.log_tail()));
        }
        if Instant::now() > deadline {
            return bail(format!(
                "SmartAuthServer {namespace}/dev not Ready within 60s: {:?}",
                server.status
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates SmartClients 0..n with `concurrency` requests in flight, recording when each create
/// returned and handing each created object to `created` (the floor's workers). Retries refused or
/// failed creates a few times (the apiserver may shed load); returns the number of create requests.
pub(crate) async fn create_clients(
    client: &Client,
    namespace: &str,
    n: usize,
    dialect: Dialect,
    concurrency: usize,
    created_at: Arc<Mutex<HashMap<String, Instant>>>,
    created: Option<futures::channel::mpsc::UnboundedSender<SmartClient>>,
) -> Res<u64> {
    let api: Api<SmartClient> = Api::namespaced(client.clone(), namespace);
    let requests = Arc::new(AtomicU64::new(0));
    futures::stream::iter(0..n)
        .map(|i| {
            let (api, created_at, created, requests) = (
                api.clone(),
                created_at.clone(),
                created.clone(),
                requests.clone(),
            );
            async move {
                let object = smart_client(i, dialect)?;
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    requests.fetch_add(1, Ordering::Relaxed);
                    match api.create(&PostParams::default(), &object).await {
                        Ok(object) => {
                            created_at
                                .lock()
                                .unwrap()
                                .insert(object.name_any(), Instant::now());
                            if let Some(tx) = &created {
                                let _ = tx.unbounded_send(object);
                            }
                            return Ok::<(), BoxError>(());
                        }
                        Err(e) if attempt < 5 => {
                            say(format!("create {} failed ({e}); retrying", client_name(i)));
                            tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(requests.load(Ordering::Relaxed))
}

/// Waits until the watch saw every one of `n` SmartClients Ready; fails on timeout or a dead operator.
pub(crate) async fn wait_all_ready(
    watch: &NamespaceWatch,
    n: usize,
    timeout: Duration,
    mut operator: Option<&mut OperatorProcess>,
) -> Res<()> {
    let deadline = Instant::now() + timeout;
    let mut last_report = Instant::now();
    while watch.ready_count() < n {
        if let Some(operator) = operator.as_deref_mut()
            && !operator.alive()
        {
            return bail(format!(
                "the operator exited during the rollout:\n{}",
                operator.log_tail()
            ));
        }
        if Instant::now() > deadline {
            return bail(format!(
                "only {}/{n} SmartClients Ready after {timeout:?}",
                watch.ready_count()
            ));
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            say(format!("  {} / {n} Ready", watch.ready_count()));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Total time (first create to last Ready) and per-object latency (create returned to Ready seen).
pub(crate) fn latencies(
    started: Instant,
    created_at: &HashMap<String, Instant>,
    ready: &HashMap<String, Instant>,
) -> Value {
    let mut per_object: Vec<f64> = created_at
        .iter()
        .filter_map(|(name, created)| {
            ready
                .get(name)
                .map(|r| r.saturating_duration_since(*created).as_secs_f64())
        })
        .collect();
    per_object.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let last_ready = ready
        .values()
        .map(|r| r.saturating_duration_since(started).as_secs_f64())
        .fold(0.0, f64::max);
    let last_created = created_at
        .values()
        .map(|c| c.saturating_duration_since(started).as_secs_f64())
        .fold(0.0, f64::max);
    json!({
        "all_ready_s": last_ready,
        "creates_done_s": last_created,
        "latency_p50_s": percentile(&per_object, 50.0),
        "latency_p99_s": percentile(&per_object, 99.0),
        "latency_max_s": per_object.last().copied().unwrap_or(0.0),
    })
}
