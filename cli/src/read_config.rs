//! `reader.toml`: `sf-read`'s settings in a file (`--config FILE`, or
//! the `SF_READ_CONFIG` variable).
//!
//! Three sections, the reference CLI's two and one for storage:
//!
//! - `[reader]`: `current_url`, and any setting of the reader
//!   ([`ReaderSettings`]: `cache_dir`, `sqlite_mode`, `refresh_interval`,
//!   ...). The reference's names are read too where they have a
//!   counterpart (`local_root` is `cache_dir`, `max_workers` is
//!   `max_concurrency`, `s3_prefix` is the snapshot's prefix); its keys
//!   that have none here (`thread_safety`, `credentials_profile`, ...) are
//!   ignored with a warning, so its files load.
//! - `[output]`: `format`, `value_encoding`, `null_repr`.
//! - `[storage]`: storage options, as `--storage-option KEY=VALUE`.
//!
//! Any other key is refused, naming it and the file. Flags (and the
//! variables that stand for them, `SF_CURRENT_URL`, `SF_CACHE_DIR`)
//! override the file.

use std::path::Path;

use clap::ValueEnum;
use sf_reader::ReaderSettings;

use crate::exit::Failure;
use crate::output::{OutputFormat, ValueFormat};

/// What a `reader.toml` says.
#[derive(Debug, Clone, PartialEq)]
pub struct ReaderFile {
    /// `[reader] current_url` (or the reference's `s3_prefix`).
    pub current_url: Option<String>,
    /// `[reader]`'s reader settings, on `sf-read`'s defaults (no history
    /// fallback: a broken current manifest is the answer).
    pub settings: ReaderSettings,
    /// `[output] format`.
    pub format: Option<OutputFormat>,
    /// `[output] value_encoding`.
    pub values: Option<ValueFormat>,
    /// `[output] null_repr`: the value a `get` of a missing key prints.
    pub null_repr: Option<String>,
    /// `[storage]`, in the file's order.
    pub storage: Vec<(String, String)>,
}

/// The settings `sf-read` reads with when no file says otherwise.
pub fn default_settings() -> ReaderSettings {
    ReaderSettings {
        // One read, asked for now: a broken current manifest is the answer
        // (exit 3), not an older run.
        history_fallback: false,
        ..ReaderSettings::default()
    }
}

/// The reference's `[reader]` keys that mean nothing here, and why.
const IGNORED: &[(&str, &str)] = &[
    ("thread_safety", "lookups are always concurrent"),
    ("pool_checkout_timeout", "lookups are always concurrent"),
    (
        "slate_env_file",
        "storage settings come from [storage], --storage-option or the AWS_* variables",
    ),
    (
        "credentials_profile",
        "storage settings come from [storage], --storage-option or the AWS_* variables",
    ),
    ("reader_backend", "the backend is the snapshot's own"),
    (
        "sqlite_auto_per_shard_threshold_bytes",
        "auto mode's bound here is auto_range_threshold_bytes",
    ),
    (
        "sqlite_auto_total_budget_bytes",
        "auto mode's bound here is auto_range_threshold_bytes",
    ),
];

/// Reads and checks `path`.
pub fn load(path: &Path) -> Result<ReaderFile, Failure> {
    let place = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Failure::usage(&place, format!("cannot be read: {e}")))?;
    parse(&text, &place)
}

/// Parses and checks a `reader.toml` read from `place`.
pub fn parse(text: &str, place: &str) -> Result<ReaderFile, Failure> {
    let mut doc: toml::Table = text.parse().map_err(|e: toml::de::Error| Failure::usage(place, e))?;
    if let Some(other) = doc
        .keys()
        .find(|k| !["reader", "output", "storage"].contains(&k.as_str()))
    {
        return Err(Failure::usage(
            place,
            format!("unknown key `{other}`: the sections are [reader], [output] and [storage]"),
        ));
    }
    let mut reader = section(&mut doc, "reader", place)?;
    let mut output = section(&mut doc, "output", place)?;
    let storage_table = section(&mut doc, "storage", place)?;

    let current_url = text_key(&mut reader, "reader", "current_url", place)?;
    let s3_prefix = text_key(&mut reader, "reader", "s3_prefix", place)?;
    let current_url = match (current_url, s3_prefix) {
        (Some(_), Some(_)) => {
            return Err(Failure::usage(
                format!("{place}: [reader]"),
                "give current_url or s3_prefix, not both",
            ));
        }
        (url, prefix) => url.or(prefix),
    };
    for (reference, ours) in [("local_root", "cache_dir"), ("max_workers", "max_concurrency")] {
        if let Some(v) = reader.remove(reference) {
            if reader.contains_key(ours) {
                return Err(Failure::usage(
                    format!("{place}: [reader]"),
                    format!("give {ours} or {reference} (its name in the reference's reader.toml), not both"),
                ));
            }
            reader.insert(ours.to_string(), v);
        }
    }
    for (key, why) in IGNORED {
        if reader.remove(*key).is_some() {
            tracing::warn!("{place}: [reader] {key} is ignored: {why}");
        }
    }
    reader
        .entry("history_fallback")
        .or_insert(toml::Value::Boolean(default_settings().history_fallback));
    let settings = reader_settings(reader, place)?;
    settings
        .validate()
        .map_err(|e| Failure::usage(format!("{place}: [reader]"), e))?;

    let format = enum_key::<OutputFormat>(&mut output, "format", place)?;
    let values = enum_key::<ValueFormat>(&mut output, "value_encoding", place)?;
    let null_repr = match output.remove("null_repr") {
        None => None,
        Some(toml::Value::String(s)) => Some(s),
        Some(other) => return Err(wrong_type(place, "output", "null_repr", "a string", &other)),
    };
    if let Some(other) = output.keys().next() {
        return Err(Failure::usage(
            format!("{place}: [output]"),
            format!("unknown key `{other}`; expected format, value_encoding or null_repr"),
        ));
    }

    let mut storage = Vec::new();
    for (k, v) in storage_table {
        let value = match v {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => return Err(wrong_type(place, "storage", &k, "a string, number or boolean", &other)),
        };
        storage.push((k, value));
    }
    Ok(ReaderFile {
        current_url,
        settings,
        format,
        values,
        null_repr,
        storage,
    })
}

/// `[reader]`'s settings. A value of the wrong type is named by its key:
/// serde's message for it does not say which key it was, so the keys are
/// tried one by one (every setting has a default) to find it.
fn reader_settings(table: toml::Table, place: &str) -> Result<ReaderSettings, Failure> {
    let parse = |t: toml::Table| toml::Value::Table(t).try_into::<ReaderSettings>();
    parse(table.clone()).map_err(|e| {
        let culprit = table
            .iter()
            .find(|(k, v)| parse(toml::Table::from_iter([((*k).clone(), (*v).clone())])).is_err());
        match culprit {
            Some((k, _)) if !e.message().contains(k.as_str()) => {
                Failure::usage(format!("{place}: [reader] {k}"), e.message())
            }
            _ => Failure::usage(format!("{place}: [reader]"), e.message()),
        }
    })
}

/// The table `[name]` of `doc` (empty when absent).
fn section(doc: &mut toml::Table, name: &str, place: &str) -> Result<toml::Table, Failure> {
    match doc.remove(name) {
        None => Ok(toml::Table::new()),
        Some(toml::Value::Table(t)) => Ok(t),
        Some(other) => Err(Failure::usage(
            place,
            format!("`{name}` is a {}, not a [{name}] table", other.type_str()),
        )),
    }
}

fn wrong_type(place: &str, section: &str, key: &str, want: &str, got: &toml::Value) -> Failure {
    Failure::usage(
        format!("{place}: [{section}] {key}"),
        format!("expected {want}, got a {}", got.type_str()),
    )
}

/// A text key of `[section]`, taken out of `table`; an empty string is
/// no value (as the reference reads it).
fn text_key(table: &mut toml::Table, section: &str, key: &str, place: &str) -> Result<Option<String>, Failure> {
    match table.remove(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) if s.is_empty() => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(wrong_type(place, section, key, "a string", &other)),
    }
}

/// An `[output]` key naming one of `T`'s values, taken out of `table`.
fn enum_key<T: ValueEnum>(table: &mut toml::Table, key: &str, place: &str) -> Result<Option<T>, Failure> {
    let Some(value) = table.remove(key) else {
        return Ok(None);
    };
    let names: Vec<String> = T::value_variants()
        .iter()
        .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_string()))
        .collect();
    let text = match value {
        toml::Value::String(s) => s,
        other => return Err(wrong_type(place, "output", key, "a string", &other)),
    };
    T::from_str(&text, false).map(Some).map_err(|_| {
        Failure::usage(
            format!("{place}: [output] {key}"),
            format!("{text:?} is not one of {}", names.join(", ")),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sf_reader::SqliteMode;

    #[test]
    fn the_reference_example_loads() {
        let text = r#"
[reader]
current_url = "s3://bucket/prefix/_CURRENT"
thread_safety = "lock"
max_workers = 4
slate_env_file = ""
credentials_profile = "default"

[output]
format = "jsonl"
value_encoding = "base64"
null_repr = "null"
"#;
        let f = parse(text, "reader.toml").expect("loads");
        assert_eq!(f.current_url.as_deref(), Some("s3://bucket/prefix/_CURRENT"));
        assert_eq!(f.settings.max_concurrency, 4);
        assert!(!f.settings.history_fallback);
        assert_eq!(f.format, Some(OutputFormat::Jsonl));
        assert_eq!(f.values, Some(ValueFormat::Base64));
        assert_eq!(f.null_repr.as_deref(), Some("null"));
    }

    #[test]
    fn our_settings_and_storage_load() {
        let text = r#"
[reader]
s3_prefix = "s3://b/p"
local_root = "/var/cache/sf"
sqlite_mode = "range"
refresh_interval = "30s"

[storage]
aws_endpoint = "http://127.0.0.1:9000"
aws_allow_http = true
"#;
        let f = parse(text, "r.toml").expect("loads");
        assert_eq!(f.current_url.as_deref(), Some("s3://b/p"));
        assert_eq!(f.settings.cache_dir.as_deref(), Some(Path::new("/var/cache/sf")));
        assert_eq!(f.settings.sqlite_mode, SqliteMode::Range);
        assert_eq!(f.settings.refresh_interval, Some(std::time::Duration::from_secs(30)));
        assert_eq!(
            f.storage,
            vec![
                ("aws_allow_http".to_string(), "true".to_string()),
                ("aws_endpoint".to_string(), "http://127.0.0.1:9000".to_string()),
            ]
        );
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        for (text, names) in [
            ("[reder]\n", "reder"),
            ("[reader]\nsqlite_mod = \"range\"\n", "sqlite_mod"),
            ("[output]\nformt = \"json\"\n", "formt"),
            ("[output]\nformat = \"text\"\n", "text"),
            ("[reader]\nmax_workers = 2\nmax_concurrency = 3\n", "max_workers"),
            (
                "[reader]\ncache_dir = \"/c\"\nsqlite_mode = 5\n",
                "[reader] sqlite_mode",
            ),
            ("[reader]\nverify_checksums = \"yes\"\n", "[reader] verify_checksums"),
        ] {
            let e = parse(text, "my-reader.toml").expect_err(text);
            assert_eq!(e.exit_code(), crate::exit::CONFIG, "{text}");
            let m = e.message();
            assert!(m.contains(names) && m.contains("my-reader.toml"), "{text}: {m}");
        }
    }
}
