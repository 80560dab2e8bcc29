//! `sf-sql`: SQL over warehouse tables.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use arrow::array::RecordBatch;
use clap::{Parser, ValueEnum};
use sf_writer::job::{Embedded, Engine};
use sf_writer::warehouse::{Warehouse, table_job};

use crate::write_cli::{ClusterEngineFactory, run_cli};

const ABOUT: &str = "Run SQL over ShardForge warehouse tables.";

const LONG_ABOUT: &str = "\
Run SQL over ShardForge warehouse tables.

Tables are named catalog.db.table (db defaults to `default`, the catalog to
the default catalog). Catalogs come from [sf.catalog.NAME] sections of a
TOML file (--config; a job file works) and from --conf pairs:

  sf.catalog.NAME.warehouse = URL     where the catalog's tables live
  sf.catalog.NAME.<option>  = VALUE   storage options (aws_endpoint, region, ...)
  sf.catalog.NAME.num_dbs   = N       shards of tables made by CREATE TABLE AS (8)
  sf.catalog.default        = NAME    the default catalog

Statements:
  SELECT ... FROM wh.db.t [WHERE key = x | key IN (...)]
      an equality or IN filter on the table's key column becomes a point
      lookup that reads only the shards the keys route to (EXPLAIN shows
      ShardLookupExec and its shards); other queries scan every shard in
      parallel.
  CREATE [OR REPLACE] TABLE [IF NOT EXISTS] wh.db.t AS SELECT ...
      builds and publishes a snapshot; the first column is the key.
  DROP TABLE [IF EXISTS] wh.db.t
      removes the table from the catalog (its data stays until
      `sf-read cleanup`).
  SHOW TABLES, information_schema, and anything else DataFusion runs.

Several statements separated by `;` run in order. Object-store credentials
come from the usual environment variables (AWS_*, ...); never printed.";

const EXIT_CODES: &str = "\
Exit codes:
  0  every statement ran
  1  failed for another reason
  2  bad SQL, names, catalogs or arguments; nothing was written
  3  bad data (e.g. duplicate keys on append with on_duplicate = error)
  4  conflict: another writer published to the table meanwhile
  5  storage unavailable after retries";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// An aligned text table.
    Table,
    /// One JSON array of row objects per statement.
    Json,
    /// One JSON object per row.
    Jsonl,
}

#[derive(Debug, Parser)]
#[command(name = "sf-sql", version, about = ABOUT, long_about = LONG_ABOUT, after_long_help = EXIT_CODES)]
struct Args {
    /// The SQL to run; `-` reads it from stdin.
    #[arg(value_name = "SQL", conflicts_with = "file")]
    sql: Option<String>,

    /// Read the SQL from this file.
    #[arg(long, short = 'f', value_name = "FILE")]
    file: Option<PathBuf>,

    /// A TOML file whose [sf.catalog.NAME] sections configure catalogs.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,

    /// A catalog setting `sf.catalog.NAME.KEY=VALUE`; repeatable; wins over
    /// --config.
    #[arg(long = "conf", value_name = "KEY=VALUE")]
    conf: Vec<String>,

    /// Run table writes (CREATE TABLE AS) on a Ballista cluster at this
    /// scheduler (df://host:port); queries run in this process.
    #[arg(long, value_name = "URL")]
    cluster: Option<String>,

    /// How results are printed.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,

    /// Where table readers cache downloaded shards (default: the reader's).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    /// Log filter (e.g. `info`); default `warn`. RUST_LOG works too.
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
}

/// Runs `sf-sql` with the process's arguments and environment.
pub fn main(cluster: Option<ClusterEngineFactory>) -> ExitCode {
    let args = Args::parse();
    let filter = args
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "warn".to_string());
    run_cli("sf-sql", &filter, run(args, cluster))
}

async fn run(args: Args, cluster: Option<ClusterEngineFactory>) -> sf_writer::Result<()> {
    let text = match (&args.sql, &args.file) {
        (Some(s), _) if s == "-" => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| sf_writer::Error::io("reading SQL from stdin", e))?;
            s
        }
        (Some(s), _) => s.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .map_err(|e| sf_writer::Error::io(format!("reading SQL from {}", f.display()), e))?,
        (None, None) => {
            return Err(sf_writer::Error::config(
                "SQL",
                "give the SQL to run (an argument, - for stdin, or -f FILE)",
            ));
        }
    };
    let sf = match &args.config {
        Some(path) => {
            let raw = std::fs::read_to_string(path)
                .map_err(|e| sf_writer::Error::io(format!("reading {}", path.display()), e))?;
            let doc: toml::Table = raw
                .parse()
                .map_err(|e| sf_writer::Error::config(path.display().to_string(), format!("not TOML: {e}")))?;
            match doc.get("sf") {
                Some(toml::Value::Table(t)) => t.clone(),
                Some(_) => return Err(sf_writer::Error::config("sf", "must be a table ([sf.catalog.NAME])")),
                None => toml::Table::new(),
            }
        }
        None => toml::Table::new(),
    };
    let mut extra = Vec::new();
    for pair in &args.conf {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| sf_writer::Error::config("--conf", format!("{pair:?} is not KEY=VALUE")))?;
        if !k.starts_with(sf_writer::warehouse::names::CATALOG_PREFIX) {
            return Err(sf_writer::Error::config(
                "--conf",
                format!("{k:?}: only sf.catalog.* settings are understood"),
            ));
        }
        extra.push((k.trim().to_string(), v.trim().to_string()));
    }
    let catalogs = sf_writer::config::catalog_settings(&sf, extra)?;
    if catalogs.iter().next().is_none() {
        return Err(sf_writer::Error::config(
            "catalogs",
            "none configured: pass --config FILE with [sf.catalog.NAME] warehouse = URL, or --conf sf.catalog.NAME.warehouse=URL",
        ));
    }
    let engine: Arc<dyn Engine> = match (&args.cluster, cluster) {
        (Some(url), Some(factory)) => Arc::from(factory(url, &table_job("key", 1))?),
        (Some(_), None) => {
            return Err(sf_writer::Error::config(
                "--cluster",
                "this build has no cluster support",
            ));
        }
        (None, _) => Arc::new(Embedded::default()),
    };
    let mut warehouse = Warehouse::new(catalogs, engine);
    if let Some(dir) = &args.cache_dir {
        warehouse = warehouse.with_reader_cache(dir);
    }
    let statements = datafusion::sql::parser::DFParser::parse_sql(&text)
        .map_err(|e| sf_writer::Error::config("SQL", e.to_string()))?;
    if statements.is_empty() {
        return Err(sf_writer::Error::config("SQL", "no statement to run"));
    }
    let ctx = warehouse.session_context();
    for statement in statements {
        let df = warehouse.sql(&ctx, &statement.to_string()).await?;
        let batches = df.collect().await?;
        print(&batches, args.output)?;
    }
    Ok(())
}

fn print(batches: &[RecordBatch], output: Output) -> sf_writer::Result<()> {
    let fail = |e: arrow::error::ArrowError| sf_writer::Error::Internal(format!("printing results: {e}"));
    match output {
        Output::Table => {
            println!("{}", arrow::util::pretty::pretty_format_batches(batches).map_err(fail)?);
        }
        Output::Json => {
            let mut w = arrow::json::ArrayWriter::new(Vec::new());
            let refs: Vec<&RecordBatch> = batches.iter().collect();
            w.write_batches(&refs).map_err(fail)?;
            w.finish().map_err(fail)?;
            let mut out = w.into_inner();
            if out.is_empty() {
                out.extend_from_slice(b"[]");
            }
            println!("{}", String::from_utf8_lossy(&out));
        }
        Output::Jsonl => {
            let mut w = arrow::json::LineDelimitedWriter::new(Vec::new());
            let refs: Vec<&RecordBatch> = batches.iter().collect();
            w.write_batches(&refs).map_err(fail)?;
            w.finish().map_err(fail)?;
            print!("{}", String::from_utf8_lossy(&w.into_inner()));
        }
    }
    Ok(())
}
