//! The server's figures: the one catalog of their names ([`METRICS`]),
//! the Prometheus recorder a program installs to serve them at
//! `/metrics`, and the per-request figures of both front ends. The reader's
//! own figures come through the same `metrics` facade, labelled `snapshot`
//! (their names: `sf_reader::METRICS`).
//!
//! Label values: `route` is `livez`, `readyz`, `metrics`, `snapshots`,
//! `get`, `multiget`, `search`, `rollback` (HTTP) or `grpc_get`, `grpc_multiget`,
//! `grpc_multiget_stream`, `grpc_search`; latency is kept for the lookup
//! routes only (`get`, `multiget`, `search` and the four gRPC ones). `status` is the HTTP status,
//! or the gRPC code in lower case (`ok`, `notfound`, ...). `result` is
//! `found` or `missing`; `reason` is `overloaded`, `unauthenticated` or
//! `forbidden` (a read token on an admin route). `what` is what a reload
//! re-read (`tokens`), `outcome` `ok` or `failed`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

// The names, each written once: every emission and [`METRICS`] use these.
pub(crate) const REQUESTS: &str = "sf_serve_requests_total";
pub(crate) const REQUEST_DURATION: &str = "sf_serve_request_duration_seconds";
pub(crate) const KEYS_LOOKED_UP: &str = "sf_serve_keys_total";
pub(crate) const REQUESTS_IN_FLIGHT: &str = "sf_serve_requests_in_flight";
pub(crate) const REQUESTS_REJECTED: &str = "sf_serve_requests_rejected_total";
pub(crate) const SNAPSHOT_AGE: &str = "sf_serve_snapshot_age_seconds";
pub(crate) const SNAPSHOT_INFO: &str = "sf_serve_snapshot_info";
pub(crate) const SNAPSHOT_OPEN_SHARDS: &str = "sf_serve_snapshot_open_shards";
pub(crate) const SNAPSHOT_SHARDS_BY_MODE: &str = "sf_serve_snapshot_shards_by_mode";
pub(crate) const SNAPSHOT_READY: &str = "sf_serve_snapshot_ready";
pub(crate) const CONNECTIONS_OPEN: &str = "sf_serve_connections_open";
pub(crate) const CONNECTIONS_REFUSED: &str = "sf_serve_connections_refused_total";
pub(crate) const CONNECTIONS_CLOSED: &str = "sf_serve_connections_closed_total";
pub(crate) const REQUESTS_ABANDONED: &str = "sf_serve_requests_abandoned_total";
pub(crate) const RELOADS: &str = "sf_serve_reloads_total";
pub(crate) const SNAPSHOT_STALE: &str = "sf_serve_snapshot_stale";
pub(crate) const SNAPSHOT_FALLBACK: &str = "sf_serve_snapshot_fallback";

/// Every name the server emits through the `metrics` facade, with what it
/// counts: the one catalog, from which every emission takes its name.
/// The reader's names are in `sf_reader::METRICS`.
pub const METRICS: &[(&str, &str)] = &[
    (REQUESTS, "requests answered, by route and status"),
    (
        REQUEST_DURATION,
        "seconds to answer a lookup, by route (histogram, 0.1 ms to 10 s)",
    ),
    (
        KEYS_LOOKED_UP,
        "keys looked up, by snapshot and result (found, missing)",
    ),
    (REQUESTS_IN_FLIGHT, "requests in flight now (gauge)"),
    (
        REQUESTS_REJECTED,
        "requests refused before any work, by reason (overloaded, unauthenticated, forbidden)",
    ),
    (
        SNAPSHOT_AGE,
        "age of the served snapshot by its manifest's created_at, by snapshot (gauge)",
    ),
    (
        SNAPSHOT_INFO,
        "1 for the served run, 0 for runs served before, by snapshot and run_id (gauge)",
    ),
    (
        SNAPSHOT_OPEN_SHARDS,
        "shards of the served snapshot open now, by snapshot (gauge)",
    ),
    (
        SNAPSHOT_SHARDS_BY_MODE,
        "open shards of the served snapshot by how they are read (sqlite-memory, sqlite-download, sqlite-range, slatedb), by snapshot (gauge)",
    ),
    (
        SNAPSHOT_READY,
        "1 while the snapshot counts as ready for /readyz (open; within its max_age under unready_when_stale), else 0, by snapshot (gauge)",
    ),
    (
        SNAPSHOT_STALE,
        "1 while the served snapshot is older than its max_age (it is still served), else 0, by snapshot (gauge)",
    ),
    (
        SNAPSHOT_FALLBACK,
        "1 while the snapshot serves an older manifest of its history because the one _CURRENT names could not be read at start, else 0, by snapshot (gauge)",
    ),
    (
        CONNECTIONS_OPEN,
        "connections open now, by listener (http, grpc) (gauge)",
    ),
    (
        CONNECTIONS_REFUSED,
        "connections closed at accept because every connection was busy at the bound, by listener",
    ),
    (
        CONNECTIONS_CLOSED,
        "connections the server closed, by listener and reason (idle_timeout, evicted: to make room at the bound)",
    ),
    (
        REQUESTS_ABANDONED,
        "streamed calls ended by their total deadline (stream_timeout), by route",
    ),
    (
        RELOADS,
        "reloads on SIGHUP or a changed file, by what (tokens, certificates) and outcome (ok, failed)",
    ),
];

/// Registers the server's series that only counting would otherwise
/// create, at zero, so that they are scraped (and alerts on them work)
/// before the first event: the connection figures of each listener, the
/// abandoned streams.
pub(crate) fn register_series(listeners: &[&'static str]) {
    for &l in listeners {
        metrics::gauge!(CONNECTIONS_OPEN, "listener" => l).increment(0.0);
        metrics::counter!(CONNECTIONS_REFUSED, "listener" => l).increment(0);
        for reason in ["idle_timeout", "evicted"] {
            metrics::counter!(CONNECTIONS_CLOSED, "listener" => l, "reason" => reason).increment(0);
        }
    }
    metrics::counter!(REQUESTS_ABANDONED, "route" => "grpc_multiget_stream").increment(0);
}

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
        "get" | "multiget" | "search" | "grpc_get" | "grpc_multiget" | "grpc_multiget_stream" | "grpc_search"
    )
}

/// The HTTP routes and statuses whose request figures are kept as handles.
const ROUTES: [&str; 9] = [
    "livez",
    "readyz",
    "metrics",
    "snapshots",
    "get",
    "multiget",
    "search",
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
            return record_uncached(route, status, took);
        };
        self.counters[r][s]
            .get_or_init(|| metrics::counter!(REQUESTS, "route" => route, "status" => status_label(status)))
            .increment(1);
        if timed(route) {
            self.latency[r]
                .get_or_init(|| metrics::histogram!(REQUEST_DURATION, "route" => route))
                .record(took.as_secs_f64());
        }
    }
}

/// Counts one answered request, and its latency for the lookup routes,
/// through the recorder's registry: for a route or status without a kept
/// handle.
fn record_uncached(route: &'static str, status: u16, took: Duration) {
    metrics::counter!(REQUESTS, "route" => route, "status" => status_label(status)).increment(1);
    if timed(route) {
        metrics::histogram!(REQUEST_DURATION, "route" => route).record(took.as_secs_f64());
    }
}

/// Counts one gRPC call by its status code.
pub(crate) fn record_grpc(route: &'static str, code: tonic::Code, took: Duration) {
    let status: metrics::SharedString = match code {
        tonic::Code::Ok => "ok".into(),
        other => format!("{other:?}").to_ascii_lowercase().into(),
    };
    metrics::counter!(REQUESTS, "route" => route, "status" => status).increment(1);
    metrics::histogram!(REQUEST_DURATION, "route" => route).record(took.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_is_the_only_place_a_name_is_written() {
        let mut names: Vec<&str> = METRICS.iter().map(|(name, _)| *name).collect();
        assert!(names.iter().all(|n| n.starts_with("sf_serve_")), "{names:?}");
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METRICS.len(), "a name is in the catalog twice");
        // A second spelling of a name would drift from the catalog
        // unnoticed: the source holds each once, in the constants above.
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut spelled = 0;
        for entry in std::fs::read_dir(&src).expect("src") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("source");
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let found = code.matches("\"sf_serve_").count();
            if path.ends_with("metrics.rs") {
                spelled += found;
            } else {
                assert_eq!(found, 0, "{} spells a metric name", path.display());
            }
        }
        assert_eq!(spelled, METRICS.len());
    }
}
