//! What the programs print: one JSON object per command (`json`), one
//! JSON object per item (`jsonl`), or aligned columns for people (`table`).
//!
//! JSON is written the way Python's `json.dumps` writes it by default
//! (`", "` and `": "`, non-ASCII escaped, floats as Python prints them),
//! so `sf-read`'s lines are the reference reader CLI's, byte for byte, and
//! scripts written for it keep working.

use std::io::Write;

use arrow::array::RecordBatch;
use bytes::Bytes;
use clap::ValueEnum;
use sf_manifest::ErrorKind;
use sf_manifest::format::json::{python_float_repr, write_str};
use sf_manifest::format::sharding::bytes_as_text;

use crate::exit::Failure;

/// `--output`
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// One JSON line per command (for `sf-sql`: one JSON array of row
    /// objects per statement).
    Json,
    /// One JSON line per item (key, shard, manifest, row).
    Jsonl,
    /// Aligned columns for people.
    Table,
}

/// `--value-format`: how value bytes are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ValueFormat {
    /// Text; bytes that are not UTF-8 as `hex:<hex>`.
    Utf8,
    /// Lowercase hex.
    Hex,
    /// Standard base64 with padding.
    Base64,
}

impl ValueFormat {
    /// `v` as text in this format.
    pub fn show(self, v: &[u8]) -> String {
        match self {
            ValueFormat::Utf8 => bytes_as_text(v),
            ValueFormat::Hex => hex::encode(v),
            ValueFormat::Base64 => sf_manifest::format::base64::encode(v),
        }
    }
}

/// A failure to write to stdout (a closed pipe, a full disk).
pub fn output_error(e: std::io::Error) -> Failure {
    Failure::new(ErrorKind::Internal, format!("writing output: {e}"))
}

/// A JSON value as the programs print it: object keys in the order given
/// (the reference's CLI prints `op`, `key`, ... in that order; a
/// `serde_json::Value` keeps its keys sorted), written in Python's style
/// (see the module docs).
#[derive(Debug, Clone)]
pub enum Json {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float, printed as Python's `repr`.
    Float(f64),
    /// A string.
    Str(String),
    /// Already encoded JSON.
    Raw(String),
    /// An array.
    Arr(Vec<Json>),
    /// An object, keys in this order.
    Obj(Vec<(&'static str, Json)>),
}

/// An object with `fields` in order.
pub fn obj(fields: Vec<(&'static str, Json)>) -> Json {
    Json::Obj(fields)
}

impl Json {
    /// A string.
    pub fn str(s: impl Into<String>) -> Json {
        Json::Str(s.into())
    }

    /// A string, or `null`.
    pub fn opt_str(s: Option<&str>) -> Json {
        s.map_or(Json::Null, Json::str)
    }

    /// An unsigned count (saturating at `i64::MAX`).
    pub fn count(n: u64) -> Json {
        Json::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }

    fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Int(i) => out.push_str(&i.to_string()),
            Json::Float(f) => out.push_str(&python_float_repr(*f)),
            Json::Str(s) => write_str(out, s),
            Json::Raw(r) => out.push_str(r),
            Json::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Json::Obj(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_str(out, k);
                    out.push_str(": ");
                    v.write(out);
                }
                out.push('}');
            }
        }
    }

    /// The value as one line of JSON.
    pub fn render(&self) -> String {
        let mut s = String::new();
        self.write(&mut s);
        s
    }

    /// The value as table text.
    fn cell(&self) -> String {
        match self {
            Json::Str(s) => s.clone(),
            Json::Null => "-".into(),
            other => other.render(),
        }
    }
}

/// Prints results in one [`OutputFormat`], values in one [`ValueFormat`].
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    /// The format of results.
    pub format: OutputFormat,
    /// The format of value bytes.
    pub values: ValueFormat,
}

impl Printer {
    /// `v` in the printer's value format.
    pub fn value(&self, v: &Bytes) -> String {
        self.values.show(v)
    }

    /// A one-object result.
    pub fn single(&self, out: &mut dyn Write, line: &Json) -> Result<(), Failure> {
        match self.format {
            OutputFormat::Json | OutputFormat::Jsonl => writeln!(out, "{}", line.render()),
            OutputFormat::Table => {
                let Json::Obj(fields) = line else {
                    return Err(Failure::new(ErrorKind::Internal, "a result line is an object"));
                };
                let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
                fields
                    .iter()
                    .filter(|(k, _)| *k != "op")
                    .try_for_each(|(k, v)| writeln!(out, "{k:<width$}  {}", v.cell()))
            }
        }
        .map_err(output_error)
    }

    /// A result that is a list of objects: one line `{"op": op, key: [...]}`
    /// (json), a line per item (jsonl), or a table.
    pub fn list(
        &self,
        out: &mut dyn Write,
        op: &'static str,
        key: &'static str,
        items: Vec<Json>,
    ) -> Result<(), Failure> {
        self.list_stream(out, op, key, || items.iter().cloned())
    }

    /// [`list`](Self::list) for lists too long to hold: `items` makes the
    /// items afresh each time it is called, and each is written as soon as
    /// it is made (a table walks them twice: once for its column widths).
    pub fn list_stream<I>(
        &self,
        out: &mut dyn Write,
        op: &'static str,
        key: &'static str,
        items: impl Fn() -> I,
    ) -> Result<(), Failure>
    where
        I: Iterator<Item = Json>,
    {
        let mut out = std::io::BufWriter::with_capacity(64 << 10, out);
        let mut text = String::new();
        match self.format {
            OutputFormat::Json => {
                text.push('{');
                write_str(&mut text, "op");
                text.push_str(": ");
                write_str(&mut text, op);
                text.push_str(", ");
                write_str(&mut text, key);
                text.push_str(": [");
                for (i, item) in items().enumerate() {
                    if i > 0 {
                        text.push_str(", ");
                    }
                    item.write(&mut text);
                    if text.len() >= 32 << 10 {
                        out.write_all(text.as_bytes()).map_err(output_error)?;
                        text.clear();
                    }
                }
                text.push_str("]}\n");
                out.write_all(text.as_bytes()).map_err(output_error)?;
            }
            OutputFormat::Jsonl => {
                for item in items() {
                    text.clear();
                    item.write(&mut text);
                    text.push('\n');
                    out.write_all(text.as_bytes()).map_err(output_error)?;
                }
            }
            OutputFormat::Table => {
                let mut headers: Vec<&'static str> = Vec::new();
                let mut widths: Vec<usize> = Vec::new();
                for item in items() {
                    if let Json::Obj(fields) = &item {
                        for (k, v) in fields {
                            let at = match headers.iter().position(|h| h == k) {
                                Some(at) => at,
                                None => {
                                    headers.push(k);
                                    widths.push(k.chars().count());
                                    headers.len() - 1
                                }
                            };
                            widths[at] = widths[at].max(v.cell().chars().count());
                        }
                    }
                }
                let cells = |item: &Json| -> Vec<String> {
                    headers
                        .iter()
                        .map(|h| match item {
                            Json::Obj(fields) => fields
                                .iter()
                                .find(|(k, _)| k == h)
                                .map_or_else(String::new, |(_, v)| v.cell()),
                            other => other.cell(),
                        })
                        .collect()
                };
                let line = |cells: Vec<String>| -> String {
                    let mut l = cells
                        .iter()
                        .enumerate()
                        .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
                        .collect::<Vec<_>>()
                        .join("  ")
                        .trim_end()
                        .to_string();
                    l.push('\n');
                    l
                };
                out.write_all(line(headers.iter().map(|h| h.to_string()).collect()).as_bytes())
                    .map_err(output_error)?;
                for item in items() {
                    out.write_all(line(cells(&item)).as_bytes()).map_err(output_error)?;
                }
            }
        }
        out.flush().map_err(output_error)
    }
}

/// Aligned columns: a header line, then a line per row.
pub fn table(out: &mut dyn Write, headers: &[&str], rows: Vec<Vec<String>>) -> Result<(), Failure> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| -> String {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut text = line(headers.iter().map(|h| h.to_string()).collect());
    text.push('\n');
    for r in rows {
        text.push_str(&line(r));
        text.push('\n');
    }
    out.write_all(text.as_bytes()).map_err(output_error)
}

/// Query results: an aligned table, one JSON array of row objects, or one
/// JSON object per row.
pub fn batches(out: &mut dyn Write, batches: &[RecordBatch], format: OutputFormat) -> Result<(), Failure> {
    let fail = |e: arrow::error::ArrowError| Failure::new(ErrorKind::Internal, format!("printing results: {e}"));
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    match format {
        OutputFormat::Table => {
            let text = arrow::util::pretty::pretty_format_batches(batches).map_err(fail)?;
            writeln!(out, "{text}").map_err(output_error)
        }
        OutputFormat::Json => {
            let mut w = arrow::json::ArrayWriter::new(Vec::new());
            w.write_batches(&refs).map_err(fail)?;
            w.finish().map_err(fail)?;
            let mut text = w.into_inner();
            if text.is_empty() {
                text.extend_from_slice(b"[]");
            }
            text.push(b'\n');
            out.write_all(&text).map_err(output_error)
        }
        OutputFormat::Jsonl => {
            let mut w = arrow::json::LineDelimitedWriter::new(Vec::new());
            w.write_batches(&refs).map_err(fail)?;
            w.finish().map_err(fail)?;
            out.write_all(&w.into_inner()).map_err(output_error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_look_like_pythons() {
        let line = obj(vec![
            ("op", Json::str("get")),
            ("key", Json::str("héllo")),
            ("found", Json::Bool(true)),
            ("value", Json::str("{\"n\": 7}")),
            ("age", Json::Float(0.0)),
            ("db_id", Json::Null),
        ]);
        assert_eq!(
            line.render(),
            r#"{"op": "get", "key": "h\u00e9llo", "found": true, "value": "{\"n\": 7}", "age": 0.0, "db_id": null}"#
        );
    }

    #[test]
    fn lists_in_every_format() {
        let items = vec![
            obj(vec![("db_id", Json::Int(0)), ("url", Json::str("s3://b/a"))]),
            obj(vec![("db_id", Json::Int(12)), ("url", Json::Null)]),
        ];
        let print = |format| {
            let mut out = Vec::new();
            Printer {
                format,
                values: ValueFormat::Utf8,
            }
            .list(&mut out, "shards", "shards", items.clone())
            .expect("print");
            String::from_utf8(out).expect("utf8")
        };
        assert_eq!(
            print(OutputFormat::Json),
            "{\"op\": \"shards\", \"shards\": [{\"db_id\": 0, \"url\": \"s3://b/a\"}, {\"db_id\": 12, \"url\": null}]}\n"
        );
        assert_eq!(
            print(OutputFormat::Jsonl),
            "{\"db_id\": 0, \"url\": \"s3://b/a\"}\n{\"db_id\": 12, \"url\": null}\n"
        );
        assert_eq!(print(OutputFormat::Table), "db_id  url\n0      s3://b/a\n12     -\n");
    }

    #[test]
    fn values_show_in_each_format() {
        let v = [0x68, 0x69, 0xff];
        assert_eq!(ValueFormat::Hex.show(&v), "6869ff");
        assert_eq!(ValueFormat::Base64.show(&v), "aGn/");
        assert_eq!(ValueFormat::Utf8.show(b"hi"), "hi");
        assert!(ValueFormat::Utf8.show(&v).starts_with("hex:"));
    }
}
