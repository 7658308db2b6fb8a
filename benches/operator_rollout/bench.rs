//! One scenario per dialect and size: floor, rollout, idle, restart, unrelated load.

use super::*;

pub(crate) struct Bench {
    pub(crate) options: Options,
    pub(crate) client: Client,
    pub(crate) http: reqwest::Client,
    pub(crate) ticks: f64,
    pub(crate) logs: PathBuf,
    pub(crate) hard_failures: Vec<String>,
    /// Counts the operator's requests (None with --direct).
    pub(crate) operator_proxy: Option<CountingProxy>,
    pub(crate) operator_kubeconfig: Option<PathBuf>,
    /// Counts the floor's requests (None with --direct).
    pub(crate) floor_proxy: Option<CountingProxy>,
}

impl Bench {
    /// CPU seconds so far of the control plane's processes and of this harness (dev server, watches,
    /// proxies, the floor's client).
    pub(crate) fn cpu_snapshot(&self) -> BTreeMap<String, f64> {
        let run = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/control-plane/run");
        let mut out = BTreeMap::new();
        for component in ["kube-apiserver", "etcd", "kube-controller-manager"] {
            if let Some(pid) = std::fs::read_to_string(run.join(format!("{component}.pid")))
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok())
            {
                out.insert(component.to_owned(), cpu_seconds(pid, self.ticks));
            }
        }
        out.insert(
            "harness".into(),
            cpu_seconds(std::process::id(), self.ticks),
        );
        out
    }

    pub(crate) fn cpu_since(&self, earlier: &BTreeMap<String, f64>) -> Value {
        let now = self.cpu_snapshot();
        json!(
            now.iter()
                .map(|(k, v)| (
                    k.clone(),
                    ((v - earlier.get(k).copied().unwrap_or(0.0)) * 100.0).round() / 100.0
                ))
                .collect::<BTreeMap<_, _>>()
        )
    }

    /// The operator's requests so far (exact), or nothing with --direct.
    pub(crate) fn operator_requests(&self) -> ApiCounts {
        self.operator_proxy
            .as_ref()
            .map(CountingProxy::counts)
            .unwrap_or_default()
    }

    pub(crate) fn rollout_timeout(&self, n: usize) -> Duration {
        Duration::from_secs(120) + Duration::from_millis(100 * n as u64)
    }

    pub(crate) async fn floor(
        &self,
        dialect: Dialect,
        n: usize,
        server: &RunningDevServer,
    ) -> Res<Value> {
        let namespace = format!("bench-floor-{}-{n}", dialect_name(dialect).to_lowercase());
        create_namespace(&self.client, &namespace).await?;
        create_auth_server(&self.client, &namespace, dialect, server).await?;
        let http = HttpClient::new(&HttpSettings::default())?;
        let fhir_base_url = format!("{}/fhir", server.base_url());
        let endpoints = discover(&http, dialect, Some(&fhir_base_url), None).await?;
        let initial_token =
            (dialect == Dialect::Rfc7591).then(|| secrecy::SecretString::from(IAT.to_owned()));
        let kube = match &self.floor_proxy {
            Some(proxy) => proxy.client()?,
            None => self.client.clone(),
        };
        let requests_before = self
            .floor_proxy
            .as_ref()
            .map(CountingProxy::counts)
            .unwrap_or_default();
        let floor = Arc::new(Floor {
            kube,
            auth: AuthServerClient::new(dialect, http, &endpoints, initial_token)?,
            endpoints,
            fhir_base_url,
            dialect,
        });
        let watch = NamespaceWatch::start(&self.client, &namespace).await?;
        let auth_before = AuthCounts::fetch(&self.http, server).await?;
        let api_before = ApiCounts::scrape(&self.client).await?;
        let cpu_before = self.cpu_snapshot();
        let created_at = Arc::new(Mutex::new(HashMap::new()));
        let (tx, rx) = futures::channel::mpsc::unbounded::<SmartClient>();
        let started = Instant::now();
        let workers = {
            let floor = floor.clone();
            let concurrency = self.options.concurrency;
            tokio::spawn(async move {
                rx.map(|object| {
                    let floor = floor.clone();
                    async move { floor.handle(object).await }
                })
                .buffer_unordered(concurrency)
                .try_collect::<Vec<()>>()
                .await
                .map(|_| ())
            })
        };
        let creates = create_clients(
            &self.client,
            &namespace,
            n,
            dialect,
            self.options.create_concurrency,
            created_at.clone(),
            Some(tx),
        )
        .await?;
        workers.await??;
        wait_all_ready(&watch, n, self.rollout_timeout(n), None).await?;
        let mut result = latencies(started, &created_at.lock().unwrap(), &watch.ready_times());
        let api = ApiCounts::scrape(&self.client).await?.minus(&api_before);
        let auth = AuthCounts::fetch(&self.http, server)
            .await?
            .minus(&auth_before);
        result["create_requests"] = json!(creates);
        if let Some(proxy) = &self.floor_proxy {
            result["requests"] = proxy.counts().minus(&requests_before).to_json();
        }
        result["apiserver"] = api.to_json();
        result["auth_server"] = auth.to_json();
        result["cpu_s"] = self.cpu_since(&cpu_before);
        drop(watch);
        // No operator handles these: take off the finalizer the admission policy put on.
        release_finalizers(&self.client, &namespace, self.options.create_concurrency).await?;
        if self.options.quick {
            start_namespace_deletion(&self.client, &namespace).await?;
        } else if !self.options.keep {
            delete_namespace(&self.client, &namespace, Duration::from_secs(300)).await?;
        }
        Ok(result)
    }

    pub(crate) async fn start_operator(
        &self,
        namespace: &str,
        log: &str,
        tag: &str,
    ) -> Res<OperatorProcess> {
        let path = self.logs.join(format!("operator-{namespace}-{tag}.log"));
        let mut operator = OperatorProcess::start(
            &self.options,
            namespace,
            log,
            path,
            self.operator_kubeconfig.as_deref(),
        )?;
        operator.wait_for_metrics().await?;
        Ok(operator)
    }

    /// Restarts the operator (debug log) and waits until it planned Wait for every client.
    pub(crate) async fn restart(
        &self,
        operator: OperatorProcess,
        namespace: &str,
        n: usize,
        tag: &str,
    ) -> Res<(OperatorProcess, f64)> {
        operator.stop().await;
        let path = self.logs.join(format!("operator-{namespace}-{tag}.log"));
        let mut operator = OperatorProcess::start(
            &self.options,
            namespace,
            "smart_operator=debug,info",
            path,
            self.operator_kubeconfig.as_deref(),
        )?;
        let mut waiting: HashSet<String> = HashSet::new();
        let deadline = Instant::now() + self.rollout_timeout(n);
        while waiting.len() < n {
            for line in operator.new_log_lines() {
                if line.contains("planned action=Wait")
                    && let Some(name) = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("client="))
                {
                    waiting.insert(name.to_owned());
                }
            }
            if waiting.len() >= n {
                break;
            }
            if !operator.alive() {
                return bail(format!(
                    "the restarted operator exited:\n{}",
                    operator.log_tail()
                ));
            }
            if Instant::now() > deadline {
                return bail(format!(
                    "after a restart only {}/{n} clients reached Wait",
                    waiting.len()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let elapsed = operator.started.elapsed().as_secs_f64();
        operator.wait_for_metrics().await?;
        Ok((operator, elapsed))
    }

    pub(crate) async fn scenario(&mut self, dialect: Dialect, n: usize) -> Res<Value> {
        let label = format!("{} N={n}", dialect_name(dialect));
        let scenario_started = Instant::now();
        say(format!("=== {label} (load {})", loadavg()));
        let mut config = DevServerConfig::new(dev_dialect(dialect));
        config.initial_access_tokens = vec![IAT.to_owned()];
        let server = DevServer::bind(config).await?.spawn();
        let mut out = json!({
            "dialect": dialect_name(dialect),
            "n": n,
            "load_at_start": loadavg(),
        });

        // 2. The floor, first, in a namespace of its own that is gone before the operator starts.
        say(format!("{label}: floor"));
        let floor = self.floor(dialect, n, &server).await?;
        say(format!(
            "{label}: floor all Ready in {:.2}s",
            floor["all_ready_s"].as_f64().unwrap_or(0.0)
        ));
        out["floor"] = floor;

        // 1. Rollout.
        let namespace = format!("bench-{}-{n}", dialect_name(dialect).to_lowercase());
        create_namespace(&self.client, &namespace).await?;
        create_auth_server(&self.client, &namespace, dialect, &server).await?;
        let mut operator = self.start_operator(&namespace, "info", "rollout").await?;
        wait_for_auth_server_ready(&self.client, &namespace, &mut operator).await?;
        let watch = NamespaceWatch::start(&self.client, &namespace).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        say(format!("{label}: rollout"));
        let cpu_before = operator.cpu(self.ticks);
        let others_cpu_before = self.cpu_snapshot();
        let auth_before = AuthCounts::fetch(&self.http, &server).await?;
        let api_before = ApiCounts::scrape(&self.client).await?;
        let requests_before = self.operator_requests();
        let metrics_url = operator.metrics_url.clone().unwrap_or_default();
        let created_at = Arc::new(Mutex::new(HashMap::new()));
        let started = Instant::now();
        let creates = create_clients(
            &self.client,
            &namespace,
            n,
            dialect,
            self.options.create_concurrency,
            created_at.clone(),
            None,
        )
        .await?;
        wait_all_ready(&watch, n, self.rollout_timeout(n), Some(&mut operator)).await?;
        let mut rollout = latencies(started, &created_at.lock().unwrap(), &watch.ready_times());
        let cpu = operator.cpu(self.ticks) - cpu_before;
        let mut api = ApiCounts::scrape(&self.client).await?.minus(&api_before);
        let auth = AuthCounts::fetch(&self.http, &server)
            .await?
            .minus(&auth_before);
        let api_all = api.to_json();
        api.subtract("POST", "smartclients", creates as f64);
        rollout["create_requests"] = json!(creates);
        rollout["apiserver_including_creates"] = api_all;
        rollout["apiserver_operator"] = api.to_json();
        if self.operator_proxy.is_some() {
            let requests = self.operator_requests().minus(&requests_before);
            rollout["requests"] = requests.to_json();
            rollout["requests_per_client"] = json!(requests.total() as f64 / n as f64);
        }
        rollout["auth_server"] = auth.to_json();
        rollout["operator_cpu_s"] = json!(cpu);
        rollout["cpu_s"] = self.cpu_since(&others_cpu_before);
        rollout["operator_reconciles"] = json!(operator_reconciles(&self.http, &metrics_url).await);
        rollout["load"] = json!(loadavg());
        say(format!(
            "{label}: all Ready in {:.2}s (p50 {:.3}s, p99 {:.3}s), operator CPU {cpu:.2}s",
            rollout["all_ready_s"].as_f64().unwrap_or(0.0),
            rollout["latency_p50_s"].as_f64().unwrap_or(0.0),
            rollout["latency_p99_s"].as_f64().unwrap_or(0.0),
        ));

        // Trailing work after the last Ready (reconciles triggered by the operator's own writes).
        let settle = if self.options.quick {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(10)
        };
        let settle_before = (
            watch.snapshot(),
            ApiCounts::scrape(&self.client).await?,
            self.operator_requests(),
        );
        tokio::time::sleep(settle).await;
        let settle_api = ApiCounts::scrape(&self.client)
            .await?
            .minus(&settle_before.1);
        rollout["after_ready"] = json!({
            "window_s": settle.as_secs_f64(),
            "namespace_changes": watch.since(&settle_before.0),
            "apiserver": settle_api.to_json(),
            "requests": self.operator_requests().minus(&settle_before.2).to_json(),
        });
        rollout["operator_peak_rss_mib"] = json!(mib(operator.peak_rss_kib()));
        out["rollout"] = rollout;
        let floor_s = out["floor"]["all_ready_s"].as_f64().unwrap_or(0.0);
        let operator_s = out["rollout"]["all_ready_s"].as_f64().unwrap_or(0.0);
        out["ratio"] = json!(if floor_s > 0.0 {
            operator_s / floor_s
        } else {
            0.0
        });

        // 3. Idle.
        say(format!("{label}: idle for {:?}", self.options.idle));
        let idle_watch = watch.snapshot();
        let idle_api = ApiCounts::scrape(&self.client).await?;
        let idle_auth = AuthCounts::fetch(&self.http, &server).await?;
        let idle_cpu = operator.cpu(self.ticks);
        let idle_requests = self.operator_requests();
        let idle_others_cpu = self.cpu_snapshot();
        let reconciles_before = operator_reconciles(&self.http, &metrics_url).await;
        let idle_started = Instant::now();
        tokio::time::sleep(self.options.idle).await;
        let minutes = idle_started.elapsed().as_secs_f64() / 60.0;
        let api = ApiCounts::scrape(&self.client).await?.minus(&idle_api);
        let auth = AuthCounts::fetch(&self.http, &server)
            .await?
            .minus(&idle_auth);
        let changes = watch.since(&idle_watch);
        let requests = self.operator_requests().minus(&idle_requests);
        let reconciles_after = operator_reconciles(&self.http, &metrics_url).await;
        let reconciles: BTreeMap<String, f64> = reconciles_after
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v - reconciles_before.get(k).copied().unwrap_or(0.0),
                )
            })
            .filter(|(_, v)| *v > 0.0)
            .collect();
        let idle_writes = changes["total"].as_u64().unwrap_or(0);
        let idle_auth_calls = auth.excluding_mints();
        out["idle"] = json!({
            "window_s": self.options.idle.as_secs_f64(),
            "namespace_changes": changes,
            "namespace_writes_per_min": idle_writes as f64 / minutes,
            "apiserver": api.to_json(),
            "apiserver_writes_per_min": api.writes() as f64 / minutes,
            "requests": requests.to_json(),
            "operator_writes_per_min": requests.writes() as f64 / minutes,
            "operator_requests_per_min": requests.total() as f64 / minutes,
            "auth_server": auth.to_json(),
            "auth_calls_per_min_excluding_mints": idle_auth_calls as f64 / minutes,
            "token_remints": auth.get("debug_token"),
            "operator_cpu_s": operator.cpu(self.ticks) - idle_cpu,
            "cpu_s": self.cpu_since(&idle_others_cpu),
            "operator_reconciles": reconciles,
        });
        if idle_writes > 0 {
            self.hard_failures.push(format!(
                "{label}: {idle_writes} writes to the namespace while idle"
            ));
        }
        if requests.writes() > 0 {
            self.hard_failures.push(format!(
                "{label}: the operator sent {} write requests while idle ({:?})",
                requests.writes(),
                requests.by_resource_verb()
            ));
        }
        for endpoint in ["register", "update", "delete"] {
            if auth.get(endpoint) > 0 {
                self.hard_failures.push(format!(
                    "{label}: {} auth-server {endpoint} calls while idle",
                    auth.get(endpoint)
                ));
            }
        }
        if self.operator_proxy.is_none() && api.foreign_writes() > 0 {
            say(format!(
                "{label}: note: {} writes by other clients of the control plane during the idle window",
                api.foreign_writes()
            ));
        }
        out["rollout"]["operator_peak_rss_after_idle_mib"] = json!(mib(operator.peak_rss_kib()));

        // 4. Restart.
        say(format!("{label}: restart"));
        let restart_watch = watch.snapshot();
        let restart_api = ApiCounts::scrape(&self.client).await?;
        let restart_auth = AuthCounts::fetch(&self.http, &server).await?;
        let restart_requests = self.operator_requests();
        let (operator, restart_s) = self.restart(operator, &namespace, n, "restart").await?;
        let restart_cpu = operator.cpu(self.ticks);
        tokio::time::sleep(settle).await;
        let api = ApiCounts::scrape(&self.client).await?.minus(&restart_api);
        let auth = AuthCounts::fetch(&self.http, &server)
            .await?
            .minus(&restart_auth);
        let registrations = auth.get("register");
        let mints = auth.get("debug_token");
        let without_unrelated = (operator.peak_rss_kib(), operator.rss_kib());
        out["restart"] = json!({
            "all_reconciled_s": restart_s,
            "registrations": registrations,
            "token_mints": mints,
            "auth_server": auth.to_json(),
            "apiserver": api.to_json(),
            "requests": self.operator_requests().minus(&restart_requests).to_json(),
            "namespace_changes": watch.since(&restart_watch),
            "operator_cpu_to_reconciled_s": restart_cpu,
            "operator_peak_rss_mib": mib(without_unrelated.0),
            "operator_reconciles": operator_reconciles(&self.http, operator.metrics_url.as_deref().unwrap_or("")).await,
        });
        if registrations > 0 || mints > 0 {
            self.hard_failures.push(format!(
                "{label}: restart made {registrations} registrations and {mints} token mints"
            ));
        }
        say(format!(
            "{label}: restart reconciled all in {restart_s:.2}s; registrations {registrations}, mints {mints}"
        ));

        // 5. Unrelated Secrets.
        let u = self.options.unrelated;
        say(format!("{label}: {u} unrelated Secrets"));
        let created =
            create_unrelated_secrets(&self.client, &namespace, u, self.options.create_concurrency)
                .await?;
        let unrelated_requests = self.operator_requests();
        let (operator, unrelated_restart_s) =
            self.restart(operator, &namespace, n, "unrelated").await?;
        tokio::time::sleep(settle).await;
        let unrelated_requests = self.operator_requests().minus(&unrelated_requests);
        let with_unrelated = (operator.peak_rss_kib(), operator.rss_kib());
        out["unrelated"] = json!({
            "secrets": u,
            "create_s": created,
            "peak_rss_without_mib": mib(without_unrelated.0),
            "peak_rss_with_mib": mib(with_unrelated.0),
            "rss_without_mib": mib(without_unrelated.1),
            "rss_with_mib": mib(with_unrelated.1),
            "peak_rss_added_mib": mib(with_unrelated.0) - mib(without_unrelated.0),
            "restart_all_reconciled_s": unrelated_restart_s,
            "restart_requests": unrelated_requests.to_json(),
        });
        say(format!(
            "{label}: peak RSS {:.1} MiB without, {:.1} MiB with {u} unrelated Secrets",
            mib(without_unrelated.0),
            mib(with_unrelated.0)
        ));

        // Cleanup, with the operator running so that finalizers are handled.
        drop(watch);
        if self.options.quick {
            // The operator handles the finalizers; the rest goes in the background.
            let took =
                delete_smart_clients(&self.client, &namespace, Duration::from_secs(120)).await?;
            out["cleanup_s"] = json!(took.as_secs_f64());
            start_namespace_deletion(&self.client, &namespace).await?;
        } else if !self.options.keep {
            let timeout = Duration::from_secs(120) + Duration::from_millis(50 * n as u64);
            match delete_namespace(&self.client, &namespace, timeout).await {
                Ok(took) => out["cleanup_s"] = json!(took.as_secs_f64()),
                Err(e) => say(format!("cleanup of {namespace}: {e}")),
            }
        }
        operator.stop().await;
        let _ = server.stop().await;
        out["scenario_s"] = json!(scenario_started.elapsed().as_secs_f64());
        out["load_at_end"] = json!(loadavg());
        Ok(out)
    }
}

/// Secrets the operator has no business with (no managed-by label), about 1 KiB each.
pub(crate) async fn create_unrelated_secrets(
    client: &Client,
    namespace: &str,
    count: usize,
    concurrency: usize,
) -> Res<f64> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let started = Instant::now();
    let payload = ByteString("x".repeat(1024).into_bytes());
    futures::stream::iter(0..count)
        .map(|i| {
            let (api, payload) = (api.clone(), payload.clone());
            async move {
                let mut secret: Secret = serde_json::from_value(json!({
                    "metadata": {"name": format!("unrelated-{i:05}"), "labels": {"app": "unrelated"}},
                }))?;
                secret.data = Some(BTreeMap::from([("payload".to_owned(), payload)]));
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match api.create(&PostParams::default(), &secret).await {
                        Ok(_) => return Ok::<(), BoxError>(()),
                        Err(kube::Error::Api(s)) if s.code == 409 => return Ok(()),
                        Err(_) if attempt < 5 => {
                            tokio::time::sleep(Duration::from_millis(200 * attempt)).await
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(started.elapsed().as_secs_f64())
}
