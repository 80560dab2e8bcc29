//! The dashboards and alerts of `deploy/observability/` against what the
//! programs really export: every metric an alert rule or a dashboard panel
//! names is scraped from a real `sf-serve`, `sf-scheduler` or
//! `sf-executor` or written by a real `sf-write` in the test, and the rules pass Prometheus' own checker and their unit
//! tests (`promtool`, installed by scripts/test.sh).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use sf_tests::cluster::{ClusterOptions, LocalCluster, free_port};
use sf_tests::scenario::JobDir;
use sf_tests::serve::{ServeProcess, call};

fn observability() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/observability")
}

/// The names of ShardForge's metrics in a PromQL expression.
fn names_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let rest = &expr[i..];
        if starts_word
            && ["sf_serve_", "sf_reader_", "shardforge_"]
                .iter()
                .any(|p| rest.starts_with(p))
        {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            out.push(rest[..end].to_string());
            i += end;
        } else {
            i += 1;
        }
    }
    out
}

/// Every expression of the alert rules, with the rule's name. The file is
/// read line by line (the project's own layout: `- alert:` then `expr:`,
/// inline or as a `|` block), and promtool checks it is the YAML it looks
/// like.
fn alert_expressions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(observability().join("alerts.yaml")).expect("alerts.yaml");
    let mut out: Vec<(String, String)> = Vec::new();
    let mut lines = text.lines().peekable();
    let mut alert = None;
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("- alert: ") {
            alert = Some(name.trim().to_string());
        } else if let Some(value) = trimmed.strip_prefix("expr: ") {
            let name = alert
                .take()
                .unwrap_or_else(|| panic!("an expr outside an alert: {line}"));
            let expr = if value.trim() == "|" {
                let indent = line.len() - trimmed.len();
                let mut block = Vec::new();
                while let Some(next) = lines.peek() {
                    if next.len() - next.trim_start().len() <= indent {
                        break;
                    }
                    block.push(next.trim().to_string());
                    lines.next();
                }
                block.join(" ")
            } else {
                value.trim().to_string()
            };
            out.push((name, expr));
        }
    }
    assert!(out.len() >= 10, "alerts.yaml holds the rules: {out:?}");
    out
}

/// Every target expression of the dashboard, with its panel's title.
fn dashboard_expressions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(observability().join("dashboard.json")).expect("dashboard.json");
    let doc: Value = serde_json::from_str(&text).expect("dashboard.json is JSON");
    let mut out = Vec::new();
    for panel in doc["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push((
                panel["title"].as_str().unwrap_or_default().to_string(),
                target["expr"].as_str().expect("a target's expr").to_string(),
            ));
        }
    }
    out
}

/// The names of a Prometheus text exposition: samples and `# TYPE` lines.
fn exposition_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.split_whitespace().next() {
                out.insert(name.to_string());
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            out.insert(line[..end].to_string());
        }
    }
    out
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(observability())
        .output()
        .unwrap_or_else(|e| panic!("promtool ({e}): scripts/test.sh installs it (Debian's prometheus package)"));
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alert_rules_pass_promtools_checks_and_their_unit_tests() {
    promtool(&["check", "rules", "alerts.yaml"]);
    promtool(&["test", "rules", "alerts.test.yaml"]);
    // Every alert has a unit test, and a runbook section on the on-call page.
    let tests = std::fs::read_to_string(observability().join("alerts.test.yaml")).expect("tests");
    let on_call = std::fs::read_to_string(observability().join("../../docs/operations.md")).expect("operations.md");
    for (name, _) in alert_expressions() {
        assert!(tests.contains(&format!("alertname: {name}")), "{name} has no unit test");
        assert!(
            on_call.contains(&format!("### {name}")),
            "{name} has no section in docs/operations.md"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_alert_expression_names_only_exported_metrics() {
    let mut exported = BTreeSet::new();

    // A build's metrics textfile: a published run, with a gate.
    let root = tempfile::tempdir().expect("root");
    let prefix = format!("file://{}/snap", root.path().display());
    let job = JobDir::new(&prefix);
    job.input(200, "a");
    job.job("obs1", "[validate]\nmax_row_change = 0.5\n");
    let textfile = job.path().join("metrics.prom");
    let out = job.sf_write(&["--metrics-file", &textfile.display().to_string()], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let prom = std::fs::read_to_string(&textfile).expect("textfile");
    exported.extend(exposition_names(&prom));

    // sf-serve over it, with a bounded cache, after a few requests of
    // each kind (a found key, a missing one, a multiget, a bad request).
    let s = ServeProcess::serving(
        &[("users", &format!("{prefix}/_CURRENT"))],
        &["--cache-max-bytes", "100000000", "--grpc-listen", "127.0.0.1:0"],
    );
    s.wait_ready().await;
    let (st, ..) = call(s.get("/v1/snapshots/users/keys/1")).await;
    assert_eq!(st, 200);
    let (st, ..) = call(s.get("/v1/snapshots/users/keys/100000")).await;
    assert_eq!(st, 404);
    let (st, ..) = call(s.post_json("/v1/snapshots/users/multiget", &json!({ "keys": ["1", "2"] }))).await;
    assert_eq!(st, 200);
    let (st, ..) = call(s.get("/v1/snapshots/users/keys/not-a-number")).await;
    assert_eq!(st, 400);
    let mut grpc = s.grpc_client().await;
    grpc.get(sf_tests::serve::get_request("users", "1"))
        .await
        .expect("grpc get");
    let text = s
        .get("/metrics")
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    exported.extend(exposition_names(&text));

    // sf-scheduler and sf-executor with their metrics listeners: every
    // series they export is registered at start.
    let (sched, exec) = (free_port(), free_port());
    let cluster = LocalCluster::start(&ClusterOptions {
        executors: 1,
        concurrent_tasks: 1,
        scheduler_args: vec![format!("--metrics-listen=127.0.0.1:{sched}")],
        executor_args: vec![format!("--metrics-listen=127.0.0.1:{exec}")],
        ..ClusterOptions::default()
    });
    for port in [sched, exec] {
        let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .expect("cluster metrics")
            .text()
            .await
            .expect("text");
        exported.extend(exposition_names(&text));
    }
    drop(cluster);

    let mut missing = Vec::new();
    for (place, expr) in alert_expressions()
        .into_iter()
        .map(|(n, e)| (format!("alert {n}"), e))
        .chain(
            dashboard_expressions()
                .into_iter()
                .map(|(t, e)| (format!("panel {t:?}"), e)),
        )
    {
        let names = names_in(&expr);
        assert!(!names.is_empty(), "{place} names no ShardForge metric: {expr}");
        for name in names {
            if !exported.contains(&name) {
                missing.push(format!("{place}: {name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "named but not exported: {missing:#?}\nexported: {exported:#?}"
    );
}

#[test]
fn metric_names_are_found_in_expressions() {
    assert_eq!(
        names_in("sum(rate(sf_serve_requests_total{x=\"sf_reader_no\"}[5m])) / shardforge_build_rows"),
        ["sf_serve_requests_total", "sf_reader_no", "shardforge_build_rows"]
    );
    assert!(names_in("xsf_serve_requests_total + up").is_empty());
}
