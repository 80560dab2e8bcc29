//! What a server serves and how: parsed from `serve.toml` (or built by a
//! program from its flags), then checked into a [`ServeConfig`].
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! grpc_listen = "127.0.0.1:50061"      # optional
//! auth_token_file = "/etc/sf/tokens"   # optional: one token a line
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
    /// The snapshots, in order.
    pub snapshots: Vec<SnapshotConfig>,
    /// Request bounds.
    pub limits: Limits,
    /// Bearer tokens; empty: no authentication.
    pub auth_tokens: Vec<String>,
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

/// `serve.toml` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See [`ServeConfig::listen`].
    pub listen: Option<String>,
    /// See [`ServeConfig::grpc_listen`].
    pub grpc_listen: Option<String>,
    /// A file of bearer tokens, one a line.
    pub auth_token_file: Option<PathBuf>,
    /// TLS on both listeners: `[tls] cert = "..."`, `key = "..."`.
    pub tls: Option<TlsFiles>,
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
    /// [`DEFAULT_REFRESH_INTERVAL`] here.
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
/// with `#` are skipped. The error never holds a token.
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
        ] {
            if let Some(a) = addr
                && a.rsplit_once(':')
                    .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err(Error::config(field, format!("{a:?} is not HOST:PORT")));
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
            snapshots: vec![SnapshotConfig {
                name: "users".into(),
                current_url: "/data/users".into(),
                max_age: None,
                unready_when_stale: false,
                reader: ReaderSettings::default(),
                storage: StorageOptions::new(),
            }],
            limits: Limits::default(),
            auth_tokens: vec![],
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
    fn token_files_skip_blanks_and_comments_and_refuse_empty() {
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path().join("tokens");
        std::fs::write(&p, "# ops\n\n  alpha  \nbeta\n").expect("write");
        assert_eq!(read_tokens(&p).expect("tokens"), vec!["alpha", "beta"]);
        std::fs::write(&p, "# nothing\n\n").expect("write");
        assert!(read_tokens(&p).expect_err("empty").to_string().contains("no token"));
    }
}
