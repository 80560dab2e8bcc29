//! `sf-serve`: the lookup service (`sf-server`) as a program.
//!
//! It parses flags (and `--config serve.toml`) into a checked
//! [`ServeConfig`], installs the Prometheus recorder, binds, prints
//! `grpc listening on http://HOST:PORT` (with gRPC), `metrics listening on
//! http://HOST:PORT` (with a metrics listener) and then, always last,
//! `listening on http://HOST:PORT`, and serves until SIGTERM or SIGINT, then drains and exits 0.
//! SIGHUP re-reads the token files (the server listens for it from the
//! bind on, before the listening lines).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sf_manifest::StorageOptions;
use sf_reader::ReaderSettings;
use sf_reader::duration::parse_duration;
use sf_server::config::{FileConfig, read_tokens, storage_for};
use sf_server::{AuthConfig, DEFAULT_LISTEN, Limits, ServeConfig, Server, SnapshotConfig, TlsFiles};

use crate::exit::{self, EXIT_CODES, Failure};
use crate::read::ModeArg;

fn after_help() -> String {
    format!(
        "\
Serves snapshots over HTTP (and gRPC with --grpc-listen). Reader flags
(--sqlite-mode, --cache-dir, --refresh-interval, --max-age,
--unready-when-stale, --keep-versions, --max-concurrency, --warmup-key)
apply to the --snapshot snapshots; those of --config have their own
[snapshot.reader] tables. --cache-max-bytes applies to every snapshot
whose [snapshot.reader] sets no cache_max_bytes. Limit flags override the
file's [limits].

A snapshot older than --max-age, or serving an older manifest because the
current one could not be read at start, stays ready and is reported
degraded in /readyz and /v1/snapshots. /readyz tells the reasons only to
callers with a token (any caller without --auth-token-file); 5xx answers
carry an error_id whose log line has the details. Routes, examples and
metrics: docs/serving.md.

Tokens: --auth-token-file (read) and --admin-token-file (read and roll
back), re-read on SIGHUP and when a file changes (a bad file keeps the
tokens in place). Listening beyond loopback without tokens needs
--allow-unauthenticated.

S3 settings come from the AWS_* environment variables or --storage-option.

{EXIT_CODES}"
    )
}

/// The ShardForge lookup service.
#[derive(Debug, Parser)]
#[command(name = "sf-serve", version, about, after_help = after_help())]
pub struct Args {
    /// A snapshot to serve, as NAME=URL (URL: `_CURRENT` or its prefix, as
    /// `sf-read --current-url` takes it). Repeatable.
    #[arg(long = "snapshot", value_name = "NAME=URL")]
    pub snapshots: Vec<String>,

    /// A serve.toml with snapshots, limits and settings.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// HTTP address (port 0: any free port; the bound one is printed).
    /// Default 127.0.0.1:8080, or the file's `listen`.
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,

    /// gRPC address (none: no gRPC).
    #[arg(long, value_name = "HOST:PORT")]
    pub grpc_listen: Option<String>,

    /// Address of a listener serving only /metrics, without a token (for
    /// scrapers; the main listener's /metrics keeps its token). Or the
    /// file's `metrics_listen`.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_listen: Option<String>,

    /// File of read tokens, one a line; with tokens, every route but
    /// /livez and /readyz needs `Authorization: Bearer <token>`. Re-read on
    /// SIGHUP and when its content changes.
    #[arg(long, value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,

    /// TLS certificate chain (PEM, leaf first) for both listeners; with
    /// --tls-key. Reloaded on SIGHUP and when the files change.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The TLS private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// File of admin tokens, one a line: they read too, and may roll back
    /// (a read token gets 403). Re-read like --auth-token-file.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Turn the admin routes (rollback) off: they answer 403
    /// admin_disabled whatever the token.
    #[arg(long)]
    pub no_admin_routes: bool,

    /// Listen on an address other than loopback (127.0.0.0/8, ::1,
    /// localhost) without any token; refused otherwise.
    #[arg(long)]
    pub allow_unauthenticated: bool,

    /// Requests served at once; more get 503 with Retry-After.
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<usize>,

    /// Deadline of one request (504 after it), e.g. 5s, 250ms.
    #[arg(long, value_name = "DURATION")]
    pub request_timeout: Option<String>,

    /// Keys in one multiget (413 above).
    #[arg(long, value_name = "N")]
    pub max_keys: Option<usize>,

    /// Keys in one streamed gRPC multiget.
    #[arg(long, value_name = "N")]
    pub max_stream_keys: Option<usize>,

    /// Bytes of one request body (413 above).
    #[arg(long, value_name = "N")]
    pub max_body_bytes: Option<usize>,

    /// Bytes of one multiget answer, counted as values are encoded, or of
    /// one search answer (a batch whole) (413 `response_too_large` above;
    /// gRPC: RESOURCE_EXHAUSTED; the streamed MultiGet: per chunk).
    /// Default 64 MiB.
    #[arg(long, value_name = "N")]
    pub max_response_bytes: Option<usize>,

    /// After SIGTERM/SIGINT, how long requests in flight may take; those
    /// still running then are abandoned and the exit status is 1.
    #[arg(long, value_name = "DURATION")]
    pub grace_period: Option<String>,

    /// Open connections, HTTP and gRPC together. At the bound the
    /// longest-idle connection is closed to make room; when all are busy a
    /// new one is refused. Default: half the open-file limit.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// An HTTP/1 request head not wholly received after this closes its
    /// connection. Default 10s.
    #[arg(long, value_name = "DURATION")]
    pub header_read_timeout: Option<String>,

    /// A connection with no request running for this long is closed.
    /// Default 60s.
    #[arg(long, value_name = "DURATION")]
    pub idle_timeout: Option<String>,

    /// The whole of one streamed gRPC MultiGet, read or not. Default 60s.
    #[arg(long, value_name = "DURATION")]
    pub stream_timeout: Option<String>,

    /// How SQLite shards are read: download (whole file, cached), range
    /// (ranged GETs), auto (the whole snapshot in memory when it fits its
    /// share of the 1 GiB memory limit, 1/(keep-versions + 1), so that a
    /// refresh has room; otherwise range above 256 MiB and download below), or memory (downloaded, then held
    /// in memory, up to 1 GiB in all). The metric
    /// sf_serve_snapshot_shards_by_mode says which mode each shard got.
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    pub sqlite_mode: ModeArg,

    /// Folder of downloaded shards. Default:
    /// `<temp dir>/shardforge-cache-<uid>`, private to the user.
    #[arg(long, env = "SF_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Bytes the shard cache folder may hold: after each download and
    /// each snapshot let go, cached files that no served or kept snapshot
    /// needs go, least recently used first (files in use never do, so the
    /// folder may stay above it; logged and counted). Applies to every
    /// snapshot unless its [snapshot.reader] sets cache_max_bytes.
    #[arg(long, value_name = "BYTES")]
    pub cache_max_bytes: Option<u64>,

    /// How often `_CURRENT` is polled.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub refresh_interval: String,

    /// A snapshot older than this is reported stale (/v1/snapshots,
    /// /readyz, the sf_serve_snapshot_stale gauge) and still served.
    #[arg(long, value_name = "DURATION")]
    pub max_age: Option<String>,

    /// /readyz fails while a snapshot is older than --max-age (so a late
    /// build takes every replica out of service at once).
    #[arg(long)]
    pub unready_when_stale: bool,

    /// Replaced snapshots kept open for pinned reads.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub keep_versions: usize,

    /// Shards one multiget reads at once, and remote reads in flight.
    #[arg(long, value_name = "N")]
    pub max_concurrency: Option<usize>,

    /// A key read from every new snapshot before it is served (repeatable).
    #[arg(long = "warmup-key", value_name = "KEY")]
    pub warmup_keys: Vec<String>,

    /// A storage option of the --snapshot snapshots (repeatable), e.g.
    /// aws_endpoint=http://127.0.0.1:9000.
    #[arg(long = "storage-option", value_name = "KEY=VALUE")]
    pub storage_options: Vec<String>,

    /// Log filter (RUST_LOG works too). Default: info.
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
    #[command(flatten)]
    pub common: crate::run::CommonArgs,
}

/// Parses, runs, prints errors, and returns the exit code.
pub fn main() -> ExitCode {
    let args: Args = crate::run::parse();
    crate::run::init_logging(args.log.as_deref(), "info,slatedb=warn", args.common.log_format);
    crate::run::exit_code(crate::run::run_cli("sf-serve", run(args)))
}

fn duration(flag: &str, text: &str) -> Result<std::time::Duration, Failure> {
    parse_duration(text).map_err(|e| Failure::usage(flag, e))
}

/// The checked configuration the flags and the file describe.
pub fn config(args: &Args) -> Result<ServeConfig, Failure> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let mut shared = StorageOptions::new();
    for (k, v) in &file.storage {
        shared.insert(k, v);
    }
    for pair in &args.storage_options {
        shared.insert_pair(pair)?;
    }
    let mut snapshots = file.snapshots()?;
    for s in &mut snapshots {
        if s.reader.cache_max_bytes.is_none() {
            s.reader.cache_max_bytes = args.cache_max_bytes;
        }
    }
    let reader = ReaderSettings {
        cache_dir: args.cache_dir.clone(),
        cache_max_bytes: args.cache_max_bytes,
        sqlite_mode: args.sqlite_mode.into(),
        refresh_interval: Some(duration("--refresh-interval", &args.refresh_interval)?),
        keep_versions: args.keep_versions,
        max_concurrency: args
            .max_concurrency
            .unwrap_or(ReaderSettings::default().max_concurrency),
        warmup_keys: args.warmup_keys.clone(),
        auto_memory_when_fits: true,
        ..ReaderSettings::default()
    };
    let max_age = args.max_age.as_deref().map(|m| duration("--max-age", m)).transpose()?;
    for spec in &args.snapshots {
        let (name, url) = spec
            .split_once('=')
            .ok_or_else(|| Failure::usage("--snapshot", format!("{spec:?} is not NAME=URL")))?;
        snapshots.push(SnapshotConfig {
            name: name.to_string(),
            current_url: url.to_string(),
            max_age,
            unready_when_stale: args.unready_when_stale,
            reader: reader.clone(),
            storage: storage_for(url, &shared, &StorageOptions::new()),
        });
    }
    let mut limits: Limits = file.limits.clone();
    if let Some(n) = args.max_in_flight {
        limits.max_in_flight = n;
    }
    if let Some(t) = &args.request_timeout {
        limits.request_timeout = duration("--request-timeout", t)?;
    }
    if let Some(n) = args.max_keys {
        limits.max_keys = n;
    }
    if let Some(n) = args.max_stream_keys {
        limits.max_stream_keys = n;
    }
    if let Some(n) = args.max_body_bytes {
        limits.max_body_bytes = n;
    }
    if let Some(n) = args.max_response_bytes {
        limits.max_response_bytes = n;
    }
    if let Some(t) = &args.grace_period {
        limits.grace_period = duration("--grace-period", t)?;
    }
    if let Some(n) = args.max_connections {
        limits.max_connections = Some(n);
    }
    for (flag, text, field) in [
        (
            "--header-read-timeout",
            &args.header_read_timeout,
            &mut limits.header_read_timeout,
        ),
        ("--idle-timeout", &args.idle_timeout, &mut limits.idle_timeout),
        ("--stream-timeout", &args.stream_timeout, &mut limits.stream_timeout),
    ] {
        if let Some(t) = text {
            *field = duration(flag, t)?;
        }
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        (None, None) => file.tls.clone(),
        _ => return Err(Failure::usage("--tls-cert", "give --tls-cert and --tls-key together")),
    };
    let read_token_file = args.auth_token_file.clone().or(file.auth_token_file.clone());
    let admin_token_file = args.admin_token_file.clone().or(file.admin_token_file.clone());
    let tokens = |f: &Option<PathBuf>| f.as_deref().map(read_tokens).transpose();
    let auth = AuthConfig {
        read_tokens: tokens(&read_token_file)?.unwrap_or_default(),
        admin_tokens: tokens(&admin_token_file)?.unwrap_or_default(),
        read_token_file,
        admin_token_file,
        admin_routes: !args.no_admin_routes && file.admin_routes.unwrap_or(true),
        allow_unauthenticated: args.allow_unauthenticated || file.allow_unauthenticated,
    };
    let config = ServeConfig {
        listen: args
            .listen
            .clone()
            .or(file.listen.clone())
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string()),
        grpc_listen: args.grpc_listen.clone().or(file.grpc_listen.clone()),
        metrics_listen: args.metrics_listen.clone().or(file.metrics_listen.clone()),
        snapshots,
        limits,
        auth,
        tls,
    };
    config.validate()?;
    Ok(config)
}

/// SIGTERM or SIGINT, listened for from the moment this is called (so a
/// signal that comes right after the listening line is not missed).
fn stop_signal() -> Result<impl std::future::Future<Output = ()> + Send + 'static, Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|e| {
            Failure::new(
                sf_manifest::ErrorKind::Internal,
                format!("cannot listen for {name}: {e}"),
            )
        })
    };
    let mut term = listen(SignalKind::terminate(), "SIGTERM")?;
    let mut int = listen(SignalKind::interrupt(), "SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
    })
}

/// Serves until a stop signal; the exit code of a clean stop is 0.
pub async fn run(args: Args) -> Result<u8, Failure> {
    let config = config(&args)?;
    // Before any reader exists: their counters register with it.
    let metrics = sf_server::install_prometheus()?;
    let stop = stop_signal()?;
    let server = Server::bind(config, Some(metrics)).await?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let write =
            |out: &mut std::io::StdoutLock<'_>, line: String| writeln!(out, "{line}").and_then(|()| out.flush());
        // The gRPC and metrics lines first: whoever waits for `listening on` (the
        // documented line) then has every address, whichever flag or
        // config file asked for gRPC.
        let scheme = server.scheme();
        if let Some(g) = server.grpc_addr()? {
            write(&mut out, format!("grpc listening on {scheme}://{g}")).map_err(crate::output::output_error)?;
        }
        if let Some(m) = server.metrics_addr()? {
            write(&mut out, format!("metrics listening on {scheme}://{m}")).map_err(crate::output::output_error)?;
        }
        write(&mut out, format!("listening on {scheme}://{}", server.http_addr()?))
            .map_err(crate::output::output_error)?;
    }
    server.run(stop).await?;
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sf_server::config::DEFAULT_REFRESH_INTERVAL;

    #[test]
    fn flags_become_a_config() {
        let dir = tempfile::tempdir().expect("dir");
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, "t1\nt2\n").expect("write");
        let args = Args::try_parse_from([
            "sf-serve",
            "--snapshot",
            "users=/data/users/_CURRENT",
            "--snapshot",
            "items=s3://b/items",
            "--storage-option",
            "aws_region=eu-west-1",
            "--listen",
            "127.0.0.1:0",
            "--max-keys",
            "7",
            "--max-response-bytes",
            "1000",
            "--max-age",
            "1h",
            "--unready-when-stale",
            "--request-timeout",
            "250ms",
            "--keep-versions",
            "2",
            "--warmup-key",
            "1",
            "--auth-token-file",
            tokens.to_str().expect("utf8"),
        ])
        .expect("parse");
        let c = config(&args).expect("config");
        assert_eq!(c.listen, "127.0.0.1:0");
        assert_eq!(c.limits.max_keys, 7);
        assert_eq!(c.limits.max_response_bytes, 1000);
        assert!(c.snapshots.iter().all(|s| s.unready_when_stale));
        assert_eq!(c.limits.request_timeout, std::time::Duration::from_millis(250));
        assert_eq!(c.auth.read_tokens, vec!["t1", "t2"]);
        assert!(c.auth.admin_tokens.is_empty() && c.auth.admin_routes && !c.auth.allow_unauthenticated);
        assert_eq!(c.auth.read_token_file.as_deref(), Some(tokens.as_path()));
        assert_eq!(c.snapshots.len(), 2);
        assert_eq!(c.snapshots[0].reader.keep_versions, 2);
        assert_eq!(c.snapshots[0].reader.warmup_keys, vec!["1"]);
        assert_eq!(c.snapshots[0].reader.refresh_interval, Some(DEFAULT_REFRESH_INTERVAL));
        // Local paths take no storage options; the S3 one does.
        assert!(c.snapshots[0].storage.is_empty());
        assert!(!c.snapshots[1].storage.is_empty());

        let none = Args::try_parse_from(["sf-serve"]).expect("parse");
        assert_eq!(config(&none).expect_err("no snapshots").exit_code(), exit::CONFIG);
        let bad = Args::try_parse_from(["sf-serve", "--snapshot", "nourl"]).expect("parse");
        assert_eq!(config(&bad).expect_err("bad spec").exit_code(), exit::CONFIG);

        // Roles and switches, from flags and from the file.
        let admin = dir.path().join("admin");
        std::fs::write(&admin, "boss\n").expect("write");
        let args = Args::try_parse_from([
            "sf-serve",
            "--snapshot",
            "users=/data/users",
            "--listen",
            "0.0.0.0:0",
            "--admin-token-file",
            admin.to_str().expect("utf8"),
            "--no-admin-routes",
        ])
        .expect("parse");
        let c = config(&args).expect("admin tokens alone allow 0.0.0.0");
        assert_eq!(c.auth.admin_tokens, vec!["boss"]);
        assert!(c.auth.read_tokens.is_empty() && !c.auth.admin_routes);
        let file = dir.path().join("serve.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:0\"\nadmin_routes = false\nallow_unauthenticated = true\n\
             [[snapshot]]\nname = \"a\"\ncurrent_url = \"/x\"\n",
        )
        .expect("write");
        let args = Args::try_parse_from(["sf-serve", "--config", file.to_str().expect("utf8")]).expect("parse");
        let c = config(&args).expect("allowed by the file");
        assert!(c.auth.allow_unauthenticated && !c.auth.admin_routes && c.auth.is_open());
        let open = Args::try_parse_from(["sf-serve", "--snapshot", "a=/x", "--listen", "0.0.0.0:0"]).expect("parse");
        let e = config(&open).expect_err("open beyond loopback");
        assert_eq!(e.exit_code(), exit::CONFIG);
        assert!(e.to_string().contains("--allow-unauthenticated"), "{e}");
    }

    #[test]
    fn the_cache_bound_applies_to_every_snapshot_that_sets_none() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("serve.toml");
        std::fs::write(
            &file,
            "[[snapshot]]\nname = \"own\"\ncurrent_url = \"/data/own\"\n[snapshot.reader]\ncache_max_bytes = 5\n\n\
             [[snapshot]]\nname = \"plain\"\ncurrent_url = \"/data/plain\"\n",
        )
        .expect("write");
        let args = Args::try_parse_from([
            "sf-serve",
            "--config",
            file.to_str().expect("utf8"),
            "--snapshot",
            "flag=/data/flag",
            "--cache-max-bytes",
            "1000",
        ])
        .expect("parse");
        let c = config(&args).expect("config");
        let bounds: Vec<(&str, Option<u64>)> = c
            .snapshots
            .iter()
            .map(|s| (s.name.as_str(), s.reader.cache_max_bytes))
            .collect();
        assert_eq!(bounds, [("own", Some(5)), ("plain", Some(1000)), ("flag", Some(1000))]);
    }
}
