//! Binding the listeners (HTTP, and gRPC when asked), serving on them
//! until shutdown, then draining the requests in flight ([`Server`]).

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::App;
use crate::config::ServeConfig;
use crate::error::{Error, Result};
use crate::grpc::LookupService;
use crate::grpc::proto::lookup_server::LookupServer;

/// A server with its listeners bound; see the crate docs.
pub struct Server {
    app: Arc<App>,
    http: TcpListener,
    grpc: Option<TcpListener>,
    metrics: Option<PrometheusHandle>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("http", &self.http.local_addr().ok())
            .field("grpc", &self.grpc.as_ref().and_then(|l| l.local_addr().ok()))
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
        let app = Arc::new(App::new(&config)?);
        let http = bind("HTTP", &config.listen).await?;
        let grpc = match &config.grpc_listen {
            Some(a) => Some(bind("gRPC", a).await?),
            None => None,
        };
        Ok(Server {
            app,
            http,
            grpc,
            metrics,
        })
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

    /// Opens the snapshots (in the background, retrying; `/readyz` says
    /// when they are open) and serves until `shutdown` completes. Then it
    /// stops accepting connections, lets requests in flight finish for up
    /// to the grace period, closes the readers and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let Server {
            app,
            http,
            grpc,
            metrics,
        } = self;
        let grace = app.limits.grace_period;
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

        let router = crate::http::router(Arc::clone(&app), metrics);
        let listener = http.tap_io(|tcp| {
            // Small answers go out at once, not after Nagle's delay.
            let _ = tcp.set_nodelay(true);
        });
        let mut http_task = tokio::spawn(
            axum::serve(listener, router)
                .with_graceful_shutdown(stopping(rx.clone()))
                .into_future(),
        );
        let mut grpc_task = grpc.map(|l| {
            let service = LookupServer::new(LookupService { app: Arc::clone(&app) })
                .max_decoding_message_size(app.limits.max_body_bytes)
                .max_encoding_message_size(usize::MAX);
            let incoming = tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true));
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(incoming, stopping(rx.clone())),
            )
        });

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
                tracing::warn!(grace = ?grace, "requests still in flight after the grace period; stopping anyway");
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
            None => Ok(()),
        }
    }
}
