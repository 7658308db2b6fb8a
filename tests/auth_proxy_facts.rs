//! smart-dev-server agrees with the real Sync-for-Science auth-proxy on every fact the operator relies
//! on. Each test sends the same requests to the real server (upstream code, `../shared/peers/auth-proxy`)
//! and to smart-dev-server of the matching dialect, and asserts that both answer what the peer's README
//! records. A dev server written from reading the sources agreed with code written from the same
//! reading (every probe of a present client re-registered it); this suite is what keeps them honest.

mod common;

use std::future::Future;
use std::time::{Duration, SystemTime};

use common::auth_proxy::{RealAuthProxy, Version};
use reqwest::StatusCode;
use serde_json::{Value, json};
use smart_operator::devserver::{DevServer, DevServerConfig, Dialect as DevDialect};

/// Runs `observe` against the real server of `version` and against smart-dev-server, and asserts that
/// both observed `expected`.
async fn same_on_both<F, Fut>(version: Version, expected: Value, observe: F)
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Value>,
{
    let real = RealAuthProxy::start(version).await;
    let dialect = match version {
        Version::Legacy => DevDialect::S4sLegacy,
        Version::Current => DevDialect::S4s,
    };
    let dev = DevServer::bind(DevServerConfig::new(dialect))
        .await
        .expect("bind the dev server")
        .spawn();
    let on_real = observe(real.base_url()).await;
    let on_dev = observe(dev.base_url()).await;
    assert_eq!(
        on_real,
        expected,
        "the real auth-proxy {} answered differently from its README (log {})",
        version.as_str(),
        real.log_path.display()
    );
    assert_eq!(
        on_dev,
        expected,
        "smart-dev-server ({dialect:?}) disagrees with the real auth-proxy {}",
        version.as_str()
    );
}

fn http() -> reqwest::Client {
    common::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Status, the JSON body (or "html" for a page), and whether a `WWW-Authenticate` header came with it.
async fn answer(response: reqwest::Response) -> Value {
    let status = response.status().as_u16();
    let challenge = response.headers().contains_key("www-authenticate");
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str::<Value>(&text).unwrap_or_else(|_| json!("html"));
    json!({"status": status, "body": body, "challenge": challenge})
}

/// A client registered the way each version takes it; returns (client_id, client_secret).
async fn register(base: &str, version: Version, client_id: &str) -> (String, String) {
    let response = match version {
        Version::Legacy => http()
            .post(format!("{base}/oauth/register"))
            .form(&[
                ("client_id", client_id),
                ("client_secret", "chosen-secret-for-the-facts"),
                ("client_name", "facts"),
                ("redirect_uris", "https://app.example.org/callback"),
                ("scopes", "launch/patient patient/*.read offline_access"),
            ])
            .send()
            .await
            .unwrap(),
        Version::Current => http()
            .post(format!("{base}/oauth/register"))
            .json(&json!({"client_name": "facts", "redirect_uris": ["https://app.example.org/callback"], "scope": "launch/patient patient/*.read offline_access"}))
            .send()
            .await
            .unwrap(),
    };
    assert!(
        response.status().is_success(),
        "registration at {base}: {}",
        response.status()
    );
    let body: Value = response.json().await.unwrap();
    (
        body["client_id"].as_str().unwrap().to_owned(),
        body["client_secret"].as_str().unwrap().to_owned(),
    )
}

async fn token_request(base: &str, client_id: &str, secret: &str, form: &[(&str, &str)]) -> Value {
    let response = http()
        .post(format!("{base}/oauth/token"))
        .basic_auth(client_id, Some(secret))
        .form(form)
        .send()
        .await
        .unwrap();
    answer(response).await
}

/// The operator's existence probe: a refresh grant with a made-up refresh token.
async fn probe(base: &str, client_id: &str, secret: &str) -> Value {
    let made_up = uuid::Uuid::new_v4().to_string();
    token_request(
        base,
        client_id,
        secret,
        &[("grant_type", "refresh_token"), ("refresh_token", &made_up)],
    )
    .await
}

async fn debug_token(base: &str, body: Value) -> Value {
    let response = http()
        .post(format!("{base}/oauth/debug/token"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "debug token at {base}");
    response.json().await.unwrap()
}

async fn introspect(base: &str, parameter: &str, token: &str) -> Value {
    let response = http()
        .get(format!("{base}/oauth/debug/introspect"))
        .query(&[(parameter, token)])
        .send()
        .await
        .unwrap();
    answer(response).await
}

/// Seconds from now until an RFC 1123 date, rounded to tens so a test's own run time does not show.
fn seconds_until(date: &Value) -> i64 {
    let at = httpdate::parse_http_date(date.as_str().expect("an RFC 1123 date")).unwrap();
    let seconds = match at.duration_since(SystemTime::now()) {
        Ok(ahead) => ahead.as_secs_f64(),
        Err(behind) => -behind.duration().as_secs_f64(),
    };
    ((seconds / 10.0).round() * 10.0) as i64
}

fn probe_facts(
    version: Version,
) -> impl Fn(String) -> std::pin::Pin<Box<dyn Future<Output = Value>>> {
    move |base| {
        Box::pin(async move {
            let (id, secret) = register(&base, version, "probe-facts").await;
            json!({
                "unknown client": probe(&base, "no-such-client", "x").await,
                "known client, its secret": probe(&base, &id, &secret).await,
                "known client, a wrong secret": probe(&base, &id, "wrong-secret").await,
                "client_credentials grant": token_request(&base, &id, &secret, &[("grant_type", "client_credentials")]).await,
                "unknown authorization code": token_request(&base, &id, &secret, &[("grant_type", "authorization_code"), ("code", "no-such-code"), ("redirect_uri", "https://app.example.org/callback")]).await,
            })
        })
    }
}

fn probe_expectation() -> Value {
    let oauthlib =
        |error: &str| json!({"status": 401, "body": {"error": error}, "challenge": false});
    json!({
        "unknown client": oauthlib("invalid_client"),
        "known client, its secret": oauthlib("invalid_grant"),
        "known client, a wrong secret": oauthlib("invalid_client"),
        "client_credentials grant": oauthlib("unauthorized_client"),
        "unknown authorization code": {"status": 500, "body": "html", "challenge": false},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_probe_of_a_present_client_is_401_invalid_grant_and_only_the_error_field_tells() {
    same_on_both(
        Version::Legacy,
        probe_expectation(),
        probe_facts(Version::Legacy),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_probe_of_a_present_client_is_401_invalid_grant_and_only_the_error_field_tells() {
    same_on_both(
        Version::Current,
        probe_expectation(),
        probe_facts(Version::Current),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_registration_keeps_the_chosen_id_and_secret_and_a_duplicate_is_a_500_page() {
    let expected = json!({
        "first": {"status": 200, "client_id": "chosen-id", "client_secret": "chosen-secret-for-the-facts",
                  "default_scopes": ["launch/patient", "patient/*.read", "offline_access"]},
        "again": {"status": 500, "body": "html", "challenge": false},
    });
    same_on_both(Version::Legacy, expected, |base| async move {
        let form = [
            ("client_id", "chosen-id"),
            ("client_secret", "chosen-secret-for-the-facts"),
            ("client_name", "facts"),
            ("redirect_uris", "https://app.example.org/callback"),
            ("scopes", "launch/patient patient/*.read offline_access"),
        ];
        let url = format!("{base}/oauth/register");
        let first = answer(http().post(&url).form(&form).send().await.unwrap()).await;
        let again = answer(http().post(&url).form(&form).send().await.unwrap()).await;
        json!({
            "first": {"status": first["status"], "client_id": first["body"]["client_id"],
                      "client_secret": first["body"]["client_secret"],
                      "default_scopes": first["body"]["default_scopes"]},
            "again": again,
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_registration_is_201_with_new_server_chosen_ids_every_time() {
    let expected = json!({"statuses": [201, 201], "ids differ": true, "secrets differ": true,
                          "client_secret_expires_at": 0});
    same_on_both(Version::Current, expected, |base| async move {
        let body = json!({"client_name": "facts", "redirect_uris": ["https://app.example.org/callback"], "scope": "launch/patient"});
        let url = format!("{base}/oauth/register");
        let first = answer(http().post(&url).json(&body).send().await.unwrap()).await;
        let second = answer(http().post(&url).json(&body).send().await.unwrap()).await;
        json!({
            "statuses": [first["status"], second["status"]],
            "ids differ": first["body"]["client_id"] != second["body"]["client_id"],
            "secrets differ": first["body"]["client_secret"] != second["body"]["client_secret"],
            "client_secret_expires_at": first["body"]["client_secret_expires_at"],
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_debug_token_expires_is_the_lifetime_in_seconds_and_the_approval_a_1970_timestamp() {
    // The seed's own example: `"expires": 360` is a token valid for six minutes, and an approval that
    // ended at 00:06 on 1 January 1970, so the refresh grant finds no live approval (a 500 page).
    let expected = json!({
        "introspection": 200,
        "access token valid for (s)": 360,
        "approval_expires": "Thu, 01 Jan 1970 00:06:00 GMT",
        "refresh grant": {"status": 500, "body": "html", "challenge": false},
    });
    same_on_both(Version::Legacy, expected, |base| async move {
        let (id, secret) = register(&base, Version::Legacy, "token-facts").await;
        let token = debug_token(&base, json!({"client_id": id, "expires": 360, "scopes": "launch/patient patient/*.read", "user": "daniel-adams", "patient_id": "smart-1288992"})).await;
        let info = introspect(&base, "access_token", token["access_token"].as_str().unwrap()).await;
        let refresh = token_request(
            &base,
            &id,
            &secret,
            &[("grant_type", "refresh_token"), ("refresh_token", token["refresh_token"].as_str().unwrap())],
        )
        .await;
        json!({
            "introspection": info["status"],
            "access token valid for (s)": seconds_until(&info["body"]["expires"]),
            "approval_expires": info["body"]["approval_expires"],
            "refresh grant": refresh,
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_debug_token_access_lifetime_is_honoured_and_introspection_says_active() {
    let expected = json!({
        "introspection": 200,
        "active": true,
        "access token valid for (s)": 120,
        "approval valid for about a year": true,
        "unknown token": {"status": 400, "body": {"error": "no_token", "description": "No matching token found."}, "challenge": false},
    });
    same_on_both(Version::Current, expected, |base| async move {
        let (id, _) = register(&base, Version::Current, "").await;
        let token = debug_token(&base, json!({"client_id": id, "username": "daniel-adams", "patient_id": "smart-1288992", "scope": "launch/patient", "access_lifetime": 120})).await;
        let info = introspect(&base, "token", token["access_token"].as_str().unwrap()).await;
        let approval = seconds_until(&info["body"]["approval_expires"]);
        json!({
            "introspection": info["status"],
            "active": info["body"]["active"],
            "access token valid for (s)": seconds_until(&info["body"]["access_expires"]),
            "approval valid for about a year": (364 * 86400..=366 * 86400).contains(&approval),
            "unknown token": introspect(&base, "token", "no-such-token").await,
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_introspection_of_an_unknown_token_is_a_500_page() {
    let expected = json!({"status": 500, "body": "html", "challenge": false});
    same_on_both(Version::Legacy, expected, |base| async move {
        introspect(&base, "access_token", "no-such-token").await
    })
    .await;
}
