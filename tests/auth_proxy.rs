//! The operator end to end against the real Sync-for-Science auth-proxy (upstream code, unmodified):
//! `legacy` (66d4796, the seed's API, dialect S4SLegacy) and `current` (6157ac3, dialect S4S). Each test
//! starts its own server with an empty database, a namespace, a SmartAuthServer that discovers the
//! endpoints through `/api/fhir/metadata`, and an operator. What the server received is counted from
//! its own access log.

mod common;

use std::time::Duration;

use common::auth_proxy::{RealAuthProxy, Version};
use common::operator::*;
use common::*;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use smart_operator::crd::SmartClient;

struct Setup {
    client: kube::Client,
    ns: String,
    server: RealAuthProxy,
    operator: Operator,
}

async fn setup(prefix: &str, version: Version, operator_args: &[&str]) -> Setup {
    let client = client().await;
    install_crds(&client).await;
    let ns = fresh_namespace(&client, prefix).await;
    let server = RealAuthProxy::start(version).await;
    apply(
        &client,
        Some(&ns),
        json!({"apiVersion": "smart.fhir.dev/v1alpha1", "kind": "SmartAuthServer",
               "metadata": {"name": "s4s"},
               "spec": {"dialect": version.dialect(), "fhirBaseUrl": server.fhir_base_url()}}),
    )
    .await
    .unwrap();
    let operator = Operator::start(&ns, operator_args);
    Setup {
        client,
        ns,
        server,
        operator,
    }
}

/// A SmartClient with one debug token for the peer's fixture user and patient.
fn smart_client(name: &str, extra: Value) -> Value {
    let mut spec = json!({
        "authServerRef": {"name": "s4s"},
        "redirectUris": ["https://app.example.org/callback"],
        "scopes": ["launch/patient", "patient/*.read", "offline_access"],
        "debugTokens": [{"name": "daniel", "user": "daniel-adams", "patientId": "smart-1288992", "lifetime": "1h"}],
    });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        spec[k] = v;
    }
    json!({"apiVersion": "smart.fhir.dev/v1alpha1", "kind": "SmartClient", "metadata": {"name": name}, "spec": spec})
}

fn api(s: &Setup) -> Api<SmartClient> {
    Api::namespaced(s.client.clone(), &s.ns)
}

fn http() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The `error` the server's token endpoint gives the operator's existence probe for these credentials.
async fn probe_error(server: &RealAuthProxy, client_id: &str, secret: &str) -> String {
    let made_up = uuid::Uuid::new_v4().to_string();
    let response = http()
        .post(format!("{}/oauth/token", server.base_url()))
        .basic_auth(client_id, Some(secret))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", &made_up)])
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap_or_default();
    body["error"].as_str().unwrap_or_default().to_owned()
}

/// Asserts that the access token works at the proxy's FHIR API: the proxy forwards the request to the
/// FHIR stub with the token's patient as a security label (the stub answers 404 and echoes it), where
/// a token it does not accept gets the proxy's own 401.
async fn assert_token_works_at_the_fhir_api(server: &RealAuthProxy, access_token: &str) {
    let response = http()
        .get(format!("{}/api/fhir/Patient", server.base_url()))
        .bearer_auth(access_token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or_default();
    let forwarded = body["issue"][0]["diagnostics"].as_str().unwrap_or_default();
    assert!(
        status == 404 && forwarded.contains("_security=Patient%2Fsmart-1288992"),
        "the debug token is not accepted at /api/fhir: HTTP {status} {body}"
    );
}

async fn introspection(server: &RealAuthProxy, version: Version, access_token: &str) -> Value {
    let parameter = match version {
        Version::Legacy => "access_token",
        Version::Current => "token",
    };
    http()
        .get(format!("{}/oauth/debug/introspect", server.base_url()))
        .query(&[(parameter, access_token)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn ready_client_and_secret(
    s: &Setup,
    name: &str,
) -> (SmartClient, k8s_openapi::api::core::v1::Secret) {
    let ready = wait_for_ready(&s.client, &s.ns, name, "True", "Ready").await;
    let secret = get_secret(&s.client, &s.ns, &format!("{name}-smart-client"))
        .await
        .expect("the client's Secret");
    (ready, secret)
}

/// Register, Secret, a debug token that works, then at least ten existence probes (2 s apart) with no
/// registration and no Secret write.
async fn registers_once_and_holds_steady(version: Version) {
    let s = setup(
        &format!("real-{}", version.as_str()),
        version,
        &["--existence-check-interval", "2s"],
    )
    .await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    let (ready, secret) = ready_client_and_secret(&s, "app").await;
    let status = ready.status.unwrap();
    let client_id = secret_value(&secret, "client_id").expect("client_id in the Secret");
    let client_secret =
        secret_value(&secret, "client_secret").expect("client_secret in the Secret");
    assert_eq!(status.client_id.as_deref(), Some(client_id.as_str()));
    assert_eq!(
        secret_value(&secret, "token_endpoint"),
        Some(format!("{}/oauth/token", s.server.base_url())),
        "endpoints discovered through /api/fhir/metadata"
    );
    assert_eq!(s.server.registrations(), 1);
    assert_eq!(
        probe_error(&s.server, &client_id, &client_secret).await,
        "invalid_grant",
        "the server knows the client with the secret in the Secret"
    );

    let access_token =
        secret_value(&secret, "daniel_access_token").expect("the debug token in the Secret");
    assert_token_works_at_the_fhir_api(&s.server, &access_token).await;
    let info = introspection(&s.server, version, &access_token).await;
    let expires_field = match version {
        Version::Legacy => "expires",
        Version::Current => "access_expires",
    };
    let expires = httpdate::parse_http_date(info[expires_field].as_str().unwrap()).unwrap();
    let lifetime = expires
        .duration_since(std::time::SystemTime::now())
        .expect("the token has not expired");
    assert!(
        lifetime <= Duration::from_secs(3600) && lifetime > Duration::from_secs(3500),
        "the server gives the token the 1h lifetime the spec asks for, not {lifetime:?}: {info}"
    );
    if version == Version::Current {
        assert_eq!(info["active"], json!(true));
    }
    let token_status = &status.debug_tokens[0];
    let status_expiry: std::time::SystemTime = token_status
        .expires_at
        .as_ref()
        .expect("status.debugTokens[].expiresAt")
        .0
        .into();
    let gap = status_expiry
        .duration_since(expires)
        .or_else(|_| expires.duration_since(status_expiry))
        .unwrap();
    assert!(
        gap <= Duration::from_secs(1),
        "status shows the expiry the server reports: {gap:?} apart"
    );

    // Steady state: the probe runs every 2 s and must see the client present each time.
    let secret_version = secret.metadata.resource_version.clone();
    let probes_before = s.server.token_requests();
    eventually("ten existence probes", Duration::from_secs(60), || async {
        (s.server.token_requests() >= probes_before + 10).then_some(())
    })
    .await;
    assert_eq!(
        s.server.registrations(),
        1,
        "no registration in steady state (server log {})",
        s.server.log_path.display()
    );
    assert_eq!(
        s.server.debug_token_mints(),
        1,
        "no debug token minted again in steady state"
    );
    let secret = get_secret(&s.client, &s.ns, "app-smart-client")
        .await
        .unwrap();
    assert_eq!(
        secret.metadata.resource_version, secret_version,
        "the Secret was not written in steady state"
    );
    assert_eq!(secret_value(&secret, "client_id"), Some(client_id));
    let now = api(&s).get("app").await.unwrap();
    assert_eq!(
        condition(&now, "Ready"),
        Some(("True".into(), "Ready".into()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_client_registers_once_its_debug_token_works_and_ten_probes_change_nothing() {
    registers_once_and_holds_steady(Version::Legacy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_client_registers_once_its_debug_token_works_and_ten_probes_change_nothing() {
    registers_once_and_holds_steady(Version::Current).await;
}

/// A spec change registers a replacement (neither version can update) and lists the old client as
/// orphaned; deleting the SmartClient orphans the registration with an Event (neither can delete).
async fn spec_change_replaces_and_deletion_orphans(version: Version) {
    let s = setup(&format!("real-change-{}", version.as_str()), version, &[]).await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    let (first, _) = ready_client_and_secret(&s, "app").await;
    let old_id = first.status.unwrap().client_id.unwrap();
    api(&s)
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"spec": {"redirectUris": ["https://app.example.org/new-callback"]}}),
            ),
        )
        .await
        .unwrap();
    let replaced = eventually("a replacement client", Duration::from_secs(30), || async {
        let status = api(&s).get("app").await.ok()?.status?;
        (status.client_id.as_ref().is_some_and(|id| *id != old_id)).then_some(status)
    })
    .await;
    assert!(
        replaced
            .orphaned_clients
            .iter()
            .any(|o| o.client_id == old_id && o.reason == "Replaced"),
        "the old client is listed as orphaned: {:?}",
        replaced.orphaned_clients
    );
    wait_for_event(&s.client, &s.ns, "Replaced").await;
    let secret = eventually(
        "the Secret holds the replacement",
        Duration::from_secs(30),
        || async {
            let secret = get_secret(&s.client, &s.ns, "app-smart-client").await?;
            (secret_value(&secret, "client_id") == replaced.client_id).then_some(secret)
        },
    )
    .await;
    assert_eq!(s.server.registrations(), 2);
    let new_id = replaced.client_id.unwrap();
    let new_secret = secret_value(&secret, "client_secret").unwrap();
    assert_eq!(
        probe_error(&s.server, &new_id, &new_secret).await,
        "invalid_grant"
    );

    delete_and_wait_until_gone(&s.client, &s.ns, "app").await;
    let note = wait_for_event(&s.client, &s.ns, "Orphaned").await;
    assert!(note.contains(version.dialect()), "{note}");
    assert_eq!(s.server.registrations(), 2, "deletion registers nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_spec_change_replaces_the_client_lists_the_orphan_and_deletion_orphans_it() {
    spec_change_replaces_and_deletion_orphans(Version::Legacy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_spec_change_replaces_the_client_lists_the_orphan_and_deletion_orphans_it() {
    spec_change_replaces_and_deletion_orphans(Version::Current).await;
}

/// The server restarts with an empty database; within a probe interval the client is registered again
/// and its Secret works. Returns (Secret before, Secret after).
async fn recovers_from_a_wiped_server(
    version: Version,
) -> (
    k8s_openapi::api::core::v1::Secret,
    k8s_openapi::api::core::v1::Secret,
) {
    let mut s = setup(
        &format!("real-wipe-{}", version.as_str()),
        version,
        &["--existence-check-interval", "3s"],
    )
    .await;
    create(&s.client, Some(&s.ns), smart_client("app", json!({})))
        .await
        .unwrap();
    let (_, before) = ready_client_and_secret(&s, "app").await;
    s.server.restart_wiped().await;
    // The operator may already be registering again, so the wipe is shown by the old debug token: no
    // new registration brings it back.
    let old_token = secret_value(&before, "daniel_access_token").unwrap();
    let response = http()
        .get(format!("{}/api/fhir/Patient", s.server.base_url()))
        .bearer_auth(&old_token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status().as_u16(),
        401,
        "the restarted server forgot the client's tokens"
    );
    // One probe interval (3 s) plus one backoff step (the cap is 2 s: probes during the restart found
    // the server unreachable) and the registration itself.
    let after = eventually(
        "the client works on the wiped server again within a probe interval",
        Duration::from_secs(8),
        || async {
            let secret = get_secret(&s.client, &s.ns, "app-smart-client").await?;
            let id = secret_value(&secret, "client_id")?;
            let client_secret = secret_value(&secret, "client_secret")?;
            (probe_error(&s.server, &id, &client_secret).await == "invalid_grant").then_some(secret)
        },
    )
    .await;
    wait_for_ready(&s.client, &s.ns, "app", "True", "Ready").await;
    wait_for_event(&s.client, &s.ns, "ReRegistered").await;
    assert_eq!(
        s.server.registrations(),
        2,
        "one registration before the wipe and one after (log {})",
        s.server.log_path.display()
    );
    eventually(
        "a debug token the wiped server knows",
        Duration::from_secs(15),
        || async {
            let secret = get_secret(&s.client, &s.ns, "app-smart-client").await?;
            let token = secret_value(&secret, "daniel_access_token")?;
            let response = http()
                .get(format!("{}/api/fhir/Patient", s.server.base_url()))
                .bearer_auth(&token)
                .send()
                .await
                .ok()?;
            (response.status() == 404).then_some(())
        },
    )
    .await;
    (before, after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_server_wiped_by_a_restart_gets_the_same_id_and_secret_back_within_a_probe_interval()
{
    let (before, after) = recovers_from_a_wiped_server(Version::Legacy).await;
    assert_eq!(
        secret_value(&after, "client_id"),
        secret_value(&before, "client_id")
    );
    assert_eq!(
        secret_value(&after, "client_secret"),
        secret_value(&before, "client_secret"),
        "mounted credentials keep working: the same secret is registered again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_server_wiped_by_a_restart_gets_a_new_client_within_a_probe_interval() {
    let (before, after) = recovers_from_a_wiped_server(Version::Current).await;
    assert_ne!(
        secret_value(&after, "client_id"),
        secret_value(&before, "client_id"),
        "S4S picks a new id for the new registration"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_debug_token_lives_its_lifetime_and_is_re_minted_refresh_before_expiry() {
    let s = setup("real-legacy-tokens", Version::Legacy, &[]).await;
    let tokens = json!({"debugTokens": [{"name": "daniel", "user": "daniel-adams", "patientId": "smart-1288992", "lifetime": "20s", "refreshBefore": "10s"}]});
    create(&s.client, Some(&s.ns), smart_client("app", tokens))
        .await
        .unwrap();
    let (ready, secret) = ready_client_and_secret(&s, "app").await;
    let first = secret_value(&secret, "daniel_access_token").unwrap();
    let info = introspection(&s.server, Version::Legacy, &first).await;
    let expires = httpdate::parse_http_date(info["expires"].as_str().unwrap()).unwrap();
    let left = expires
        .duration_since(std::time::SystemTime::now())
        .expect("not expired yet");
    assert!(
        left <= Duration::from_secs(20),
        "the token lives the 20 s asked for, not {left:?}"
    );
    let status_expiry: std::time::SystemTime = ready.status.unwrap().debug_tokens[0]
        .expires_at
        .clone()
        .unwrap()
        .0
        .into();
    assert!(
        status_expiry.duration_since(expires).unwrap_or_default() <= Duration::from_secs(1)
            && expires.duration_since(status_expiry).unwrap_or_default() <= Duration::from_secs(1),
        "status shows the expiry introspection reads back"
    );
    assert_token_works_at_the_fhir_api(&s.server, &first).await;
    // Re-minted 10 s (plus up to a tenth of the lifetime in jitter) before expiry: within ~12 s.
    let renewed = eventually(
        "the token is re-minted",
        Duration::from_secs(20),
        || async {
            let token = secret_value(
                &get_secret(&s.client, &s.ns, "app-smart-client").await?,
                "daniel_access_token",
            )?;
            (token != first).then_some(token)
        },
    )
    .await;
    assert_token_works_at_the_fhir_api(&s.server, &renewed).await;
    assert_eq!(s.server.registrations(), 1);
    let mints = s.server.debug_token_mints();
    assert!(
        (2..=3).contains(&mints),
        "re-minted on schedule: {mints} mints"
    );
}

/// A requested rotation: a replacement registered once, both credentials accepted by the real server
/// during the overlap, a debug token for the new client that works, then the replaced client leaves
/// the Secret and is recorded as orphaned (S4S dialects cannot delete).
async fn rotation_replaces_keeps_the_old_for_the_overlap_and_orphans_it(version: Version) {
    let s = setup(&format!("real-rotate-{}", version.as_str()), version, &[]).await;
    create(
        &s.client,
        Some(&s.ns),
        smart_client("app", json!({"rotation": {"overlap": "3s"}})),
    )
    .await
    .unwrap();
    let (_, before) = ready_client_and_secret(&s, "app").await;
    let old_id = secret_value(&before, "client_id").unwrap();
    let old_secret = secret_value(&before, "client_secret").unwrap();
    api(&s)
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {
                "smart.fhir.dev/rotate-credentials-requested-at": "2026-12-02T00:00:00Z"}}})),
        )
        .await
        .unwrap();
    let rotated = eventually(
        "new credentials beside the old",
        Duration::from_secs(30),
        || async {
            let secret = get_secret(&s.client, &s.ns, "app-smart-client").await?;
            (secret_value(&secret, "client_id")? != old_id
                && secret_value(&secret, "previous_client_id")? == old_id
                && secret_value(&secret, "daniel_access_token").is_some())
            .then_some(secret)
        },
    )
    .await;
    let new_id = secret_value(&rotated, "client_id").unwrap();
    let new_secret = secret_value(&rotated, "client_secret").unwrap();
    assert_eq!(
        secret_value(&rotated, "previous_client_secret").as_deref(),
        Some(old_secret.as_str())
    );
    // The real server knows both: a made-up refresh token is the only thing wrong with each.
    assert_eq!(
        probe_error(&s.server, &new_id, &new_secret).await,
        "invalid_grant"
    );
    assert_eq!(
        probe_error(&s.server, &old_id, &old_secret).await,
        "invalid_grant"
    );
    let token = eventually(
        "a debug token of the new client",
        Duration::from_secs(30),
        || async {
            let secret = get_secret(&s.client, &s.ns, "app-smart-client").await?;
            let token = secret_value(&secret, "daniel_access_token")?;
            (token != secret_value(&before, "daniel_access_token")?).then_some(token)
        },
    )
    .await;
    assert_token_works_at_the_fhir_api(&s.server, &token).await;

    let status = wait_for_orphan(&s.client, &s.ns, "app", &old_id, "Rotated").await;
    assert_eq!(status.client_id.as_deref(), Some(new_id.as_str()));
    wait_for_retirement(&s.client, &s.ns, "app-smart-client").await;
    assert_eq!(
        s.server.registrations(),
        2,
        "one registration for one rotation"
    );
    // Counted, and cleared by id once someone has dealt with it on the server.
    assert_eq!(
        s.operator.metric("smart_operator_orphaned_clients").await,
        Some(1.0)
    );
    api(&s)
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"metadata": {"annotations": {"smart.fhir.dev/clear-orphans": old_id}}}),
            ),
        )
        .await
        .unwrap();
    eventually("the orphan cleared", Duration::from_secs(30), || async {
        let status = api(&s).get("app").await.ok()?.status?;
        status.orphaned_clients.is_empty().then_some(())
    })
    .await;
    wait_for_event(&s.client, &s.ns, "OrphansCleared").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_rotation_keeps_the_old_credentials_for_the_overlap_then_orphans_them() {
    rotation_replaces_keeps_the_old_for_the_overlap_and_orphans_it(Version::Legacy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_rotation_keeps_the_old_credentials_for_the_overlap_then_orphans_them() {
    rotation_replaces_keeps_the_old_for_the_overlap_and_orphans_it(Version::Current).await;
}

/// A client registered on the real server before the operator came is adopted by the existence
/// probe: nothing registered, its debug token minted for it.
async fn adopts_an_existing_client(version: Version) {
    let s = setup(&format!("real-adopt-{}", version.as_str()), version, &[]).await;
    let form_or_json = match version {
        Version::Legacy => http()
            .post(format!("{}/oauth/register", s.server.base_url()))
            .form(&[
                ("client_id", "made-by-hand"),
                ("client_secret", "a-secret-chosen-by-hand-0123456789"),
                ("client_name", "made by hand"),
                ("redirect_uris", "https://app.example.org/callback"),
                ("scopes", "launch/patient patient/*.read offline_access"),
            ]),
        Version::Current => http()
            .post(format!("{}/oauth/register", s.server.base_url()))
            .json(&json!({"client_name": "made by hand", "redirect_uris": ["https://app.example.org/callback"],
                          "scope": "launch/patient patient/*.read offline_access"})),
    };
    let body: Value = form_or_json.send().await.unwrap().json().await.unwrap();
    let client_id = body["client_id"].as_str().unwrap().to_owned();
    let client_secret = body["client_secret"].as_str().unwrap().to_owned();
    assert_eq!(s.server.registrations(), 1);
    apply(
        &s.client,
        Some(&s.ns),
        json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "existing"},
            "stringData": {"client_id": client_id, "client_secret": client_secret},
        }),
    )
    .await
    .unwrap();
    create(
        &s.client,
        Some(&s.ns),
        smart_client("app", json!({"adopt": {"secretName": "existing"}})),
    )
    .await
    .unwrap();
    let (ready, secret) = ready_client_and_secret(&s, "app").await;
    assert_eq!(
        ready.status.unwrap().client_id.as_deref(),
        Some(client_id.as_str())
    );
    assert_eq!(secret_value(&secret, "client_secret"), Some(client_secret));
    let token = eventually(
        "the adopted client's debug token",
        Duration::from_secs(30),
        || async {
            secret_value(
                &get_secret(&s.client, &s.ns, "app-smart-client").await?,
                "daniel_access_token",
            )
        },
    )
    .await;
    assert_token_works_at_the_fhir_api(&s.server, &token).await;
    assert_eq!(
        s.server.registrations(),
        1,
        "nothing registered by the operator"
    );

    // A made-up secret for a known id is refused, and nothing is registered in its place.
    apply(
        &s.client,
        Some(&s.ns),
        json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "wrong"},
            "stringData": {"client_id": client_id, "client_secret": "not-its-secret"},
        }),
    )
    .await
    .unwrap();
    create(
        &s.client,
        Some(&s.ns),
        smart_client("wrong", json!({"adopt": {"secretName": "wrong"}})),
    )
    .await
    .unwrap();
    wait_for_ready(&s.client, &s.ns, "wrong", "False", "AdoptionRefused").await;
    assert_eq!(s.server.registrations(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_existing_client_is_adopted_without_registering() {
    adopts_an_existing_client(Version::Legacy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_existing_client_is_adopted_without_registering() {
    adopts_an_existing_client(Version::Current).await;
}
