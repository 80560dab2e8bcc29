//! The HTTP API (JSON; HTTP/1.1 and HTTP/2 over cleartext), on axum.
//!
//! | route | |
//! |---|---|
//! | `GET /livez` | 200 while the process runs |
//! | `GET /readyz` | 200 when every snapshot is open (stale ones too, unless `unready_when_stale`), else 503 |
//! | `GET /metrics` | Prometheus text |
//! | `GET /v1/snapshots` | the served snapshots |
//! | `GET /v1/snapshots/{name}/keys/{key}` | the value's bytes, 404 for a miss |
//! | `POST /v1/snapshots/{name}/multiget` | values of many keys from one version |
//! | `POST /v1/snapshots/{name}/search` | the vectors nearest one query or a batch of them, from one version |
//! | `POST /v1/snapshots/{name}/rollback` | `_CURRENT` back to an older manifest (admin token) |
//!
//! The admin routes (rollback) are declared in one place, the router's
//! admin group, which needs an admin token; each use of one is logged by
//! [`crate::audit`], naming the caller by its token's fingerprint.
//!
//! Every read answer carries the run it was read from in `sf-run-id`;
//! `?run_id=R` or `?offset=N` reads a version the server holds. Every
//! answer carries `X-Content-Type-Options: nosniff`, so that a browser
//! never takes a raw value for a page, and its request's id in
//! `x-request-id` (the client's, when sane; see `request_id`).
//!
//! With a metrics listener (`metrics_listen`), a second router serves
//! `GET /metrics` alone there, without a token.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, MatchedPath, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use sf_reader::{RollbackTarget, Version};

use crate::api_error::ApiError;
use crate::app::{App, Contexts, SearchAsk};
use crate::auth::Caller;
use crate::request_id::{REQUEST_ID_HEADER, RequestId};
use crate::snapshot::ServedSnapshot;

/// The header naming the run a read was served from (in gRPC, the
/// metadata key of the same name).
pub const RUN_ID_HEADER: &str = "sf-run-id";

/// Query parameters of a read.
#[derive(Debug, Default)]
struct ReadQuery {
    version: Option<Version>,
    context: Vec<String>,
}

fn parse_query(raw: Option<&str>) -> Result<ReadQuery, ApiError> {
    let mut q = ReadQuery::default();
    let Some(raw) = raw else { return Ok(q) };
    let mut run_id = None;
    let mut offset = None;
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        if let Some(column) = k.strip_prefix("ctx.") {
            q.context.push(format!("{column}={v}"));
        } else if k == "run_id" {
            run_id = Some(
                v.parse()
                    .map_err(|e| ApiError::bad_request("bad_query", format!("run_id {v:?}: {e}")))?,
            );
        } else if k == "offset" {
            offset = Some(v.parse::<usize>().map_err(|_| {
                ApiError::bad_request("bad_query", format!("offset {v:?} is not a non-negative integer"))
            })?);
        } else {
            return Err(ApiError::bad_request(
                "bad_query",
                format!("unknown query parameter {k:?} (known: run_id, offset, ctx.<column>)"),
            ));
        }
    }
    q.version = match (run_id, offset) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("bad_query", "give run_id or offset, not both"));
        }
        (Some(r), None) => Some(Version::RunId(r)),
        (None, Some(n)) => Some(Version::Offset(n)),
        (None, None) => None,
    };
    Ok(q)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (
            status,
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            self.body().to_string(),
        )
            .into_response();
        if let Some(run) = self.run_id.as_deref().and_then(|r| HeaderValue::from_str(r).ok()) {
            resp.headers_mut().insert(RUN_ID_HEADER, run);
        }
        if self.status == 503 {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        value.to_string(),
    )
        .into_response()
}

fn with_run(mut resp: Response, run: &sf_manifest::RunId) -> Response {
    if let Ok(v) = HeaderValue::from_str(run.as_str()) {
        resp.headers_mut().insert(RUN_ID_HEADER, v);
    }
    resp
}

/// The API's routes over `app`; see the module docs. Every routed request
/// passes `guard`; the admin group also `admin_only`.
pub(crate) fn router(app: Arc<App>, metrics: Option<metrics_exporter_prometheus::PrometheusHandle>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", metrics_route(metrics))
        .route("/v1/snapshots", get(list))
        .route("/v1/snapshots/{name}/keys/{*key}", get(get_key))
        .route("/v1/snapshots/{name}/multiget", post(multiget))
        .route("/v1/snapshots/{name}/search", post(search))
        .merge(admin_routes(&app))
        .route_layer(axum::middleware::from_fn_with_state(Arc::clone(&app), guard))
        .fallback(|| async {
            ApiError::new(
                404,
                "no_route",
                "no such route; see /v1/snapshots, /livez, /readyz, /metrics",
            )
        })
        .layer(axum::middleware::map_response(nosniff))
        .layer(axum::middleware::from_fn(with_request_id))
        .with_state(app)
}

/// `GET /metrics`: the recorder's figures as Prometheus text, or 404 when
/// the process installed no recorder.
fn metrics_route(metrics: Option<PrometheusHandle>) -> axum::routing::MethodRouter<Arc<App>> {
    get(move |State(app): State<Arc<App>>| {
        let handle = metrics.clone();
        async move {
            match handle {
                Some(h) => {
                    app.publish_gauges();
                    (
                        [(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("text/plain; version=0.0.4"),
                        )],
                        h.render(),
                    )
                        .into_response()
                }
                None => ApiError::new(
                    404,
                    "metrics_disabled",
                    "this server has no metrics recorder; its embedding program exports the figures",
                )
                .into_response(),
            }
        }
    })
}

/// The metrics listener's routes (`--metrics-listen`): `GET /metrics`
/// without a token, and nothing else (404 for every other path). It
/// answers from the same figures as the main listener's `/metrics`; it
/// reads no snapshot and takes no place among the requests in flight.
pub(crate) fn metrics_router(app: Arc<App>, metrics: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/metrics", metrics_route(metrics))
        .fallback(|| async {
            ApiError::new(
                404,
                "no_route",
                "this listener serves /metrics only; the API is on the main listener",
            )
        })
        .layer(axum::middleware::map_response(nosniff))
        .with_state(app)
}

/// Outermost: the request's id (see [`crate::request_id`]), taken or
/// made, around everything that serves it, and sent back in
/// `x-request-id`.
async fn with_request_id(req: Request, next: Next) -> Response {
    let id = RequestId::from_header(req.headers().get(REQUEST_ID_HEADER).map(HeaderValue::as_bytes));
    let value = HeaderValue::from_str(id.as_str()).ok();
    let mut resp = id.scope(next.run(req)).await;
    if let Some(v) = value {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}

/// `X-Content-Type-Options: nosniff` on every answer.
async fn nosniff(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

/// The admin routes: every route here needs an admin token (and admin
/// routes turned on), checked once, by `admin_only`.
fn admin_routes(app: &Arc<App>) -> Router<Arc<App>> {
    Router::new()
        .route("/v1/snapshots/{name}/rollback", post(rollback))
        .route_layer(axum::middleware::from_fn_with_state(Arc::clone(app), admin_only))
}

/// The snapshot an admin route's path names (`/v1/snapshots/{name}/...`).
fn snapshot_in(path: &str) -> &str {
    path.strip_prefix("/v1/snapshots/")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("")
}

/// Inside `guard`, on the admin routes: the caller's token must be an
/// admin token; a refusal is logged as an admin action.
async fn admin_only(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let action = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", |p| route_label(p.as_str()));
    let Some(caller) = req.extensions().get::<Caller>().cloned() else {
        return ApiError::new(500, "internal", "an admin route was reached without authentication").into_response();
    };
    if let Err(e) = app.authorize_admin(&caller) {
        crate::audit::admin_action(action, snapshot_in(req.uri().path()), &caller, e.kind);
        return e.into_response();
    }
    next.run(req).await
}

/// Route names for metrics labels (a fixed set).
fn route_label(path: &str) -> &'static str {
    match path {
        "/livez" => "livez",
        "/readyz" => "readyz",
        "/metrics" => "metrics",
        "/v1/snapshots" => "snapshots",
        "/v1/snapshots/{name}/keys/{*key}" => "get",
        "/v1/snapshots/{name}/multiget" => "multiget",
        "/v1/snapshots/{name}/search" => "search",
        "/v1/snapshots/{name}/rollback" => "rollback",
        _ => "other",
    }
}

/// Around every routed request: authentication (all but the probes), the
/// bound on requests in flight (all but the probes and `/metrics`), the
/// deadline, and the request metrics.
async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", |p| route_label(p.as_str()));
    let probe = matches!(route, "livez" | "readyz");
    let resp = if probe {
        next.run(req).await
    } else {
        guarded(&app, route, req, next).await
    };
    app.request_metrics
        .record(route, resp.status().as_u16(), started.elapsed());
    resp
}

async fn guarded(app: &App, route: &'static str, mut req: Request, next: Next) -> Response {
    match app.authenticate(req.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes)) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
        }
        Err(e) => {
            let mut resp = e.into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
    }
    let _permit = if route == "metrics" {
        None
    } else {
        match app.admit() {
            Ok(p) => Some(p),
            Err(e) => return e.into_response(),
        }
    };
    let deadline = app.limits.request_timeout;
    match tokio::time::timeout(deadline, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(
            504,
            "deadline_exceeded",
            format!("the request took longer than this server's deadline of {deadline:?}"),
        )
        .into_response(),
    }
}

/// Ready or not, and each snapshot's state (`ready`, `stale`,
/// `degraded`, `opening`, `failed`); the reasons (which name URLs and
/// paths) only for a caller the server authenticates (every caller when
/// it has no tokens).
async fn readyz(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let trusted = app
        .auth
        .tokens()
        .check(headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes))
        .is_ok();
    let mut all = true;
    let mut degraded = false;
    let mut snaps = serde_json::Map::new();
    for (name, served) in &app.snapshots {
        let r = served.readiness();
        all &= r.ready;
        degraded |= r.health() == "degraded";
        let mut entry = serde_json::json!({"ready": r.ready, "state": r.state.as_str(), "stale": r.stale});
        if trusted {
            entry["reasons"] = serde_json::json!(r.reasons());
        }
        snaps.insert(name.clone(), entry);
    }
    let (status, health) = match (all, degraded) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "unready"),
        (true, true) => (StatusCode::OK, "degraded"),
        (true, false) => (StatusCode::OK, "ok"),
    };
    json(
        status,
        &serde_json::json!({"ready": all, "health": health, "snapshots": snaps}),
    )
}

async fn list(State(app): State<Arc<App>>) -> Response {
    let items: Vec<serde_json::Value> = app.snapshots.values().map(|s| listing(s)).collect();
    json(StatusCode::OK, &serde_json::json!({ "snapshots": items }))
}

/// One snapshot as `GET /v1/snapshots` lists it.
fn listing(served: &ServedSnapshot) -> serde_json::Value {
    let c = &served.config;
    let readiness = served.readiness();
    let Some(reader) = served.opened() else {
        return serde_json::json!({
            "name": c.name,
            "current_url": c.current_url,
            "open": false,
            "ready": false,
            "state": readiness.state.as_str(),
            "health": readiness.health(),
            "open_error": readiness.open_error,
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
        "ready": readiness.ready,
        "state": readiness.state.as_str(),
        "health": readiness.health(),
        "stale": readiness.stale,
        "stale_reason": readiness.stale_reason,
        "degraded": readiness.fallback_reason,
        "unready_when_stale": c.unready_when_stale,
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

async fn get_key(
    State(app): State<Arc<App>>,
    Path((name, key)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let q = match parse_query(query.as_deref()) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    let version = q.version.unwrap_or(Version::Current);
    match app.get(&name, &key, &q.context, &version).await {
        Ok((view, Some(value))) => with_run(
            (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                )],
                value,
            )
                .into_response(),
            view.run_id(),
        ),
        Ok((view, None)) => ApiError::new(404, "key_not_found", format!("key {key:?} is not in snapshot {name}"))
            .with_run(view.run_id())
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// How values are written in a multiget answer.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ValueFormat {
    /// Text; bytes that are not UTF-8 as `hex:<hex>` (as `sf-read` prints them).
    #[default]
    Utf8,
    /// Standard base64 with padding.
    Base64,
    /// Lowercase hex.
    Hex,
}

impl ValueFormat {
    fn show(self, v: &[u8]) -> String {
        match self {
            ValueFormat::Utf8 => sf_manifest::format::sharding::bytes_as_text(v),
            ValueFormat::Base64 => sf_manifest::format::base64::encode(v),
            ValueFormat::Hex => hex::encode(v),
        }
    }
}

/// A key or a context value: JSON text, or a number or boolean written as
/// JSON (taken as its text).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Int(i64),
    Uint(u64),
    Bool(bool),
}

impl Scalar {
    fn text(self) -> String {
        match self {
            Scalar::Text(s) => s,
            Scalar::Int(i) => i.to_string(),
            Scalar::Uint(u) => u.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

type JsonContext = std::collections::BTreeMap<String, Scalar>;

/// A multiget's body: `keys`, and optionally `context` (one for all),
/// `contexts` (one per key) and `value_format`. Read through
/// [`MultiGetSeed`], which stops at the key past the server's bound.
#[derive(Debug)]
struct MultiGetBody {
    keys: Vec<Scalar>,
    contexts: Option<Vec<Option<JsonContext>>>,
    context: Option<JsonContext>,
    value_format: ValueFormat,
}

const MULTIGET_FIELDS: &[&str] = &["keys", "contexts", "context", "value_format"];

/// Reads a [`MultiGetBody`], counting the keys (and per-key contexts) as
/// they are parsed: the element past `max` stops the parse and sets
/// `over`, so a body of a million keys costs no more than `max` of them.
struct MultiGetSeed<'a> {
    max: usize,
    over: &'a std::cell::Cell<bool>,
}

impl<'de> serde::de::DeserializeSeed<'de> for MultiGetSeed<'_> {
    type Value = MultiGetBody;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<MultiGetBody, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for MultiGetSeed<'_> {
    type Value = MultiGetBody;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object with \"keys\"")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<MultiGetBody, A::Error> {
        use serde::de::Error as _;
        let (mut keys, mut contexts, mut context, mut value_format) = (None, None, None, None);
        while let Some(field) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let seq = || Bounded::<Scalar>::new(self.max, self.over);
            match field.as_ref() {
                "keys" if keys.is_none() => {
                    keys = Some(
                        map.next_value_seed(seq())?
                            .ok_or_else(|| A::Error::custom("\"keys\" is null: give a list of keys"))?,
                    );
                }
                "contexts" if contexts.is_none() => {
                    contexts = Some(map.next_value_seed(Bounded::<Option<JsonContext>>::new(self.max, self.over))?);
                }
                "context" if context.is_none() => context = Some(map.next_value::<Option<JsonContext>>()?),
                "value_format" if value_format.is_none() => value_format = Some(map.next_value::<ValueFormat>()?),
                f if MULTIGET_FIELDS.contains(&f) => return Err(A::Error::custom(format!("duplicate field `{f}`"))),
                other => return Err(A::Error::unknown_field(other, MULTIGET_FIELDS)),
            }
        }
        Ok(MultiGetBody {
            keys: keys.ok_or_else(|| A::Error::missing_field("keys"))?,
            contexts: contexts.flatten(),
            context: context.flatten(),
            value_format: value_format.unwrap_or_default(),
        })
    }
}

/// A JSON list (or null) of at most `max` elements; see [`MultiGetSeed`].
struct Bounded<'a, T> {
    max: usize,
    over: &'a std::cell::Cell<bool>,
    of: std::marker::PhantomData<T>,
}

impl<'a, T> Bounded<'a, T> {
    fn new(max: usize, over: &'a std::cell::Cell<bool>) -> Self {
        Bounded {
            max,
            over,
            of: std::marker::PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de>> serde::de::DeserializeSeed<'de> for Bounded<'_, T> {
    type Value = Option<Vec<T>>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Bounded<'_, T> {
    type Value = Option<Vec<T>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list")
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.max).min(1024));
        while let Some(item) = seq.next_element::<T>()? {
            if out.len() == self.max {
                self.over.set(true);
                return Err(serde::de::Error::custom(format!(
                    "more than this server's limit of {} per request",
                    self.max
                )));
            }
            out.push(item);
        }
        Ok(Some(out))
    }
}

/// Parses a multiget body, stopping with 413 `too_many_keys` at the key
/// (or per-key context) past `max_keys`.
fn parse_multiget(bytes: &[u8], max_keys: usize) -> Result<MultiGetBody, ApiError> {
    use serde::de::DeserializeSeed;
    let over = std::cell::Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = MultiGetSeed {
        max: max_keys,
        over: &over,
    }
    .deserialize(&mut de)
    .and_then(|body| de.end().map(|()| body));
    parsed.map_err(|e| {
        if over.get() {
            ApiError::new(
                413,
                "too_many_keys",
                format!("more than {max_keys} keys (or contexts) is over this server's limit per request"),
            )
        } else {
            ApiError::bad_request("bad_body", format!("the body is not valid: {e}"))
        }
    })
}

/// A multiget's JSON answer, written value by value; fails with 413
/// `response_too_large` as soon as it passes `limit` bytes.
fn multiget_answer(
    run_id: &str,
    values: &[Option<bytes::Bytes>],
    format: ValueFormat,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    let too_large = |at: usize| {
        ApiError::new(
            413,
            "response_too_large",
            format!(
                "the answer passes this server's limit of {limit} bytes at key {at} of {}: ask for fewer keys (or smaller values) per request",
                values.len()
            ),
        )
    };
    let mut out = Vec::new();
    let encode = |out: &mut Vec<u8>, v: &serde_json::Value| {
        serde_json::to_writer(out, v).map_err(|e| ApiError::new(500, "internal", format!("encoding the answer: {e}")))
    };
    out.extend_from_slice(b"{\"run_id\":");
    encode(&mut out, &serde_json::Value::from(run_id))?;
    out.extend_from_slice(b",\"values\":[");
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match v {
            Some(b) => encode(&mut out, &serde_json::Value::String(format.show(b)))?,
            None => out.extend_from_slice(b"null"),
        }
        if out.len() > limit {
            return Err(too_large(i));
        }
    }
    out.extend_from_slice(b"]}");
    if out.len() > limit {
        return Err(too_large(values.len().saturating_sub(1)));
    }
    Ok(out)
}

fn context_pairs(c: JsonContext) -> Vec<String> {
    c.into_iter().map(|(k, v)| format!("{k}={}", v.text())).collect()
}

/// The request body, within the server's byte limit.
async fn read_body(app: &App, headers: &HeaderMap, body: Body) -> Result<bytes::Bytes, ApiError> {
    let limit = app.limits.max_body_bytes;
    let too_large = || {
        ApiError::new(
            413,
            "body_too_large",
            format!("the body is over this server's limit of {limit} bytes"),
        )
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        return Err(too_large());
    }
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(ApiError::bad_request("bad_body", format!("reading the body: {e}"))),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request("bad_body", format!("the body is not valid: {e}")))
}

async fn multiget(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match multiget_inner(&app, &name, query.as_deref(), &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn multiget_inner(
    app: &App,
    name: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let q = parse_query(query)?;
    if !q.context.is_empty() {
        return Err(ApiError::bad_request(
            "bad_query",
            "a multiget takes its routing contexts in the body (\"context\" or \"contexts\")",
        ));
    }
    // The snapshot first: an unknown name is 404 whatever the body.
    app.served(name)?;
    let bytes = read_body(app, headers, body).await?;
    let body = parse_multiget(&bytes, app.limits.max_keys)?;
    let contexts = match (body.contexts, body.context) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "bad_body",
                "give \"context\" or \"contexts\", not both",
            ));
        }
        (Some(list), None) => Contexts::PerKey(list.into_iter().map(|c| c.map(context_pairs)).collect()),
        (None, Some(c)) => Contexts::Shared(context_pairs(c)),
        (None, None) => Contexts::None,
    };
    let keys: Vec<String> = body.keys.into_iter().map(Scalar::text).collect();
    let (served, view) = app.view(name, &q.version.unwrap_or(Version::Current))?;
    let values = app.multi_get_in(served, &view, &keys, &contexts).await?;
    let answer = multiget_answer(
        view.run_id().as_str(),
        &values,
        body.value_format,
        app.limits.max_response_bytes,
    )
    .map_err(|e| e.with_run(view.run_id()))?;
    Ok(with_run(
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            answer,
        )
            .into_response(),
        view.run_id(),
    ))
}

/// A search's body: `vector` (one query) or `vectors` (a batch), and
/// optionally `top_k`, `num_probes`, `shard_ids`, `context`, `filter`,
/// `with_values` and `value_format`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchBody {
    vector: Option<Vec<f32>>,
    vectors: Option<Vec<Vec<f32>>>,
    #[serde(default = "default_top_k")]
    top_k: usize,
    num_probes: Option<u32>,
    shard_ids: Option<Vec<u32>>,
    context: Option<JsonContext>,
    filter: Option<String>,
    #[serde(default)]
    with_values: bool,
    #[serde(default)]
    value_format: ValueFormat,
}

fn default_top_k() -> usize {
    10
}

async fn search(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match search_inner(&app, &name, query.as_deref(), &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// `POST …/search`: `{"run_id", "results": [{"id", "score", "payload",
/// "db_id"}], "shards"}` for `vector`; `{"run_id", "batches": [{"results",
/// "shards"}]}` for `vectors`, every query of the batch from one version.
async fn search_inner(
    app: &App,
    name: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let q = parse_query(query)?;
    if !q.context.is_empty() {
        return Err(ApiError::bad_request(
            "bad_query",
            "a search takes its routing context in the body (\"context\")",
        ));
    }
    app.served(name)?;
    let bytes = read_body(app, headers, body).await?;
    let body: SearchBody = parse_json(&bytes)?;
    let (queries, batch) = match (body.vector, body.vectors) {
        (Some(v), None) => (vec![v], false),
        (None, Some(list)) => (list, true),
        _ => {
            return Err(ApiError::bad_request(
                "bad_body",
                "give \"vector\" (one query) or \"vectors\" (a batch), not both",
            ));
        }
    };
    app.check_queries(queries.len())?;
    let (_served, view) = app.view(name, &q.version.unwrap_or(Version::Current))?;
    let run = view.run_id().clone();
    let ask = SearchAsk {
        queries,
        top_k: body.top_k,
        num_probes: body.num_probes,
        shard_ids: body.shard_ids,
        context: body.context.map(context_pairs),
        filter: body.filter,
        with_values: body.with_values,
    };
    let format = body.value_format;
    let mut answers: Vec<serde_json::Value> = app
        .search_in(&view, &ask)
        .await?
        .into_iter()
        .map(|(found, values)| {
            let results = found.hits.iter().enumerate().map(|(i, h)| {
                let mut hit = serde_json::json!({
                    "id": h.id.to_json(),
                    "score": h.score,
                    "payload": h.payload,
                    "db_id": h.db_id.0,
                });
                if let Some(values) = &values {
                    hit["value"] = values
                        .get(i)
                        .and_then(Option::as_ref)
                        .map_or(serde_json::Value::Null, |v| serde_json::Value::from(format.show(v)));
                }
                hit
            });
            serde_json::json!({
                "results": results.collect::<Vec<_>>(),
                "shards": found.shards.iter().map(|d| d.0).collect::<Vec<_>>(),
            })
        })
        .collect();
    let answer = if batch {
        serde_json::json!({ "run_id": run.as_str(), "batches": answers })
    } else {
        let mut one = answers.pop().unwrap_or_default();
        one["run_id"] = serde_json::Value::from(run.as_str());
        one
    };
    let text = answer.to_string();
    if text.len() > app.limits.max_response_bytes {
        return Err(ApiError::new(
            413,
            "response_too_large",
            format!(
                "the answer is over this server's limit of {} bytes; ask for fewer results",
                app.limits.max_response_bytes
            ),
        )
        .with_run(&run));
    }
    Ok(with_run(
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            text,
        )
            .into_response(),
        &run,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    run_id: Option<String>,
    offset: Option<usize>,
    #[serde(rename = "ref")]
    manifest_ref: Option<String>,
}

async fn rollback(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = rollback_inner(&app, &name, &headers, body).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.kind,
    };
    crate::audit::admin_action("rollback", &name, &caller, outcome);
    match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn rollback_inner(app: &App, name: &str, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let served = app.served(name)?;
    let reader = served.reader()?;
    let bytes = read_body(app, headers, body).await?;
    let body: RollbackBody = parse_json(&bytes)?;
    let target = match (body.run_id, body.offset, body.manifest_ref) {
        (Some(r), None, None) => RollbackTarget::RunId(
            r.parse()
                .map_err(|e| ApiError::bad_request("bad_body", format!("run_id {r:?}: {e}")))?,
        ),
        (None, Some(n), None) => RollbackTarget::Offset(n),
        (None, None, Some(r)) => RollbackTarget::Ref(r),
        _ => {
            return Err(ApiError::bad_request(
                "bad_body",
                "give exactly one of \"run_id\", \"offset\" (in the history, 0 the newest) or \"ref\"",
            ));
        }
    };
    let done = served.admin.rollback(&target).await.map_err(ApiError::from)?;
    tracing::info!(snapshot = %name, from = ?done.from_run_id, to = %done.run_id, changed = done.changed, "rolled back _CURRENT");
    // Swap now rather than at the next poll.
    reader.refresh().await.map_err(|e| {
        let mut err = ApiError::from(e);
        err.message = format!(
            "_CURRENT now names run {}, but this server could not swap to it (it retries on its refresh interval): {}",
            done.run_id, err.message
        );
        err
    })?;
    let serving = reader.current();
    Ok(with_run(
        json(
            StatusCode::OK,
            &serde_json::json!({
                "changed": done.changed,
                "from_run_id": done.from_run_id.as_ref().map(|r| r.as_str()),
                "run_id": done.run_id.as_str(),
                "manifest_ref": done.manifest_ref,
                "serving_run_id": serving.run_id().as_str(),
            }),
        ),
        serving.run_id(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_pin_and_carry_contexts() {
        let q = parse_query(Some("ctx.region=eu&run_id=run2")).expect("query");
        assert_eq!(q.context, vec!["region=eu"]);
        assert_eq!(q.version, Some(Version::RunId("run2".parse().expect("run id"))));
        let q = parse_query(Some("offset=1&ctx.a=x%20y")).expect("query");
        assert_eq!(q.version, Some(Version::Offset(1)));
        assert_eq!(q.context, vec!["a=x y"]);
        for bad in ["offset=-1", "run_id=a&offset=0", "colour=red", "offset=x"] {
            let e = parse_query(Some(bad)).expect_err(bad);
            assert_eq!((e.status, e.kind), (400, "bad_query"), "{bad}");
        }
        assert_eq!(parse_query(None).expect("none").version, None);
    }

    #[test]
    fn value_formats_match_sf_read() {
        assert_eq!(ValueFormat::Utf8.show(b"abc"), "abc");
        assert_eq!(ValueFormat::Utf8.show(&[0xff, 0x00]), "hex:ff00");
        assert_eq!(ValueFormat::Hex.show(b"abc"), "616263");
        assert_eq!(ValueFormat::Base64.show(b"abc"), "YWJj");
        let body = parse_multiget(br#"{"keys": [1, "2", true], "value_format": "hex"}"#, 10).expect("body");
        let keys: Vec<String> = body.keys.into_iter().map(Scalar::text).collect();
        assert_eq!(keys, vec!["1", "2", "true"]);
        assert!(matches!(body.value_format, ValueFormat::Hex));
        for bad in [
            r#"{"keys": [], "extra": 1}"#,
            r#"{"keys": [1], "keys": [2]}"#,
            r#"{"keys": null}"#,
            r#"{"context": {}}"#,
            r#"{"keys": [1]} trailing"#,
            r#"[1, 2]"#,
        ] {
            let e = parse_multiget(bad.as_bytes(), 10).expect_err(bad);
            assert_eq!((e.status, e.kind), (400, "bad_body"), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn the_key_past_the_bound_stops_the_parse_with_413() {
        let three = br#"{"keys": [1, 2, 3], "contexts": [null, {"a": 1}, null]}"#;
        let body = parse_multiget(three, 3).expect("at the bound");
        assert_eq!((body.keys.len(), body.contexts.map(|c| c.len())), (3, Some(3)));
        let e = parse_multiget(three, 2).expect_err("over the bound");
        assert_eq!((e.status, e.kind), (413, "too_many_keys"), "{}", e.message);
        // The parse stops at the key past the bound: what follows it is
        // never read (here, it is not even JSON).
        let e = parse_multiget(br#"{"keys": [1, 2, 3, !!! not json"#, 2).expect_err("stops early");
        assert_eq!((e.status, e.kind), (413, "too_many_keys"), "{}", e.message);
        let e = parse_multiget(br#"{"keys": [1], "contexts": [null, null, null]}"#, 2).expect_err("contexts");
        assert_eq!((e.status, e.kind), (413, "too_many_keys"), "{}", e.message);
    }

    #[test]
    fn the_answer_is_cut_at_the_byte_bound_as_it_is_encoded() {
        let values = vec![
            Some(bytes::Bytes::from_static(b"abcdef")),
            None,
            Some(bytes::Bytes::from_static(b"\x01")),
        ];
        let whole = multiget_answer("r1", &values, ValueFormat::Utf8, usize::MAX).expect("no bound");
        let parsed: serde_json::Value = serde_json::from_slice(&whole).expect("JSON");
        assert_eq!(
            parsed,
            serde_json::json!({"run_id": "r1", "values": ["abcdef", null, "\u{1}"]})
        );
        assert_eq!(
            multiget_answer("r1", &values, ValueFormat::Utf8, whole.len()).expect("at the bound"),
            whole
        );
        let e = multiget_answer("r1", &values, ValueFormat::Utf8, whole.len() - 1).expect_err("one byte over");
        assert_eq!((e.status, e.kind), (413, "response_too_large"));
        // Hex doubles the bytes: a bound the text fits is too small for it.
        let e = multiget_answer("r1", &values, ValueFormat::Hex, whole.len()).expect_err("hex");
        assert_eq!(e.kind, "response_too_large");
        assert!(e.message.contains(&whole.len().to_string()), "{}", e.message);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Any query string: a query or a 400 `bad_query`, never a panic.
        #[test]
        fn any_query_string_parses_or_is_a_bad_query(raw in "[a-z_.%=&0-9+-]{0,40}|.{0,40}") {
            if let Err(e) = parse_query(Some(&raw)) {
                proptest::prop_assert_eq!((e.status, e.kind), (400, "bad_query"));
            }
        }

        /// Any bytes as a multiget body: a body of at most `max` keys, or a
        /// 400 `bad_body` / 413 `too_many_keys`, never a panic.
        #[test]
        fn any_bytes_as_a_multiget_body_parse_or_fail_clearly(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            max in 1usize..4,
        ) {
            match parse_multiget(&bytes, max) {
                Ok(body) => proptest::prop_assert!(body.keys.len() <= max),
                Err(e) => proptest::prop_assert!(
                    matches!((e.status, e.kind), (400, "bad_body") | (413, "too_many_keys")),
                    "{:?}", e
                ),
            }
        }

        /// JSON-shaped bodies (more of them reach the fields than random
        /// bytes do): the same.
        #[test]
        fn json_shaped_multiget_bodies_parse_or_fail_clearly(
            text in r#"\{("keys"|"contexts"|"context"|"value_format"|"x"): ?(\[(1|"a"|true|null|\{"r": ?1\}|-1|1e9|\[\])?(, ?(2|"b"|null|\{\}))*\]|null|"hex"|"utf8"|\{\}|7)(, ?"keys": ?\[1\])?\}"#,
            max in 1usize..4,
        ) {
            match parse_multiget(text.as_bytes(), max) {
                Ok(body) => proptest::prop_assert!(body.keys.len() <= max),
                Err(e) => proptest::prop_assert!(
                    matches!((e.status, e.kind), (400, "bad_body") | (413, "too_many_keys")),
                    "{:?}", e
                ),
            }
        }
    }
}
