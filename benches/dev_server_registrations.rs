//! How many RFC 7591 registrations per second smart-dev-server handles on loopback.
//!
//! `cargo bench --bench dev_server_registrations` (env `DEV_SERVER_LOAD_TOTAL`, default 20000, and
//! `DEV_SERVER_LOAD_CONNECTIONS`, default 64). The client runs in the same process on the same cores,
//! so the figure is a floor.

use std::time::Instant;

use smart_operator::devserver::{DevServer, DevServerConfig, Dialect};

const IAT: &str = "bench-initial-access-token";

fn from_env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let total = from_env("DEV_SERVER_LOAD_TOTAL", 20_000);
    let connections = from_env("DEV_SERVER_LOAD_CONNECTIONS", 64).max(1);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = DevServerConfig::new(Dialect::Rfc7591);
    config.initial_access_tokens = vec![IAT.to_owned()];
    let server = DevServer::bind(config)
        .await
        .expect("bind 127.0.0.1:0")
        .spawn();
    let url = format!("{}/oauth2/register", server.base_url());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()
        .expect("http client");
    let body = serde_json::to_vec(&serde_json::json!({
        "client_name": "bench",
        "redirect_uris": ["https://app.example.org/callback"],
        "scope": "launch/patient patient/*.read",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "client_secret_basic",
    }))
    .expect("JSON");
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..connections {
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        let share = total / connections + usize::from(worker < total % connections);
        workers.spawn(async move {
            for _ in 0..share {
                let response = http
                    .post(&url)
                    .bearer_auth(IAT)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .expect("register");
                assert_eq!(response.status(), reqwest::StatusCode::CREATED);
                response.bytes().await.expect("body");
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.expect("worker");
    }
    let elapsed = started.elapsed();
    println!(
        "{total} RFC 7591 registrations over {connections} connections in {:.2}s: {:.0} registrations/s",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
}
