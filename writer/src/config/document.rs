//! Reading a job file: TOML text, its `SF_*` environment overrides, paths
//! relative to the file, then validation.
//!
//! An environment variable `SF_<SECTION>__<KEY>` overrides a key
//! (`SF_ROUTING__NUM_DBS=16`, `SF_OUTPUT__PREFIX=s3://b/p`,
//! `SF_OUTPUT__SQLITE__CACHE_MIB=32`). Only variables with a `__` are
//! overrides: a name without one (`SF_CURRENT_URL`, `SF_CACHE_DIR`,
//! `SF_LOG_FORMAT`, a deployment's own `SF_CLUSTER_URL`) belongs to another
//! program or to the deployment and is ignored, so one environment can
//! carry them all. An override of a key that does not exist is an error
//! naming the variable (a typo never passes silently), unless the variable
//! is one another program reads ([`NOT_OVERRIDES`]).
//!
//! A value is typed by the key it sets: for a text key (a run id, a prefix,
//! a column name) the value is the text as it is, whatever it looks like
//! (`SF_OUTPUT__RUN_ID=20261207` is the string `"20261207"`); for any other
//! key it is read as TOML (numbers, booleans, arrays), or as a string when
//! it does not parse.
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

/// What separates the parts of an override's key (`SF_OUTPUT__RUN_ID`):
/// a variable without it is not an override.
pub const ENV_SEPARATOR: &str = "__";

/// Variables of the `SF_<SECTION>__<KEY>` form that other programs read
/// and that therefore are not job-file overrides. None today: every
/// variable the other programs take has no `__`; a new one with a `__`
/// goes here.
pub const NOT_OVERRIDES: &[&str] = &[];

/// Whether the environment variable `name` is a job-file override.
pub fn is_override(name: &str) -> bool {
    name.strip_prefix(ENV_PREFIX)
        .is_some_and(|rest| rest.contains(ENV_SEPARATOR))
        && !NOT_OVERRIDES.contains(&name)
}

/// Whether the key at a path is text, as far as an override's value is
/// concerned: `Some(true)` for a text key, `Some(false)` for a key of
/// another type, `None` when it cannot be told (no such key, a key whose
/// type takes any value).
pub type KeyIsText<'a> = &'a dyn Fn(&[String]) -> Option<bool>;

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
    /// Parses `text` (named `origin` in errors) and applies the overrides
    /// among `env` ([`is_override`]) in name order, each typed by the
    /// writer's key it sets.
    pub fn parse(text: &str, origin: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        Self::parse_with(text, origin, env, &key_is_text::<JobConfig>)
    }

    /// [`parse`](Self::parse) for a layer with sections of its own:
    /// `is_text` tells which keys are text.
    pub fn parse_with(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
        is_text: KeyIsText<'_>,
    ) -> Result<Self> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| Error::config(origin, e.to_string().trim_end().to_string()))?;
        let mut overrides: Vec<(String, String)> = env.into_iter().filter(|(k, _)| is_override(k)).collect();
        overrides.sort();
        for (var, value) in &overrides {
            apply_override(&mut table, var, value, is_text)?;
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

fn apply_override(doc: &mut toml::Table, var: &str, value: &str, is_text: KeyIsText<'_>) -> Result<()> {
    let path: Vec<String> = var[ENV_PREFIX.len()..]
        .split(ENV_SEPARATOR)
        .map(|p| p.to_ascii_lowercase())
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(Error::config(var, "is not SF_<SECTION>__<KEY> (empty part)"));
    }
    let parsed = match is_text(&path) {
        Some(true) => toml::Value::String(value.to_string()),
        _ => format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_string())),
    };
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
    /// Makes the job's relative paths (input, prefix, work folder, vector
    /// routing artifacts) relative
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
        if let Some(v) = &mut self.vector {
            for p in [&mut v.centroids, &mut v.hyperplanes].into_iter().flatten() {
                *p = resolve_path(base, p);
            }
        }
    }
}

/// Whether the key at `path` of a `T` is text: `T`'s `Deserialize` is
/// walked down the path (a struct's field, a map's entry, an option's
/// content) without any data, and the kind of value it asks for at the end
/// is the answer. See [`KeyIsText`].
pub fn key_is_text<T: DeserializeOwned>(path: &[String]) -> Option<bool> {
    let found = std::cell::Cell::new(None);
    let _ = T::deserialize(probe::Probe { path, found: &found });
    found.get()
}

/// A deserializer that holds no data: it follows a key path into a type's
/// `Deserialize` and notes what the type asks for at the path's end, then
/// stops the walk with an error.
mod probe {
    use std::cell::Cell;

    use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};

    #[derive(Debug)]
    pub(super) struct Stop;

    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("probe")
        }
    }

    impl std::error::Error for Stop {}

    impl de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Stop
        }
    }

    pub(super) struct Probe<'a> {
        pub(super) path: &'a [String],
        pub(super) found: &'a Cell<Option<bool>>,
    }

    impl Probe<'_> {
        /// At the path's end, the type asks for a value of this kind.
        fn leaf<T>(self, text: bool) -> Result<T, Stop> {
            if self.path.is_empty() {
                self.found.set(Some(text));
            }
            Err(Stop)
        }

        /// One more level: the entry `path[0]`, if `known` allows it.
        fn enter<'de, V: Visitor<'de>>(self, visitor: V, known: Option<&[&str]>) -> Result<V::Value, Stop> {
            let Some((key, rest)) = self.path.split_first() else {
                return self.leaf(false);
            };
            if known.is_some_and(|fields| !fields.contains(&key.as_str())) {
                return Err(Stop);
            }
            visitor.visit_map(OneEntry {
                key: Some(key),
                value: Probe {
                    path: rest,
                    found: self.found,
                },
            })
        }
    }

    struct OneEntry<'a> {
        key: Option<&'a String>,
        value: Probe<'a>,
    }

    impl<'de> MapAccess<'de> for OneEntry<'_> {
        type Error = Stop;

        fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Stop> {
            match self.key.take() {
                Some(k) => seed.deserialize(k.as_str().into_deserializer()).map(Some),
                None => Ok(None),
            }
        }

        fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Stop> {
            seed.deserialize(Probe {
                path: self.value.path,
                found: self.value.found,
            })
        }
    }

    macro_rules! not_text {
        ($($method:ident)*) => {
            $(fn $method<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
                self.leaf(false)
            })*
        };
    }

    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = Stop;

        not_text! {
            deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
            deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_f32
            deserialize_f64 deserialize_bytes deserialize_byte_buf deserialize_unit
            deserialize_seq deserialize_ignored_any
        }

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            // A type that takes whatever comes (an untagged enum, a TOML
            // value): nothing to tell.
            Err(Stop)
        }

        fn deserialize_char<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            self.leaf(true)
        }

        fn deserialize_str<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            self.leaf(true)
        }

        fn deserialize_string<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            self.leaf(true)
        }

        fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            self.leaf(true)
        }

        fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
            visitor.visit_some(self)
        }

        fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, Stop> {
            visitor.visit_newtype_struct(self)
        }

        fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, _: V) -> Result<V::Value, Stop> {
            self.leaf(false)
        }

        fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, Stop> {
            self.leaf(false)
        }

        fn deserialize_tuple_struct<V: Visitor<'de>>(self, _: &'static str, _: usize, _: V) -> Result<V::Value, Stop> {
            self.leaf(false)
        }

        fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
            self.enter(visitor, None)
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Stop> {
            self.enter(visitor, Some(fields))
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _: &'static str,
            _: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            // A choice among names (`backend = "sqlite"`): TOML or text
            // come to the same.
            self.leaf(false)
        }
    }
}
