//! What `sf-write` tells a scheduler about a build: one JSON document
//! (`--json` on stdout, `--report PATH` to a file; the same object either
//! way, on success and on failure) and the same figures in Prometheus text
//! format (`--metrics-file PATH`, for node_exporter's textfile collector).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sf_writer::job::{Outcome, ProgressSink};
use sf_writer::publish::verdict::{GateResult, Verdict};

use crate::exit::{self, Failure};

/// A progress sink that remembers the phases (with their start times) and
/// the gates, and passes everything on to the sink the user sees.
pub struct Recorder {
    inner: Option<Arc<dyn ProgressSink>>,
    started: Instant,
    phases: Mutex<Vec<(String, Instant)>>,
    gates: Mutex<Vec<GateResult>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").finish_non_exhaustive()
    }
}

impl Recorder {
    /// A recorder in front of `inner` (the bar or the log lines, if any).
    pub fn new(inner: Option<Arc<dyn ProgressSink>>) -> Self {
        Recorder {
            inner,
            started: Instant::now(),
            phases: Mutex::new(Vec::new()),
            gates: Mutex::new(Vec::new()),
        }
    }

    /// Each phase with how long it took, in order (the last one up to now).
    pub fn phases(&self) -> Vec<(String, Duration)> {
        let phases = sf_manifest::sync::lock(&self.phases);
        let now = Instant::now();
        phases
            .iter()
            .enumerate()
            .map(|(i, (name, start))| {
                let end = phases.get(i + 1).map_or(now, |(_, next)| *next);
                (name.clone(), end.saturating_duration_since(*start))
            })
            .collect()
    }

    /// The gates evaluated.
    pub fn gates(&self) -> Vec<GateResult> {
        sf_manifest::sync::lock(&self.gates).clone()
    }

    /// Time since the recorder was made.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl ProgressSink for Recorder {
    fn phase(&self, name: &str) {
        if name != "done" {
            sf_manifest::sync::lock(&self.phases).push((name.to_string(), Instant::now()));
        }
        if let Some(i) = &self.inner {
            i.phase(name);
        }
    }

    fn progress(&self, rows: u64, shards_done: u32, num_dbs: u32) {
        if let Some(i) = &self.inner {
            i.progress(rows, shards_done, num_dbs);
        }
    }

    fn gate(&self, result: &GateResult) {
        sf_manifest::sync::lock(&self.gates).push(result.clone());
        if let Some(i) = &self.inner {
            i.gate(result);
        }
    }
}

fn verdict(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "pass",
        Verdict::Warn => "warn",
        Verdict::Fail => "fail",
        Verdict::Forced => "forced",
        Verdict::Skipped => "skipped",
    }
}

fn gate_json(g: &GateResult) -> Value {
    json!({"gate": g.gate, "value": g.value, "limit": g.limit, "result": verdict(g.verdict), "detail": g.detail})
}

/// The one JSON document of a build: its run id, outcome, exit code, each
/// phase with its duration, each gate, the summary fields, and the error.
pub fn document(result: &Result<Outcome, Failure>, run_id: Option<&str>, prefix: &str, recorder: &Recorder) -> Value {
    let mut doc = serde_json::Map::new();
    let outcome = match result {
        Ok(Outcome::Built(_)) => "published",
        Ok(Outcome::AlreadyPublished(a)) if a.completed_publish => "completed_publish",
        Ok(Outcome::AlreadyPublished(_)) => "already_published",
        Ok(Outcome::DryRun(_)) => "dry_run",
        Ok(Outcome::Unchanged(_)) => "unchanged",
        Err(_) => "failed",
    };
    doc.insert("outcome".into(), json!(outcome));
    doc.insert("run_id".into(), json!(run_id));
    doc.insert("prefix".into(), json!(prefix));
    doc.insert(
        "exit_code".into(),
        json!(match result {
            Ok(_) => exit::OK,
            Err(f) => f.exit_code(),
        }),
    );
    match result {
        Ok(Outcome::DryRun(report)) => {
            doc.insert("dry_run".into(), json!(true));
            doc.insert("run_id".into(), json!(report.run_id.as_str()));
            doc.insert("num_dbs".into(), json!(report.num_dbs));
            doc.insert("key_col".into(), json!(report.key_col));
            doc.insert("key_encoding".into(), json!(report.key_encoding.as_str()));
            doc.insert("sharding".into(), report.sharding.to_json());
            doc.insert("backend".into(), json!(report.backend));
        }
        Ok(Outcome::Unchanged(why)) => {
            doc.insert("unchanged".into(), json!(true));
            doc.insert("reason".into(), json!(why));
        }
        Ok(Outcome::AlreadyPublished(a)) => {
            doc.insert("run_id".into(), json!(a.run_id.as_str()));
            doc.insert("manifest_ref".into(), json!(a.manifest_ref));
            doc.insert("published_at".into(), json!(a.published_at.to_iso()));
            doc.insert("num_dbs".into(), json!(a.num_dbs));
            doc.insert("shards_written".into(), json!(a.shards_written));
            doc.insert("rows".into(), json!(a.rows));
            doc.insert(
                "current_run_id".into(),
                json!(a.current_run.as_ref().map(|r| r.as_str())),
            );
        }
        Ok(Outcome::Built(summary)) => {
            let (lo, med, hi) = summary.rows_per_shard;
            doc.insert("run_id".into(), json!(summary.run_id.as_str()));
            doc.insert("manifest_ref".into(), json!(summary.manifest_ref));
            doc.insert("num_dbs".into(), json!(summary.num_dbs));
            doc.insert("shards_written".into(), json!(summary.shards_written));
            doc.insert("rows".into(), json!(summary.rows));
            doc.insert("duplicates".into(), json!(summary.duplicates));
            doc.insert("bytes".into(), json!(summary.bytes));
            doc.insert("rows_per_shard".into(), json!({"min": lo, "median": med, "max": hi}));
            doc.insert("retries".into(), json!(summary.retries));
            doc.insert("losers_deleted".into(), json!(summary.losers_deleted));
            doc.insert("spilled_runs".into(), json!(summary.spilled_runs));
            doc.insert(
                "page_sizes".into(),
                summary
                    .page_sizes
                    .iter()
                    .map(|(size, n)| (size.to_string(), json!(n)))
                    .collect::<serde_json::Map<_, _>>()
                    .into(),
            );
            doc.insert("vectors_skipped".into(), json!(summary.vectors_skipped));
            doc.insert("peak_rss_bytes".into(), json!(summary.peak_rss_bytes));
            let p = &summary.phases;
            doc.insert(
                "steps".into(),
                json!({
                    "input": p.input.map(|d| d.as_secs_f64()),
                    "shards_built": p.shards_built,
                    "build_sum": p.build_sum.as_secs_f64(),
                    "claim_sum": p.claim_sum.as_secs_f64(),
                    "upload_sum": p.upload_sum.as_secs_f64(),
                    "verify": p.verify.as_secs_f64(),
                    "publish": p.publish.as_secs_f64(),
                    "cleanup": p.cleanup.as_secs_f64(),
                }),
            );
            doc.insert(
                "seconds".into(),
                json!({
                    "plan": summary.plan_time.as_secs_f64(),
                    "write": summary.write_time.as_secs_f64(),
                    "publish": summary.publish_time.as_secs_f64(),
                    "total": summary.total_time.as_secs_f64(),
                }),
            );
            doc.insert("warnings".into(), json!(summary.warnings));
            doc.insert(
                "retention".into(),
                match &summary.retention {
                    None => Value::Null,
                    Some(Ok(r)) => json!({"manifests": r.manifests, "folders": r.folders, "objects": r.objects}),
                    Some(Err(e)) => json!({"error": e}),
                },
            );
        }
        Err(f) => {
            doc.insert(
                "error".into(),
                json!({"kind": f.kind().to_string(), "message": f.message()}),
            );
        }
    }
    doc.insert(
        "phases".into(),
        Value::Array(
            recorder
                .phases()
                .iter()
                .map(|(name, d)| json!({"name": name, "seconds": d.as_secs_f64()}))
                .collect(),
        ),
    );
    doc.insert(
        "gates".into(),
        Value::Array(recorder.gates().iter().map(gate_json).collect()),
    );
    doc.insert("wall_seconds".into(), json!(recorder.elapsed().as_secs_f64()));
    Value::Object(doc)
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A series of the metrics file: its name and its `# HELP` text.
pub type Metric = (&'static str, &'static str);

const SUCCESS: Metric = (
    "shardforge_build_success",
    "1 when the last build published its snapshot (or found it published), else 0",
);
const EXIT_CODE: Metric = (
    "shardforge_build_exit_code",
    "exit code of the last build (see docs/operations.md)",
);
const INFO: Metric = ("shardforge_build_info", "the last build's run id and outcome");
const ROWS: Metric = ("shardforge_build_rows", "rows in the published snapshot");
const BYTES: Metric = ("shardforge_build_bytes", "shard file bytes of the published snapshot");
const SHARDS: Metric = ("shardforge_build_shards", "shards of the snapshot");
const RETRIES: Metric = ("shardforge_build_retries", "shard uploads retried");
const LAST_SUCCESS: Metric = (
    "shardforge_build_last_success_timestamp_seconds",
    "when the last successful build ended (Unix time; kept from the previous file while builds fail)",
);
const PHASE_SECONDS: Metric = (
    "shardforge_build_phase_seconds",
    "how long each phase of the last build took",
);
const STEP_SECONDS: Metric = (
    "shardforge_build_step_seconds",
    "seconds the last published build spent in each step: input, build, claim and upload summed over shards, verify, publish, cleanup",
);
const SECONDS: Metric = ("shardforge_build_seconds", "wall time of the last build");
const GATE_PASSED: Metric = (
    "shardforge_build_gate_passed",
    "1 when a validation gate of the last build passed (or had nothing to compare), else 0",
);

/// Every series `--metrics-file` can write, with its `# HELP` text, in the
/// order they are written (all gauges, all labelled with `prefix`). The
/// documentation's list (docs/operations.md) is checked against this one.
pub const METRICS: &[Metric] = &[
    SUCCESS,
    EXIT_CODE,
    INFO,
    ROWS,
    BYTES,
    SHARDS,
    RETRIES,
    LAST_SUCCESS,
    PHASE_SECONDS,
    STEP_SECONDS,
    SECONDS,
    GATE_PASSED,
];

/// The document's figures in Prometheus text format, the series of
/// [`METRICS`]: outcome, exit code, rows, bytes, shards, phase and gate
/// durations and results. Series carry the snapshot's `prefix` only (run
/// ids would make a new series every night); the run id is in
/// `shardforge_build_info`. A build that did not publish writes no success
/// time of its own: see [`metrics_after`].
pub fn metrics(doc: &Value) -> String {
    metrics_after(doc, None)
}

/// [`metrics`], carrying `last_success` (the success time of the file a
/// failed build replaces, see [`previous_last_success`]) when this build
/// did not publish, so that "time since the last success" keeps counting
/// through failed nights instead of losing its series.
pub fn metrics_after(doc: &Value, last_success: Option<f64>) -> String {
    let prefix = label(doc["prefix"].as_str().unwrap_or_default());
    let mut out = String::new();
    let mut gauge = |(name, help): Metric, series: &[(String, f64)]| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (labels, v) in series {
            out.push_str(&format!("{name}{{prefix=\"{prefix}\"{labels}}} {v}\n"));
        }
    };
    let published = matches!(
        doc["outcome"].as_str(),
        Some("published" | "already_published" | "completed_publish")
    );
    gauge(SUCCESS, &[(String::new(), f64::from(u8::from(published)))]);
    gauge(EXIT_CODE, &[(String::new(), doc["exit_code"].as_f64().unwrap_or(1.0))]);
    gauge(
        INFO,
        &[(
            format!(
                ",run_id=\"{}\",outcome=\"{}\"",
                label(doc["run_id"].as_str().unwrap_or_default()),
                label(doc["outcome"].as_str().unwrap_or_default())
            ),
            1.0,
        )],
    );
    for (key, metric) in [
        ("rows", ROWS),
        ("bytes", BYTES),
        ("num_dbs", SHARDS),
        ("retries", RETRIES),
    ] {
        if let Some(v) = doc[key].as_f64() {
            gauge(metric, &[(String::new(), v)]);
        }
    }
    let success_time = if published {
        Some(sf_manifest::format::ids::unix_millis() as f64 / 1000.0)
    } else {
        last_success
    };
    if let Some(t) = success_time {
        gauge(LAST_SUCCESS, &[(String::new(), t)]);
    }
    let phases: Vec<(String, f64)> = doc["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                format!(",phase=\"{}\"", label(p["name"].as_str().unwrap_or_default())),
                p["seconds"].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    gauge(PHASE_SECONDS, &phases);
    if let Some(steps) = doc["steps"].as_object() {
        let steps: Vec<(String, f64)> = STEPS
            .iter()
            .filter_map(|step| Some((format!(",step=\"{step}\""), steps.get(*step)?.as_f64()?)))
            .collect();
        gauge(STEP_SECONDS, &steps);
    }
    gauge(SECONDS, &[(String::new(), doc["wall_seconds"].as_f64().unwrap_or(0.0))]);
    let gates: Vec<(String, f64)> = doc["gates"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            let result = g["result"].as_str().unwrap_or_default();
            (
                format!(
                    ",gate=\"{}\",result=\"{}\"",
                    label(g["gate"].as_str().unwrap_or_default()),
                    label(result)
                ),
                f64::from(u8::from(matches!(result, "pass" | "skipped"))),
            )
        })
        .collect();
    gauge(GATE_PASSED, &gates);
    out
}

/// The report's `steps` that are durations, in the order written.
const STEPS: &[&str] = &[
    "input",
    "build_sum",
    "claim_sum",
    "upload_sum",
    "verify",
    "publish",
    "cleanup",
];

/// Writes the metrics file of `doc` to `path` (whole or not at all),
/// carrying the previous file's success time when this build did not
/// publish.
pub fn write_metrics_file(path: &Path, doc: &Value) -> Result<(), Failure> {
    let prefix = doc["prefix"].as_str().unwrap_or_default();
    let previous = match std::fs::read(path) {
        Ok(bytes) => previous_last_success(&bytes, prefix).unwrap_or_else(|why| {
            tracing::warn!(
                "{}: the previous metrics file is unreadable ({why}); its last success time is lost",
                path.display()
            );
            None
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!(
                "{}: cannot read the previous metrics file ({e}); its last success time is lost",
                path.display()
            );
            None
        }
    };
    write_atomically(path, &metrics_after(doc, previous))
}

/// The `shardforge_build_last_success_timestamp_seconds` of `prefix` in a
/// metrics file this program wrote before: `Ok(None)` when it has none (no
/// build of the prefix succeeded yet), `Err` when the file is not the
/// Prometheus text it should be.
pub fn previous_last_success(file: &[u8], prefix: &str) -> Result<Option<f64>, String> {
    let text = std::str::from_utf8(file).map_err(|_| "not UTF-8".to_string())?;
    let wanted = format!("{}{{prefix=\"{}\"}}", LAST_SUCCESS.0, label(prefix));
    let mut found = None;
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parsed = line
            .rsplit_once(' ')
            .filter(|(series, _)| series.ends_with('}') || !series.contains(['{', '}', ' ']))
            .and_then(|(series, value)| Some((series, value.parse::<f64>().ok()?)));
        let Some((series, value)) = parsed else {
            return Err(format!("line {} is not a series and a value", i + 1));
        };
        if series == wanted {
            if !(value.is_finite() && value > 0.0) {
                return Err(format!("line {}: {value} is not a time", i + 1));
            }
            found = Some(value);
        }
    }
    Ok(found)
}

/// Writes `text` to `path` whole or not at all (a temporary file renamed
/// over it), as the textfile collector wants.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), Failure> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Failure::new(
                sf_manifest::error::io_error_kind(&e),
                format!("writing {}: {e}", path.display()),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sf_manifest::ErrorKind;

    #[test]
    fn metrics_are_prometheus_text_with_escaped_labels() {
        let recorder = Recorder::new(None);
        recorder.phase("writing shards");
        recorder.gate(&sf_writer::publish::gates::measured(
            "min_rows",
            0,
            1,
            false,
            sf_writer::publish::gates::OnFail::Fail,
            "",
        ));
        let failed: Result<Outcome, Failure> = Err(Failure::new(ErrorKind::Gate, "validation gate min_rows failed"));
        let doc = document(&failed, Some("nightly-1"), "s3://b/p\"q", &recorder);
        assert_eq!(doc["outcome"], "failed");
        assert_eq!(doc["exit_code"], 6);
        assert_eq!(doc["error"]["kind"], "gate");
        assert_eq!(doc["gates"][0]["result"], "fail");
        let text = metrics(&doc);
        assert!(
            text.contains("shardforge_build_success{prefix=\"s3://b/p\\\"q\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("shardforge_build_exit_code{prefix=\"s3://b/p\\\"q\"} 6\n"),
            "{text}"
        );
        assert!(text.contains(",gate=\"min_rows\",result=\"fail\"} 0\n"), "{text}");
        assert!(text.contains(",phase=\"writing shards\"}"), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').expect("series value");
            assert!(series.ends_with('}'), "{line}");
            value.parse::<f64>().expect("a number");
        }
    }

    /// The names a metrics file holds, from its `# TYPE` lines and its
    /// series, in order of appearance.
    fn series_names(text: &str) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for line in text.lines() {
            let name = match line.strip_prefix("# TYPE ") {
                Some(rest) => rest.split(' ').next().unwrap_or_default(),
                None if line.starts_with('#') => continue,
                None => line.split(['{', ' ']).next().unwrap_or_default(),
            };
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
        names
    }

    #[test]
    fn every_series_written_is_in_the_catalog_and_every_entry_is_written() {
        let full = json!({
            "outcome": "published", "run_id": "r1", "prefix": "s3://b/p", "exit_code": 0,
            "rows": 10, "bytes": 2048, "num_dbs": 4, "retries": 1,
            "phases": [{"name": "plan", "seconds": 0.5}],
            "steps": {"input": 0.1, "shards_built": 4, "build_sum": 1.0, "claim_sum": 0.0,
                      "upload_sum": 0.2, "verify": 0.1, "publish": 0.05, "cleanup": 0.0},
            "gates": [{"gate": "min_rows", "result": "pass"}],
            "wall_seconds": 2.0,
        });
        let failed = json!({"outcome": "failed", "prefix": "p", "exit_code": 6, "phases": [], "gates": []});
        let catalog: Vec<&str> = METRICS.iter().map(|(name, _)| *name).collect();
        for doc in [&full, &failed] {
            let text = metrics(doc);
            for name in series_names(&text) {
                assert!(catalog.contains(&name.as_str()), "{name} is written but not in METRICS");
            }
            for (name, help) in METRICS {
                if text.contains(&format!("# TYPE {name} ")) {
                    assert!(text.contains(&format!("# HELP {name} {help}\n")), "{name}: {text}");
                }
            }
        }
        // A published build with every figure writes the whole catalog, in its order.
        assert_eq!(series_names(&metrics(&full)), catalog);
    }

    #[test]
    fn a_failed_build_keeps_the_last_success_time_of_its_prefix() {
        let published =
            json!({"outcome": "published", "prefix": "s3://b/p", "exit_code": 0, "phases": [], "gates": []});
        let first = metrics(&published);
        let t = previous_last_success(first.as_bytes(), "s3://b/p")
            .expect("readable")
            .expect("a success time");
        assert!(t > 1.0e9, "{t}");
        // Another prefix's time is not this one's.
        assert_eq!(previous_last_success(first.as_bytes(), "s3://b/q"), Ok(None));

        let failed = json!({"outcome": "failed", "prefix": "s3://b/p", "exit_code": 3, "phases": [], "gates": []});
        let second = metrics_after(&failed, Some(t));
        assert!(
            second.contains(&format!(
                "shardforge_build_last_success_timestamp_seconds{{prefix=\"s3://b/p\"}} {t}\n"
            )),
            "{second}"
        );
        assert!(
            second.contains("shardforge_build_success{prefix=\"s3://b/p\"} 0\n"),
            "{second}"
        );
        assert!(
            second.contains("shardforge_build_exit_code{prefix=\"s3://b/p\"} 3\n"),
            "{second}"
        );
        // And the time survives any number of failures.
        assert_eq!(previous_last_success(second.as_bytes(), "s3://b/p"), Ok(Some(t)));
        // Without a previous success there is no series.
        assert!(!metrics_after(&failed, None).contains("last_success"));
    }

    #[test]
    fn a_garbled_previous_file_is_an_error_not_a_panic() {
        for garbled in [
            &b"\xff\xfe"[..],
            b"not a metric\n",
            b"shardforge_build_success{prefix=\"p\"} x\n",
        ] {
            assert!(previous_last_success(garbled, "p").is_err(), "{garbled:?}");
        }
        let zero = "shardforge_build_last_success_timestamp_seconds{prefix=\"p\"} 0\n";
        assert!(previous_last_success(zero.as_bytes(), "p").is_err());
        assert_eq!(previous_last_success(b"", "p"), Ok(None));
    }
}
