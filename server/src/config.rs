//! What a server serves and how: parsed from `serve.toml` (or built by a
//! program from its flags), then checked into a [`ServeConfig`].
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! grpc_listen = "127.0.0.1:50061"      # optional
//! metrics_listen = "127.0.0.1:9090"    # optional: /metrics only, no token
//! auth_token_file = "/etc/sf/tokens"   # optional: read tokens, one a line
//! admin_token_file = "/etc/sf/admin"   # optional: admin tokens (read, roll back)
//! admin_routes = true                  # false: rollback is turned off
//! allow_unauthenticated = false        # true: a non-loopback listen without tokens
//!
//! [tls]                                # optional: TLS on both listeners
//! cert = "/etc/sf/tls/cert.pem"        # the chain, leaf first
//! key = "/etc/sf/tls/key.pem"
//!
//! [limits]                             # all optional
//! max_in_flight = 1024
//! request_timeout = "5s"
//! max_keys = 10000
//! max_stream_keys = 1000000
//! max_body_bytes = 4194304
//! grace_period = "30s"
//! max_connections = 4096               # default: half the open-file limit
//! header_read_timeout = "10s"
//! idle_timeout = "60s"
//! max_streams_per_connection = 100
//! keepalive_interval = "30s"
//! stream_timeout = "60s"
//!
//! [storage]                            # storage options for every snapshot
//! aws_endpoint = "http://127.0.0.1:9000"
//!
//! [[snapshot]]
//! name = "users"
//! current_url = "s3://bucket/snapshots/users/_CURRENT"
//! max_age = "2d"                       # optional: reported stale beyond it
//! unready_when_stale = false           # optional: true makes /readyz fail beyond max_age
//! [snapshot.reader]                    # sf_reader::ReaderSettings
//! sqlite_mode = "download"
//! refresh_interval = "30s"             # the server's default
//! auto_memory_when_fits = true         # the server's default: in auto mode, a snapshot that fits is held in memory
//! keep_versions = 1
//! warmup_keys = ["1", "2"]
//! [snapshot.storage]                   # options of this snapshot only
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sf_manifest::StorageOptions;
use sf_reader::ReaderSettings;

use crate::error::{Error, Result};

/// The address served when none is given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// How often a snapshot's `_CURRENT` is polled when its reader settings do
/// not say.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// Bounds on requests; see each field.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Requests served at once (HTTP and gRPC together, health probes
    /// excepted); more are answered 503 with `Retry-After` at once, so an
    /// overloaded server sheds load instead of queueing it. Default 1024.
    pub max_in_flight: usize,
    /// A request still running after this is answered 504 (gRPC:
    /// DEADLINE_EXCEEDED); it covers reading the body. Default 5 s.
    #[serde(with = "sf_manifest::format::duration::serde")]
    pub request_timeout: Duration,
    /// Keys in one multiget (HTTP, gRPC MultiGet). Default 10,000.
    pub max_keys: usize,
    /// Keys in one streamed gRPC MultiGet. Default 1,000,000.
    pub max_stream_keys: usize,
    /// Bytes of one request body (HTTP) or message (gRPC). Default 4 MiB.
    pub max_body_bytes: usize,
    /// Bytes of one multiget answer, counted as its values are encoded
    /// (HTTP: the JSON body; gRPC MultiGet: the values; the streamed
    /// MultiGet: each chunk's values). Above it the request fails with
    /// 413 `response_too_large` (gRPC: RESOURCE_EXHAUSTED). Default 64 MiB.
    pub max_response_bytes: usize,
    /// After SIGTERM/SIGINT, how long requests in flight may take before
    /// the server exits anyway (non-zero, saying how many it abandoned).
    /// Default 30 s.
    #[serde(with = "sf_manifest::format::duration::serde")]
    pub grace_period: Duration,
    /// Open connections, HTTP and gRPC together. At the bound, the
    /// connection idle the longest is closed to make room; when none is
    /// idle, a new one is closed at accept and counted
    /// (`sf_serve_connections_refused_total`). Default (`None`): half the
    /// process's open-file limit, so that the other half stays for shard
    /// files and storage connections, between 16 and 10,000.
    pub max_connections: Option<usize>,
    /// An HTTP/1 request whose head has not wholly arrived after this is
    /// dropped with its connection. Default 10 s.
    #[serde(with = "sf_manifest::format::duration::serde")]
    pub header_read_timeout: Duration,
    /// A connection with no request running for this long is closed.
    /// Default 60 s.
    #[serde(with = "sf_manifest::format::duration::serde")]
    pub idle_timeout: Duration,
    /// Requests at once on one HTTP/2 connection (HTTP and gRPC). Default 100.
    pub max_streams_per_connection: u32,
    /// HTTP/2 (and gRPC) keep-alive: a ping after this long without
    /// frames; a peer that does not answer within 20 s more is dropped.
    /// Default 30 s.
    #[serde(with = "sf_manifest::format::duration::serde")]
    pub keepalive_interval: Duration,
    /// The whole of one streamed gRPC MultiGet, however fast its client
    /// reads: past it the stream ends with DEADLINE_EXCEEDED and gives its
    /// place among the requests in flight back. Default 60 s.
    #[serde(with = "sf_manifest::format::duration::serde")]
    pub stream_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_in_flight: 1024,
            request_timeout: Duration::from_secs(5),
            max_keys: 10_000,
            max_stream_keys: 1_000_000,
            max_body_bytes: 4 * 1024 * 1024,
            max_response_bytes: 64 * 1024 * 1024,
            grace_period: Duration::from_secs(30),
            max_connections: None,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_streams_per_connection: 100,
            keepalive_interval: Duration::from_secs(30),
            stream_timeout: Duration::from_secs(60),
        }
    }
}

impl Limits {
    /// The bound on open connections: [`Limits::max_connections`], or
    /// half of `open_files` (the process's open-file limit) between 16
    /// and 10,000.
    pub fn connection_cap(&self, open_files: u64) -> usize {
        self.max_connections
            .unwrap_or_else(|| usize::try_from(open_files / 2).unwrap_or(usize::MAX).clamp(16, 10_000))
    }
}

/// One served snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotConfig {
    /// The name in URLs (`/v1/snapshots/{name}/...`): letters, digits, `-`,
    /// `_`, `.`.
    pub name: String,
    /// `_CURRENT`'s URL (or its prefix's), as `sf-read --current-url` takes it.
    pub current_url: String,
    /// The served snapshot is reported stale while it is older than this
    /// (by its manifest's `created_at`): still served and ready, with
    /// `"stale": true` in `/v1/snapshots`, a `degraded` health and the
    /// `sf_serve_snapshot_stale` gauge. `None`: any age is fresh.
    pub max_age: Option<Duration>,
    /// `/readyz` fails while the snapshot is stale (older than
    /// `max_age`), the behaviour before staleness was only reported. A
    /// late build then takes every replica out of service at once.
    pub unready_when_stale: bool,
    /// The reader's settings.
    pub reader: ReaderSettings,
    /// Storage options (the server's, then this snapshot's).
    pub storage: StorageOptions,
}

/// A checked server configuration; see the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    /// `HOST:PORT` of the HTTP API (port 0: any free port).
    pub listen: String,
    /// `HOST:PORT` of the gRPC service, if any.
    pub grpc_listen: Option<String>,
    /// `HOST:PORT` of a listener that serves `GET /metrics` alone, without
    /// a token (for scrapers), if any. The main listener's `/metrics` keeps
    /// its authentication.
    pub metrics_listen: Option<String>,
    /// The snapshots, in order.
    pub snapshots: Vec<SnapshotConfig>,
    /// Request bounds.
    pub limits: Limits,
    /// Tokens and roles.
    pub auth: AuthConfig,
    /// TLS on both listeners; `None`: clear text.
    pub tls: Option<TlsFiles>,
}

/// A TLS certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key of the leaf.
    pub key: PathBuf,
}

/// Who may read and who may administer: bearer tokens, where they come
/// from, and the two switches of the admin routes and of serving without
/// tokens. Its `Debug` counts the tokens and never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Read tokens (as [`read_tokens`] reads them from
    /// [`read_token_file`](Self::read_token_file)). No token of either
    /// kind: every read is let in, and no admin route.
    pub read_tokens: Vec<String>,
    /// Admin tokens: they read too, and may use the admin routes
    /// (rollback).
    pub admin_tokens: Vec<String>,
    /// The file the read tokens come from: re-read on SIGHUP and when its
    /// content changes. `None`: `read_tokens` stay as given.
    pub read_token_file: Option<PathBuf>,
    /// The file the admin tokens come from, re-read the same way.
    pub admin_token_file: Option<PathBuf>,
    /// Whether the admin routes are served at all; off, they answer 403
    /// `admin_disabled` whatever the token. Default on.
    pub admin_routes: bool,
    /// Whether to listen on an address other than loopback without any
    /// token; [`ServeConfig::validate`] refuses it otherwise.
    pub allow_unauthenticated: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            read_tokens: Vec::new(),
            admin_tokens: Vec::new(),
            read_token_file: None,
            admin_token_file: None,
            admin_routes: true,
            allow_unauthenticated: false,
        }
    }
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("read_tokens", &format_args!("<{} tokens>", self.read_tokens.len()))
            .field("admin_tokens", &format_args!("<{} tokens>", self.admin_tokens.len()))
            .field("read_token_file", &self.read_token_file)
            .field("admin_token_file", &self.admin_token_file)
            .field("admin_routes", &self.admin_routes)
            .field("allow_unauthenticated", &self.allow_unauthenticated)
            .finish()
    }
}

impl AuthConfig {
    /// Whether there is no token at all.
    pub fn is_open(&self) -> bool {
        self.read_tokens.is_empty() && self.admin_tokens.is_empty()
    }

    /// The read and admin tokens from their files (each file that is set),
    /// or as given: what a reload puts in place. An error names the file,
    /// never a token.
    pub fn load_tokens(&self) -> Result<(Vec<String>, Vec<String>)> {
        let read = match &self.read_token_file {
            Some(p) => read_tokens(p)?,
            None => self.read_tokens.clone(),
        };
        let admin = match &self.admin_token_file {
            Some(p) => read_tokens(p)?,
            None => self.admin_tokens.clone(),
        };
        Ok((read, admin))
    }
}

/// Whether `host` (of `HOST:PORT`) is a loopback address: `localhost`,
/// 127.0.0.0/8 or `::1` (bracketed or not).
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    bare.eq_ignore_ascii_case("localhost") || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `serve.toml` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See [`ServeConfig::listen`].
    pub listen: Option<String>,
    /// See [`ServeConfig::grpc_listen`].
    pub grpc_listen: Option<String>,
    /// See [`ServeConfig::metrics_listen`].
    pub metrics_listen: Option<String>,
    /// A file of read tokens, one a line.
    pub auth_token_file: Option<PathBuf>,
    /// TLS on both listeners: `[tls] cert = "..."`, `key = "..."`.
    pub tls: Option<TlsFiles>,
    /// A file of admin tokens (they read too, and may roll back), one a line.
    pub admin_token_file: Option<PathBuf>,
    /// See [`AuthConfig::admin_routes`]; default true.
    pub admin_routes: Option<bool>,
    /// See [`AuthConfig::allow_unauthenticated`]; default false.
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// Request bounds.
    #[serde(default)]
    pub limits: Limits,
    /// Storage options for every snapshot.
    #[serde(default)]
    pub storage: BTreeMap<String, String>,
    /// The snapshots.
    #[serde(default)]
    pub snapshot: Vec<FileSnapshot>,
}

/// One `[[snapshot]]` of `serve.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSnapshot {
    /// See [`SnapshotConfig::name`].
    pub name: String,
    /// See [`SnapshotConfig::current_url`].
    pub current_url: String,
    /// See [`SnapshotConfig::max_age`].
    #[serde(default, with = "sf_manifest::format::duration::option_serde")]
    pub max_age: Option<Duration>,
    /// See [`SnapshotConfig::unready_when_stale`].
    #[serde(default)]
    pub unready_when_stale: bool,
    /// Reader settings; `refresh_interval` defaults to
    /// [`DEFAULT_REFRESH_INTERVAL`] and `auto_memory_when_fits` to true
    /// here.
    #[serde(default)]
    pub reader: Option<toml::Table>,
    /// Storage options of this snapshot.
    #[serde(default)]
    pub storage: BTreeMap<String, String>,
}

impl FileConfig {
    /// Reads and parses `path` (nothing checked yet beyond the syntax).
    pub fn load(path: &Path) -> Result<FileConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            field: path.display().to_string(),
            reason: format!("cannot be read: {e}"),
        })?;
        toml::from_str(&text).map_err(|e| Error::Config {
            field: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// The snapshots with their reader settings (the server's refresh
    /// default applied) and storage options merged.
    pub fn snapshots(&self) -> Result<Vec<SnapshotConfig>> {
        self.snapshot
            .iter()
            .map(|s| {
                let mut table = s.reader.clone().unwrap_or_default();
                if !table.contains_key("refresh_interval") {
                    table.insert(
                        "refresh_interval".into(),
                        toml::Value::String(format!("{}s", DEFAULT_REFRESH_INTERVAL.as_secs())),
                    );
                }
                // A service holds a snapshot in memory whenever it fits.
                if !table.contains_key("auto_memory_when_fits") {
                    table.insert("auto_memory_when_fits".into(), toml::Value::Boolean(true));
                }
                let reader: ReaderSettings =
                    toml::Value::Table(table)
                        .try_into()
                        .map_err(|e: toml::de::Error| Error::Config {
                            field: format!("snapshot {}: reader", s.name),
                            reason: e.message().to_string(),
                        })?;
                let shared: StorageOptions = self.storage.clone().into_iter().collect();
                let own: StorageOptions = s.storage.clone().into_iter().collect();
                let storage = storage_for(&s.current_url, &shared, &own);
                Ok(SnapshotConfig {
                    name: s.name.clone(),
                    current_url: s.current_url.clone(),
                    max_age: s.max_age,
                    unready_when_stale: s.unready_when_stale,
                    reader,
                    storage,
                })
            })
            .collect()
    }
}

/// The storage options of a snapshot at `url`: the server-wide ones
/// (except for local paths, which take none), then its own.
pub fn storage_for(url: &str, shared: &StorageOptions, own: &StorageOptions) -> StorageOptions {
    let local = !url.contains("://") || url.starts_with("file://");
    let mut out = StorageOptions::new();
    for (k, v) in shared.iter().filter(|_| !local).chain(own.iter()) {
        out.insert(k, v);
    }
    out
}

/// Reads a token file: one token a line; blank lines and lines starting
/// with `#` are skipped. The error names the file and never holds a token.
pub fn read_tokens(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
        field: "auth token file".into(),
        reason: format!("{} cannot be read: {e}", path.display()),
    })?;
    let tokens: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    if tokens.is_empty() {
        return Err(Error::Config {
            field: "auth token file".into(),
            reason: format!("{} holds no token", path.display()),
        });
    }
    Ok(tokens)
}

impl ServeConfig {
    /// Checks everything that can be checked without I/O: names, URLs,
    /// reader settings, limits, addresses.
    pub fn validate(&self) -> Result<()> {
        if self.snapshots.is_empty() {
            return Err(Error::config(
                "snapshots",
                "none configured (--snapshot NAME=URL or [[snapshot]] in --config)",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for s in &self.snapshots {
            let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
            if s.name.is_empty() || !s.name.chars().all(ok_char) {
                return Err(Error::config(
                    "snapshot name",
                    format!("{:?}: use letters, digits, '-', '_' and '.'", s.name),
                ));
            }
            if !seen.insert(s.name.as_str()) {
                return Err(Error::config(
                    "snapshot name",
                    format!("{:?} is configured twice", s.name),
                ));
            }
            s.reader
                .validate()
                .map_err(|e| Error::config(format!("snapshot {}", s.name), e.to_string()))?;
            sf_manifest::resolve(&s.current_url, &s.storage)
                .map_err(|e| Error::config(format!("snapshot {}: current_url", s.name), e.to_string()))?;
        }
        let l = &self.limits;
        for (field, v) in [
            ("max_in_flight", l.max_in_flight),
            ("max_keys", l.max_keys),
            ("max_stream_keys", l.max_stream_keys),
            ("max_body_bytes", l.max_body_bytes),
            ("max_response_bytes", l.max_response_bytes),
        ] {
            if v == 0 {
                return Err(Error::config(format!("limits.{field}"), "must be at least 1"));
            }
        }
        if l.max_connections == Some(0) {
            return Err(Error::config("limits.max_connections", "must be at least 1"));
        }
        if l.max_streams_per_connection == 0 {
            return Err(Error::config("limits.max_streams_per_connection", "must be at least 1"));
        }
        for (field, d) in [
            ("request_timeout", l.request_timeout),
            ("header_read_timeout", l.header_read_timeout),
            ("idle_timeout", l.idle_timeout),
            ("keepalive_interval", l.keepalive_interval),
            ("stream_timeout", l.stream_timeout),
        ] {
            if d.is_zero() {
                return Err(Error::config(format!("limits.{field}"), "must be above zero"));
            }
        }
        for (field, addr) in [
            ("listen", Some(&self.listen)),
            ("grpc_listen", self.grpc_listen.as_ref()),
            ("metrics_listen", self.metrics_listen.as_ref()),
        ] {
            if let Some(a) = addr
                && a.rsplit_once(':')
                    .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err(Error::config(field, format!("{a:?} is not HOST:PORT")));
            }
        }
        if self.auth.is_open() && !self.auth.allow_unauthenticated {
            for (field, addr) in [
                ("listen", Some(self.listen.as_str())),
                ("grpc_listen", self.grpc_listen.as_deref()),
            ] {
                if let Some(a) = addr
                    && let Some((host, _)) = a.rsplit_once(':')
                    && !is_loopback_host(host)
                {
                    return Err(Error::config(
                        field,
                        format!(
                            "{:?} is not a loopback address and this server has no tokens, so anyone \
                             who reaches it could read every snapshot: give tokens (--auth-token-file \
                             or auth_token_file), or to serve without authentication anyway, \
                             --allow-unauthenticated (allow_unauthenticated = true)",
                            a
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_config_becomes_snapshots_with_the_server_defaults() {
        let file: FileConfig = toml::from_str(
            r#"
            listen = "127.0.0.1:0"
            [limits]
            max_keys = 5
            request_timeout = "250ms"
            [storage]
            aws_region = "eu-west-1"
            [[snapshot]]
            name = "users"
            current_url = "s3://bucket/users/_CURRENT"
            max_age = "2d"
            unready_when_stale = true
            [snapshot.reader]
            sqlite_mode = "range"
            keep_versions = 2
            [snapshot.storage]
            aws_region = "us-east-1"
            [[snapshot]]
            name = "items"
            current_url = "/data/items"
            [snapshot.reader]
            refresh_interval = "1m"
            auto_memory_when_fits = false
            "#,
        )
        .expect("parse");
        assert_eq!(file.limits.max_keys, 5);
        assert_eq!(file.limits.request_timeout, Duration::from_millis(250));
        assert_eq!(file.limits.max_in_flight, 1024);
        let snaps = file.snapshots().expect("snapshots");
        assert_eq!(snaps[0].reader.sqlite_mode, sf_reader::SqliteMode::Range);
        assert_eq!(snaps[0].reader.keep_versions, 2);
        assert_eq!(snaps[0].reader.refresh_interval, Some(DEFAULT_REFRESH_INTERVAL));
        assert_eq!(snaps[0].max_age, Some(Duration::from_secs(2 * 86400)));
        assert!(snaps[0].unready_when_stale);
        assert!(!snaps[1].unready_when_stale);
        assert_eq!(file.limits.max_response_bytes, 64 * 1024 * 1024);
        let region = |o: &StorageOptions| o.iter().find(|(k, _)| *k == "aws_region").map(|(_, v)| v.to_string());
        assert_eq!(region(&snaps[0].storage).as_deref(), Some("us-east-1"));
        assert_eq!(snaps[1].reader.refresh_interval, Some(Duration::from_secs(60)));
        // The service holds snapshots that fit in memory unless told not to.
        assert!(snaps[0].reader.auto_memory_when_fits);
        assert!(!snaps[1].reader.auto_memory_when_fits);
        // A local path takes no server-wide storage options.
        assert!(snaps[1].storage.is_empty());
        assert_eq!(snaps[1].max_age, None);

        let bad: std::result::Result<FileConfig, _> = toml::from_str("[limits]\nmax_kyes = 1\n");
        assert!(bad.expect_err("unknown field").to_string().contains("max_kyes"));
        let file: FileConfig =
            toml::from_str("[[snapshot]]\nname = \"a\"\ncurrent_url = \"/x\"\n[snapshot.reader]\nbogus = 1\n")
                .expect("parse");
        let e = file.snapshots().expect_err("unknown reader field").to_string();
        assert!(e.contains("snapshot a") && e.contains("bogus"), "{e}");
    }

    #[test]
    fn validation_names_the_field() {
        let good = ServeConfig {
            listen: "127.0.0.1:0".into(),
            grpc_listen: None,
            metrics_listen: None,
            snapshots: vec![SnapshotConfig {
                name: "users".into(),
                current_url: "/data/users".into(),
                max_age: None,
                unready_when_stale: false,
                reader: ReaderSettings::default(),
                storage: StorageOptions::new(),
            }],
            limits: Limits::default(),
            auth: AuthConfig::default(),
            tls: None,
        };
        good.validate().expect("valid");
        let mut cases: Vec<(ServeConfig, &str)> = vec![];
        let mut c = good.clone();
        c.snapshots.clear();
        cases.push((c, "snapshots"));
        let mut c = good.clone();
        c.snapshots[0].name = "a/b".into();
        cases.push((c, "snapshot name"));
        let mut c = good.clone();
        c.snapshots.push(good.snapshots[0].clone());
        cases.push((c, "twice"));
        let mut c = good.clone();
        c.limits.max_keys = 0;
        cases.push((c, "limits.max_keys"));
        let mut c = good.clone();
        c.listen = "8080".into();
        cases.push((c, "listen"));
        let mut c = good.clone();
        c.snapshots[0].reader.max_concurrency = 0;
        cases.push((c, "max_concurrency"));
        for (c, want) in cases {
            let e = c.validate().expect_err(want).to_string();
            assert!(e.contains(want), "{e} should name {want}");
        }
    }

    #[test]
    fn a_non_loopback_listener_needs_tokens_or_the_explicit_switch() {
        let base = ServeConfig {
            listen: "127.0.0.1:0".into(),
            grpc_listen: None,
            metrics_listen: None,
            snapshots: vec![SnapshotConfig {
                name: "users".into(),
                current_url: "/data/users".into(),
                max_age: None,
                unready_when_stale: false,
                reader: ReaderSettings::default(),
                storage: StorageOptions::new(),
            }],
            limits: Limits::default(),
            auth: AuthConfig::default(),
            tls: None,
        };
        for host in ["127.0.0.1", "127.3.4.5", "localhost", "LOCALHOST", "[::1]", "::1"] {
            let mut c = base.clone();
            c.listen = format!("{host}:8080");
            c.validate().unwrap_or_else(|e| panic!("{host}: {e}"));
        }
        for (http, grpc, field) in [
            ("0.0.0.0:8080", None, "listen"),
            ("[::]:8080", None, "listen"),
            ("10.1.2.3:8080", None, "listen"),
            ("serve.example:8080", None, "listen"),
            ("127.0.0.1:8080", Some("0.0.0.0:50061"), "grpc_listen"),
        ] {
            let mut c = base.clone();
            c.listen = http.into();
            c.grpc_listen = grpc.map(str::to_string);
            let e = c.validate().expect_err(http).to_string();
            let addr = grpc.unwrap_or(http);
            for want in [field, addr, "--auth-token-file", "--allow-unauthenticated"] {
                assert!(e.contains(want), "{e} should say {want}");
            }
            // Either way out is accepted.
            let mut allowed = c.clone();
            allowed.auth.allow_unauthenticated = true;
            allowed.validate().expect("allowed without tokens");
            let mut read = c.clone();
            read.auth.read_tokens = vec!["t".into()];
            read.validate().expect("read tokens");
            let mut admin = c;
            admin.auth.admin_tokens = vec!["t".into()];
            admin.validate().expect("admin tokens");
        }
    }

    #[test]
    fn debug_counts_tokens_and_never_shows_them() {
        let auth = AuthConfig {
            read_tokens: vec!["secret-read-1".into(), "secret-read-2".into()],
            admin_tokens: vec!["secret-admin".into()],
            ..AuthConfig::default()
        };
        let shown = format!("{auth:?}");
        assert!(shown.contains("<2 tokens>") && shown.contains("<1 tokens>"), "{shown}");
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn token_files_skip_blanks_and_comments_and_refuse_empty() {
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path().join("tokens");
        std::fs::write(&p, "# ops\n\n  alpha  \nbeta\n").expect("write");
        assert_eq!(read_tokens(&p).expect("tokens"), vec!["alpha", "beta"]);
        std::fs::write(&p, "# nothing\n\n").expect("write");
        assert!(read_tokens(&p).expect_err("empty").to_string().contains("no token"));
    }
}
