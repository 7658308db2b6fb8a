//! Targets and the Markdown report.

use super::*;

pub(crate) struct Target {
    pub(crate) name: String,
    pub(crate) value: String,
    pub(crate) target: String,
    pub(crate) pass: bool,
    pub(crate) hard: bool,
}

pub(crate) fn targets(scenarios: &[Value]) -> Vec<Target> {
    let mut out = Vec::new();
    for s in scenarios {
        let label = format!("{} N={}", s["dialect"].as_str().unwrap_or(""), s["n"]);
        let n = s["n"].as_u64().unwrap_or(0);
        let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        if n == 1000 {
            let ratio = f(&s["ratio"]);
            out.push(Target {
                name: format!("{label}: operator/floor time"),
                value: format!("{ratio:.2}"),
                target: "≤ 1.3".into(),
                pass: ratio <= 1.3,
                hard: false,
            });
        }
        let limit = match n {
            1000 => Some(40.0),
            5000 => Some(150.0),
            _ => None,
        };
        if let Some(limit) = limit {
            let rss = f(&s["rollout"]["operator_peak_rss_after_idle_mib"]);
            out.push(Target {
                name: format!("{label}: operator peak RSS"),
                value: format!("{rss:.1} MiB = {:.1} MB", rss * 1.048_576),
                target: format!("≤ {limit} MB"),
                pass: rss * 1.048_576 <= limit,
                hard: false,
            });
        }
        let writes = s["idle"]["namespace_changes"]["total"]
            .as_u64()
            .unwrap_or(0);
        out.push(Target {
            name: format!("{label}: idle writes"),
            value: writes.to_string(),
            target: "0".into(),
            pass: writes == 0,
            hard: true,
        });
        let calls = f(&s["idle"]["auth_calls_per_min_excluding_mints"]);
        out.push(Target {
            name: format!("{label}: idle auth-server calls/min (no re-mints)"),
            value: format!("{calls:.1}"),
            target: "0".into(),
            pass: calls == 0.0,
            hard: false,
        });
        let reg = s["restart"]["registrations"].as_u64().unwrap_or(0);
        let mints = s["restart"]["token_mints"].as_u64().unwrap_or(0);
        out.push(Target {
            name: format!("{label}: restart registrations / mints"),
            value: format!("{reg} / {mints}"),
            target: "0 / 0".into(),
            pass: reg == 0 && mints == 0,
            hard: true,
        });
        let added = f(&s["unrelated"]["peak_rss_added_mib"]);
        out.push(Target {
            name: format!(
                "{label}: RSS added by {} unrelated Secrets",
                s["unrelated"]["secrets"]
            ),
            value: format!("{added:+.1} MiB (peak RSS)"),
            target: "< 5 MB".into(),
            pass: added * 1.048_576 < 5.0,
            hard: false,
        });
    }
    out
}

pub(crate) fn fmt_verbs(v: &Value) -> String {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

pub(crate) fn markdown(report: &Value, targets: &[Target]) -> String {
    let mut md = String::new();
    let m = &report["machine"];
    let _ = writeln!(
        md,
        "# smart-operator benchmark ({})\n",
        report["name"].as_str().unwrap_or("")
    );
    let _ = writeln!(
        md,
        "{} · {} cores ({}) · {} MiB RAM · load {} at start, {} at end · {:.0} s · operator concurrency {}, {} creates in flight\n",
        report["started_at"].as_str().unwrap_or(""),
        m["nproc"],
        m["cpu"].as_str().unwrap_or(""),
        m["mem_total_mib"],
        report["load_at_start"].as_str().unwrap_or(""),
        report["load_at_end"].as_str().unwrap_or(""),
        report["duration_s"].as_f64().unwrap_or(0.0),
        report["options"]["concurrency"],
        report["options"]["create_concurrency"],
    );
    let _ = writeln!(
        md,
        "## Targets\n\n| target | value | goal | result |\n|---|---|---|---|"
    );
    for t in targets {
        let mark = match (t.pass, t.hard) {
            (true, _) => "✅ pass",
            (false, true) => "❌ MISS (hard)",
            (false, false) => "❌ miss",
        };
        let _ = writeln!(md, "| {} | {} | {} | {mark} |", t.name, t.value, t.target);
    }
    let _ = writeln!(
        md,
        "\n## Rollout and floor\n\n| dialect | N | operator all Ready | p50 | p99 | floor all Ready | floor p50 | floor p99 | ratio | operator CPU | peak RSS | auth requests (operator / floor) |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let scenarios = report["scenarios"].as_array().cloned().unwrap_or_default();
    for s in &scenarios {
        let r = &s["rollout"];
        let f = &s["floor"];
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} s | {:.3} s | {:.3} s | {:.2} s | {:.3} s | {:.3} s | {:.2} | {:.2} s | {:.1} MiB | {} / {} |",
            s["dialect"].as_str().unwrap_or(""),
            s["n"],
            r["all_ready_s"].as_f64().unwrap_or(0.0),
            r["latency_p50_s"].as_f64().unwrap_or(0.0),
            r["latency_p99_s"].as_f64().unwrap_or(0.0),
            f["all_ready_s"].as_f64().unwrap_or(0.0),
            f["latency_p50_s"].as_f64().unwrap_or(0.0),
            f["latency_p99_s"].as_f64().unwrap_or(0.0),
            s["ratio"].as_f64().unwrap_or(0.0),
            r["operator_cpu_s"].as_f64().unwrap_or(0.0),
            r["operator_peak_rss_after_idle_mib"]
                .as_f64()
                .unwrap_or(0.0),
            r["auth_server"]["total"],
            f["auth_server"]["total"],
        );
    }
    let _ = writeln!(
        md,
        "\n## Apiserver requests during the rollout\n\nOperator and floor: every request each sent, counted by the proxy in front of the apiserver (exact; the N creates are the harness's and not included). apiserver /metrics: `apiserver_request_total` over the same window for the resources the operator uses, N creates subtracted, including any other client of the control plane.\n\n| dialect | N | operator | per client | floor | per client | apiserver /metrics | operator reconciles |\n|---|---|---|---|---|---|---|---|"
    );
    for s in &scenarios {
        let n = s["n"].as_f64().unwrap_or(1.0).max(1.0);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.1} | {} | {:.1} | {} | {} |",
            s["dialect"].as_str().unwrap_or(""),
            s["n"],
            fmt_verbs(&s["rollout"]["requests"]["by_verb"]),
            s["rollout"]["requests"]["total"].as_f64().unwrap_or(0.0) / n,
            fmt_verbs(&s["floor"]["requests"]["by_verb"]),
            s["floor"]["requests"]["total"].as_f64().unwrap_or(0.0) / n,
            fmt_verbs(&s["rollout"]["apiserver_operator"]["by_verb"]),
            fmt_verbs(&s["rollout"]["operator_reconciles"]),
        );
    }
    let _ = writeln!(
        md,
        "\n## Idle, restart, unrelated Secrets\n\n| dialect | N | idle window | operator requests/min (writes/min) | namespace changes/min | auth calls/min (no re-mints) | restart: all reconciled | registrations / mints | restart requests | RSS without / with unrelated Secrets |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for s in &scenarios {
        let i = &s["idle"];
        let r = &s["restart"];
        let u = &s["unrelated"];
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} s | {:.1} ({:.1}) | {:.1} | {:.1} | {:.2} s | {} / {} | {} | {:.1} / {:.1} MiB peak ({} Secrets) |",
            s["dialect"].as_str().unwrap_or(""),
            s["n"],
            i["window_s"].as_f64().unwrap_or(0.0),
            i["operator_requests_per_min"].as_f64().unwrap_or(f64::NAN),
            i["operator_writes_per_min"].as_f64().unwrap_or(f64::NAN),
            i["namespace_writes_per_min"].as_f64().unwrap_or(0.0),
            i["auth_calls_per_min_excluding_mints"]
                .as_f64()
                .unwrap_or(0.0),
            r["all_reconciled_s"].as_f64().unwrap_or(0.0),
            r["registrations"],
            r["token_mints"],
            fmt_verbs(&r["requests"]["by_verb"]),
            u["peak_rss_without_mib"].as_f64().unwrap_or(0.0),
            u["peak_rss_with_mib"].as_f64().unwrap_or(0.0),
            u["secrets"],
        );
    }
    let _ = writeln!(
        md,
        "\nNamespace changes are additions, modifications and deletions of SmartClients, Secrets and \
         Events seen by watches on the bench namespace. Full figures (requests by resource, \
         apiserver /metrics per window, operator reconcile counters): the JSON next to this file."
    );
    md
}
