//! `smart-dev-server` through real HTTP on loopback: each dialect's flows, status codes and quirks,
//! the admin API, and every fault kind. The server runs in-process on 127.0.0.1:0, except in the one
//! test that checks the binary's start-up line.

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use smart_operator::devserver::{DemoUser, DevServer, DevServerConfig, Dialect, RunningDevServer};

const IAT: &str = "unlimited-initial-access-token";

struct Harness {
    server: RunningDevServer,
    http: reqwest::Client,
}

impl Harness {
    async fn start(config: DevServerConfig) -> Self {
        // reqwest is built without a default crypto provider; plain http never uses it, but building a
        // client requires one to be installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let server = DevServer::bind(config)
            .await
            .expect("bind 127.0.0.1:0")
            .spawn();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        Self { server, http }
    }

    async fn rfc7591() -> Self {
        let mut config = DevServerConfig::new(Dialect::Rfc7591);
        config.initial_access_tokens = vec![IAT.to_owned()];
        Self::start(config).await
    }

    async fn s4s() -> Self {
        Self::start(DevServerConfig::new(Dialect::S4s)).await
    }

    async fn s4s_legacy() -> Self {
        Self::start(DevServerConfig::new(Dialect::S4sLegacy)).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base_url())
    }

    async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let response = self.http.get(self.url(path)).send().await.expect("GET");
        into_json(response).await
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, self.url(&format!("/_admin{path}")));
        if let Some(body) = body {
            request = request.json(&body);
        }
        into_json(request.send().await.expect("admin request")).await
    }

    async fn stats(&self) -> Value {
        let (status, stats) = self.get_json("/_admin/stats").await;
        assert_eq!(status, StatusCode::OK);
        stats
    }

    // ---- RFC 7591 helpers

    async fn register_rfc7591(&self, token: Option<&str>, metadata: &Value) -> (StatusCode, Value) {
        let mut request = self.http.post(self.url("/oauth2/register")).json(metadata);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        into_json(request.send().await.expect("register")).await
    }

    async fn registered_rfc7591(&self, metadata: &Value) -> Value {
        let (status, body) = self.register_rfc7591(Some(IAT), metadata).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    // ---- S4S helpers

    async fn register_s4s(&self, body: &Value) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.url("/oauth/register"))
            .json(body)
            .send()
            .await
            .expect("register");
        into_json(response).await
    }

    async fn register_legacy(&self, fields: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .post(self.url("/oauth/register"))
            .form(fields)
            .send()
            .await
            .expect("register")
    }

    async fn debug_token(&self, body: &Value) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.url("/oauth/debug/token"))
            .json(body)
            .send()
            .await
            .expect("debug token");
        into_json(response).await
    }

    /// The "does my client still exist" probe: a refresh grant with a random refresh token.
    async fn refresh_probe(
        &self,
        token_path: &str,
        client_id: &str,
        secret: &str,
    ) -> (StatusCode, Value) {
        self.refresh(
            token_path,
            client_id,
            secret,
            &uuid::Uuid::new_v4().to_string(),
        )
        .await
    }

    async fn refresh(
        &self,
        token_path: &str,
        client_id: &str,
        secret: &str,
        refresh_token: &str,
    ) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.url(token_path))
            .basic_auth(client_id, Some(secret))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ])
            .send()
            .await
            .expect("token request");
        into_json(response).await
    }
}

async fn into_json(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

fn str_field<'a>(body: &'a Value, field: &str) -> &'a str {
    body[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} missing in {body}"))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn http_date_secs(value: &Value) -> i64 {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a date: {value}"));
    let time = httpdate::parse_http_date(text)
        .unwrap_or_else(|e| panic!("{text} is not an RFC 1123 date: {e}"));
    time.duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn app_metadata() -> Value {
    json!({
        "client_name": "my-app",
        "redirect_uris": ["https://app.example/callback"],
        "scope": "launch/patient patient/*.read offline_access",
        "grant_types": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_method": "client_secret_basic",
        "contacts": ["ops@app.example"],
        "software_id": "passed-through",
    })
}

// ============================================================================ RFC 7591 / 7592

#[tokio::test]
async fn rfc7591_discovery_documents_name_the_registration_and_token_endpoints() {
    let h = Harness::rfc7591().await;
    let base = h.server.base_url();

    let (status, smart) = h.get_json("/fhir/.well-known/smart-configuration").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(smart["issuer"], json!(base));
    assert_eq!(
        smart["registration_endpoint"],
        json!(format!("{base}/oauth2/register"))
    );
    assert_eq!(
        smart["token_endpoint"],
        json!(format!("{base}/oauth2/token"))
    );
    assert!(smart["authorization_endpoint"].is_string());
    assert!(
        smart["capabilities"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
    );
    assert!(
        smart["scopes_supported"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
    );
    assert!(
        smart["grant_types_supported"]
            .as_array()
            .is_some_and(|g| g.contains(&json!("client_credentials")))
    );

    let (status, openid) = h.get_json("/.well-known/openid-configuration").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(openid["issuer"], json!(base));
    assert_eq!(
        openid["registration_endpoint"],
        smart["registration_endpoint"]
    );
}

#[tokio::test]
async fn rfc7591_registration_returns_201_with_metadata_credentials_and_management_uri() {
    let h = Harness::rfc7591().await;
    let response = h
        .http
        .post(h.url("/oauth2/register"))
        .bearer_auth(IAT)
        .json(&app_metadata())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();

    let client_id = str_field(&body, "client_id");
    assert!(uuid::Uuid::parse_str(client_id).is_ok());
    assert!(!str_field(&body, "client_secret").is_empty());
    assert!(!str_field(&body, "registration_access_token").is_empty());
    assert_eq!(body["client_secret_expires_at"], json!(0));
    assert!((body["client_id_issued_at"].as_i64().unwrap() - unix_now()).abs() < 60);
    let management = format!("{}/oauth2/register/{client_id}", h.server.base_url());
    assert_eq!(body["registration_client_uri"], json!(management));
    assert_eq!(location, management);
    // Everything the client sent comes back, unknown fields included.
    for (field, value) in app_metadata().as_object().unwrap() {
        assert_eq!(&body[field], value, "{field}");
    }
    assert_eq!(
        body["response_types"],
        json!(["code", "none"]),
        "Keycloak's default"
    );
}

#[tokio::test]
async fn rfc7591_registration_without_or_with_an_unknown_initial_access_token_is_401() {
    let h = Harness::rfc7591().await;
    let (status, body) = h.register_rfc7591(None, &app_metadata()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_token");

    let (status, body) = h
        .register_rfc7591(Some("not-a-token"), &app_metadata())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_token");
    assert_eq!(body["error_description"], "Initial Access Token not found");
}

#[tokio::test]
async fn rfc7591_limited_initial_access_token_is_401_once_used_up_or_expired() {
    let h = Harness::rfc7591().await;
    let (status, created) = h
        .admin(
            reqwest::Method::POST,
            "/initial-access-tokens",
            Some(json!({"token": "two-uses", "count": 2})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    for _ in 0..2 {
        let (status, _) = h.register_rfc7591(Some("two-uses"), &app_metadata()).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (status, body) = h.register_rfc7591(Some("two-uses"), &app_metadata()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body["error_description"],
        "No remaining count on initial access token"
    );

    h.admin(
        reqwest::Method::POST,
        "/initial-access-tokens",
        Some(json!({"token": "expired", "expires_in_seconds": 0})),
    )
    .await;
    let (status, body) = h.register_rfc7591(Some("expired"), &app_metadata()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error_description"], "Expired initial access token");
}

#[tokio::test]
async fn rfc7591_client_id_in_the_registration_body_is_400_invalid_client_metadata() {
    let h = Harness::rfc7591().await;
    let mut metadata = app_metadata();
    metadata["client_id"] = json!("chosen-by-me");
    let (status, body) = h.register_rfc7591(Some(IAT), &metadata).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_client_metadata");
    assert_eq!(body["error_description"], "Client Identifier included");
}

#[tokio::test]
async fn rfc7591_invalid_redirect_uri_is_400_invalid_redirect_uri() {
    let h = Harness::rfc7591().await;
    for uri in ["not a uri", "https://app.example/cb#fragment"] {
        let mut metadata = app_metadata();
        metadata["redirect_uris"] = json!([uri]);
        let (status, body) = h.register_rfc7591(Some(IAT), &metadata).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(body["error"], "invalid_redirect_uri", "{uri}");
    }
}

#[tokio::test]
async fn rfc7591_scope_outside_the_policy_is_403_insufficient_scope_or_narrowed() {
    let h = Harness::rfc7591().await;
    let (status, _) = h
        .admin(
            reqwest::Method::PUT,
            "/policy",
            Some(json!({"allowed_scopes": ["launch/patient", "patient/*.read"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = h.register_rfc7591(Some(IAT), &app_metadata()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "insufficient_scope");

    h.admin(
        reqwest::Method::PUT,
        "/policy",
        Some(json!({"allowed_scopes": ["launch/patient", "patient/*.read"], "on_disallowed": "narrow"})),
    )
    .await;
    let body = h.registered_rfc7591(&app_metadata()).await;
    assert_eq!(body["scope"], "launch/patient patient/*.read");
}

#[tokio::test]
async fn rfc7592_read_returns_200_with_the_same_registration_access_token() {
    let h = Harness::rfc7591().await;
    let registered = h.registered_rfc7591(&app_metadata()).await;
    let rat = str_field(&registered, "registration_access_token");
    let response = h
        .http
        .get(str_field(&registered, "registration_client_uri"))
        .bearer_auth(rat)
        .send()
        .await
        .unwrap();
    let (status, read) = into_json(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read, registered);
}

#[tokio::test]
async fn rfc7592_update_replaces_metadata_and_rotates_the_registration_access_token() {
    let h = Harness::rfc7591().await;
    let registered = h.registered_rfc7591(&app_metadata()).await;
    let uri = str_field(&registered, "registration_client_uri");
    let old_rat = str_field(&registered, "registration_access_token");

    let replacement = json!({
        "client_id": registered["client_id"],
        "client_name": "renamed",
        "redirect_uris": ["https://app.example/new-callback"],
        "scope": "patient/*.read",
    });
    let response = h
        .http
        .put(uri)
        .bearer_auth(old_rat)
        .json(&replacement)
        .send()
        .await
        .unwrap();
    let (status, updated) = into_json(response).await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["client_name"], "renamed");
    assert_eq!(updated["client_secret"], registered["client_secret"]);
    assert!(
        updated.get("contacts").is_none(),
        "full replacement drops omitted fields"
    );
    let new_rat = str_field(&updated, "registration_access_token");
    assert_ne!(new_rat, old_rat);

    let with_old = h.http.get(uri).bearer_auth(old_rat).send().await.unwrap();
    assert_eq!(with_old.status(), StatusCode::UNAUTHORIZED);
    let with_new = h.http.get(uri).bearer_auth(new_rat).send().await.unwrap();
    assert_eq!(with_new.status(), StatusCode::OK);
}

#[tokio::test]
async fn rfc7592_update_without_the_matching_client_id_is_400() {
    let h = Harness::rfc7591().await;
    let registered = h.registered_rfc7591(&app_metadata()).await;
    let uri = str_field(&registered, "registration_client_uri");
    let rat = str_field(&registered, "registration_access_token");
    for body in [
        app_metadata(),
        json!({"client_id": "someone-else", "client_name": "x"}),
    ] {
        let response = h
            .http
            .put(uri)
            .bearer_auth(rat)
            .json(&body)
            .send()
            .await
            .unwrap();
        let (status, error) = into_json(response).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(error["error"], "invalid_client_metadata");
    }
    // A refused update rotates nothing.
    let response = h.http.get(uri).bearer_auth(rat).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn rfc7592_delete_is_204_and_the_client_is_then_indistinguishable_from_a_wrong_token() {
    let h = Harness::rfc7591().await;
    let registered = h.registered_rfc7591(&app_metadata()).await;
    let uri = str_field(&registered, "registration_client_uri");
    let rat = str_field(&registered, "registration_access_token");

    let wrong = h
        .http
        .get(uri)
        .bearer_auth("wrong-rat")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    let deleted = h.http.delete(uri).bearer_auth(rat).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    for request in [h.http.get(uri), h.http.delete(uri)] {
        let response = request.bearer_auth(rat).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn rfc7591_token_probe_is_401_for_unknown_client_or_wrong_secret_and_400_invalid_grant_for_existing()
 {
    let h = Harness::rfc7591().await;
    let registered = h.registered_rfc7591(&app_metadata()).await;
    let client_id = str_field(&registered, "client_id");
    let secret = str_field(&registered, "client_secret");

    let (status, body) = h
        .refresh_probe("/oauth2/token", "no-such-client", "x")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");
    let (status, body) = h
        .refresh_probe("/oauth2/token", client_id, "wrong-secret")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body["error"], "unauthorized_client",
        "Keycloak's code for a bad secret"
    );
    let (status, body) = h.refresh_probe("/oauth2/token", client_id, secret).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
}

#[tokio::test]
async fn rfc7591_client_credentials_grant_issues_a_token_only_to_clients_registered_for_it() {
    let h = Harness::rfc7591().await;
    let mut metadata = app_metadata();
    metadata["grant_types"] = json!(["client_credentials"]);
    metadata["scope"] = json!("system/*.read");
    let service = h.registered_rfc7591(&metadata).await;
    let interactive = h.registered_rfc7591(&app_metadata()).await;

    let grant = |client: &Value, scope: &'static str| {
        let mut form = vec![("grant_type", "client_credentials")];
        if !scope.is_empty() {
            form.push(("scope", scope));
        }
        h.http
            .post(h.url("/oauth2/token"))
            .basic_auth(
                str_field(client, "client_id"),
                Some(str_field(client, "client_secret")),
            )
            .form(&form)
            .send()
    };
    let (status, token) = into_json(grant(&service, "system/*.read").await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{token}");
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["scope"], "system/*.read");
    assert!(token["expires_in"].as_i64().unwrap() > 0);
    assert!(!str_field(&token, "access_token").is_empty());
    // As Keycloak: registered scopes are optional ones, so a request naming none gets none.
    let (status, token) = into_json(grant(&service, "").await.unwrap()).await;
    assert_eq!(
        (status, token["scope"].as_str()),
        (StatusCode::OK, Some(""))
    );

    let (status, error) = into_json(grant(&interactive, "").await.unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error["error"], "unauthorized_client");
}

// ============================================================================ S4S (today)

#[tokio::test]
async fn s4s_metadata_is_a_capability_statement_with_smart_oauth_uris() {
    let h = Harness::s4s().await;
    let (status, metadata) = h.get_json("/fhir/metadata").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(metadata["resourceType"], "CapabilityStatement");
    let extension = &metadata["rest"][0]["security"]["extension"][0];
    assert_eq!(
        extension["url"],
        "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    );
    let uri = |name: &str| {
        extension["extension"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["url"] == name)
            .map(|e| e["valueUri"].clone())
    };
    let base = h.server.base_url();
    assert_eq!(
        uri("register"),
        Some(json!(format!("{base}/oauth/register")))
    );
    assert_eq!(uri("token"), Some(json!(format!("{base}/oauth/token"))));
    assert_eq!(
        uri("authorize"),
        Some(json!(format!("{base}/oauth/authorize")))
    );
}

#[tokio::test]
async fn s4s_register_is_201_with_server_chosen_uuids_and_every_post_is_a_new_client() {
    let h = Harness::s4s().await;
    let request = json!({
        "client_name": "TESTCLIENT",
        "redirect_uris": ["https://tests.example/authorized/"],
        "scope": "launch/patient patient/*.read offline_access",
    });
    let (status, first) = h.register_s4s(&request).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(uuid::Uuid::parse_str(str_field(&first, "client_id")).is_ok());
    assert!(uuid::Uuid::parse_str(str_field(&first, "client_secret")).is_ok());
    assert_eq!(first["client_name"], "TESTCLIENT");
    assert_eq!(first["client_secret_expires_at"], 0);
    assert_eq!(first["redirect_uris"], request["redirect_uris"]);
    assert_eq!(first["scope"], request["scope"]);

    let (_, second) = h.register_s4s(&request).await;
    assert_ne!(second["client_id"], first["client_id"]);
    let (_, clients) = h.get_json("/_admin/clients").await;
    assert_eq!(clients["count"], 2);
}

#[tokio::test]
async fn s4s_register_errors_are_400_with_error_and_description() {
    let h = Harness::s4s().await;
    let not_json = h
        .http
        .post(h.url("/oauth/register"))
        .form(&[("client_name", "x")])
        .send()
        .await
        .unwrap();
    let (status, body) = into_json(not_json).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        json!({"error": "bad_request", "description": "The request requires a JSON payload."})
    );

    let cases = [
        (json!({"client_name": "x"}), "invalid_client_metadata"),
        (
            json!({"redirect_uris": ["/relative"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": ["https://a.example/#frag"]}),
            "invalid_redirect_uri",
        ),
    ];
    for (request, error) in cases {
        let (status, body) = h.register_s4s(&request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{request}");
        assert_eq!(body["error"], error, "{request}");
        assert!(body["description"].is_string(), "{body}");
    }
}

async fn s4s_client(h: &Harness) -> (String, String) {
    let (status, client) = h
        .register_s4s(&json!({
            "client_name": "app",
            "redirect_uris": ["https://app.example/cb"],
            "scope": "launch/patient patient/*.read offline_access",
        }))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    (
        str_field(&client, "client_id").to_owned(),
        str_field(&client, "client_secret").to_owned(),
    )
}

fn s4s_debug_request(client_id: &str) -> Value {
    json!({
        "client_id": client_id,
        "username": "daniel-adams",
        "patient_id": "smart-1288992",
        "scope": "patient/*.read launch/patient",
        "access_lifetime": 600,
        "approval_expires": unix_now() + 7 * 24 * 3600,
    })
}

#[tokio::test]
async fn s4s_debug_token_introspects_as_active_with_rfc_1123_dates() {
    let h = Harness::s4s().await;
    let (client_id, _) = s4s_client(&h).await;
    let request = s4s_debug_request(&client_id);
    let (status, tokens) = h.debug_token(&request).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let access = str_field(&tokens, "access_token").to_owned();
    let refresh = str_field(&tokens, "refresh_token").to_owned();
    assert!(uuid::Uuid::parse_str(&access).is_ok() && uuid::Uuid::parse_str(&refresh).is_ok());

    let (status, by_access) = h
        .get_json(&format!("/oauth/debug/introspect?token={access}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(by_access["active"], true);
    assert_eq!(by_access["access_token"], json!(access));
    assert_eq!(by_access["refresh_token"], json!(refresh));
    assert_eq!(by_access["client_id"], json!(client_id));
    assert_eq!(by_access["username"], "daniel-adams");
    assert_eq!(by_access["scope"], "patient/*.read launch/patient");
    assert_eq!(by_access["token_type"], "Bearer");
    assert_eq!(by_access["security_labels"], json!([]));
    assert!((http_date_secs(&by_access["access_expires"]) - (unix_now() + 600)).abs() < 60);
    assert_eq!(
        http_date_secs(&by_access["approval_expires"]),
        request["approval_expires"].as_i64().unwrap()
    );

    // The refresh token finds the same row, and so does the path form of the endpoint.
    let (_, by_refresh) = h
        .get_json(&format!("/oauth/debug/introspect?token={refresh}"))
        .await;
    assert_eq!(by_refresh, by_access);
    let (_, by_path) = h
        .get_json(&format!("/oauth/debug/introspect/{access}"))
        .await;
    assert_eq!(by_path, by_access);
}

#[tokio::test]
async fn s4s_debug_token_lifetime_in_the_past_introspects_as_inactive() {
    let h = Harness::s4s().await;
    let (client_id, _) = s4s_client(&h).await;
    let mut request = s4s_debug_request(&client_id);
    request["access_lifetime"] = json!(-10);
    let (_, tokens) = h.debug_token(&request).await;
    let (status, introspection) = h
        .get_json(&format!(
            "/oauth/debug/introspect?token={}",
            str_field(&tokens, "access_token")
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(introspection["active"], false);
}

#[tokio::test]
async fn s4s_debug_token_errors_are_400_with_the_proxys_error_codes() {
    let h = Harness::s4s().await;
    let (client_id, _) = s4s_client(&h).await;
    let good = s4s_debug_request(&client_id);
    let with = |field: &str, value: Value| {
        let mut request = good.clone();
        request[field] = value;
        request
    };
    let cases = [
        (with("username", json!("nobody")), "no_user"),
        (with("username", json!("")), "no_user"),
        (with("client_id", json!("no-such-client")), "no_client"),
        (
            with("patient_id", json!("someone-else")),
            "no_patient_for_user",
        ),
        (
            with("access_lifetime", json!("an hour")),
            "malformed_lifetime",
        ),
        (
            with("approval_expires", json!("next week")),
            "malformed_expiration",
        ),
    ];
    for (request, error) in cases {
        let (status, body) = h.debug_token(&request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{request}");
        assert_eq!(body["error"], error, "{request}");
    }
    let (status, body) = h.get_json("/oauth/debug/introspect?token=unknown").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        json!({"error": "no_token", "description": "No matching token found."})
    );
}

#[tokio::test]
async fn s4s_users_added_through_the_admin_api_can_get_debug_tokens() {
    let mut config = DevServerConfig::new(Dialect::S4s);
    config.users = vec!["alice=patient-1".parse::<DemoUser>().unwrap()];
    let h = Harness::start(config).await;
    let (client_id, _) = s4s_client(&h).await;
    let mut request = s4s_debug_request(&client_id);
    request["username"] = json!("alice");
    request["patient_id"] = json!("patient-1");
    assert_eq!(h.debug_token(&request).await.0, StatusCode::OK);

    request["username"] = json!("bob");
    request["patient_id"] = json!("patient-2");
    assert_eq!(h.debug_token(&request).await.0, StatusCode::BAD_REQUEST);
    let (status, _) = h
        .admin(
            reqwest::Method::POST,
            "/users",
            Some(json!({"username": "bob", "patient_ids": ["patient-2"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(h.debug_token(&request).await.0, StatusCode::OK);
}

#[tokio::test]
async fn s4s_token_probe_is_401_invalid_client_when_gone_and_401_invalid_grant_when_present() {
    let h = Harness::s4s().await;
    let (client_id, secret) = s4s_client(&h).await;

    let (status, body) = h.refresh_probe("/oauth/token", "no-such-client", "x").await;
    assert_eq!(
        (status, body),
        (StatusCode::UNAUTHORIZED, json!({"error": "invalid_client"}))
    );
    let (status, body) = h
        .refresh_probe("/oauth/token", &client_id, "wrong-secret")
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::UNAUTHORIZED, json!({"error": "invalid_client"}))
    );
    // oauthlib 2.0.1, as both real auth-proxy versions pin it: invalid_grant is 401 too.
    let (status, body) = h.refresh_probe("/oauth/token", &client_id, &secret).await;
    assert_eq!(
        (status, body),
        (StatusCode::UNAUTHORIZED, json!({"error": "invalid_grant"}))
    );
}

#[tokio::test]
async fn s4s_refreshing_a_debug_token_works_and_deletes_the_clients_other_tokens() {
    let h = Harness::s4s().await;
    let (client_id, secret) = s4s_client(&h).await;
    let (_, first) = h.debug_token(&s4s_debug_request(&client_id)).await;
    let (_, second) = h.debug_token(&s4s_debug_request(&client_id)).await;

    let (status, refreshed) = h
        .refresh(
            "/oauth/token",
            &client_id,
            &secret,
            str_field(&first, "refresh_token"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    assert_eq!(refreshed["token_type"], "Bearer");
    assert_eq!(refreshed["patient"], "smart-1288992");
    assert_eq!(refreshed["expires_in"], 3600);
    let new_access = str_field(&refreshed, "access_token");

    let (status, _) = h
        .get_json(&format!("/oauth/debug/introspect?token={new_access}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    for old in [&first, &second] {
        let (status, body) = h
            .get_json(&format!(
                "/oauth/debug/introspect?token={}",
                str_field(old, "access_token")
            ))
            .await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "old token still there: {body}"
        );
    }
}

// ============================================================================ S4S legacy

#[tokio::test]
async fn s4s_legacy_register_takes_form_fields_and_answers_200_with_split_lists() {
    let h = Harness::s4s_legacy().await;
    let response = h
        .register_legacy(&[
            ("client_id", "TEST1234"),
            ("client_secret", "TESTSECRET123"),
            ("client_name", "TESTCLIENT"),
            (
                "redirect_uris",
                "https://tests.example/authorized/ https://tests.example/other/",
            ),
            ("scopes", "launch/patient patient/*.read offline_access"),
        ])
        .await;
    let (status, body) = into_json(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({
            "client_id": "TEST1234",
            "client_secret": "TESTSECRET123",
            "default_scopes": ["launch/patient", "patient/*.read", "offline_access"],
            "redirect_uris": ["https://tests.example/authorized/", "https://tests.example/other/"],
        })
    );
}

#[tokio::test]
async fn s4s_legacy_register_generates_a_secret_when_none_is_given() {
    let h = Harness::s4s_legacy().await;
    let response = h
        .register_legacy(&[
            ("client_id", "no-secret"),
            ("client_name", "n"),
            ("redirect_uris", "https://a.example/cb"),
            ("scopes", "patient/*.read"),
        ])
        .await;
    let (status, body) = into_json(response).await;
    assert_eq!(status, StatusCode::OK);
    assert!(uuid::Uuid::parse_str(str_field(&body, "client_secret")).is_ok());
}

#[tokio::test]
async fn s4s_legacy_register_missing_a_required_field_is_400() {
    let h = Harness::s4s_legacy().await;
    let response = h
        .register_legacy(&[
            ("client_id", "x"),
            ("client_name", "n"),
            ("redirect_uris", "https://a.example/cb"),
        ])
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let json_body = h
        .http
        .post(h.url("/oauth/register"))
        .json(&json!({"client_id": "x", "client_name": "n", "redirect_uris": "https://a.example/cb", "scopes": "s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        json_body.status(),
        StatusCode::BAD_REQUEST,
        "JSON is not a form"
    );
}

#[tokio::test]
async fn s4s_legacy_reregistering_an_existing_client_id_is_500() {
    let h = Harness::s4s_legacy().await;
    let fields = [
        ("client_id", "fixed-id"),
        ("client_name", "n"),
        ("redirect_uris", "https://a.example/cb"),
        ("scopes", "patient/*.read"),
    ];
    assert_eq!(h.register_legacy(&fields).await.status(), StatusCode::OK);
    assert_eq!(
        h.register_legacy(&fields).await.status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
}

async fn legacy_client(h: &Harness, client_id: &str) {
    let response = h
        .register_legacy(&[
            ("client_id", client_id),
            ("client_secret", "secret"),
            ("client_name", "n"),
            ("redirect_uris", "https://a.example/cb"),
            ("scopes", "launch/patient patient/*.read offline_access"),
        ])
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn s4s_legacy_debug_token_uses_expires_as_approval_timestamp_and_as_lifetime() {
    let h = Harness::s4s_legacy().await;
    legacy_client(&h, "TEST1234").await;
    let (status, tokens) = h
        .debug_token(&json!({
            "client_id": "TEST1234",
            "expires": 360,
            "scopes": "patient/*.read launch/patient offline_access",
            "user": "daniel-adams",
            "patient_id": "smart-1288992",
        }))
        .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let access = str_field(&tokens, "access_token");
    assert!(uuid::Uuid::parse_str(str_field(&tokens, "refresh_token")).is_ok());

    let response = h
        .http
        .get(h.url("/oauth/debug/introspect"))
        .query(&[("access_token", access)])
        .send()
        .await
        .unwrap();
    let (status, introspection) = into_json(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        introspection["approval_expires"],
        "Thu, 01 Jan 1970 00:06:00 GMT"
    );
    assert!((http_date_secs(&introspection["expires"]) - (unix_now() + 360)).abs() < 60);
    assert_eq!(
        introspection["scopes"],
        json!(["patient/*.read", "launch/patient", "offline_access"])
    );
    assert_eq!(introspection["security_labels"], json!([]));
    assert_eq!(introspection["token_type"], "Bearer");
    assert_eq!(introspection["access_token"], json!(access));
}

#[tokio::test]
async fn s4s_legacy_debug_token_for_unknown_client_or_missing_field_and_unknown_introspection_are_500()
 {
    let h = Harness::s4s_legacy().await;
    legacy_client(&h, "known").await;
    let request = json!({
        "client_id": "unknown",
        "expires": 360,
        "scopes": "patient/*.read",
        "user": "daniel-adams",
        "patient_id": "smart-1288992",
    });
    assert_eq!(
        h.debug_token(&request).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let mut missing_user = request.clone();
    missing_user["client_id"] = json!("known");
    missing_user.as_object_mut().unwrap().remove("user");
    assert_eq!(
        h.debug_token(&missing_user).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let (status, _) = h
        .get_json("/oauth/debug/introspect?access_token=unknown")
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn s4s_legacy_token_probe_distinguishes_gone_from_present_clients() {
    let h = Harness::s4s_legacy().await;
    legacy_client(&h, "probe-me").await;
    let (status, body) = h.refresh_probe("/oauth/token", "probe-me", "secret").await;
    assert_eq!(
        (status, body),
        (StatusCode::UNAUTHORIZED, json!({"error": "invalid_grant"}))
    );
    let (status, body) = h.refresh_probe("/oauth/token", "gone", "secret").await;
    assert_eq!(
        (status, body),
        (StatusCode::UNAUTHORIZED, json!({"error": "invalid_client"}))
    );
}

// ============================================================================ admin API

#[tokio::test]
async fn admin_clients_lists_every_client_with_secrets_and_registration_access_tokens() {
    let h = Harness::rfc7591().await;
    let first = h.registered_rfc7591(&app_metadata()).await;
    let second = h.registered_rfc7591(&app_metadata()).await;
    let (status, listing) = h.get_json("/_admin/clients").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listing["count"], 2);
    assert_eq!(listing["clients"], json!([first, second]));
}

#[tokio::test]
async fn admin_stats_count_requests_per_endpoint_and_status_but_not_admin_requests() {
    let h = Harness::rfc7591().await;
    h.registered_rfc7591(&app_metadata()).await;
    h.register_rfc7591(None, &app_metadata()).await;
    h.get_json("/fhir/.well-known/smart-configuration").await;
    h.get_json("/_admin/clients").await;

    let stats = h.stats().await;
    assert_eq!(stats["total"], 3);
    assert_eq!(
        stats["endpoints"]["register"],
        json!({"total": 2, "by_status": {"201": 1, "401": 1}})
    );
    assert_eq!(stats["endpoints"]["discovery"]["total"], 1);
    assert_eq!(
        stats["endpoints"]["token"],
        json!({"total": 0, "by_status": {}})
    );
    assert_eq!(stats["by_status"], json!({"200": 1, "201": 1, "401": 1}));

    let (status, _) = h.admin(reqwest::Method::POST, "/reset-stats", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(h.stats().await["total"], 0);
}

#[tokio::test]
async fn admin_reset_wipes_clients_and_tokens_so_probes_say_gone_but_keeps_counters() {
    let h = Harness::s4s().await;
    let (client_id, secret) = s4s_client(&h).await;
    let (_, tokens) = h.debug_token(&s4s_debug_request(&client_id)).await;

    let (status, wiped) = h.admin(reqwest::Method::POST, "/reset", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(wiped, json!({"clients_removed": 1, "tokens_removed": 1}));

    assert_eq!(h.get_json("/_admin/clients").await.1["count"], 0);
    let (status, body) = h.refresh_probe("/oauth/token", &client_id, &secret).await;
    assert_eq!(
        (status, body),
        (StatusCode::UNAUTHORIZED, json!({"error": "invalid_client"}))
    );
    let (status, _) = h
        .get_json(&format!(
            "/oauth/debug/introspect?token={}",
            str_field(&tokens, "access_token")
        ))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        h.stats().await["endpoints"]["register"]["total"],
        1,
        "counters survive a wipe"
    );
}

#[tokio::test]
async fn admin_rejects_invalid_fault_plans_and_unknown_endpoint_names() {
    let h = Harness::s4s().await;
    for plan in [
        json!({"error_rate": 1.5}),
        json!({"error_rate": 0.7, "drop_rate": 0.7}),
        json!({"error_status": 200}),
        json!({"endpoints": ["nope"]}),
        json!({"latency": 5}),
    ] {
        let (status, _) = h
            .admin(reqwest::Method::PUT, "/faults", Some(plan.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{plan}");
    }
}

// ============================================================================ faults

#[tokio::test]
async fn fault_latency_delays_only_the_named_endpoints() {
    let h = Harness::rfc7591().await;
    let (status, _) = h
        .admin(
            reqwest::Method::PUT,
            "/faults",
            Some(json!({"latency_ms": 1000, "endpoints": ["discovery"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let started = Instant::now();
    assert_eq!(
        h.get_json("/.well-known/openid-configuration").await.0,
        StatusCode::OK
    );
    assert!(started.elapsed() >= Duration::from_millis(1000));

    let started = Instant::now();
    h.registered_rfc7591(&app_metadata()).await;
    assert!(started.elapsed() < Duration::from_millis(1000));
}

#[tokio::test]
async fn fault_error_rate_one_answers_every_request_with_the_configured_status_but_never_admin() {
    let h = Harness::rfc7591().await;
    h.admin(
        reqwest::Method::PUT,
        "/faults",
        Some(json!({"error_rate": 1.0, "error_status": 502})),
    )
    .await;
    let (status, _) = h.register_rfc7591(Some(IAT), &app_metadata()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        h.get_json("/_admin/clients").await.1["count"],
        0,
        "the handler never ran"
    );

    let stats = h.stats().await;
    assert_eq!(stats["injected_errors"], 1);
    assert_eq!(
        stats["endpoints"]["register"]["by_status"],
        json!({"502": 1})
    );

    let (status, _) = h.admin(reqwest::Method::DELETE, "/faults", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    h.registered_rfc7591(&app_metadata()).await;
}

#[tokio::test]
async fn fault_drop_rate_one_closes_the_connection_without_a_response() {
    let h = Harness::s4s().await;
    h.admin(
        reqwest::Method::PUT,
        "/faults",
        Some(json!({"drop_rate": 1.0, "endpoints": ["register"]})),
    )
    .await;
    let result = h
        .http
        .post(h.url("/oauth/register"))
        .json(&json!({"redirect_uris": ["https://a.example/cb"]}))
        .send()
        .await;
    let error = result.expect_err("a dropped connection has no response");
    assert!(!error.is_timeout(), "closed, not hung: {error}");
    assert!(error.status().is_none());

    let stats = h.stats().await;
    assert_eq!(stats["dropped"], 1);
    assert_eq!(
        stats["endpoints"]["register"]["by_status"],
        json!({"dropped": 1})
    );
    assert_eq!(h.get_json("/_admin/clients").await.1["count"], 0);
    // Other endpoints, and the server itself, carry on.
    assert_eq!(h.get_json("/fhir/metadata").await.0, StatusCode::OK);
}

#[tokio::test]
async fn fault_rates_apply_to_roughly_that_fraction_of_requests() {
    let h = Harness::s4s().await;
    h.admin(
        reqwest::Method::PUT,
        "/faults",
        Some(json!({"error_rate": 0.5, "endpoints": ["metadata"]})),
    )
    .await;
    let mut failed = 0;
    for _ in 0..200 {
        if h.get_json("/fhir/metadata").await.0 == StatusCode::SERVICE_UNAVAILABLE {
            failed += 1;
        }
    }
    assert!(
        (50..=150).contains(&failed),
        "{failed} of 200 failed at rate 0.5"
    );
}

// ============================================================================ binary and load

#[test]
fn binary_prints_the_bound_address_as_its_first_stdout_line() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_smart-dev-server"))
        .args([
            "--dialect",
            "s4s",
            "--listen",
            "127.0.0.1:0",
            "--log",
            "warn",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start smart-dev-server");
    let stdout = child.stdout.take().unwrap();
    let mut first_line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut first_line)
        .unwrap();

    let address = first_line
        .trim_end()
        .strip_prefix("listening on http://127.0.0.1:")
        .unwrap_or_else(|| panic!("unexpected first line {first_line:?}"));
    let port: u16 = address.parse().expect("a port");
    let reachable = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(reachable && port != 0);
}

/// Registers `total` clients over `connections` concurrent keep-alive connections; returns the rate.
async fn register_many(h: &Harness, total: usize, connections: usize) -> f64 {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()
        .unwrap();
    let url = h.url("/oauth2/register");
    let body = serde_json::to_vec(&app_metadata()).unwrap();
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
                assert_eq!(response.status(), StatusCode::CREATED);
                response.bytes().await.expect("body");
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.expect("worker");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_all_succeed_with_distinct_client_ids() {
    let h = Harness::rfc7591().await;
    register_many(&h, 2_000, 32).await;
    let (_, listing) = h.get_json("/_admin/clients").await;
    assert_eq!(listing["count"], 2_000);
    let ids: std::collections::HashSet<&str> = listing["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| str_field(c, "client_id"))
        .collect();
    assert_eq!(ids.len(), 2_000);
}
