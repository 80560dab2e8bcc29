//! The server's figures, through the `metrics` facade (the reader's own
//! come through it too, labelled `snapshot`), and the Prometheus recorder
//! a program installs to serve them at `/metrics`.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `sf_serve_requests_total` | counter | `route`, `status` |
//! | `sf_serve_request_duration_seconds` | histogram | `route` (`get`, `multiget`, `grpc_get`, `grpc_multiget`, `grpc_multiget_stream`) |
//! | `sf_serve_keys_total` | counter | `snapshot`, `result` (`found`, `missing`) |
//! | `sf_serve_requests_in_flight` | gauge | |
//! | `sf_serve_requests_rejected_total` | counter | `reason` (`overloaded`, `unauthenticated`) |
//! | `sf_serve_snapshot_age_seconds` | gauge | `snapshot` |
//! | `sf_serve_snapshot_info` | gauge, 1 for the served run | `snapshot`, `run_id` |
//! | `sf_serve_snapshot_open_shards` | gauge | `snapshot` |
//! | `sf_serve_snapshot_ready` | gauge | `snapshot` |
//! | `sf_reader_*` | see `sf_reader::METRICS` | `snapshot` |

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::api::{App, Served};

/// Latency buckets, in seconds: fine below a millisecond, where lookups are.
const BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the Prometheus recorder as the process's `metrics` recorder
/// (once per process, before any reader is built), with the latency
/// histograms' buckets. Call [`PrometheusHandle::run_upkeep`] now and then
/// (the server does, every 5 s) to bound the memory of histograms between
/// scrapes.
pub fn install_prometheus() -> crate::Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_duration_seconds".into()), BUCKETS)
        .map_err(|e| crate::Error::Metrics(e.to_string()))?
        .install_recorder()
        .map_err(|e| crate::Error::Metrics(e.to_string()))
}

fn status_label(status: u16) -> metrics::SharedString {
    match status {
        200 => "200".into(),
        400 => "400".into(),
        401 => "401".into(),
        403 => "403".into(),
        404 => "404".into(),
        413 => "413".into(),
        500 => "500".into(),
        503 => "503".into(),
        504 => "504".into(),
        other => other.to_string().into(),
    }
}

/// Whether a route's latency is recorded.
fn timed(route: &str) -> bool {
    matches!(
        route,
        "get" | "multiget" | "grpc_get" | "grpc_multiget" | "grpc_multiget_stream"
    )
}

/// The HTTP routes and statuses whose request figures are kept as handles.
const ROUTES: [&str; 8] = [
    "livez",
    "readyz",
    "metrics",
    "snapshots",
    "get",
    "multiget",
    "rollback",
    "other",
];
const STATUSES: [u16; 9] = [200, 400, 401, 403, 404, 413, 500, 503, 504];

/// The request counter and latency histogram of every HTTP route and
/// status, registered with the recorder on first use and kept: a request
/// then costs an atomic add and a histogram sample, not a lookup in the
/// recorder's registry by name and labels.
pub(crate) struct RequestMetrics {
    counters: [[OnceLock<metrics::Counter>; STATUSES.len()]; ROUTES.len()],
    latency: [OnceLock<metrics::Histogram>; ROUTES.len()],
}

impl std::fmt::Debug for RequestMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMetrics").finish_non_exhaustive()
    }
}

impl RequestMetrics {
    pub(crate) fn new() -> Self {
        RequestMetrics {
            counters: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
            latency: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// Counts one answered request, and its latency for the lookup routes.
    pub(crate) fn record(&self, route: &'static str, status: u16, took: Duration) {
        let (Some(r), Some(s)) = (
            ROUTES.iter().position(|x| *x == route),
            STATUSES.iter().position(|x| *x == status),
        ) else {
            return record_request(route, status, took);
        };
        self.counters[r][s]
            .get_or_init(
                || metrics::counter!("sf_serve_requests_total", "route" => route, "status" => status_label(status)),
            )
            .increment(1);
        if timed(route) {
            self.latency[r]
                .get_or_init(|| metrics::histogram!("sf_serve_request_duration_seconds", "route" => route))
                .record(took.as_secs_f64());
        }
    }
}

/// Counts one answered request, and its latency for the lookup routes,
/// through the recorder's registry.
pub(crate) fn record_request(route: &'static str, status: u16, took: Duration) {
    metrics::counter!("sf_serve_requests_total", "route" => route, "status" => status_label(status)).increment(1);
    if timed(route) {
        metrics::histogram!("sf_serve_request_duration_seconds", "route" => route).record(took.as_secs_f64());
    }
}

/// Counts one gRPC call by its status code.
pub(crate) fn record_grpc(route: &'static str, code: tonic::Code, took: Duration) {
    let status: metrics::SharedString = match code {
        tonic::Code::Ok => "ok".into(),
        other => format!("{other:?}").to_ascii_lowercase().into(),
    };
    metrics::counter!("sf_serve_requests_total", "route" => route, "status" => status).increment(1);
    metrics::histogram!("sf_serve_request_duration_seconds", "route" => route).record(took.as_secs_f64());
}

/// Sets the gauges that are read off the readers (age, run, open shards,
/// readiness, requests in flight); called before each scrape.
pub(crate) fn publish_gauges(app: &App) {
    metrics::gauge!("sf_serve_requests_in_flight").set(app.in_flight() as f64);
    for (name, served) in &app.snapshots {
        let Some(reader) = served.opened() else {
            metrics::gauge!("sf_serve_snapshot_ready", "snapshot" => name.clone()).set(0.0);
            continue;
        };
        let info = reader.info();
        let health = reader.health(served.config.max_age.unwrap_or(Duration::MAX));
        let ready = served.config.max_age.is_none() || health.status == sf_reader::HealthStatus::Healthy;
        metrics::gauge!("sf_serve_snapshot_ready", "snapshot" => name.clone()).set(if ready { 1.0 } else { 0.0 });
        metrics::gauge!("sf_serve_snapshot_age_seconds", "snapshot" => name.clone()).set(health.snapshot_age_seconds);
        metrics::gauge!("sf_serve_snapshot_open_shards", "snapshot" => name.clone()).set(info.shards_open as f64);
        let run = info.run_id.to_string();
        let mut last = sf_manifest::sync::lock(&served.info_run);
        if last.as_deref() != Some(run.as_str()) {
            if let Some(old) = last.take() {
                metrics::gauge!("sf_serve_snapshot_info", "snapshot" => name.clone(), "run_id" => old).set(0.0);
            }
            metrics::gauge!("sf_serve_snapshot_info", "snapshot" => name.clone(), "run_id" => run.clone()).set(1.0);
            *last = Some(run);
        }
    }
}

/// One snapshot as `GET /v1/snapshots` lists it.
pub(crate) fn describe(served: &Served) -> serde_json::Value {
    let c = &served.config;
    let Some(reader) = served.opened() else {
        return serde_json::json!({
            "name": c.name,
            "current_url": c.current_url,
            "open": false,
            "open_error": served.open_error(),
        });
    };
    let info = reader.info();
    let health = reader.health(c.max_age.unwrap_or(Duration::MAX));
    let refresh = reader.refresh_status();
    let stats = reader.stats();
    let versions: Vec<serde_json::Value> = reader
        .versions()
        .iter()
        .enumerate()
        .map(|(offset, v)| {
            serde_json::json!({
                "offset": offset,
                "run_id": v.run_id.as_str(),
                "manifest_ref": v.manifest_ref,
                "created_at": v.created_at.to_iso(),
                "open_shards": v.shards_open,
            })
        })
        .collect();
    serde_json::json!({
        "name": c.name,
        "current_url": c.current_url,
        "open": true,
        "run_id": info.run_id.as_str(),
        "manifest_ref": info.manifest_ref,
        "created_at": info.created_at.to_iso(),
        "published_at": info.published_at.map(|t| t.to_iso()),
        "loaded_at": info.loaded_at.to_iso(),
        "age_seconds": health.snapshot_age_seconds,
        "max_age_seconds": c.max_age.map(|d| d.as_secs_f64()),
        "num_dbs": info.num_dbs,
        "shard_count": info.shards_in_manifest,
        "open_shards": info.shards_open,
        "row_count": info.row_count,
        "key_encoding": info.key_encoding.as_str(),
        "needs_context": reader.needs_context(),
        "refresh": {
            "interval_seconds": c.reader.refresh_interval.map(|d| d.as_secs_f64()),
            "last_attempt": refresh.last_attempt.map(|t| t.to_iso()),
            "last_success": refresh.last_success.map(|t| t.to_iso()),
            "last_error": refresh.last_error,
            "consecutive_failures": refresh.consecutive_failures,
            "swaps": stats.swaps,
            "failures": stats.refresh_failures,
        },
        "versions": versions,
    })
}
