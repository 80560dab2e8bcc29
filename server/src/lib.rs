//! # sf-server: the library behind the `sf-serve` program
//!
//! `sf-server` is the lookup service over published snapshots; `sf-serve`
//! (in `sf-cli`) is the program that runs it, a thin face that turns flags
//! and `serve.toml` into a [`ServeConfig`] and calls [`Server::bind`] and
//! [`Server::run`]. A program of its own can embed the service the same way.
//!
//! A [`Server`] serves one or more snapshots, each through an [`sf_reader::Reader`]
//! that follows its `_CURRENT` (opening a new snapshot before swapping to
//! it, and keeping the replaced ones open for pinned reads), over:
//!
//! - an HTTP API ([`http`]): JSON, HTTP/1.1 and HTTP/2, every read answer
//!   naming its run in `sf-run-id`, a multiget answered from one version;
//! - a gRPC service ([`grpc`], `proto/shardforge.proto`): `Get`,
//!   `MultiGet` and a streamed `MultiGet`, beside the standard health
//!   service (SERVING as `/readyz` is ready) and server reflection;
//! - `/livez`, `/readyz` (every snapshot open; one older than its
//!   `max_age` is reported stale and still served, unless
//!   `unready_when_stale`) and `/metrics` (Prometheus, see [`mod@metrics`]),
//!   also on a listener of its own without a token
//!   ([`ServeConfig::metrics_listen`]).
//!
//! Every request has an id (`x-request-id`, the client's when sane), sent
//! back with the answer, named by error bodies and carried by every log
//! line written while serving it (the `request_id` field of its span).
//!
//! Protection: a bound on requests in flight (503 beyond it), a deadline
//! per request (504), bounds on keys, body bytes and answer bytes (413),
//! bearer tokens in two roles (read, and admin for rollback; re-read on
//! SIGHUP and when their files change), no unauthenticated listener beyond
//! loopback unless asked for ([`ServeConfig::validate`]), answers to
//! server-side failures that carry an `error_id` instead of internals, a
//! bound on connections with idle and header timeouts, TLS, and a graceful
//! shutdown.
//!
//! ```text
//!  client ──HTTP──▶ guard (auth, in-flight bound, deadline, metrics) ──▶ handler ─┐
//!  client ──gRPC──▶ same checks ─────────────────────────────────────▶ service ─┤
//!                                                                               ▼
//!                  App: name ─▶ ServedSnapshot { Reader (refresh, keep_versions), Admin }
//! ```
//!
//! The rooms: [`config`] (what is served and how), `listen` (the
//! listeners, run and drain: [`Server`]), [`http`] and [`grpc`] (the two
//! front ends), `app` (the state and lookups both share), `snapshot` (one
//! served snapshot and its reader), `auth` (bearer tokens, their roles and
//! digests), [`audit`] (the log line of each admin action), `reload` (what is re-read on SIGHUP or a changed file: the
//! tokens, and anything else that registers), `api_error`
//! (a failed request as its client is told: [`ApiError`]), `request_id`
//! (each request's id, its span and header) and
//! [`mod@metrics`] (the names of the figures, [`METRICS`]).
//!
//! ```no_run
//! # async fn demo() -> sf_server::Result<()> {
//! use sf_server::{AuthConfig, Limits, ServeConfig, Server, SnapshotConfig};
//!
//! let config = ServeConfig {
//!     listen: "127.0.0.1:0".into(),
//!     grpc_listen: None,
//!     metrics_listen: None,
//!     snapshots: vec![SnapshotConfig {
//!         name: "users".into(),
//!         current_url: "s3://bucket/snapshots/users/_CURRENT".into(),
//!         max_age: None,
//!         unready_when_stale: false,
//!         reader: sf_reader::ReaderSettings::default(),
//!         storage: sf_manifest::StorageOptions::new(),
//!     }],
//!     limits: Limits::default(),
//!     auth: AuthConfig::default(),
//!     tls: None,
//! };
//! let server = Server::bind(config, None).await?;
//! let addr = server.http_addr()?;
//! // GET http://{addr}/v1/snapshots/users/keys/42 once /readyz says so.
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # let _ = addr;
//! # Ok(())
//! # }
//! ```

mod api_error;
mod app;
pub mod audit;
mod auth;
pub mod config;
mod conn;
mod error;
pub mod grpc;
pub mod http;
mod listen;
pub mod metrics;
mod reload;
mod request_id;
mod snapshot;
mod tls;

pub use api_error::ApiError;
pub use config::{AuthConfig, DEFAULT_LISTEN, FileConfig, Limits, ServeConfig, SnapshotConfig, TlsFiles};
pub use error::{Error, Result};
pub use listen::Server;
pub use metrics::{METRICS, install_prometheus};
