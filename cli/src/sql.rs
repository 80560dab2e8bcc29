//! `sf-sql`: SQL over warehouse tables.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use sf_warehouse::{Catalogs, JobFile, Warehouse, table_job};
use sf_writer::job::Engine;

use crate::exit::{self, EXIT_CODES, Failure};
use crate::output::OutputFormat;

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
  CREATE [OR REPLACE] GLOBAL TEMPORARY VIEW [IF NOT EXISTS] v AS SELECT ...
      a view read as global_temp.v by every later statement of this
      invocation (the views live as long as the process).
  DROP VIEW [IF EXISTS] global_temp.v
      removes it.
  CREATE [OR REPLACE] TEMPORARY VIEW v AS SELECT ...
      a view of this invocation's session; a bare `v` finds it before a
      table `v` of the default database.
  SHOW TABLES [IN [catalog.]db], information_schema, and anything else
      DataFusion runs.

Several statements separated by `;` run in order, in one session.
Object-store credentials come from the usual environment variables
(AWS_*, ...); never printed.";

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

    /// How results are printed: an aligned table, one JSON array of row
    /// objects per statement (json), or one JSON object per row (jsonl).
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,

    /// Where table readers cache downloaded shards (default: the reader's).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    /// Log filter (e.g. `info`); default `warn`. RUST_LOG works too.
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
    #[command(flatten)]
    common: crate::run::CommonArgs,
}

/// Runs `sf-sql` with the process's arguments and environment.
pub fn main() -> ExitCode {
    let args: Args = crate::run::parse();
    crate::run::init_logging(args.log.as_deref(), "warn", args.common.log_format);
    crate::run::exit_code(crate::run::run_cli("sf-sql", run(args)))
}

/// The SQL text to run: the argument, stdin for `-`, or `--file`.
fn sql_text(args: &Args) -> Result<String, Failure> {
    match (&args.sql, &args.file) {
        (Some(s), _) if s == "-" => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| Failure::usage("reading SQL from stdin", e))?;
            Ok(s)
        }
        (Some(s), _) => Ok(s.clone()),
        (None, Some(f)) => {
            std::fs::read_to_string(f).map_err(|e| Failure::usage(format!("reading SQL from {}", f.display()), e))
        }
        (None, None) => Err(Failure::usage(
            "SQL",
            "give the SQL to run (an argument, - for stdin, or -f FILE)",
        )),
    }
}

/// The catalogs of `--config`'s `[sf.catalog.NAME]` sections and `--conf`
/// pairs (which win).
fn catalogs(args: &Args) -> Result<Catalogs, Failure> {
    let sf = match &args.config {
        Some(path) => {
            let raw = std::fs::read_to_string(path).map_err(|e| Failure::usage(path.display(), e))?;
            let doc: toml::Table = raw
                .parse()
                .map_err(|e| Failure::usage(path.display(), format!("not TOML: {e}")))?;
            match doc.get("sf") {
                Some(toml::Value::Table(t)) => t.clone(),
                Some(_) => return Err(Failure::usage("sf", "must be a table ([sf.catalog.NAME])")),
                None => toml::Table::new(),
            }
        }
        None => toml::Table::new(),
    };
    let mut extra = Vec::new();
    for pair in &args.conf {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| Failure::usage("--conf", format!("{pair:?} is not KEY=VALUE")))?;
        if !k.starts_with(sf_warehouse::names::CATALOG_PREFIX) {
            return Err(Failure::usage(
                "--conf",
                format!("{k:?}: only sf.catalog.* settings are understood"),
            ));
        }
        extra.push((k.trim().to_string(), v.trim().to_string()));
    }
    let catalogs = Catalogs::from_toml(&sf, extra)?;
    if catalogs.iter().next().is_none() {
        return Err(Failure::usage(
            "catalogs",
            "none configured: pass --config FILE with [sf.catalog.NAME] warehouse = URL, or --conf sf.catalog.NAME.warehouse=URL",
        ));
    }
    Ok(catalogs)
}

async fn run(args: Args) -> Result<u8, Failure> {
    let text = sql_text(&args)?;
    let catalogs = catalogs(&args)?;
    let engine: Arc<dyn Engine> = Arc::from(crate::write::engine_for(
        args.cluster.as_deref(),
        &JobFile::from_build(table_job("key", 1)),
    )?);
    let mut warehouse = Warehouse::new(catalogs, engine);
    if let Some(dir) = &args.cache_dir {
        warehouse = warehouse.with_reader_cache(dir);
    }
    // Cut by tokens: DataFusion's parser does not know every statement
    // ShardForge runs (CREATE GLOBAL TEMPORARY VIEW). Each is checked
    // before the first runs.
    let statements = sf_warehouse::statement::split_checked(&text)?;
    if statements.is_empty() {
        return Err(Failure::usage("SQL", "no statement to run"));
    }
    let ctx = warehouse.session_context();
    let stdout = std::io::stdout();
    for statement in statements {
        let df = warehouse.sql(&ctx, &statement).await?;
        let batches = df.collect().await.map_err(sf_warehouse::Error::from)?;
        crate::output::batches(&mut stdout.lock(), &batches, args.output)?;
    }
    Ok(exit::OK)
}
