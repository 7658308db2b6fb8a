//! Counting requests: the apiserver's /metrics, a counting proxy in front of it, the dev server's stats.

use super::*;

/// `name{labels} value` lines of one metric family from Prometheus text.
pub(crate) fn prometheus_samples(text: &str, family: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(family) else {
            continue;
        };
        let (labels, value) = if let Some(rest) = rest.strip_prefix('{') {
            match rest.rsplit_once('}') {
                Some((labels, value)) => (labels, value),
                None => continue,
            }
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue;
        };
        let Ok(value) = value.trim().split(' ').next().unwrap_or("").parse::<f64>() else {
            continue;
        };
        let mut map = BTreeMap::new();
        for pair in labels.split("\",") {
            if let Some((k, v)) = pair.split_once("=\"") {
                map.insert(k.trim().to_owned(), v.trim_end_matches('"').to_owned());
            }
        }
        out.push((map, value));
    }
    out
}

pub(crate) async fn operator_reconciles(
    http: &reqwest::Client,
    url: &str,
) -> BTreeMap<String, f64> {
    let text = match http.get(url).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => return BTreeMap::new(),
    };
    let mut out = BTreeMap::new();
    for (labels, value) in prometheus_samples(&text, "smart_operator_reconcile_total") {
        if labels.get("controller").map(String::as_str) == Some("smartclient") {
            let key = labels.get("result").cloned().unwrap_or_default();
            *out.entry(key).or_default() += value;
        }
    }
    for (labels, value) in prometheus_samples(&text, "smart_operator_authserver_requests_total") {
        let key = format!(
            "authserver:{}:{}",
            labels.get("operation").cloned().unwrap_or_default(),
            labels.get("status").cloned().unwrap_or_default()
        );
        *out.entry(key).or_default() += value;
    }
    out
}

// -------------------------------------------------------------------------------------------------
// Counters: apiserver /metrics, dev server /_admin/stats, watches on the namespace

/// `apiserver_request_total` summed by (verb, resource[/subresource]).
#[derive(Clone, Default)]
pub(crate) struct ApiCounts(BTreeMap<(String, String), f64>);

impl ApiCounts {
    pub(crate) async fn scrape(client: &Client) -> Res<Self> {
        let request = axum::http::Request::get("/metrics").body(Vec::new())?;
        let text = client.request_text(request).await?;
        let mut counts = BTreeMap::new();
        for (labels, value) in prometheus_samples(&text, "apiserver_request_total") {
            let resource = labels.get("resource").cloned().unwrap_or_default();
            if resource.is_empty() {
                continue; // non-resource URLs (/metrics, /healthz, discovery)
            }
            let sub = labels.get("subresource").cloned().unwrap_or_default();
            let resource = if sub.is_empty() {
                resource
            } else {
                format!("{resource}/{sub}")
            };
            let verb = labels.get("verb").cloned().unwrap_or_default();
            *counts.entry((verb, resource)).or_default() += value;
        }
        Ok(Self(counts))
    }

    pub(crate) fn minus(&self, earlier: &ApiCounts) -> ApiCounts {
        let mut out = BTreeMap::new();
        for (key, value) in &self.0 {
            let diff = value - earlier.0.get(key).copied().unwrap_or(0.0);
            if diff > 0.0 {
                out.insert(key.clone(), diff);
            }
        }
        ApiCounts(out)
    }

    pub(crate) fn operator_resource(resource: &str) -> bool {
        let base = resource.split('/').next().unwrap_or("");
        OPERATOR_RESOURCES.contains(&base)
    }

    /// By verb, only resources the operator touches.
    pub(crate) fn by_verb(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for ((verb, resource), value) in &self.0 {
            if Self::operator_resource(resource) {
                *out.entry(verb.clone()).or_default() += *value as u64;
            }
        }
        out
    }

    pub(crate) fn by_resource_verb(&self) -> BTreeMap<String, u64> {
        self.0
            .iter()
            .filter(|((_, r), _)| Self::operator_resource(r))
            .map(|((v, r), n)| (format!("{v} {r}"), *n as u64))
            .collect()
    }

    pub(crate) fn writes(&self) -> u64 {
        self.by_verb()
            .iter()
            .filter(|(v, _)| WRITE_VERBS.contains(&v.as_str()))
            .map(|(_, n)| n)
            .sum()
    }

    /// Writes to other resources (leases excepted, which the controller-manager renews every few
    /// seconds): a sign that other clients shared the control plane during the window.
    pub(crate) fn foreign_writes(&self) -> u64 {
        self.0
            .iter()
            .filter(|((v, r), _)| {
                WRITE_VERBS.contains(&v.as_str())
                    && !Self::operator_resource(r)
                    && !r.starts_with("leases")
            })
            .map(|(_, n)| *n as u64)
            .sum()
    }

    pub(crate) fn total(&self) -> u64 {
        self.by_verb().values().sum()
    }

    pub(crate) fn subtract(&mut self, verb: &str, resource: &str, count: f64) {
        if let Some(value) = self.0.get_mut(&(verb.to_owned(), resource.to_owned())) {
            *value = (*value - count).max(0.0);
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "by_verb": self.by_verb(),
            "by_resource": self.by_resource_verb(),
            "writes": self.writes(),
            "total": self.total(),
            "foreign_writes": self.foreign_writes(),
        })
    }
}

/// A plain-HTTP proxy on loopback in front of the apiserver that counts every request by (verb,
/// resource): the exact requests of one client (the operator, or the floor), where the apiserver's
/// own metrics also count everyone else on a shared control plane. Requests go upstream through the
/// harness's kube client (its TLS client certificate); watch responses are streamed through.
pub(crate) struct CountingProxy {
    pub(crate) address: std::net::SocketAddr,
    pub(crate) counts: Arc<Mutex<BTreeMap<(String, String), f64>>>,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
pub(crate) struct ProxyState {
    pub(crate) upstream: Client,
    pub(crate) counts: Arc<Mutex<BTreeMap<(String, String), f64>>>,
}

/// apiserver-style verb and `resource[/subresource]` of a request.
pub(crate) fn classify(
    method: &axum::http::Method,
    uri: &axum::http::Uri,
    headers: &axum::http::HeaderMap,
) -> (String, String) {
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let rest: &[&str] = match segments.first() {
        Some(&"api") if segments.len() >= 2 => &segments[2..],
        Some(&"apis") if segments.len() >= 3 => &segments[3..],
        _ => return (method.as_str().to_owned(), String::new()),
    };
    let rest = if rest.len() >= 3 && rest[0] == "namespaces" {
        &rest[2..]
    } else {
        rest
    };
    let resource = rest.first().copied().unwrap_or("");
    let named = rest.len() >= 2;
    let resource = match rest.get(2) {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_owned(),
    };
    let query = uri.query().unwrap_or("");
    let watch = query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1");
    let apply = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/apply-patch"));
    let verb = match method.as_str() {
        "GET" if watch => "WATCH",
        "GET" if !named => "LIST",
        "PATCH" if apply => "APPLY",
        "DELETE" if !named => "DELETECOLLECTION",
        other => other,
    };
    (verb.to_owned(), resource)
}

pub(crate) async fn forward(
    axum::extract::State(state): axum::extract::State<ProxyState>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let (parts, body) = request.into_parts();
    let key = classify(&parts.method, &parts.uri, &parts.headers);
    *state.counts.lock().unwrap().entry(key).or_default() += 1.0;
    let bytes = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(bytes) => bytes,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let mut upstream = axum::http::Request::builder()
        .method(parts.method)
        .uri(path);
    for (name, value) in &parts.headers {
        if name != header::HOST && name != header::CONNECTION && name != header::CONTENT_LENGTH {
            upstream = upstream.header(name, value);
        }
    }
    let upstream = match upstream.body(kube::client::Body::from(bytes.to_vec())) {
        Ok(request) => request,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    match state.upstream.send(upstream).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            parts.headers.remove(header::TRANSFER_ENCODING);
            parts.headers.remove(header::CONNECTION);
            axum::response::Response::from_parts(parts, axum::body::Body::new(body))
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

impl CountingProxy {
    pub(crate) async fn start(upstream: Client) -> Res<Self> {
        let counts: Arc<Mutex<BTreeMap<(String, String), f64>>> = Arc::default();
        let state = ProxyState {
            upstream,
            counts: counts.clone(),
        };
        let app = axum::Router::new().fallback(forward).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                say(format!("counting proxy stopped: {e}"));
            }
        });
        Ok(Self {
            address,
            counts,
            task,
        })
    }

    pub(crate) fn counts(&self) -> ApiCounts {
        ApiCounts(self.counts.lock().unwrap().clone())
    }

    /// A kubeconfig that points at the proxy (plain HTTP on loopback, no credentials).
    pub(crate) fn write_kubeconfig(&self, path: &Path) -> Res<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: bench-proxy\n  cluster:\n    server: http://{}\n\
             users:\n- name: bench-proxy\n  user: {{}}\ncontexts:\n- name: bench-proxy\n  context:\n    \
             cluster: bench-proxy\n    user: bench-proxy\ncurrent-context: bench-proxy\n",
            self.address
        );
        std::fs::write(path, text)?;
        Ok(())
    }

    /// A kube client that goes through the proxy.
    pub(crate) fn client(&self) -> Res<Client> {
        let config = kube::Config::new(format!("http://{}", self.address).parse()?);
        Ok(Client::try_from(config)?)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Requests per endpoint of the dev server.
#[derive(Clone, Default)]
pub(crate) struct AuthCounts(BTreeMap<String, u64>);

impl AuthCounts {
    pub(crate) async fn fetch(http: &reqwest::Client, server: &RunningDevServer) -> Res<Self> {
        let stats: Value = http
            .get(format!("{}/_admin/stats", server.base_url()))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let mut out = BTreeMap::new();
        if let Some(endpoints) = stats["endpoints"].as_object() {
            for (name, value) in endpoints {
                out.insert(name.clone(), value["total"].as_u64().unwrap_or(0));
            }
        }
        Ok(Self(out))
    }

    pub(crate) fn minus(&self, earlier: &AuthCounts) -> AuthCounts {
        AuthCounts(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v - earlier.0.get(k).copied().unwrap_or(0)))
                .filter(|(_, v)| *v > 0)
                .collect(),
        )
    }

    pub(crate) fn get(&self, endpoint: &str) -> u64 {
        self.0.get(endpoint).copied().unwrap_or(0)
    }

    pub(crate) fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Calls other than debug token (re-)mints and the introspection that follows each.
    pub(crate) fn excluding_mints(&self) -> u64 {
        self.total() - self.get("debug_token") - self.get("introspect")
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({"total": self.total(), "by_endpoint": self.0})
    }
}
