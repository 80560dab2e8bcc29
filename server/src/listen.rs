//! Binding the listeners (HTTP, and gRPC and metrics when asked), serving on them
//! until shutdown, then draining the requests in flight ([`Server`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::App;
use crate::config::ServeConfig;
use crate::conn::{Connections, KEEPALIVE_TIMEOUT, MAX_HEADER_BYTES};
use crate::error::{Error, Result};
use crate::grpc::proto::lookup_server::LookupServer;
use crate::grpc::{GateLayer, LookupService};
use crate::tls::Tls;

/// A server with its listeners bound; see the crate docs.
pub struct Server {
    app: Arc<App>,
    http: TcpListener,
    grpc: Option<TcpListener>,
    /// The metrics listener (`/metrics` only, no token), if asked for.
    metrics_listener: Option<TcpListener>,
    tls: Option<Arc<Tls>>,
    metrics: Option<PrometheusHandle>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("http", &self.http.local_addr().ok())
            .field("grpc", &self.grpc.as_ref().and_then(|l| l.local_addr().ok()))
            .field(
                "metrics",
                &self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok()),
            )
            .field("snapshots", &self.app.snapshots.keys().collect::<Vec<_>>())
            .finish()
    }
}

async fn bind(what: &'static str, addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|source| Error::Bind {
        what,
        addr: addr.to_string(),
        source,
    })
}

impl Server {
    /// Checks `config` and binds its addresses. Opens no snapshot yet
    /// ([`run`](Self::run) does, in the background). `metrics`: the
    /// recorder's handle when the process installed the Prometheus
    /// recorder ([`crate::install_prometheus`]), which `/metrics` renders.
    pub async fn bind(config: ServeConfig, metrics: Option<PrometheusHandle>) -> Result<Server> {
        config.validate()?;
        let tls = match &config.tls {
            Some(files) => Some(Arc::new(Tls::load(&files.cert, &files.key)?)),
            None => None,
        };
        let app = Arc::new(App::new(&config)?);
        if let Some(t) = &tls {
            let t = Arc::clone(t);
            let files = t.files().map(std::path::Path::to_path_buf).to_vec();
            app.reloader.register("certificates", files, move || {
                t.reload()
                    .map(|()| "the TLS certificate and key".to_string())
                    .map_err(|e| e.to_string())
            });
        }
        let http = bind("HTTP", &config.listen).await?;
        let grpc = match &config.grpc_listen {
            Some(a) => Some(bind("gRPC", a).await?),
            None => None,
        };
        let metrics_listener = match &config.metrics_listen {
            Some(a) => Some(bind("metrics", a).await?),
            None => None,
        };
        Ok(Server {
            app,
            http,
            grpc,
            metrics_listener,
            tls,
            metrics,
        })
    }

    /// `https` when the listeners speak TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The bound HTTP address (the real port when 0 was asked for).
    pub fn http_addr(&self) -> Result<SocketAddr> {
        self.http.local_addr().map_err(|source| Error::Bind {
            what: "HTTP",
            addr: "the bound listener".into(),
            source,
        })
    }

    /// The bound gRPC address, if any.
    pub fn grpc_addr(&self) -> Result<Option<SocketAddr>> {
        self.grpc
            .as_ref()
            .map(|l| {
                l.local_addr().map_err(|source| Error::Bind {
                    what: "gRPC",
                    addr: "the bound listener".into(),
                    source,
                })
            })
            .transpose()
    }

    /// The bound address of the metrics listener, if any.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>> {
        self.metrics_listener
            .as_ref()
            .map(|l| {
                l.local_addr().map_err(|source| Error::Bind {
                    what: "metrics",
                    addr: "the bound listener".into(),
                    source,
                })
            })
            .transpose()
    }

    /// Opens the snapshots (in the background, retrying; `/readyz` says
    /// when they are open) and serves until `shutdown` completes. Then it
    /// stops accepting connections, lets requests in flight finish for up
    /// to the grace period, closes the readers and returns; requests still
    /// in flight then are abandoned, and it returns [`Error::Abandoned`].
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let Server {
            app,
            http,
            grpc,
            metrics_listener,
            tls,
            metrics,
        } = self;
        let grace = app.limits.grace_period;
        // Made before any task starts, so that a failure leaves none behind.
        let reflection = match &grpc {
            Some(_) => Some(crate::grpc::reflection_services()?),
            None => None,
        };
        let mut background: Vec<tokio::task::JoinHandle<()>> = app
            .snapshots
            .values()
            .map(|s| tokio::spawn(Arc::clone(s).open_until_done()))
            .collect();
        if let Some(h) = metrics.clone() {
            background.push(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    h.run_upkeep();
                }
            }));
        }
        let (tx, rx) = watch::channel(false);
        background.push(tokio::spawn(async move {
            shutdown.await;
            let _ = tx.send(true);
        }));
        let stopping = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|v| *v).await;
        };

        // One bound on connections for every listener, as they share the
        // process's file descriptors.
        let conns = Connections::new(&app.limits);
        let mut listeners = vec!["http"];
        if grpc.is_some() {
            listeners.push("grpc");
        }
        if metrics_listener.is_some() {
            listeners.push("metrics");
        }
        crate::metrics::register_series(&listeners);
        tracing::debug!(max_connections = conns.cap(), "connection bound");
        if let Some(l) = metrics_listener {
            // Scrapers are answered until the end, drain included: the
            // task is aborted with the other background ones.
            let router = crate::http::metrics_router(Arc::clone(&app), metrics.clone());
            let (conns, limits, stop, tls) = (Arc::clone(&conns), app.limits.clone(), rx.clone(), tls.clone());
            background.push(tokio::spawn(async move {
                let mut connections = tokio::task::JoinSet::new();
                crate::conn::serve_http(conns, l, "metrics", tls, router, &limits, stop, &mut connections).await;
                while connections.join_next().await.is_some() {}
            }));
        }
        let router = crate::http::router(Arc::clone(&app), metrics);
        let mut http_task = tokio::spawn({
            let (conns, limits, stop, tls) = (Arc::clone(&conns), app.limits.clone(), rx.clone(), tls.clone());
            async move {
                let mut connections = tokio::task::JoinSet::new();
                crate::conn::serve_http(conns, http, "http", tls, router, &limits, stop, &mut connections).await;
                // Stopped: every connection finishes its requests, unless
                // the grace period ends first (this task is then aborted,
                // and its connections with it).
                while connections.join_next().await.is_some() {}
                Ok::<(), std::convert::Infallible>(())
            }
        });
        let mut grpc_task = match grpc.zip(reflection) {
            None => None,
            Some((l, reflection)) => {
                let limits = &app.limits;
                let service = LookupServer::new(LookupService { app: Arc::clone(&app) })
                    .max_decoding_message_size(limits.max_body_bytes)
                    .max_encoding_message_size(usize::MAX);
                let (reporter, health) = crate::grpc::health_service().await;
                background.push(tokio::spawn(crate::grpc::report_health(
                    Arc::clone(&app),
                    reporter,
                    rx.clone(),
                )));
                let (reflection, reflection_alpha) = reflection;
                let incoming =
                    crate::conn::grpc_incoming(Arc::clone(&conns), l, tls.clone(), limits.header_read_timeout);
                Some(tokio::spawn(
                    tonic::transport::Server::builder()
                        .http2_keepalive_interval(Some(limits.keepalive_interval))
                        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
                        .max_concurrent_streams(Some(limits.max_streams_per_connection))
                        .http2_max_header_list_size(MAX_HEADER_BYTES)
                        .layer(GateLayer::new(Arc::clone(&app)))
                        .add_service(service)
                        .add_service(health)
                        .add_service(reflection)
                        .add_service(reflection_alpha)
                        .serve_with_incoming_shutdown(incoming, stopping(rx.clone())),
                ))
            }
        };

        let failed = |what: &'static str, e: Box<dyn std::error::Error + Send + Sync>| Error::Serve { what, source: e };
        // A server that ends without error once the stop was sent ended
        // because of it (whichever branch is seen first), not by failure.
        let stop_sent = |rx: &watch::Receiver<bool>| *rx.borrow();
        let (mut http_done, mut grpc_done) = (false, false);
        let early: Option<Error> = tokio::select! {
            biased;
            _ = stopping(rx.clone()) => None,
            r = &mut http_task => {
                http_done = true;
                match r {
                    Ok(Ok(())) if stop_sent(&rx) => None,
                    Ok(Ok(())) => Some(failed("HTTP", "stopped by itself".into())),
                    Ok(Err(e)) => Some(failed("HTTP", Box::new(e))),
                    Err(e) => Some(failed("HTTP", Box::new(e))),
                }
            }
            r = async {
                match grpc_task.as_mut() {
                    Some(t) => t.await,
                    None => std::future::pending().await,
                }
            } => {
                grpc_done = true;
                match r {
                    Ok(Ok(())) if stop_sent(&rx) => None,
                    Ok(Ok(())) => Some(failed("gRPC", "stopped by itself".into())),
                    Ok(Err(e)) => Some(failed("gRPC", Box::new(e))),
                    Err(e) => Some(failed("gRPC", Box::new(e))),
                }
            }
        };
        let mut abandoned = 0;
        if early.is_none() {
            tracing::info!(grace = ?grace, "shutting down: accepting no more connections, finishing requests in flight");
            let drain = async {
                if !http_done {
                    let _ = (&mut http_task).await;
                }
                if let Some(t) = grpc_task.as_mut().filter(|_| !grpc_done) {
                    let _ = t.await;
                }
            };
            if tokio::time::timeout(grace, drain).await.is_err() {
                abandoned = app.in_flight();
                tracing::warn!(grace = ?grace, abandoned, "requests still in flight after the grace period; abandoning them");
            }
        }
        http_task.abort();
        if let Some(t) = &grpc_task {
            t.abort();
        }
        for t in &background {
            t.abort();
        }
        for s in app.snapshots.values() {
            if let Some(r) = s.opened() {
                r.close();
            }
        }
        match early {
            Some(e) => Err(e),
            None if abandoned > 0 => Err(Error::Abandoned {
                count: abandoned,
                grace,
            }),
            None => Ok(()),
        }
    }
}
