//! `sf-read exec --script FILE`: a batch of read ops against one open
//! reader, a JSON line per op.
//!
//! A script is JSON or YAML (by the file's extension, `.json`, `.yaml` or
//! `.yml`, else by its first character): a list of ops, or the
//! reference's mapping `{commands: [...], on_error: stop|continue}`. An op
//! is a mapping with `op` and that op's fields:
//!
//! | op | fields |
//! |---|---|
//! | `get`, `route` | `key`, `routing_context` |
//! | `multiget` | `keys`, `routing_context` |
//! | `search` | `vector`, `top_k`, `num_probes`, `shards`, `routing_context`, `filter` |
//! | `health` | `max_age` (`"24h"`) or `staleness_threshold` (seconds) |
//! | `history` | `limit` |
//! | `refresh`, `info`, `shards` | none |
//!
//! The whole script is checked before the reader opens: a script that is
//! not a list, an unknown op, a missing field, an unknown one or one of
//! the wrong type is refused (exit 2) naming the op's index and field
//! (`ops[3].key`). Each op then prints the line `sf-read --output json`
//! prints for it, or an error line (`{"op": ..., "error": ..., "key":
//! ..., "exit_code": ...}`); a failing op does not stop the batch unless
//! `--stop-on-error` (or `on_error: stop`). The exit code is 0 when every
//! op succeeded, 1 when one failed.

use std::io::Write;
use std::path::Path;

use serde_json::Value;
use sf_reader::duration::parse_duration;

use crate::exit::{self, Failure};
use crate::output::{Json, OutputFormat, Printer, obj, output_error};
use crate::read_ops::{OP_NAMES, Op, SearchOp, Session};

/// A checked script.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    /// The ops, in order.
    pub ops: Vec<Op>,
    /// `on_error: stop` of the mapping form.
    pub stop_on_error: bool,
}

/// How a script is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// The syntax of the script at `path` holding `text`: by extension, else
/// JSON when it starts with `[` or `{`, else YAML.
pub fn syntax_of(path: &Path, text: &str) -> Syntax {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("json") => Syntax::Json,
        Some("yaml" | "yml") => Syntax::Yaml,
        _ if text.trim_start().starts_with(['[', '{']) => Syntax::Json,
        _ => Syntax::Yaml,
    }
}

/// Reads and checks the script at `path`.
pub fn load(path: &Path) -> Result<Script, Failure> {
    let place = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Failure::usage(&place, format!("cannot be read: {e}")))?;
    parse(&text, syntax_of(path, &text), &place)
}

/// Parses and checks a script read from `place`.
pub fn parse(text: &str, syntax: Syntax, place: &str) -> Result<Script, Failure> {
    let doc: Value = match syntax {
        Syntax::Json => serde_json::from_str(text).map_err(|e| Failure::usage(place, format!("not JSON: {e}")))?,
        Syntax::Yaml => serde_yaml::from_str(text).map_err(|e| Failure::usage(place, format!("not YAML: {e}")))?,
    };
    let (list, name, stop_on_error) = match doc {
        Value::Array(list) => (list, "ops", false),
        Value::Object(mut map) => {
            let on_error = match map.remove("on_error") {
                None => false,
                Some(Value::String(s)) if s == "stop" => true,
                Some(Value::String(s)) if s == "continue" => false,
                Some(other) => {
                    return Err(Failure::usage(
                        format!("{place}: on_error"),
                        format!("expected \"stop\" or \"continue\", got {}", shown(&other)),
                    ));
                }
            };
            let commands = match map.remove("commands") {
                Some(Value::Array(list)) => list,
                Some(other) => {
                    return Err(Failure::usage(
                        format!("{place}: commands"),
                        format!("expected a list of ops, got {}", shown(&other)),
                    ));
                }
                None => {
                    return Err(Failure::usage(
                        place,
                        "a script is a list of ops, or a mapping with `commands` (a list of ops)",
                    ));
                }
            };
            if let Some(other) = map.keys().next() {
                return Err(Failure::usage(
                    place,
                    format!("unknown key `{other}`; the mapping form has commands and on_error"),
                ));
            }
            (commands, "commands", on_error)
        }
        other => {
            return Err(Failure::usage(
                place,
                format!(
                    "a script is a list of ops (or a mapping with `commands`), not {}",
                    shown(&other)
                ),
            ));
        }
    };
    let ops = list
        .into_iter()
        .enumerate()
        .map(|(i, item)| parse_op(item, &format!("{place}: {name}[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(Script { ops, stop_on_error })
}

/// A value's kind, as error messages name it.
fn shown(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(s) => format!("a string ({s:?})"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

/// The fields of one op, taken out one by one; what is left is unknown.
struct Fields<'a> {
    map: serde_json::Map<String, Value>,
    at: &'a str,
    op: &'static str,
}

impl Fields<'_> {
    fn wrong(&self, field: &str, want: &str, got: &Value) -> Failure {
        Failure::usage(
            format!("{}.{field}", self.at),
            format!("expected {want}, got {}", shown(got)),
        )
    }

    fn take(&mut self, field: &str) -> Option<Value> {
        self.map.remove(field).filter(|v| !v.is_null())
    }

    fn required(&mut self, field: &str) -> Result<Value, Failure> {
        self.take(field)
            .ok_or_else(|| Failure::usage(format!("{}.{field}", self.at), format!("missing: {} needs it", self.op)))
    }

    /// A key: text, or an integer (written as its digits).
    fn key_of(&self, field: &str, v: Value) -> Result<String, Failure> {
        match v {
            Value::String(s) => Ok(s),
            Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
            other => Err(self.wrong(field, "a string or an integer", &other)),
        }
    }

    fn key(&mut self) -> Result<String, Failure> {
        let v = self.required("key")?;
        self.key_of("key", v)
    }

    fn keys(&mut self) -> Result<Vec<String>, Failure> {
        match self.required("keys")? {
            Value::Array(items) if !items.is_empty() => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| self.key_of(&format!("keys[{i}]"), v))
                .collect(),
            other => Err(self.wrong("keys", "a non-empty list of keys", &other)),
        }
    }

    /// `routing_context`: a mapping of columns to values, as `COLUMN=VALUE`.
    fn ctx(&mut self) -> Result<Vec<String>, Failure> {
        match self.take("routing_context") {
            None => Ok(Vec::new()),
            Some(Value::Object(map)) => map
                .into_iter()
                .map(|(column, v)| match v {
                    Value::String(s) => Ok(format!("{column}={s}")),
                    Value::Number(n) => Ok(format!("{column}={n}")),
                    Value::Bool(b) => Ok(format!("{column}={b}")),
                    other => Err(self.wrong(
                        &format!("routing_context.{column}"),
                        "a string, number or boolean",
                        &other,
                    )),
                })
                .collect(),
            Some(other) => Err(self.wrong("routing_context", "a mapping of column to value", &other)),
        }
    }

    fn count(&mut self, field: &str, min: u64, max: u64) -> Result<Option<u64>, Failure> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::Number(n)) if n.as_u64().is_some_and(|n| (min..=max).contains(&n)) => Ok(n.as_u64()),
            Some(other) => Err(self.wrong(field, &format!("an integer from {min} to {max}"), &other)),
        }
    }

    fn text(&mut self, field: &str) -> Result<Option<String>, Failure> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong(field, "a string", &other)),
        }
    }

    /// Nothing may be left.
    fn done(self) -> Result<(), Failure> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(k) => Err(Failure::usage(
                format!("{}.{k}", self.at),
                format!("unknown field of {}", self.op),
            )),
        }
    }
}

/// One op of a script, at `at` (`file: ops[3]`).
fn parse_op(item: Value, at: &str) -> Result<Op, Failure> {
    let Value::Object(mut map) = item else {
        return Err(Failure::usage(
            at,
            format!("an op is a mapping with `op`, not {}", shown(&item)),
        ));
    };
    let name = match map.remove("op") {
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(Failure::usage(
                format!("{at}.op"),
                format!("expected an op name, got {}", shown(&other)),
            ));
        }
        None => return Err(Failure::usage(format!("{at}.op"), "missing: every op names its op")),
    };
    let Some(op) = OP_NAMES.iter().copied().find(|n| *n == name) else {
        return Err(Failure::usage(
            format!("{at}.op"),
            format!("unknown op {name:?}; the ops are {}", OP_NAMES.join(", ")),
        ));
    };
    let mut f = Fields { map, at, op };
    let parsed = match op {
        "get" => Op::Get {
            key: f.key()?,
            ctx: f.ctx()?,
        },
        "route" => Op::Route {
            key: f.key()?,
            ctx: f.ctx()?,
        },
        "multiget" => Op::Multiget {
            keys: f.keys()?,
            ctx: f.ctx()?,
        },
        "search" => {
            let vector = match f.required("vector")? {
                Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_number) => {
                    Value::Array(items).to_string()
                }
                other => return Err(f.wrong("vector", "a non-empty list of numbers", &other)),
            };
            let top_k = f.count("top_k", 1, 10_000)?.unwrap_or(10) as usize;
            let num_probes = f.count("num_probes", 1, u64::from(u32::MAX))?.map(|n| n as u32);
            let shards = match f.take("shards") {
                None => Vec::new(),
                Some(Value::Array(items)) => items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
                        Some(n) => Ok(n),
                        None => Err(f.wrong(&format!("shards[{i}]"), "a shard id", &v)),
                    })
                    .collect::<Result<_, _>>()?,
                Some(other) => return Err(f.wrong("shards", "a list of shard ids", &other)),
            };
            Op::Search(SearchOp {
                vector,
                top_k,
                num_probes,
                shards,
                ctx: f.ctx()?,
                filter: f.text("filter")?,
            })
        }
        "health" => {
            let max_age = f.text("max_age")?;
            let threshold = f.take("staleness_threshold");
            let max_age = match (max_age, threshold) {
                (Some(_), Some(_)) => {
                    return Err(Failure::usage(
                        format!("{at}.staleness_threshold"),
                        "give max_age or staleness_threshold, not both",
                    ));
                }
                (Some(text), None) => parse_duration(&text).map_err(|e| Failure::usage(format!("{at}.max_age"), e))?,
                (None, Some(v)) => match v.as_f64() {
                    Some(s) if s.is_finite() && s >= 0.0 => std::time::Duration::from_secs_f64(s),
                    _ => return Err(f.wrong("staleness_threshold", "seconds (a number >= 0)", &v)),
                },
                (None, None) => std::time::Duration::from_secs(24 * 3600),
            };
            Op::Health { max_age }
        }
        "history" => Op::History {
            limit: f
                .count("limit", 0, u64::MAX)?
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        },
        "refresh" => Op::Refresh,
        "info" => Op::Info,
        "shards" => Op::Shards,
        other => {
            return Err(Failure::new(
                sf_manifest::ErrorKind::Internal,
                format!("op {other} is listed but not parsed"),
            ));
        }
    };
    f.done()?;
    Ok(parsed)
}

/// Runs `script` in `session`, a JSON line per op to `out` (flushed after
/// each); 0 when every op succeeded, 1 when one failed.
pub async fn exec(
    session: &Session,
    script: &Script,
    values: crate::output::ValueFormat,
    stop_on_error: bool,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let printer = Printer {
        format: OutputFormat::Json,
        values,
    };
    let mut failed = false;
    for op in &script.ops {
        let mut lines = Vec::new();
        match session.run(op, &printer, &mut lines).await {
            // A stale `health` is an answer, not a failure.
            Ok(_) => out.write_all(&lines).map_err(output_error)?,
            Err(e) => {
                failed = true;
                let mut fields = vec![("op", Json::str(op.name())), ("error", Json::str(e.message()))];
                if let Some(key) = op.key() {
                    fields.push(("key", Json::str(key)));
                }
                fields.push(("exit_code", Json::Int(i64::from(e.exit_code()))));
                printer.single(out, &obj(fields))?;
            }
        }
        out.flush().map_err(output_error)?;
        if failed && (stop_on_error || script.stop_on_error) {
            break;
        }
    }
    Ok(if failed { exit::FAILED } else { exit::OK })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str, syntax: Syntax) -> String {
        let e = parse(text, syntax, "s.yaml").expect_err(text);
        assert_eq!(e.exit_code(), exit::CONFIG, "{text}");
        e.message()
    }

    #[test]
    fn both_shapes_and_both_syntaxes_parse() {
        let yaml = "- op: get\n  key: 7\n- op: multiget\n  keys: [a, 2]\n  routing_context: {region: us, n: 3}\n- op: health\n  max_age: 26h\n- op: refresh\n";
        let s = parse(yaml, Syntax::Yaml, "s.yaml").expect("yaml");
        assert_eq!(
            s.ops,
            vec![
                Op::Get {
                    key: "7".into(),
                    ctx: vec![]
                },
                Op::Multiget {
                    keys: vec!["a".into(), "2".into()],
                    ctx: vec!["n=3".into(), "region=us".into()]
                },
                Op::Health {
                    max_age: std::time::Duration::from_secs(26 * 3600)
                },
                Op::Refresh,
            ]
        );
        assert!(!s.stop_on_error);
        let json = r#"{"commands": [{"op": "search", "vector": [0.5, -1], "top_k": 3}], "on_error": "stop"}"#;
        let s = parse(json, Syntax::Json, "s.json").expect("json");
        assert!(s.stop_on_error);
        let Op::Search(search) = &s.ops[0] else {
            panic!("{:?}", s.ops)
        };
        assert_eq!((search.vector.as_str(), search.top_k), ("[0.5,-1]", 3));
    }

    #[test]
    fn malformed_scripts_name_the_op_and_field() {
        for (text, want) in [
            ("op: get\n", "a script is a list of ops"),
            ("- op: gett\n  key: a\n", "ops[0].op: unknown op \"gett\""),
            ("- op: info\n- op: get\n", "ops[1].key: missing"),
            (
                "- op: info\n- op: route\n  key: [1]\n",
                "ops[1].key: expected a string or an integer, got a list",
            ),
            ("- op: get\n  key: a\n  kye: b\n", "ops[0].kye: unknown field of get"),
            ("- op: multiget\n  keys: []\n", "ops[0].keys: expected a non-empty list"),
            ("- op: multiget\n  keys: [a, 1.5]\n", "ops[0].keys[1]"),
            ("- op: history\n  limit: -1\n", "ops[0].limit"),
            ("- 5\n", "ops[0]: an op is a mapping"),
            ("- key: a\n", "ops[0].op: missing"),
            ("commands: {}\n", "commands: expected a list of ops"),
        ] {
            let m = refused(text, Syntax::Yaml);
            assert!(m.contains(want) && m.starts_with("s.yaml"), "{text}: {m}");
        }
        assert!(refused("[{\"op\": \"get\"", Syntax::Json).contains("not JSON"));
    }

    #[test]
    fn the_syntax_is_chosen_by_extension_then_content() {
        assert_eq!(syntax_of(Path::new("a.JSON"), "- op: info"), Syntax::Json);
        assert_eq!(syntax_of(Path::new("a.yml"), "[]"), Syntax::Yaml);
        assert_eq!(syntax_of(Path::new("a.txt"), "  [{\"op\": \"info\"}]"), Syntax::Json);
        assert_eq!(syntax_of(Path::new("a"), "- op: info"), Syntax::Yaml);
    }
}
