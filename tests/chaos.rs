//! Chaos: SmartClients of every dialect rolled out while the operator is SIGKILLed and the auth server
//! fails a fifth of its requests with added latency; then an auth server wipe; then deletions under
//! 50% errors; an apiserver restart (shared by the three dialects, which run side by side) and a spec
//! change right after it. Counted from the servers and the cluster, never from the operator's own
//! account.
//!
//! This short form runs in `hack/test`. `hack/chaos` runs the same test at full size
//! (`CHAOS_CLIENTS=300 CHAOS_KILLS=10 CHAOS_DELETIONS=100`) and prints the figures README quotes.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::operator::*;
use common::scenario::*;
use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;
use smart_operator::crd::SmartClient;
use smart_operator::devserver::Dialect as DevDialect;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const PROBE_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Figures {
    dialect: DevDialect,
    clients: usize,
    kills: usize,
    ready: usize,
    rollout: Duration,
    lost_credentials: usize,
    extra_registrations: usize,
    /// `status.orphanedClients` entries without an id: registrations whose answer was lost.
    recorded_lost_answers: usize,
    /// Clients whose rotation (requested for all at once, with kills and faults) ended with new
    /// credentials in the Secret and the replaced ones as `previous_*`, both accepted by the server.
    rotated: usize,
    /// Clients whose current or previous credentials in the Secret the server did not accept after
    /// the rotation, or whose previous ones are not the ones from before (a second rotation).
    lost_in_rotation: usize,
    /// Registrations the rotation made beyond one per client, and lost answers recorded meanwhile.
    extra_rotation_registrations: usize,
    recorded_lost_rotation_answers: usize,
    rotation_time: Duration,
    /// From the apiserver's /readyz after its restart to a spec change applied.
    change_after_apiserver_restart: Duration,
    wipe_recovery: Duration,
    /// Token endpoint requests (existence probes) per client from the wipe to its recovery.
    wipe_probes_per_client: f64,
    legacy_secrets_changed_by_wipe: usize,
    deleted: usize,
    leftovers_after_deletion: usize,
    deletion_time: Duration,
}

/// (client_id → client_secret) on the dev server.
async fn server_clients(server: &AuthServer) -> HashMap<String, Option<String>> {
    server
        .clients()
        .await
        .into_iter()
        .map(|c| {
            (
                c["client_id"].as_str().unwrap_or_default().to_owned(),
                c["client_secret"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// (SmartClient name → its Secret) for `names`. One list call: a GET per client, every 100 ms,
/// loaded the apiserver more than the operator did.
async fn managed_secrets(s: &Setup, names: &[String]) -> BTreeMap<String, Secret> {
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    let listed = secrets
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=smart-operator"))
        .await
        .unwrap();
    let mut by_name: HashMap<String, Secret> = listed
        .items
        .into_iter()
        .map(|secret| (secret.metadata.name.clone().unwrap_or_default(), secret))
        .collect();
    names
        .iter()
        .filter_map(|name| {
            Some((
                name.clone(),
                by_name.remove(&format!("{name}-smart-client"))?,
            ))
        })
        .collect()
}

/// (SmartClient name → (client_id, client_secret)) as their Secrets hold them.
async fn secrets_of(s: &Setup, names: &[String]) -> BTreeMap<String, (String, Option<String>)> {
    managed_secrets(s, names)
        .await
        .into_iter()
        .filter_map(|(name, secret)| {
            let id = secret_value(&secret, "client_id")?;
            Some((name, (id, secret_value(&secret, "client_secret"))))
        })
        .collect()
}

/// SmartClients whose Secret holds credentials the server does not accept (unknown id, other secret).
async fn lost_credentials(s: &Setup, names: &[String]) -> usize {
    let remote = server_clients(&s.server).await;
    let held = secrets_of(s, names).await;
    names
        .iter()
        .filter(|name| match held.get(*name) {
            Some((id, secret)) => remote.get(id) != Some(secret),
            None => true,
        })
        .count()
}

/// `status.orphanedClients` entries without an id, over every SmartClient.
async fn count_lost_answers(s: &Setup) -> usize {
    smart_clients(s)
        .await
        .iter()
        .map(|c: &SmartClient| {
            c.status.as_ref().map_or(0, |st| {
                st.orphaned_clients
                    .iter()
                    .filter(|o| o.client_id.is_empty())
                    .count()
            })
        })
        .sum()
}

type Credentials = (String, Option<String>);

/// (SmartClient name → (current, previous) credentials) for the Secrets that hold both.
async fn rotated_secrets(
    s: &Setup,
    names: &[String],
) -> BTreeMap<String, (Credentials, Credentials)> {
    managed_secrets(s, names)
        .await
        .into_iter()
        .filter_map(|(name, secret)| {
            let current = (
                secret_value(&secret, "client_id")?,
                secret_value(&secret, "client_secret"),
            );
            let previous = (
                secret_value(&secret, "previous_client_id")?,
                secret_value(&secret, "previous_client_secret"),
            );
            Some((name, (current, previous)))
        })
        .collect()
}

async fn smart_clients(s: &Setup) -> Vec<SmartClient> {
    api(s).list(&ListParams::default()).await.unwrap().items
}

async fn ready_count(s: &Setup) -> usize {
    smart_clients(s)
        .await
        .iter()
        .filter(|c| condition(c, "Ready").is_some_and(|(status, _)| status == "True"))
        .count()
}

fn restart_apiserver() {
    let (ok, _, err) = run_tool(
        &repo_root().join("hack/control-plane").to_string_lossy(),
        &["restart-apiserver"],
    );
    assert!(ok, "hack/control-plane restart-apiserver failed: {err}");
}

/// The three dialects run side by side and meet here for the one apiserver restart they share.
async fn apiserver_restart_together(barrier: &tokio::sync::Barrier) -> Instant {
    if barrier.wait().await.is_leader() {
        restart_apiserver();
    }
    barrier.wait().await;
    Instant::now()
}

async fn run(dialect: DevDialect, prefix: &str, barrier: &tokio::sync::Barrier) -> Figures {
    let clients = setting("CHAOS_CLIENTS", 20);
    let kills = setting("CHAOS_KILLS", 3);
    let deletions = setting("CHAOS_DELETIONS", 10).min(clients);
    let interval = format!("{}s", PROBE_INTERVAL.as_secs());
    let mut s = setup(
        prefix,
        dialect,
        &[
            "--existence-check-interval",
            &interval,
            "--backoff-cap",
            "2s",
        ],
    )
    .await;
    let names: Vec<String> = (0..clients).map(|i| format!("app-{i}")).collect();

    // 1. Rollout while the server fails a fifth of its requests and the operator is killed.
    s.server
        .set_faults(json!({"error_rate": 0.2, "error_status": 503, "latency_ms": 100}))
        .await;
    let started = Instant::now();
    let creator = {
        let client = s.client.clone();
        let ns = s.ns.clone();
        let names = names.clone();
        tokio::spawn(async move {
            for name in names {
                create(&client, Some(&ns), smart_client(&name, json!({})))
                    .await
                    .unwrap();
            }
        })
    };
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(700)).await;
        s.operator.kill_hard();
        s.operator.restart();
    }
    creator.await.unwrap();
    eventually(
        "every SmartClient Ready after the rollout",
        Duration::from_secs(300),
        || async { (ready_count(&s).await == clients).then_some(()) },
    )
    .await;
    let rollout = started.elapsed();
    s.server.clear_faults().await;
    // A check that hit the last injected fault may have set one Ready=False; the faults are over now.
    eventually(
        "every SmartClient Ready once the faults stop",
        PROBE_INTERVAL * 3,
        || async { (ready_count(&s).await == clients).then_some(()) },
    )
    .await;
    let ready = ready_count(&s).await;
    let lost = lost_credentials(&s, &names).await;
    let remote = server_clients(&s.server).await.len();
    let recorded_lost_answers = count_lost_answers(&s).await;

    // 2. A rotation of every client at once, under the same faults and kills: each ends with new
    //    credentials and the replaced ones beside them, both working, and no client rotated twice.
    let before_rotation = secrets_of(&s, &names).await;
    let registered_before_rotation = server_clients(&s.server).await.len();
    let lost_answers_before_rotation = count_lost_answers(&s).await;
    s.server
        .set_faults(json!({"error_rate": 0.2, "error_status": 503, "latency_ms": 100}))
        .await;
    let rotating = Instant::now();
    for name in &names {
        annotate(
            &s,
            name,
            "smart.fhir.dev/rotate-credentials-requested-at",
            Some("chaos"),
        )
        .await;
    }
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(700)).await;
        s.operator.kill_hard();
        s.operator.restart();
    }
    eventually("every client rotated", Duration::from_secs(300), || async {
        let held = rotated_secrets(&s, &names).await;
        (held.len() == clients
            && held.iter().all(|(name, ((id, _), _))| {
                before_rotation.get(name).is_some_and(|(old, _)| old != id)
            }))
        .then_some(())
    })
    .await;
    s.server.clear_faults().await;
    eventually(
        "every SmartClient Ready after the rotation",
        PROBE_INTERVAL * 3,
        || async { (ready_count(&s).await == clients).then_some(()) },
    )
    .await;
    let rotation_time = rotating.elapsed();
    let remote_after_rotation = server_clients(&s.server).await;
    let after_rotation = rotated_secrets(&s, &names).await;
    let lost_in_rotation = names
        .iter()
        .filter(|name| {
            let Some(((id, secret), (previous_id, previous_secret))) = after_rotation.get(*name)
            else {
                return true;
            };
            let replaced_is_the_original =
                before_rotation.get(*name) == Some(&(previous_id.clone(), previous_secret.clone()));
            remote_after_rotation.get(id) != Some(secret)
                || remote_after_rotation.get(previous_id) != Some(previous_secret)
                || !replaced_is_the_original
        })
        .count();
    let rotated = after_rotation.len();
    let extra_rotation_registrations = remote_after_rotation
        .len()
        .saturating_sub(registered_before_rotation + clients);
    let recorded_lost_rotation_answers = count_lost_answers(&s)
        .await
        .saturating_sub(lost_answers_before_rotation);

    // 3. A wipe: every client is registered again within a probe interval, S4SLegacy with its secret.
    let before_wipe = secrets_of(&s, &names).await;
    let probes_before_wipe = s.server.count("token").await;
    s.server.reset().await;
    let wiped_at = Instant::now();
    eventually(
        "every client works on the wiped server again",
        PROBE_INTERVAL * 3,
        || async { (lost_credentials(&s, &names).await == 0).then_some(()) },
    )
    .await;
    let wipe_recovery = wiped_at.elapsed();
    // The checks that follow a re-registration come right after its Secret write: counted too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let wipe_probes_per_client = s
        .server
        .count("token")
        .await
        .saturating_sub(probes_before_wipe) as f64
        / clients as f64;
    let after_wipe = secrets_of(&s, &names).await;
    let legacy_secrets_changed = before_wipe
        .iter()
        .filter(|(name, held)| after_wipe.get(*name) != Some(held))
        .count();

    // 4. The apiserver restarts; a spec change right after it comes back is applied within seconds.
    let changed = names.last().unwrap();
    let back = apiserver_restart_together(barrier).await;
    loop {
        let patch = json!({"spec": {"clientName": "changed after the apiserver restart"}});
        let patched = api(&s)
            .patch(
                changed,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await;
        if patched.is_ok() {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "never admitted: {patched:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let generation = api(&s).get(changed).await.unwrap().metadata.generation;
    eventually(
        "the spec change applied after the apiserver restart",
        Duration::from_secs(120),
        || async {
            let client = api(&s).get(changed).await.ok()?;
            (client.status.as_ref()?.observed_generation == generation
                && condition(&client, "Ready").is_some_and(|(s, _)| s == "True"))
            .then_some(())
        },
    )
    .await;
    let change_after_apiserver_restart = back.elapsed();

    // 5. Deletions while half of all requests fail, then the faults stop.
    s.server
        .set_faults(json!({"error_rate": 0.5, "error_status": 503}))
        .await;
    let doomed = &names[..deletions];
    let doomed_ids: Vec<String> = doomed
        .iter()
        .filter_map(|n| after_wipe.get(n).map(|(id, _)| id.clone()))
        .collect();
    let deleting = Instant::now();
    for name in doomed {
        api(&s)
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    s.server.clear_faults().await;
    let clients_api: Api<SmartClient> = api(&s);
    eventually(
        "every deleted SmartClient is gone",
        Duration::from_secs(120),
        || async {
            for name in doomed {
                if clients_api.get_opt(name).await.ok()?.is_some() {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    let deletion_time = deleting.elapsed();
    let remote_after = server_clients(&s.server).await;
    let leftovers = doomed_ids
        .iter()
        .filter(|id| remote_after.contains_key(*id))
        .count();

    Figures {
        dialect,
        clients,
        kills,
        ready,
        rollout,
        lost_credentials: lost,
        extra_registrations: remote.saturating_sub(clients),
        recorded_lost_answers,
        rotated,
        lost_in_rotation,
        extra_rotation_registrations,
        recorded_lost_rotation_answers,
        rotation_time,
        change_after_apiserver_restart,
        wipe_recovery,
        wipe_probes_per_client,
        legacy_secrets_changed_by_wipe: if dialect == DevDialect::S4sLegacy {
            legacy_secrets_changed
        } else {
            0
        },
        deleted: deletions,
        leftovers_after_deletion: leftovers,
        deletion_time,
    }
}

fn check(f: &Figures) {
    println!(
        "CHAOS | {:?} | {} clients, {} kills | {}/{} Ready after {:.1} s | lost {} | extra registrations {} (recorded as lost answers {}) | rotation under {} kills: {}/{} rotated in {:.1} s, lost {}, extra registrations {} (recorded {}) | wipe: recovered in {:.1} s with {:.1} probes per client, S4SLegacy secrets changed {} | spec change applied {:.1} s after the apiserver restart | {} deletions in {:.1} s, leftovers {} |",
        f.dialect,
        f.clients,
        f.kills,
        f.ready,
        f.clients,
        f.rollout.as_secs_f64(),
        f.lost_credentials,
        f.extra_registrations,
        f.recorded_lost_answers,
        f.kills,
        f.rotated,
        f.clients,
        f.rotation_time.as_secs_f64(),
        f.lost_in_rotation,
        f.extra_rotation_registrations,
        f.recorded_lost_rotation_answers,
        f.wipe_recovery.as_secs_f64(),
        f.wipe_probes_per_client,
        f.legacy_secrets_changed_by_wipe,
        f.change_after_apiserver_restart.as_secs_f64(),
        f.deleted,
        f.deletion_time.as_secs_f64(),
        f.leftovers_after_deletion,
    );
    assert_eq!(f.ready, f.clients, "every SmartClient Ready: {f:?}");
    assert_eq!(f.lost_credentials, 0, "no lost credentials: {f:?}");
    assert_eq!(f.rotated, f.clients, "every client rotated: {f:?}");
    assert_eq!(
        f.lost_in_rotation, 0,
        "no credentials lost in the rotation, none rotated twice: {f:?}"
    );
    assert!(
        f.extra_rotation_registrations <= f.recorded_lost_rotation_answers,
        "every rotation registration beyond one per client recorded: {f:?}"
    );
    match f.dialect {
        DevDialect::S4sLegacy => {
            assert_eq!(f.extra_registrations, 0, "no duplicate on S4SLegacy: {f:?}");
            assert_eq!(
                f.legacy_secrets_changed_by_wipe, 0,
                "a wipe changes no S4SLegacy secret: {f:?}"
            );
        }
        // A kill while registrations are in flight leaves each of those clients on the server with
        // an id that died with the process: each is recorded (a kill just before sending records
        // one that was never made, so records may exceed them), and there are no more than the
        // reconcile concurrency (16) per kill.
        DevDialect::Rfc7591 | DevDialect::S4s => {
            assert!(
                f.extra_registrations <= f.recorded_lost_answers,
                "every registration beyond one per client recorded: {f:?}"
            );
            assert!(
                f.extra_registrations <= f.kills * 16,
                "duplicates bounded by what kills can interrupt: {f:?}"
            );
        }
    }
    assert!(
        f.change_after_apiserver_restart < Duration::from_secs(10),
        "a spec change seen within 10 s of the apiserver's return: {f:?}"
    );
    // Each client's check comes within the interval plus 10% jitter; re-registering hundreds of
    // clients at once takes some seconds more on 2 cores (README has the measured figures). Two
    // intervals would mean a probe round missed the wipe.
    assert!(
        f.wipe_recovery < PROBE_INTERVAL * 2,
        "recovered from the wipe within the first round of checks: {f:?}"
    );
    // One check finds each client gone, one more at most confirms the new one: no probe loop.
    assert!(
        f.wipe_probes_per_client <= 3.0,
        "no flood of existence probes after a wipe: {f:?}"
    );
    if f.dialect == DevDialect::Rfc7591 {
        assert_eq!(
            f.leftovers_after_deletion, 0,
            "no leftovers once faults stop: {f:?}"
        );
    }
}

/// One test for the three dialects: they share the apiserver restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_every_dialect() {
    let barrier = tokio::sync::Barrier::new(3);
    let (rfc, s4s, legacy) = tokio::join!(
        run(DevDialect::Rfc7591, "chaos-rfc", &barrier),
        run(DevDialect::S4s, "chaos-s4s", &barrier),
        run(DevDialect::S4sLegacy, "chaos-legacy", &barrier),
    );
    for figures in [&rfc, &s4s, &legacy] {
        check(figures);
    }
}
