//! The job file `sf-write` reads: the writer's build job, wrapped with the
//! sections only this layer (or the cluster engine above it) can serve.
//!
//! | section | owner | what it adds |
//! |---|---|---|
//! | `[input] format = "table"`, `table = "cat.db.t"` | here | a warehouse table read as the input |
//! | `[output] table`, `mode` | here | the input saved as a warehouse table instead of a prefix |
//! | `[validate] canary` | here | keys read back through the online reader before the flip |
//! | `[sf.catalog.NAME]` | here | the catalogs table names resolve in |
//! | `[cluster]` | here (run by `sf-executor`) | the Ballista scheduler, the session pool, session settings |
//! | everything else | `sf_writer::config` | input files or SQL, key, values, routing, prefix, backend, limits, gates, retention |
//!
//! The TOML a user writes is one file; [`JobFile::parse`] reads it once
//! (with the `SF_*` overrides of the environment), takes these sections
//! out, and hands the rest to the writer's loader, so an unknown key is
//! an error wherever it is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sf_writer::config::{JobConfig, JobDocument, key_is_text, read_job_file, resolve_path};

use crate::canary::CanaryConfig;
use crate::error::{Error, Result};
use crate::names::{Catalogs, sf_settings};
use crate::save::SaveMode;

/// A job file: the writer's build job and this layer's sections.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFile {
    /// What the writer builds (input files or SQL, key and values, routing,
    /// output prefix and backend, limits, gates, retention). With an input
    /// table its `input` is `None`; with an output table its prefix is the
    /// table's, set when the build runs.
    pub build: JobConfig,
    /// `[input] format = "table"`: the warehouse table read as the input
    /// (`[catalog.][db.]table`).
    pub input_table: Option<String>,
    /// `[output] table` and `mode`: the input saved as a warehouse table.
    pub output_table: Option<TableOutput>,
    /// `[validate] canary`.
    pub canary: Option<CanaryConfig>,
    /// `[cluster]`: running on a Ballista cluster instead of embedded.
    pub cluster: Option<ClusterConfig>,
    /// `[sf]`: settings with dotted names, like `sf.catalog.<name>.warehouse
    /// = "<url>"` (warehouse catalogs).
    pub sf: toml::Table,
}

/// `[output] table` and `mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableOutput {
    /// The table written (`[catalog.][db.]table`); its catalog comes from
    /// `sf.catalog.<name>.warehouse`.
    pub table: String,
    /// When the table exists: `error`, `overwrite`, `append` or `ignore`.
    pub mode: SaveMode,
}

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `df://host:port` of the scheduler.
    pub scheduler: Option<String>,
    /// Sessions a driver ([`Driver`](crate::Driver)) keeps at most,
    /// borrowed one caller at a time (default 8).
    #[serde(default)]
    pub pool_size: Option<usize>,
    /// Session settings applied to every session on the cluster (and to
    /// every session of a driver built from this job).
    #[serde(default)]
    pub session: BTreeMap<String, toml::Value>,
}

impl ClusterConfig {
    /// `[cluster.session]` as `key = value` pairs, values as text (strings,
    /// numbers and booleans; anything else is an error naming the key).
    pub fn session_pairs(&self) -> Result<Vec<(String, String)>> {
        self.session
            .iter()
            .map(|(key, value)| {
                let text = value
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| value.as_integer().map(|i| i.to_string()))
                    .or_else(|| value.as_float().map(|f| f.to_string()))
                    .or_else(|| value.as_bool().map(|b| b.to_string()))
                    .ok_or_else(|| {
                        Error::config(
                            format!("cluster.session.{key:?}"),
                            format!(
                                "is a {}; session settings are strings, numbers or booleans",
                                value.type_str()
                            ),
                        )
                    })?;
                Ok((key.clone(), text))
            })
            .collect()
    }
}

impl JobFile {
    /// A job file with the writer's job alone (no table, canary, catalogs
    /// or cluster).
    pub fn from_build(build: JobConfig) -> Self {
        JobFile {
            build,
            input_table: None,
            output_table: None,
            canary: None,
            cluster: None,
            sf: toml::Table::new(),
        }
    }

    /// Loads a job file, applies `SF_...` overrides from `env`, resolves
    /// paths relative to the file, and validates what can be validated
    /// without reading the input. Table names are checked against the
    /// catalogs when the job runs ([`run_job`](super::run_job)).
    pub fn load(path: &Path, env: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        let (text, base) = read_job_file(path)?;
        Self::parse(&text, &path.display().to_string(), &base, env)
    }

    /// [`load`](Self::load) from text; `origin` names the text in errors,
    /// `base` is the folder relative paths start from.
    pub fn parse(
        text: &str,
        origin: &str,
        base: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        let job = Self::read(text, origin, base, env)?;
        job.validate()?;
        Ok(job)
    }

    /// [`parse`](Self::parse) without [`validate`](Self::validate): every
    /// key known and every value of its type, the sections in their
    /// layers, paths resolved.
    pub fn read(
        text: &str,
        origin: &str,
        base: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        let mut doc = JobDocument::parse_with(text, origin, env, &key_is_text_here)?;
        let cluster: Option<ClusterConfig> = doc.take(&["cluster"])?;
        let mut sf: toml::Table = doc.take(&["sf"])?.unwrap_or_default();
        let mut canary: Option<CanaryConfig> = doc.take(&["validate", "canary"])?;
        let table: Option<String> = doc.take(&["output", "table"])?;
        let mode: Option<SaveMode> = doc.take(&["output", "mode"])?;
        let input_table = take_input_table(&mut doc)?;
        let output_table = match (table, mode) {
            (Some(table), mode) => Some(TableOutput {
                table,
                mode: mode.unwrap_or_default(),
            }),
            (None, Some(_)) => return Err(Error::config("output.mode", "is for output.table")),
            (None, None) => None,
        };
        let build = doc.into_job(base)?;

        if let Some(c) = &mut canary {
            c.path = PathBuf::from(resolve_path(base, &c.path.to_string_lossy()));
        }
        // Catalog warehouses given as local paths are relative to the job
        // file too.
        if let Some(toml::Value::Table(catalogs)) = sf.get_mut("catalog") {
            for (_, catalog) in catalogs.iter_mut() {
                if let toml::Value::Table(c) = catalog
                    && let Some(toml::Value::String(w)) = c.get_mut("warehouse")
                {
                    *w = resolve_path(base, w);
                }
            }
        }
        Ok(JobFile {
            build,
            input_table,
            output_table,
            canary,
            cluster,
            sf,
        })
    }

    /// Checks everything that does not need the input's schema or the
    /// catalogs' storage.
    pub fn validate(&self) -> Result<()> {
        match &self.input_table {
            Some(_) if self.build.input.is_some() => {
                return Err(Error::config(
                    "input.table",
                    "format = \"table\" reads the table alone; path, sql and [input.tables] do not apply",
                ));
            }
            Some(_) => {}
            None => self.build.validate_input()?,
        }
        match (&self.output_table, self.build.output.prefix.trim().is_empty()) {
            (Some(_), false) => return Err(Error::config("output", "give prefix or table, not both")),
            (None, true) => {
                return Err(Error::config(
                    "output.prefix",
                    "needs the snapshot's prefix URL (or output.table)",
                ));
            }
            _ => {}
        }
        self.build.validate_settings()?;
        if self.cluster.as_ref().and_then(|c| c.pool_size) == Some(0) {
            return Err(Error::config("cluster.pool_size", "must be at least 1"));
        }
        Ok(())
    }

    /// The job's `[sf]` settings as dotted pairs (see [`sf_settings`]).
    pub fn sf_settings(&self) -> Result<Vec<(String, String)>> {
        sf_settings(&self.sf)
    }

    /// The catalogs the job configures under `[sf.catalog.NAME]`.
    pub fn catalogs(&self) -> Result<Catalogs> {
        Catalogs::from_settings(self.sf_settings()?)
    }

    /// Where the job writes, for reports: the table's name, or the prefix.
    pub fn destination(&self) -> &str {
        match &self.output_table {
            Some(t) => &t.table,
            None => &self.build.output.prefix,
        }
    }

    /// The scheduler the job asks for in `[cluster] scheduler`.
    pub fn scheduler(&self) -> Option<&str> {
        self.cluster.as_ref().and_then(|c| c.scheduler.as_deref())
    }
}

/// Takes `[input]` out of the document when it reads a warehouse table
/// (`format = "table"`), and returns the table's name; leaves any other
/// input to the writer.
/// Which keys of a job file are text, for its `SF_<SECTION>__<KEY>`
/// overrides: this layer's sections by their types, the rest by the
/// writer's job.
fn key_is_text_here(path: &[String]) -> Option<bool> {
    let parts: Vec<&str> = path.iter().map(String::as_str).collect();
    match parts.as_slice() {
        ["input" | "output", "table"] => Some(true),
        ["output", "mode"] => Some(false),
        ["cluster", rest @ ..] => key_is_text::<ClusterConfig>(&path[path.len() - rest.len()..]),
        ["validate", "canary", rest @ ..] => key_is_text::<CanaryConfig>(&path[path.len() - rest.len()..]),
        // Dotted settings of any type.
        ["sf", ..] => None,
        _ => key_is_text::<JobConfig>(path),
    }
}

fn take_input_table(doc: &mut JobDocument) -> Result<Option<String>> {
    let is_table = doc
        .get(&["input", "format"])
        .and_then(toml::Value::as_str)
        .is_some_and(|f| f == "table");
    if !is_table {
        if doc.get(&["input", "table"]).is_some() {
            return Err(Error::config("input.table", "is for format = \"table\""));
        }
        return Ok(None);
    }
    let Some(toml::Value::Table(mut input)) = doc.remove(&["input"]) else {
        return Err(Error::Internal("[input] was checked to be a table".into()));
    };
    input.remove("format");
    let table = match input.remove("table") {
        Some(toml::Value::String(t)) if !t.trim().is_empty() => t,
        Some(toml::Value::String(_)) | None => {
            return Err(Error::config(
                "input.table",
                "format = \"table\" needs the warehouse table to read (table = \"catalog.db.table\")",
            ));
        }
        Some(other) => {
            return Err(Error::config(
                "input.table",
                format!("is a {}; expected the table's name", other.type_str()),
            ));
        }
    };
    if !input.is_empty() {
        return Err(Error::config(
            "input.table",
            "format = \"table\" reads the table alone; path, sql and [input.tables] do not apply",
        ));
    }
    Ok(Some(table))
}

#[cfg(test)]
mod tests {
    use sf_manifest::Classified;
    use sf_writer::publish::gates::OnFail;

    use super::*;

    const MINIMAL: &str = r#"
key_col = "id"
[input]
format = "parquet"
path = "data/users.parquet"
[routing]
num_dbs = 8
[output]
prefix = "out/snap"
"#;

    fn parse_env(text: &str, env: &[(&str, &str)]) -> Result<JobFile> {
        JobFile::parse(
            text,
            "job.toml",
            Path::new("/jobs"),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn a_plain_job_is_the_writer_s_job() {
        let job = parse_env(MINIMAL, &[]).expect("parse");
        let writer = sf_writer::config::parse(MINIMAL, "job.toml", Path::new("/jobs"), std::iter::empty())
            .expect("the writer's loader");
        assert_eq!(job, JobFile::from_build(writer));
        assert_eq!(job.destination(), "/jobs/out/snap");
    }

    #[test]
    fn catalog_warehouses_resolve_against_the_job_file() {
        let c = parse_env(
            &format!(
                "{}\n[sf.catalog.wh]\nwarehouse = \"lake\"\n[sf.catalog.s3]\nwarehouse = \"s3://b/w\"\n",
                MINIMAL.replace("prefix = \"out/snap\"", "table = \"wh.db.t\"")
            ),
            &[],
        )
        .expect("parse");
        let pairs = c.sf_settings().expect("settings");
        assert!(
            pairs.contains(&("sf.catalog.wh.warehouse".into(), "/jobs/lake".into())),
            "{pairs:?}"
        );
        assert!(
            pairs.contains(&("sf.catalog.s3.warehouse".into(), "s3://b/w".into())),
            "{pairs:?}"
        );
        assert_eq!(c.destination(), "wh.db.t");
        assert_eq!(
            c.output_table,
            Some(TableOutput {
                table: "wh.db.t".into(),
                mode: SaveMode::Error
            })
        );
    }

    #[test]
    fn catalogs_of_a_job_file_resolve_against_it() {
        let job = parse_env(
            "key_col = \"id\"\n[input]\nformat = \"csv\"\npath = \"in.csv\"\n[routing]\nnum_dbs = 2\n[output]\ntable = \"wh.db.t\"\n\
             [sf.catalog.wh]\nwarehouse = \"lake\"\n[sf.catalog.s3]\nwarehouse = \"s3://b/w\"\n",
            &[],
        )
        .expect("parse");
        let catalogs = job.catalogs().expect("catalogs");
        assert_eq!(catalogs.get("wh").expect("wh").warehouse, "/jobs/lake");
        assert_eq!(catalogs.get("s3").expect("s3").warehouse, "s3://b/w");
    }

    #[test]
    fn a_table_input_names_its_table_alone() {
        let table = MINIMAL.replace(
            "format = \"parquet\"\npath = \"data/users.parquet\"",
            "format = \"table\"\ntable = \"wh.db.users\"",
        );
        let c = parse_env(&format!("{table}\n[cluster]\npool_size = 3\n"), &[]).expect("table input");
        assert_eq!(c.input_table.as_deref(), Some("wh.db.users"));
        assert_eq!(c.build.input, None);
        assert_eq!(c.cluster.as_ref().and_then(|c| c.pool_size), Some(3));

        let cases = [
            (MINIMAL.replace("path = \"data/users.parquet\"", ""), "input.path"),
            (table.replace("table = \"wh.db.users\"", ""), "input.table"),
            (
                table.replace(
                    "table = \"wh.db.users\"",
                    "table = \"wh.db.users\"\npath = \"x.parquet\"",
                ),
                "path, sql and [input.tables] do not apply",
            ),
            (
                MINIMAL.replace(
                    "path = \"data/users.parquet\"",
                    "path = \"a.parquet\"\ntable = \"wh.db.t\"",
                ),
                "input.table: is for format = \"table\"",
            ),
            (format!("{table}\n[cluster]\npool_size = 0\n"), "cluster.pool_size"),
            (
                MINIMAL.replace("prefix = \"out/snap\"", "prefix = \"out/snap\"\ntable = \"wh.db.t\""),
                "give prefix or table, not both",
            ),
            (
                MINIMAL.replace("prefix = \"out/snap\"", "mode = \"overwrite\""),
                "output.mode: is for output.table",
            ),
            (MINIMAL.replace("prefix = \"out/snap\"", ""), "(or output.table)"),
        ];
        for (text, want) in cases {
            let e = parse_env(&text, &[]).expect_err(want);
            assert!(e.to_string().contains(want), "{want}: {e}");
            assert_eq!(e.kind(), sf_manifest::ErrorKind::Config);
        }
    }

    #[test]
    fn the_canary_and_the_save_mode_belong_here() {
        let text = format!(
            "{}\n[validate]\nmin_rows = 10\ncanary = {{ path = \"keys.txt\" }}\n[sf.catalog.wh]\nwarehouse = \"w\"\n",
            MINIMAL.replace("prefix = \"out/snap\"", "table = \"wh.db.t\"\nmode = \"append\"")
        );
        let c = parse_env(&text, &[]).expect("parse");
        let canary = c.canary.as_ref().expect("canary");
        assert_eq!(canary.on_fail, OnFail::Fail);
        assert_eq!(canary.path, PathBuf::from("/jobs/keys.txt"));
        assert_eq!(c.build.validate.min_rows.limit(), 10, "the writer keeps its gates");
        assert_eq!(c.output_table.as_ref().map(|t| t.mode), Some(SaveMode::Append));
        let e = parse_env(
            &text.replace("path = \"keys.txt\"", "path = \"keys.txt\", when = 1"),
            &[],
        )
        .expect_err("unknown canary key");
        assert!(
            e.to_string().contains("validate.canary") && e.to_string().contains("when"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_are_errors_naming_their_place_in_either_layer() {
        // With sections of this layer, the writer reads what is left of the
        // document: the error names the key and its section.
        let text = format!("{MINIMAL}\n[cluster]\npool_size = 2\n[write]\nbatchsize = 3\n");
        let m = parse_env(&text, &[]).expect_err("unknown").to_string();
        assert!(
            m.contains("job.toml") && m.contains("batchsize") && m.contains("write"),
            "{m}"
        );
        let m = parse_env(&format!("{MINIMAL}\n[cluster]\nschedular = \"df://x\"\n"), &[])
            .expect_err("unknown cluster key")
            .to_string();
        assert!(m.contains("cluster") && m.contains("schedular"), "{m}");
        // Without them, the writer reads the text itself: a line and column.
        let m = parse_env(&format!("{MINIMAL}\n[write]\nbatchsize = 3\n"), &[])
            .expect_err("unknown")
            .to_string();
        assert!(m.contains("batchsize") && m.contains("line"), "{m}");
    }

    #[test]
    fn environment_overrides_reach_every_section() {
        let c = parse_env(
            MINIMAL,
            &[
                ("SF_CLUSTER__SCHEDULER", "df://sched:50050"),
                ("SF_ROUTING__NUM_DBS", "16"),
                ("SF_CLUSTER__POOL_SIZE", "2"),
            ],
        )
        .expect("parse");
        assert_eq!(c.scheduler(), Some("df://sched:50050"));
        assert_eq!(c.cluster.as_ref().and_then(|c| c.pool_size), Some(2));
        assert_eq!(c.build.routing.num_dbs, Some(16));
        let e = parse_env(MINIMAL, &[("SF_CLUSTER__POOL", "2")]).expect_err("unknown override");
        assert!(e.to_string().contains("SF_CLUSTER__POOL"), "{e}");
    }

    #[test]
    fn session_settings_are_plain_values() {
        let c = parse_env(
            &format!(
                "{MINIMAL}\n[cluster.session]\n\"datafusion.execution.batch_size\" = 4096\n\"ballista.x\" = true\n"
            ),
            &[],
        )
        .expect("parse");
        let pairs = c.cluster.as_ref().expect("cluster").session_pairs().expect("pairs");
        assert_eq!(
            pairs,
            vec![
                ("ballista.x".to_string(), "true".to_string()),
                ("datafusion.execution.batch_size".to_string(), "4096".to_string())
            ]
        );
        let bad = parse_env(&format!("{MINIMAL}\n[cluster.session]\n\"a.b\" = [1]\n"), &[]).expect("parse");
        let e = bad
            .cluster
            .as_ref()
            .expect("cluster")
            .session_pairs()
            .expect_err("array");
        assert!(e.to_string().contains("cluster.session"), "{e}");
    }
}
