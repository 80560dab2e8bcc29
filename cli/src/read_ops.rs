//! The read commands of `sf-read`, and the [`Session`] that `exec` and
//! `shell` run them in: one open reader, many [`Op`]s.
//!
//! Each command prints through a [`Printer`] to the writer it is given, so
//! `sf-read get K` and a `get` op of `sf-read exec` print the same line.

use std::io::{BufRead, Write};
use std::time::Duration;

use sf_manifest::StorageOptions;
use sf_reader::{Admin, HealthStatus, Pin, Reader, ReaderSettings, RefreshOutcome};

use crate::exit::{self, Failure};
use crate::output::{Json, Printer, obj};

/// `sf-read health`'s code for a snapshot older than `--max-age`.
pub const HEALTH_STALE: u8 = 1;

/// One read operation, as `exec` scripts and shell lines name them.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// The value of one key.
    Get {
        /// The key, as `sf-read get` takes it.
        key: String,
        /// Routing context, `COLUMN=VALUE` each.
        ctx: Vec<String>,
    },
    /// The values of many keys.
    Multiget {
        /// The keys.
        keys: Vec<String>,
        /// Routing context for every key.
        ctx: Vec<String>,
    },
    /// The shard a key routes to.
    Route {
        /// The key.
        key: String,
        /// Routing context.
        ctx: Vec<String>,
    },
    /// The vectors nearest a query.
    Search(SearchOp),
    /// Read `_CURRENT` again and swap to the snapshot it names.
    Refresh,
    /// The served snapshot.
    Info,
    /// The snapshot's shards.
    Shards,
    /// Whether the snapshot is younger than `max_age`.
    Health {
        /// The oldest healthy age.
        max_age: Duration,
    },
    /// The prefix's manifests, newest first.
    History {
        /// At most this many.
        limit: Option<usize>,
    },
}

/// A `search` op.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchOp {
    /// The query, a JSON array of numbers.
    pub vector: String,
    /// Results wanted.
    pub top_k: usize,
    /// Shards to probe (default: the manifest's).
    pub num_probes: Option<u32>,
    /// Only these shards.
    pub shards: Vec<u32>,
    /// Routing context naming the one shard of a CEL snapshot.
    pub ctx: Vec<String>,
    /// A CEL predicate over the payload.
    pub filter: Option<String>,
}

/// The names of the ops, as scripts and the shell spell them.
pub const OP_NAMES: &[&str] = &[
    "get", "multiget", "search", "route", "info", "shards", "health", "history", "refresh",
];

impl Op {
    /// The op's name (its output lines' `op`).
    pub fn name(&self) -> &'static str {
        match self {
            Op::Get { .. } => "get",
            Op::Multiget { .. } => "multiget",
            Op::Route { .. } => "route",
            Op::Search(_) => "search",
            Op::Refresh => "refresh",
            Op::Info => "info",
            Op::Shards => "shards",
            Op::Health { .. } => "health",
            Op::History { .. } => "history",
        }
    }

    /// The key the op is about, if one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Op::Get { key, .. } | Op::Route { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// Opens the reader the read commands share.
pub async fn open_reader(url: &str, settings: ReaderSettings, storage: StorageOptions) -> Result<Reader, Failure> {
    Ok(Reader::builder(url)
        .with_settings(settings)
        .with_storage_options(storage)
        .build()
        .await?)
}

/// One open reader and what it takes to open another: the reader every
/// op of an `exec` script and every command of a shell runs against.
pub struct Session {
    reader: Reader,
    url: String,
    settings: ReaderSettings,
    storage: StorageOptions,
    /// The value a `get` of a missing key prints.
    pub miss: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("url", &self.url)
            .field("pin", &self.settings.pin)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Opens the reader of `url`.
    pub async fn open(
        url: String,
        settings: ReaderSettings,
        storage: StorageOptions,
        miss: String,
    ) -> Result<Session, Failure> {
        let reader = open_reader(&url, settings.clone(), storage.clone()).await?;
        Ok(Session {
            reader,
            url,
            settings,
            storage,
            miss,
        })
    }

    /// The open reader.
    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    /// The snapshot's URL, as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Serves another snapshot (`url`, or this one when `None`) at `pin`
    /// from now on; nothing is written anywhere. On an error the session
    /// keeps its reader.
    pub async fn switch(&mut self, url: Option<String>, pin: Pin) -> Result<(), Failure> {
        let url = url.unwrap_or_else(|| self.url.clone());
        let settings = ReaderSettings {
            pin,
            ..self.settings.clone()
        };
        let reader = open_reader(&url, settings.clone(), self.storage.clone()).await?;
        std::mem::replace(&mut self.reader, reader).close();
        self.url = url;
        self.settings = settings;
        Ok(())
    }

    /// Runs `op`, printing its result to `out`; the exit code of a
    /// success (0, or [`HEALTH_STALE`] for a stale `health`).
    pub async fn run(&self, op: &Op, printer: &Printer, out: &mut dyn Write) -> Result<u8, Failure> {
        let reader = &self.reader;
        match op {
            Op::Get { key, ctx } => get(reader, key, ctx, printer, &self.miss, out).await,
            Op::Multiget { keys, ctx } => multiget(reader, keys, ctx, printer, out).await,
            Op::Route { key, ctx } => route(reader, key, ctx, printer, out),
            Op::Search(s) => {
                let options = search_options(reader, s.top_k, s.num_probes, &s.shards, &s.ctx, s.filter.clone())?;
                search(
                    reader,
                    std::slice::from_ref(&s.vector),
                    false,
                    &options,
                    false,
                    printer,
                    out,
                )
                .await
            }
            Op::Refresh => refresh(reader, printer, out).await,
            Op::Info => info(reader, printer, out),
            Op::Shards => shards(reader, printer, out),
            Op::Health { max_age } => health(reader, *max_age, printer, out),
            Op::History { limit } => {
                let admin = Admin::builder(&self.url)
                    .with_storage_options(self.storage.clone())
                    .build()?;
                history(&admin, *limit, printer, out).await
            }
        }
    }

    /// Lets the reader go.
    pub fn close(&self) {
        self.reader.close();
    }
}

/// The options of a search, its routing context parsed by `reader`.
pub(crate) fn search_options(
    reader: &Reader,
    top_k: usize,
    num_probes: Option<u32>,
    shards: &[u32],
    ctx: &[String],
    filter: Option<String>,
) -> Result<sf_reader::SearchOptions, Failure> {
    Ok(sf_reader::SearchOptions {
        top_k,
        num_probes,
        shard_ids: (!shards.is_empty()).then(|| shards.iter().map(|d| sf_manifest::DbId(*d)).collect()),
        routing_context: if ctx.is_empty() {
            None
        } else {
            Some(reader.parse_context(ctx.iter().map(String::as_str))?)
        },
        filter,
    })
}

/// `refresh`: reads `_CURRENT` again; `changed` when the reader swapped.
async fn refresh(reader: &Reader, printer: &Printer, out: &mut dyn Write) -> Result<u8, Failure> {
    let (changed, manifest_ref, pinned) = match reader.refresh().await? {
        RefreshOutcome::Unchanged { manifest_ref } => (false, manifest_ref, false),
        RefreshOutcome::Swapped { to, .. } => (true, to, false),
        RefreshOutcome::Pinned { manifest_ref } => (false, manifest_ref, true),
    };
    let line = obj(vec![
        ("op", Json::str("refresh")),
        ("changed", Json::Bool(changed)),
        ("manifest_ref", Json::str(manifest_ref)),
        ("pinned", Json::Bool(pinned)),
    ]);
    printer.single(out, &line)?;
    Ok(exit::OK)
}

/// `history`: the prefix's manifests, newest first (the newest `limit`
/// of them when given).
pub(crate) async fn history(
    admin: &Admin,
    limit: Option<usize>,
    printer: &Printer,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let history = sf_manifest::ManifestStore::history(admin.store()).await?;
    let items: Vec<Json> = history
        .iter()
        .take(limit.unwrap_or(usize::MAX))
        .map(|h| {
            obj(vec![
                ("offset", Json::count(h.offset as u64)),
                ("run_id", Json::str(h.run_id.as_str())),
                ("published_at", Json::str(h.published_at.to_rfc3339_offset())),
                ("ref", Json::str(&h.manifest_ref)),
            ])
        })
        .collect();
    printer.list(out, "history", "manifests", items)?;
    Ok(exit::OK)
}

/// `get`: one key's value; a miss prints `miss` as its value.
pub(crate) async fn get(
    reader: &Reader,
    key: &str,
    ctx: &[String],
    printer: &Printer,
    miss: &str,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let k = reader.parse_key(key)?;
    let value = if ctx.is_empty() {
        reader.get(&k).await?
    } else {
        let c = reader.parse_context(ctx.iter().map(String::as_str))?;
        reader.get_with_context(&k, &c).await?
    };
    // A miss prints "value": "null" (a string, `[output] null_repr` of
    // reader.toml), as the reference does.
    let line = obj(vec![
        ("op", Json::str("get")),
        ("key", Json::str(key)),
        ("found", Json::Bool(value.is_some())),
        (
            "value",
            Json::str(value.as_ref().map_or_else(|| miss.to_string(), |v| printer.value(v))),
        ),
    ]);
    printer.single(out, &line)?;
    Ok(exit::OK)
}

/// `search`: one result line per query (`queries` come from `--vector`,
/// or from stdin when `from_stdin`).
pub(crate) async fn search(
    reader: &Reader,
    queries: &[String],
    from_stdin: bool,
    options: &sf_reader::SearchOptions,
    exact: bool,
    printer: &Printer,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    // Both searches of a query, and every query, from one snapshot.
    let view = reader.current();
    let everywhere = sf_reader::SearchOptions {
        shard_ids: Some(reader.shards().into_iter().map(|s| s.db_id).collect()),
        num_probes: None,
        routing_context: None,
        ..options.clone()
    };
    let mut recalls = Vec::new();
    for (n, text) in queries.iter().enumerate() {
        let query = parse_vector(text).map_err(|e| {
            let place = if from_stdin {
                format!("stdin line {}", n + 1)
            } else {
                "--vector".to_string()
            };
            Failure::usage(place, e)
        })?;
        let found = view.search(&query, options).await?;
        let items: Vec<Json> = found
            .hits
            .iter()
            .map(|h| {
                obj(vec![
                    (
                        "id",
                        match &h.id {
                            sf_reader::vector::VectorId::Int(i) => Json::Int(*i),
                            sf_reader::vector::VectorId::Str(s) => Json::str(s.as_str()),
                        },
                    ),
                    ("score", Json::Float(h.score)),
                    (
                        "payload",
                        h.payload.as_ref().map_or(Json::Null, |p| Json::Raw(p.to_string())),
                    ),
                    ("db_id", Json::count(u64::from(h.db_id.0))),
                ])
            })
            .collect();
        printer.list(out, "search", "results", items)?;
        if exact {
            let truth = view.search(&query, &everywhere).await?;
            let recall = recall(&found.hits, &truth.hits);
            recalls.push(recall);
            printer.single(
                out,
                &obj(vec![
                    ("op", Json::str("recall")),
                    ("query", Json::count(n as u64 + 1)),
                    ("k", Json::count(options.top_k as u64)),
                    ("recall", Json::Float(recall)),
                    ("shards", Json::count(found.shards.len() as u64)),
                    ("exact_shards", Json::count(truth.shards.len() as u64)),
                ]),
            )?;
        }
    }
    if exact {
        let mean = if recalls.is_empty() {
            1.0
        } else {
            recalls.iter().sum::<f64>() / recalls.len() as f64
        };
        printer.single(
            out,
            &obj(vec![
                ("op", Json::str("recall_mean")),
                ("queries", Json::count(recalls.len() as u64)),
                ("k", Json::count(options.top_k as u64)),
                ("mean_recall", Json::Float(mean)),
            ]),
        )?;
    }
    Ok(exit::OK)
}

/// recall@k: the share of the exact search's hits (shard and id) that the
/// routed search found; 1 when the exact search found none.
pub(crate) fn recall(routed: &[sf_reader::SearchHit], exact: &[sf_reader::SearchHit]) -> f64 {
    if exact.is_empty() {
        return 1.0;
    }
    let found = exact
        .iter()
        .filter(|e| routed.iter().any(|r| r.db_id == e.db_id && r.id == e.id))
        .count();
    found as f64 / exact.len() as f64
}

/// A query vector from a JSON array of numbers.
pub(crate) fn parse_vector(text: &str) -> Result<Vec<f32>, String> {
    let values: Vec<f64> =
        serde_json::from_str(text.trim()).map_err(|e| format!("{text:?} is not a JSON array of numbers: {e}"))?;
    Ok(values.into_iter().map(|v| v as f32).collect())
}

/// Keys from stdin, one per line (`\r\n` endings too). Every line is a
/// key, a blank one included: the empty string is a valid `utf8` key.
pub fn read_keys(stdin: &mut dyn BufRead) -> Result<Vec<String>, Failure> {
    let mut keys = Vec::new();
    for line in stdin.lines() {
        let line = line.map_err(|e| Failure::usage("reading keys from stdin", e))?;
        keys.push(line.strip_suffix('\r').unwrap_or(&line).to_string());
    }
    Ok(keys)
}

/// `multiget`: the values of `texts`, in their order.
pub(crate) async fn multiget(
    reader: &Reader,
    texts: &[String],
    ctx: &[String],
    printer: &Printer,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let parsed: Vec<_> = texts
        .iter()
        .map(|t| reader.parse_key(t))
        .collect::<sf_reader::Result<_>>()?;
    let values = if ctx.is_empty() {
        reader.multi_get(&parsed).await?
    } else {
        let c = reader.parse_context(ctx.iter().map(String::as_str))?;
        let items: Vec<_> = parsed.into_iter().map(|k| (k, c.clone())).collect();
        reader.multi_get_with_context(&items).await?
    };
    let items: Vec<Json> = texts
        .iter()
        .zip(&values)
        .map(|(t, v)| {
            let mut f = vec![("key", Json::str(t)), ("found", Json::Bool(v.is_some()))];
            if let Some(v) = v {
                f.push(("value", Json::str(printer.value(v))));
            }
            obj(f)
        })
        .collect();
    printer.list(out, "multiget", "results", items)?;
    Ok(exit::OK)
}

/// `route`: the shard a key routes to.
pub(crate) fn route(
    reader: &Reader,
    key: &str,
    ctx: &[String],
    printer: &Printer,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let k = reader.parse_key(key)?;
    let c = if ctx.is_empty() {
        None
    } else {
        Some(reader.parse_context(ctx.iter().map(String::as_str))?)
    };
    let r = reader.route(&k, c.as_ref())?;
    let line = obj(vec![
        ("op", Json::str("route")),
        ("key", Json::str(key)),
        ("db_id", r.db_id.map_or(Json::Null, |d| Json::Int(i64::from(d.0)))),
    ]);
    printer.single(out, &line)?;
    Ok(exit::OK)
}

/// `info`: the served snapshot.
pub(crate) fn info(reader: &Reader, printer: &Printer, out: &mut dyn Write) -> Result<u8, Failure> {
    let i = reader.info();
    let line = obj(vec![
        ("op", Json::str("info")),
        ("run_id", Json::str(i.run_id.as_str())),
        ("num_dbs", Json::Int(i64::from(i.num_dbs))),
        (
            "sharding",
            Json::str(match i.sharding {
                sf_manifest::ShardingStrategy::Hash => "hash",
                sf_manifest::ShardingStrategy::Cel => "cel",
            }),
        ),
        ("created_at", Json::str(i.created_at.to_rfc3339_offset())),
        ("manifest_ref", Json::str(&i.manifest_ref)),
        ("row_count", Json::count(i.row_count)),
        ("key_encoding", Json::str(i.key_encoding.as_str())),
        ("hash_algorithm", Json::str("xxh3_64")),
    ]);
    printer.single(out, &line)?;
    Ok(exit::OK)
}

/// `shards`: the snapshot's shards.
pub(crate) fn shards(reader: &Reader, printer: &Printer, out: &mut dyn Write) -> Result<u8, Failure> {
    let key = |k: &Option<sf_manifest::Key>| match k {
        Some(k) => Json::Raw(sf_manifest::format::json::to_sorted_string(
            &k.to_json(),
            sf_manifest::format::json::JsonStyle::Python,
        )),
        None => Json::Null,
    };
    // Streamed: a snapshot may have 100,000 shards. One snapshot for
    // every pass, whatever a refresh does meanwhile.
    let infos = reader.shard_infos();
    let items = || {
        infos.clone().map(|s| {
            obj(vec![
                ("db_id", Json::Int(i64::from(s.db_id.0))),
                ("row_count", Json::count(s.row_count)),
                ("min_key", key(&s.min_key)),
                ("max_key", key(&s.max_key)),
                ("db_url", Json::opt_str(s.db_url.as_deref())),
            ])
        })
    };
    printer.list_stream(out, "shards", "shards", items)?;
    Ok(exit::OK)
}

/// `health`: whether the snapshot is younger than `max_age` (returns
/// [`HEALTH_STALE`] when it is not).
pub(crate) fn health(
    reader: &Reader,
    max_age: Duration,
    printer: &Printer,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let h = reader.health(max_age);
    let line = obj(vec![
        ("op", Json::str("health")),
        (
            "status",
            Json::str(match h.status {
                HealthStatus::Healthy => "healthy",
                HealthStatus::Stale => "stale",
            }),
        ),
        ("manifest_ref", Json::str(&h.manifest_ref)),
        ("manifest_age_seconds", Json::Float(h.snapshot_age_seconds)),
        ("num_shards", Json::count(h.num_shards as u64)),
        ("is_closed", Json::Bool(h.is_closed)),
        ("max_age_seconds", Json::Float(h.max_age_seconds)),
    ]);
    printer.single(out, &line)?;
    Ok(match h.status {
        HealthStatus::Healthy => exit::OK,
        HealthStatus::Stale => HEALTH_STALE,
    })
}
