//! Reading a job file: TOML text, its `SF_*` environment overrides, paths
//! relative to the file, then validation.
//!
//! An environment variable `SF_<SECTION>__<KEY>` overrides a key
//! (`SF_ROUTING__NUM_DBS=16`, `SF_OUTPUT__PREFIX=s3://b/p`, `SF_KEY_COL=id`,
//! `SF_OUTPUT__SQLITE__CACHE_MIB=32`); its value is read as TOML when it
//! parses as such (numbers, booleans, arrays) and as a string otherwise.
//!
//! [`JobDocument`] is the text as a TOML document with the overrides
//! applied. A job file of the writer alone goes straight through [`parse`];
//! a layer above the writer that owns more sections takes its keys out of
//! the document first ([`JobDocument::take`]) and hands the rest to
//! [`JobDocument::into_job`].

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::schema::JobConfig;
use crate::error::{Error, Result};

/// Prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "SF_";

/// Loads a job file, applies `SF_...` overrides from `env`, resolves paths
/// relative to the file, and validates what can be validated without
/// reading the input.
pub fn load(path: &Path, env: impl IntoIterator<Item = (String, String)>) -> Result<JobConfig> {
    let (text, base) = read_job_file(path)?;
    parse(&text, &path.display().to_string(), &base, env)
}

/// A job file's text and the folder its relative paths start from.
pub fn read_job_file(path: &Path) -> Result<(String, PathBuf)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::config(path.display().to_string(), format!("cannot read: {e}")))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok((text, base))
}

/// [`load`] from text; `origin` names the text in errors, `base` is the
/// folder relative paths start from.
pub fn parse(
    text: &str,
    origin: &str,
    base: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<JobConfig> {
    let job = JobDocument::parse(text, origin, env)?.into_job(base)?;
    job.validate()?;
    Ok(job)
}

/// A job file as a TOML document, with its environment overrides applied.
#[derive(Debug, Clone)]
pub struct JobDocument {
    table: toml::Table,
    text: String,
    origin: String,
    overrides: Vec<String>,
    /// Whether `table` is still exactly the text (no override applied, no
    /// key taken out): then the job is read from the text itself, so that
    /// errors point at a line and column.
    pristine: bool,
}

impl JobDocument {
    /// Parses `text` (named `origin` in errors) and applies the `SF_*`
    /// variables of `env` in name order.
    pub fn parse(text: &str, origin: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| Error::config(origin, e.to_string().trim_end().to_string()))?;
        let mut overrides: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
        overrides.sort();
        for (var, value) in &overrides {
            apply_override(&mut table, var, value)?;
        }
        Ok(JobDocument {
            table,
            text: text.to_string(),
            origin: origin.to_string(),
            pristine: overrides.is_empty(),
            overrides: overrides.into_iter().map(|(k, _)| k).collect(),
        })
    }

    /// What names the document in errors.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The value at `path` (`["output", "table"]`), if there is one.
    pub fn get(&self, path: &[&str]) -> Option<&toml::Value> {
        let (last, parents) = path.split_last()?;
        let mut table = &self.table;
        for part in parents {
            table = table.get(*part)?.as_table()?;
        }
        table.get(*last)
    }

    /// Takes the value at `path` out of the document and deserialises it;
    /// an error names the key (`validate.canary: ...`).
    pub fn take<T: DeserializeOwned>(&mut self, path: &[&str]) -> Result<Option<T>> {
        let Some(value) = self.remove(path) else {
            return Ok(None);
        };
        let key = path.join(".");
        value
            .try_into()
            .map(Some)
            .map_err(|e: toml::de::Error| self.error(&format!("{key}: {}", e.to_string().trim_end())))
    }

    /// Takes the value at `path` out of the document as it is.
    pub fn remove(&mut self, path: &[&str]) -> Option<toml::Value> {
        let (last, parents) = path.split_last()?;
        let mut table = &mut self.table;
        for part in parents {
            table = table.get_mut(*part)?.as_table_mut()?;
        }
        let value = table.remove(*last)?;
        self.pristine = false;
        Some(value)
    }

    /// A configuration error about the document, naming it and the
    /// overrides applied to it.
    pub fn error(&self, message: &str) -> Error {
        if self.overrides.is_empty() {
            Error::config(&self.origin, message)
        } else {
            Error::config(
                &self.origin,
                format!("{message} (with overrides from {})", self.overrides.join(", ")),
            )
        }
    }

    /// The writer's job in what is left of the document, with its paths
    /// resolved against `base` (not yet validated: see
    /// [`JobConfig::validate`]).
    pub fn into_job(self, base: &Path) -> Result<JobConfig> {
        let parsed = if self.pristine {
            // Straight from the text, so errors point at a line and column.
            toml::from_str(&self.text)
        } else {
            toml::Value::Table(self.table.clone()).try_into()
        };
        let mut job: JobConfig = parsed.map_err(|e: toml::de::Error| self.error(e.to_string().trim_end()))?;
        job.resolve_paths(base);
        Ok(job)
    }
}

fn apply_override(doc: &mut toml::Table, var: &str, value: &str) -> Result<()> {
    let path: Vec<String> = var[ENV_PREFIX.len()..]
        .split("__")
        .map(|p| p.to_ascii_lowercase())
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(Error::config(var, "is not SF_<SECTION>__<KEY> (empty part)"));
    }
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let mut table = doc;
    for part in &path[..path.len() - 1] {
        let entry = table
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| Error::config(var, format!("{part} is a value, not a section")))?;
    }
    table.insert(path[path.len() - 1].clone(), parsed);
    Ok(())
}

/// `p` as written in a job file in folder `base`: URLs and absolute paths
/// as they are, relative paths joined to `base`.
pub fn resolve_path(base: &Path, p: &str) -> String {
    if p.contains("://") || Path::new(p).is_absolute() {
        p.to_string()
    } else {
        base.join(p).to_string_lossy().into_owned()
    }
}

impl JobConfig {
    /// Makes the job's relative paths (input, prefix, work folder) relative
    /// to `base`, the job file's folder.
    pub fn resolve_paths(&mut self, base: &Path) {
        if let Some(input) = &mut self.input {
            if let Some(p) = &input.path {
                input.path = Some(resolve_path(base, p));
            }
            for t in input.tables.values_mut() {
                t.path = resolve_path(base, &t.path);
            }
        }
        if !self.output.prefix.trim().is_empty() {
            self.output.prefix = resolve_path(base, &self.output.prefix);
        }
        if let Some(w) = &self.write.work_dir {
            self.write.work_dir = Some(PathBuf::from(resolve_path(base, &w.to_string_lossy())));
        }
    }
}
