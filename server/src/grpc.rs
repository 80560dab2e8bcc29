//! The gRPC service (`proto/shardforge.proto`): the same lookups, limits
//! and authentication as the HTTP API.
//!
//! Authentication and admission happen in front of the service, on the
//! call's headers, before its message is read or decoded: a call without
//! a valid token, or beyond the bound on requests in flight, costs the
//! server its headers only. A streamed `MultiGet` holds its place among
//! the requests in flight until it ends, at the latest after the limits'
//! `stream_timeout`, whether or not its client reads.
//!
//! Beside the lookups, the listener serves the standard gRPC health
//! service (`grpc.health.v1.Health`: the overall status `""` and
//! `shardforge.v1.Lookup` are SERVING while the server is ready, as
//! `/readyz` says, NOT_SERVING before and from the start of a shutdown)
//! and server reflection (`grpc.reflection.v1` and `v1alpha`, describing
//! `proto/shardforge.proto`). These need no token and take no place among
//! the requests in flight (probes carry no token), but pass the same
//! connection bounds; the gate lets exactly their methods through
//! ([`OPEN_METHODS`]), so no other call escapes authentication.
//!
//! Every call has a request id (`x-request-id` metadata, see
//! `request_id`), sent back in the answer's `x-request-id`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use futures::Stream;
use sf_reader::{SnapshotView, Version};
use tokio::sync::OwnedSemaphorePermit;
use tonic::codegen::http;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::api_error::ApiError;
use crate::app::{App, Contexts, SearchAsk};
use crate::conn::ConnInfo;
use crate::http::RUN_ID_HEADER;
use crate::metrics::{REQUESTS_ABANDONED, record_grpc};
use crate::request_id::{REQUEST_ID_HEADER, RequestId, carried};
use crate::snapshot::ServedSnapshot;

/// The code generated from `proto/shardforge.proto` (messages, the
/// `Lookup` server trait and the `LookupClient`).
pub mod proto {
    #![allow(missing_docs, missing_debug_implementations, clippy::all, clippy::pedantic)]
    tonic::include_proto!("shardforge.v1");
}

use proto::lookup_server::{Lookup, LookupServer};

/// The compiled `proto/shardforge.proto` (an encoded
/// `FileDescriptorSet`), which the reflection service describes.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/shardforge_descriptor.bin"));

/// The full name of the lookup service (`shardforge.v1.Lookup`), as the
/// health service and reflection name it.
pub const LOOKUP_SERVICE: &str = <LookupServer<LookupService> as tonic::server::NamedService>::NAME;

/// The methods the gate lets through without a token or a place among
/// the requests in flight: health checks and reflection, matched by their
/// whole path.
pub const OPEN_METHODS: [&str; 4] = [
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// How often the health service's statuses follow the readiness.
const HEALTH_POLL: std::time::Duration = std::time::Duration::from_millis(500);
use proto::{
    GetRequest, GetResponse, MultiGetChunk, MultiGetRequest, MultiGetResponse, SearchHit, SearchRequest,
    SearchResponse, SearchResult, Value,
};

/// Keys per streamed chunk when the request does not say.
pub const DEFAULT_CHUNK_SIZE: usize = 1000;

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let code = match e.status {
            400 => tonic::Code::InvalidArgument,
            401 => tonic::Code::Unauthenticated,
            403 => tonic::Code::PermissionDenied,
            404 => tonic::Code::NotFound,
            409 => tonic::Code::Aborted,
            413 => tonic::Code::ResourceExhausted,
            503 if e.kind == "overloaded" => tonic::Code::ResourceExhausted,
            503 => tonic::Code::Unavailable,
            504 => tonic::Code::DeadlineExceeded,
            _ => tonic::Code::Internal,
        };
        let mut status = Status::new(code, e.message);
        status
            .metadata_mut()
            .insert("sf-error-kind", MetadataValue::from_static(e.kind));
        if let Some(run) = e.run_id.and_then(|r| MetadataValue::try_from(r).ok()) {
            status.metadata_mut().insert(RUN_ID_HEADER, run);
        }
        if let Some(id) = e.error_id.and_then(|r| MetadataValue::try_from(r).ok()) {
            status.metadata_mut().insert("sf-error-id", id);
        }
        status
    }
}

/// The service over the shared state.
pub(crate) struct LookupService {
    pub(crate) app: Arc<App>,
}

/// A call's place among the requests in flight, taken by [`Gate`] before
/// its message was decoded; held while any clone lives (a streamed call's
/// producer keeps one).
#[derive(Clone)]
struct Admitted(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

/// The metrics label of a gRPC method path.
fn route_of(path: &str) -> &'static str {
    match path.rsplit('/').next() {
        Some("Get") => "grpc_get",
        Some("MultiGet") => "grpc_multiget",
        Some("MultiGetStream") => "grpc_multiget_stream",
        Some("Search") => "grpc_search",
        _ => "grpc_other",
    }
}

/// The layer that puts [`Gate`] in front of the gRPC services.
#[derive(Clone)]
pub(crate) struct GateLayer {
    app: Arc<App>,
}

impl GateLayer {
    pub(crate) fn new(app: Arc<App>) -> Self {
        GateLayer { app }
    }
}

impl<S> tower::Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Gate<S> {
        Gate {
            inner,
            app: Arc::clone(&self.app),
        }
    }
}

/// Authentication and admission of every gRPC call, on its headers: a
/// refused call is answered without its message being read.
#[derive(Clone)]
pub(crate) struct Gate<S> {
    inner: S,
    app: Arc<App>,
}

type Body = tonic::body::Body;

impl<S> tower::Service<http::Request<Body>> for Gate<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let started = Instant::now();
        let id = RequestId::from_header(req.headers().get(REQUEST_ID_HEADER).map(|v| v.as_bytes()));
        let id_value = http::HeaderValue::from_str(id.as_str()).ok();
        let with_id = move |mut resp: http::Response<Body>| {
            if let Some(v) = id_value {
                resp.headers_mut().insert(REQUEST_ID_HEADER, v);
            }
            resp
        };
        let busy = req.extensions().get::<ConnInfo>().map(|c| c.activity.begin());
        // Health checks and reflection: no token, no place in flight.
        if !OPEN_METHODS.contains(&req.uri().path()) {
            let admitted = self
                .app
                .authenticate(req.headers().get("authorization").map(|v| v.as_bytes()))
                .and_then(|_caller| self.app.admit());
            match admitted {
                Ok(permit) => {
                    req.extensions_mut().insert(Admitted(Arc::new(permit)));
                }
                Err(mut e) => {
                    e.request_id = Some(id.shared());
                    let status = Status::from(e);
                    record_grpc(route_of(req.uri().path()), status.code(), started.elapsed());
                    return Box::pin(async move {
                        drop(busy);
                        Ok(with_id(status.into_http()))
                    });
                }
            }
        }
        // The clone that was made ready is the one called.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        Box::pin(id.scope(async move {
            let answer = inner.call(req).await;
            drop(busy);
            answer.map(with_id)
        }))
    }
}

/// The health service, its statuses NOT_SERVING until
/// [`report_health`] finds the server ready.
pub(crate) async fn health_service() -> (
    tonic_health::server::HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, service) = tonic_health::server::health_reporter();
    for name in ["", LOOKUP_SERVICE] {
        reporter
            .set_service_status(name, tonic_health::ServingStatus::NotServing)
            .await;
    }
    (reporter, service)
}

/// Keeps the health statuses (overall and the lookup service's) at the
/// server's readiness, the one `/readyz` tells, until `stop` turns true:
/// then NOT_SERVING for good.
pub(crate) async fn report_health(
    app: Arc<App>,
    reporter: tonic_health::server::HealthReporter,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut told = None;
    loop {
        let stopping = *stop.borrow();
        let ready = !stopping && app.ready();
        if told != Some(ready) {
            let status = if ready {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            for name in ["", LOOKUP_SERVICE] {
                reporter.set_service_status(name, status).await;
            }
            tracing::debug!(?status, "gRPC health");
            told = Some(ready);
        }
        if stopping {
            // Watchers have seen NOT_SERVING; new channels end their
            // streams (a watch would otherwise hold the drain until the
            // grace period), and later checks still read NOT_SERVING.
            let mut reporter = reporter;
            for name in ["", LOOKUP_SERVICE] {
                reporter.clear_service_status(name).await;
                reporter
                    .set_service_status(name, tonic_health::ServingStatus::NotServing)
                    .await;
            }
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(HEALTH_POLL) => {}
            changed = stop.changed() => {
                if changed.is_err() {
                    // The sender is gone: the server is ending.
                    let _ = stop.borrow_and_update();
                }
            }
        }
    }
}

/// The reflection services (v1 and v1alpha, for older clients) over
/// `proto/shardforge.proto` and the health service's descriptors.
#[allow(clippy::type_complexity)]
pub(crate) fn reflection_services() -> crate::Result<(
    tonic_reflection::pb::v1::server_reflection_server::ServerReflectionServer<
        impl tonic_reflection::pb::v1::server_reflection_server::ServerReflection,
    >,
    tonic_reflection::pb::v1alpha::server_reflection_server::ServerReflectionServer<
        impl tonic_reflection::pb::v1alpha::server_reflection_server::ServerReflection,
    >,
)> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let failed = |e: tonic_reflection::server::Error| crate::Error::config("gRPC reflection", e.to_string());
    Ok((
        builder().build_v1().map_err(failed)?,
        builder().build_v1alpha().map_err(failed)?,
    ))
}

fn requested_version(v: Option<proto::Version>) -> Result<Version, ApiError> {
    Ok(match v.and_then(|v| v.version) {
        None => Version::Current,
        Some(proto::version::Version::RunId(r)) => Version::RunId(
            r.parse()
                .map_err(|e| ApiError::bad_request("bad_request", format!("run_id {r:?}: {e}")))?,
        ),
        Some(proto::version::Version::Offset(n)) => Version::Offset(n as usize),
    })
}

fn context_pairs(c: proto::Context) -> Vec<String> {
    let mut v: Vec<(String, String)> = c.values.into_iter().collect();
    v.sort();
    v.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn contexts(list: Vec<proto::Context>) -> Contexts {
    match list.len() {
        0 => Contexts::None,
        1 => Contexts::Shared(context_pairs(list.into_iter().next().unwrap_or_default())),
        _ => Contexts::PerKey(list.into_iter().map(|c| Some(context_pairs(c))).collect()),
    }
}

fn found_values(v: Vec<Option<bytes::Bytes>>) -> Vec<Value> {
    v.into_iter()
        .map(|v| match v {
            Some(b) => Value {
                found: true,
                value: b.to_vec(),
            },
            None => Value::default(),
        })
        .collect()
}

fn search_hit(h: sf_reader::SearchHit) -> SearchHit {
    SearchHit {
        id: Some(match h.id {
            sf_reader::VectorId::Int(i) => proto::search_hit::Id::IntId(i),
            sf_reader::VectorId::Str(s) => proto::search_hit::Id::StrId(s),
        }),
        score: h.score,
        payload: h.payload.map(|p| p.to_string()),
        db_id: h.db_id.0,
        value: None,
    }
}

fn with_run<T>(body: T, view: &SnapshotView) -> Response<T> {
    let mut resp = Response::new(body);
    if let Ok(v) = MetadataValue::try_from(view.run_id().as_str()) {
        resp.metadata_mut().insert(RUN_ID_HEADER, v);
    }
    resp
}

impl LookupService {
    /// `work` under the deadline (the call was authenticated and admitted
    /// by [`Gate`]), with its metrics.
    async fn guarded<T, F>(&self, route: &'static str, work: F) -> Result<T, Status>
    where
        F: Future<Output = Result<T, ApiError>>,
    {
        let started = Instant::now();
        let result = async {
            let deadline = self.app.limits.request_timeout;
            tokio::time::timeout(deadline, work).await.map_err(|_| {
                ApiError::new(
                    504,
                    "deadline_exceeded",
                    format!("the call took longer than this server's deadline of {deadline:?}"),
                )
            })?
        }
        .await
        .map_err(Status::from);
        let code = result.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok);
        record_grpc(route, code, started.elapsed());
        result
    }

    fn view(&self, name: &str, v: Option<proto::Version>) -> Result<(Arc<ServedSnapshot>, SnapshotView), ApiError> {
        let (served, view) = self.app.view(name, &requested_version(v)?)?;
        Ok((Arc::clone(served), view))
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<MultiGetChunk, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Lookup for LookupService {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        // The extensions hold the call's place until it is answered.
        let (_, _admitted, req) = request.into_parts();
        self.guarded("grpc_get", async {
            let context = req.context.map(context_pairs).unwrap_or_default();
            let (view, value) = self
                .app
                .get(&req.snapshot, &req.key, &context, &requested_version(req.version)?)
                .await?;
            let body = GetResponse {
                run_id: view.run_id().to_string(),
                found: value.is_some(),
                value: value.map(|b| b.to_vec()).unwrap_or_default(),
            };
            Ok(with_run(body, &view))
        })
        .await
    }

    async fn multi_get(&self, request: Request<MultiGetRequest>) -> Result<Response<MultiGetResponse>, Status> {
        let (_, _admitted, req) = request.into_parts();
        self.guarded("grpc_multiget", async {
            self.app.check_keys(req.keys.len(), self.app.limits.max_keys)?;
            let (served, view) = self.view(&req.snapshot, req.version)?;
            let found = self
                .app
                .multi_get_in(&served, &view, &req.keys, &contexts(req.contexts))
                .await?;
            self.app
                .check_answer_bytes(&found)
                .map_err(|e| e.with_run(view.run_id()))?;
            let body = MultiGetResponse {
                run_id: view.run_id().to_string(),
                values: found_values(found),
            };
            Ok(with_run(body, &view))
        })
        .await
    }

    async fn search(&self, request: Request<SearchRequest>) -> Result<Response<SearchResponse>, Status> {
        let (_, _admitted, req) = request.into_parts();
        self.guarded("grpc_search", async {
            if req.queries.is_empty() {
                return Err(ApiError::bad_request(
                    "bad_request",
                    "a search needs at least one query",
                ));
            }
            self.app.check_queries(req.queries.len())?;
            let (_, view) = self.view(&req.snapshot, req.version)?;
            let ask = SearchAsk {
                queries: req.queries.into_iter().map(|q| q.vector).collect(),
                top_k: match req.top_k {
                    0 => 10,
                    n => n as usize,
                },
                num_probes: (req.num_probes > 0).then_some(req.num_probes),
                shard_ids: (!req.shard_ids.is_empty()).then_some(req.shard_ids),
                context: req.context.map(context_pairs),
                filter: (!req.filter.is_empty()).then_some(req.filter),
                with_values: req.with_values,
            };
            let results = self
                .app
                .search_in(&view, &ask)
                .await?
                .into_iter()
                .map(|(found, values)| {
                    let mut values = values.map(Vec::into_iter);
                    SearchResult {
                        shards: found.shards.iter().map(|d| d.0).collect(),
                        hits: found
                            .hits
                            .into_iter()
                            .map(|h| {
                                let value = values.as_mut().map(|v| match v.next().flatten() {
                                    Some(b) => Value {
                                        found: true,
                                        value: b.to_vec(),
                                    },
                                    None => Value::default(),
                                });
                                SearchHit { value, ..search_hit(h) }
                            })
                            .collect(),
                    }
                })
                .collect::<Vec<_>>();
            let body = SearchResponse {
                run_id: view.run_id().to_string(),
                results,
            };
            self.app
                .check_message_bytes(prost::Message::encoded_len(&body))
                .map_err(|e| e.with_run(view.run_id()))?;
            Ok(with_run(body, &view))
        })
        .await
    }

    type MultiGetStreamStream = ChunkStream;

    async fn multi_get_stream(
        &self,
        request: Request<MultiGetRequest>,
    ) -> Result<Response<Self::MultiGetStreamStream>, Status> {
        let (_, extensions, req) = request.into_parts();
        let started = Instant::now();
        // The place taken by the gate holds for the whole stream (its
        // producer keeps it); the request deadline applies to each chunk,
        // the stream deadline to the whole.
        let admitted = (|| {
            let permit = extensions
                .get::<Admitted>()
                .cloned()
                .ok_or_else(|| ApiError::new(500, "internal", "a call reached the service without admission"))?;
            self.app.check_keys(req.keys.len(), self.app.limits.max_stream_keys)?;
            let (served, view) = self.view(&req.snapshot, req.version)?;
            Ok::<_, ApiError>((permit, served, view))
        })();
        drop(extensions);
        let (permit, served, view) = match admitted {
            Ok(x) => x,
            Err(e) => {
                let status = Status::from(e);
                record_grpc("grpc_multiget_stream", status.code(), started.elapsed());
                return Err(status);
            }
        };
        let chunk = match req.chunk_size {
            0 => DEFAULT_CHUNK_SIZE,
            n => n as usize,
        };
        let contexts = contexts(req.contexts);
        if let Contexts::PerKey(list) = &contexts
            && list.len() != req.keys.len()
        {
            return Err(Status::from(ApiError::bad_request(
                "bad_request",
                format!(
                    "{} contexts for {} keys: give one per key, or one for all",
                    list.len(),
                    req.keys.len()
                ),
            )));
        }
        let mut state = StreamState {
            app: Arc::clone(&self.app),
            served,
            view: view.clone(),
            keys: req.keys,
            contexts,
            chunk,
            next: 0,
            started,
            done: false,
        };
        // A producer task reads the chunks into a short queue the answer
        // drains: a client that stops reading stops the producer at the
        // queue, and the stream deadline ends it (and its place) anyway.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<MultiGetChunk, Status>>(2);
        let expired = Arc::new(AtomicBool::new(false));
        let total = self.app.limits.stream_timeout;
        tokio::spawn(carried({
            let expired = Arc::clone(&expired);
            async move {
                let _place = permit;
                let produce = async {
                    while !state.done {
                        let item = state.next_chunk().await;
                        if tx.send(item).await.is_err() {
                            // The client went away.
                            return;
                        }
                    }
                };
                if tokio::time::timeout(total, produce).await.is_err() {
                    expired.store(true, Ordering::Release);
                    metrics::counter!(REQUESTS_ABANDONED, "route" => "grpc_multiget_stream").increment(1);
                    record_grpc("grpc_multiget_stream", tonic::Code::DeadlineExceeded, started.elapsed());
                }
            }
        }));
        let stream = futures::stream::unfold((rx, expired, false), move |(mut rx, expired, ended)| async move {
            if ended {
                return None;
            }
            match rx.recv().await {
                Some(item) => Some((item, (rx, expired, false))),
                // The producer is gone: finished, or stopped at the deadline.
                None if expired.load(Ordering::Acquire) => {
                    let status = Status::from(ApiError::new(
                        504,
                        "deadline_exceeded",
                        format!("the stream took longer than this server's stream deadline of {total:?}"),
                    ));
                    Some((Err(status), (rx, expired, true)))
                }
                None => None,
            }
        });
        Ok(with_run(Box::pin(stream) as ChunkStream, &view))
    }
}

struct StreamState {
    app: Arc<App>,
    served: Arc<ServedSnapshot>,
    view: SnapshotView,
    keys: Vec<String>,
    contexts: Contexts,
    chunk: usize,
    next: usize,
    started: Instant,
    /// The last chunk (or an error) was sent.
    done: bool,
}

impl StreamState {
    async fn next_chunk(&mut self) -> Result<MultiGetChunk, Status> {
        let start = self.next;
        let end = (start + self.chunk).min(self.keys.len());
        self.next = end;
        // An empty request answers one empty chunk, so the client learns the run.
        self.done = end == self.keys.len();
        let contexts = match &self.contexts {
            Contexts::PerKey(list) => Contexts::PerKey(list[start..end].to_vec()),
            other => other.clone(),
        };
        let deadline = self.app.limits.request_timeout;
        let work = self
            .app
            .multi_get_in(&self.served, &self.view, &self.keys[start..end], &contexts);
        let result = match tokio::time::timeout(deadline, work).await {
            Ok(r) => r.and_then(|found| {
                self.app
                    .check_answer_bytes(&found)
                    .map_err(|e| e.with_run(self.view.run_id()))
                    .map(|()| found)
            }),
            Err(_) => Err(ApiError::new(
                504,
                "deadline_exceeded",
                format!("a chunk took longer than this server's deadline of {deadline:?}"),
            )),
        };
        match result {
            Ok(found) => {
                if self.done {
                    record_grpc("grpc_multiget_stream", tonic::Code::Ok, self.started.elapsed());
                }
                Ok(MultiGetChunk {
                    run_id: self.view.run_id().to_string(),
                    start: start as u64,
                    values: found_values(found),
                })
            }
            Err(e) => {
                self.done = true;
                let status = Status::from(e);
                record_grpc("grpc_multiget_stream", status.code(), self.started.elapsed());
                Err(status)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// The methods let through without a token are those of the health
    /// and reflection services, whole paths, and none of the lookups'.
    #[test]
    fn open_methods_are_health_and_reflection_only() {
        let open_services = [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ];
        assert_eq!(
            open_services,
            [
                <tonic_health::pb::health_server::HealthServer<()> as tonic::server::NamedService>::NAME,
                tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME,
                tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME,
            ]
        );
        for path in OPEN_METHODS {
            let (service, method) = path[1..].split_once('/').expect("/service/method");
            assert!(open_services.contains(&service), "{path}");
            assert!(!method.is_empty() && !method.contains('/'), "{path}");
        }
        assert_eq!(LOOKUP_SERVICE, "shardforge.v1.Lookup");
        for lookup in ["Get", "MultiGet", "MultiGetStream", "Search"] {
            let path = format!("/{LOOKUP_SERVICE}/{lookup}");
            assert!(!OPEN_METHODS.contains(&path.as_str()), "{path}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Any bytes as a request message: decoded or a decode error (which
        /// tonic answers INVALID_ARGUMENT), never a panic; a decoded request's
        /// version and contexts then turn into a version or a 400.
        #[test]
        fn any_bytes_as_a_request_decode_or_fail(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            if let Ok(req) = GetRequest::decode(&bytes[..]) {
                let _ = req.context.map(context_pairs);
                if let Err(e) = requested_version(req.version) {
                    proptest::prop_assert_eq!(e.status, 400);
                }
            }
            if let Ok(req) = MultiGetRequest::decode(&bytes[..]) {
                let n = req.contexts.len();
                match contexts(req.contexts) {
                    Contexts::None => proptest::prop_assert_eq!(n, 0),
                    Contexts::Shared(_) => proptest::prop_assert_eq!(n, 1),
                    Contexts::PerKey(list) => proptest::prop_assert_eq!(list.len(), n),
                }
                if let Err(e) = requested_version(req.version) {
                    proptest::prop_assert_eq!(e.status, 400);
                }
            }
        }

        /// A real request with bytes changed or cut: the same.
        #[test]
        fn mutated_requests_decode_or_fail(
            edits in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 1..6),
            cut in proptest::prelude::any::<usize>(),
        ) {
            let real = MultiGetRequest {
                snapshot: "users".into(),
                keys: vec!["1".into(), "2".into()],
                contexts: vec![proto::Context { values: [("region".to_string(), "eu".to_string())].into() }],
                version: Some(proto::Version { version: Some(proto::version::Version::RunId("run1".into())) }),
                chunk_size: 10,
            };
            let mut bytes = real.encode_to_vec();
            for (at, b) in edits {
                let at = at % bytes.len();
                bytes[at] = b;
            }
            bytes.truncate(cut % (bytes.len() + 1));
            if let Ok(req) = MultiGetRequest::decode(&bytes[..]) {
                let _ = contexts(req.contexts);
                if let Err(e) = requested_version(req.version) {
                    proptest::prop_assert_eq!(e.status, 400);
                }
            }
        }
    }
}
