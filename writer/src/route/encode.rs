//! Turning a batch's key column and value columns into the bytes a shard
//! stores.
//!
//! Keys are encoded by the snapshot's key encoding (integers big-endian,
//! text and bytes as they are). Values are either one binary column as it
//! is, or a compact JSON object of columns with sorted keys, byte for byte
//! what the reference writes for `json_cols` (Python's
//! `json.dumps(row, sort_keys=True, separators=(",", ":"))`), extended to
//! types Python's `json` cannot encode: bytes as base64, decimals as
//! strings, dates and times as ISO-8601 strings, lists as arrays, structs
//! and maps as objects.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, GenericByteArray, RecordBatch};
use arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{
    ByteArrayType, DataType, Float16Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type,
    UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde::{Deserialize, Serialize};
use sf_manifest::KeyEncoding;
use sf_manifest::format::json::{python_float_repr, write_str};

use crate::error::{Error, Result};

/// How a row becomes its value bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueSpec {
    /// One column's bytes (text as UTF-8); a null is an empty value.
    BinaryCol(String),
    /// A JSON object of these columns (sorted by name in the output).
    JsonCols(Vec<String>),
    /// These columns as one line of Arrow's JSON encoding, decoded back to
    /// exact Arrow types with the schema a warehouse table records.
    ArrowJson(Vec<String>),
}

impl ValueSpec {
    /// Columns the value reads.
    pub fn columns(&self) -> Vec<&str> {
        match self {
            ValueSpec::BinaryCol(c) => vec![c.as_str()],
            ValueSpec::JsonCols(cols) | ValueSpec::ArrowJson(cols) => cols.iter().map(String::as_str).collect(),
        }
    }
}

fn binary_from_parts(offsets: Vec<i32>, data: Vec<u8>) -> BinaryArray {
    BinaryArray::new(
        OffsetBuffer::new(ScalarBuffer::from(offsets)),
        Buffer::from_vec(data),
        None,
    )
}

/// Whether keys of this Arrow type can be stored with `encoding`.
pub fn key_type_fits(dt: &DataType, encoding: KeyEncoding) -> bool {
    let int = matches!(
        dt,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
    );
    let text = matches!(dt, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View);
    let bin = matches!(dt, DataType::Binary | DataType::LargeBinary | DataType::BinaryView);
    match encoding {
        KeyEncoding::U64Be | KeyEncoding::U32Be => int,
        KeyEncoding::Utf8 => text || bin,
        KeyEncoding::Raw => text || bin,
    }
}

/// The natural key encoding of an Arrow type.
pub fn default_key_encoding(dt: &DataType) -> Option<KeyEncoding> {
    [KeyEncoding::U64Be, KeyEncoding::Utf8, KeyEncoding::Raw]
        .into_iter()
        .find(|e| match e {
            KeyEncoding::Raw => matches!(dt, DataType::Binary | DataType::LargeBinary | DataType::BinaryView),
            other => key_type_fits(dt, *other),
        })
}

/// Encodes a key column (no nulls) with `encoding`.
pub fn encode_keys(array: &dyn Array, encoding: KeyEncoding, column: &str) -> Result<BinaryArray> {
    if array.null_count() > 0 {
        let row = (0..array.len()).find(|i| array.is_null(*i)).unwrap_or(0);
        return Err(Error::Data(format!("key column {column:?} is null at row {row}")));
    }
    let out_of_range = |row: usize, v: String, why: &str| {
        Error::Data(format!(
            "key {v} in column {column:?} at row {row} cannot be stored as {encoding}: {why}"
        ))
    };
    macro_rules! ints {
        ($t:ty) => {{
            let a = array.as_primitive::<$t>();
            let width = if encoding == KeyEncoding::U32Be { 4 } else { 8 };
            let mut data = Vec::with_capacity(a.len() * width);
            for (row, v) in a.values().iter().enumerate() {
                let v = i128::from(*v);
                if encoding == KeyEncoding::U32Be {
                    let u =
                        u32::try_from(v).map_err(|_| out_of_range(row, v.to_string(), "u32be holds 0..=4294967295"))?;
                    data.extend_from_slice(&u.to_be_bytes());
                } else {
                    let u = u64::try_from(v)
                        .map_err(|_| out_of_range(row, v.to_string(), "u64be keys must be at least 0"))?;
                    data.extend_from_slice(&u.to_be_bytes());
                }
            }
            let offsets: Vec<i32> = (0..=a.len()).map(|i| (i * width) as i32).collect();
            Ok(binary_from_parts(offsets, data))
        }};
    }
    let wrong = || {
        Error::Data(format!(
            "key column {column:?} has type {}, which key encoding {encoding} cannot store",
            array.data_type()
        ))
    };
    match (encoding, array.data_type()) {
        (KeyEncoding::U64Be | KeyEncoding::U32Be, dt) => match dt {
            DataType::Int8 => ints!(Int8Type),
            DataType::Int16 => ints!(Int16Type),
            DataType::Int32 => ints!(Int32Type),
            DataType::Int64 => ints!(Int64Type),
            DataType::UInt8 => ints!(UInt8Type),
            DataType::UInt16 => ints!(UInt16Type),
            DataType::UInt32 => ints!(UInt32Type),
            DataType::UInt64 => ints!(UInt64Type),
            _ => Err(wrong()),
        },
        (KeyEncoding::Utf8 | KeyEncoding::Raw, dt) => {
            let check_utf8 = encoding == KeyEncoding::Utf8
                && matches!(dt, DataType::Binary | DataType::LargeBinary | DataType::BinaryView);
            let bytes_at = bytes_reader(array).ok_or_else(wrong)?;
            let mut data = Vec::new();
            let mut offsets = Vec::with_capacity(array.len() + 1);
            offsets.push(0i32);
            for row in 0..array.len() {
                let b = bytes_at(row);
                if check_utf8 && std::str::from_utf8(b).is_err() {
                    return Err(out_of_range(
                        row,
                        format!("0x{}", hex::encode(b)),
                        "utf8 keys must be valid UTF-8",
                    ));
                }
                data.extend_from_slice(b);
                offsets.push(
                    i32::try_from(data.len())
                        .map_err(|_| Error::Data(format!("keys of one batch of column {column:?} exceed 2 GiB")))?,
                );
            }
            Ok(binary_from_parts(offsets, data))
        }
    }
}

/// A function reading row `i` of a text or binary column as bytes.
fn bytes_reader<'a>(array: &'a dyn Array) -> Option<Box<dyn Fn(usize) -> &'a [u8] + 'a>> {
    fn generic<'a, T: ByteArrayType>(a: &'a GenericByteArray<T>) -> Box<dyn Fn(usize) -> &'a [u8] + 'a>
    where
        T::Native: AsRef<[u8]>,
    {
        Box::new(move |i| a.value(i).as_ref())
    }
    Some(match array.data_type() {
        DataType::Utf8 => generic(array.as_string::<i32>()),
        DataType::LargeUtf8 => generic(array.as_string::<i64>()),
        DataType::Binary => generic(array.as_binary::<i32>()),
        DataType::LargeBinary => generic(array.as_binary::<i64>()),
        DataType::Utf8View => {
            let a = array.as_string_view();
            Box::new(move |i| a.value(i).as_bytes())
        }
        DataType::BinaryView => {
            let a = array.as_binary_view();
            Box::new(move |i| a.value(i))
        }
        DataType::FixedSizeBinary(_) => {
            let a = array.as_fixed_size_binary();
            Box::new(move |i| a.value(i))
        }
        _ => return None,
    })
}

/// Whether a column can be a `binary_col` value.
pub fn binary_value_type_fits(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::FixedSizeBinary(_)
    )
}

/// Encodes the value bytes of every row of `batch`.
pub fn encode_values(batch: &RecordBatch, spec: &ValueSpec) -> Result<BinaryArray> {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| Error::Data(format!("value column {name:?} is not in the input")))
    };
    match spec {
        ValueSpec::BinaryCol(name) => {
            let array = column(name)?;
            // Binary or text without nulls is already what is stored: share
            // its buffers instead of copying every value.
            if array.null_count() == 0 {
                match array.data_type() {
                    DataType::Binary => return Ok(array.as_binary::<i32>().clone()),
                    DataType::Utf8 => {
                        let text = array.as_string::<i32>();
                        return Ok(BinaryArray::new(text.offsets().clone(), text.values().clone(), None));
                    }
                    _ => {}
                }
            }
            let read = bytes_reader(array.as_ref()).ok_or_else(|| {
                Error::Data(format!(
                    "value.binary_col {name:?} has type {}; it must be text or binary",
                    array.data_type()
                ))
            })?;
            let mut data = Vec::with_capacity((0..array.len()).map(|r| read(r).len()).sum());
            let mut offsets = Vec::with_capacity(array.len() + 1);
            offsets.push(0i32);
            for row in 0..array.len() {
                if array.is_valid(row) {
                    data.extend_from_slice(read(row));
                }
                offsets.push(offset(data.len())?);
            }
            Ok(binary_from_parts(offsets, data))
        }
        ValueSpec::ArrowJson(names) => encode_arrow_json(batch, names),
        ValueSpec::JsonCols(names) => {
            let mut cols: Vec<(&String, ArrayRef)> = names
                .iter()
                .map(|n| column(n).map(|a| (n, Arc::clone(a))))
                .collect::<Result<_>>()?;
            cols.sort_by(|a, b| a.0.cmp(b.0));
            let mut prefixes = Vec::with_capacity(cols.len());
            for (i, (name, _)) in cols.iter().enumerate() {
                let mut p = String::from(if i == 0 { "{" } else { "," });
                write_str(&mut p, name);
                p.push(':');
                prefixes.push(p);
            }
            let encoders: Vec<JsonColumn> = cols.iter().map(|(_, a)| JsonColumn::new(a)).collect::<Result<_>>()?;
            let mut data = Vec::new();
            let mut offsets = Vec::with_capacity(batch.num_rows() + 1);
            offsets.push(0i32);
            let mut row_text = String::new();
            for row in 0..batch.num_rows() {
                row_text.clear();
                if encoders.is_empty() {
                    row_text.push('{');
                }
                for (p, e) in prefixes.iter().zip(&encoders) {
                    row_text.push_str(p);
                    e.write(row, &mut row_text);
                }
                row_text.push('}');
                data.extend_from_slice(row_text.as_bytes());
                offsets.push(offset(data.len())?);
            }
            Ok(binary_from_parts(offsets, data))
        }
    }
}

fn offset(n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| Error::Data("values of one batch exceed 2 GiB; lower batch_size".into()))
}

/// Writes one column's cells as JSON.
struct JsonColumn {
    array: ArrayRef,
    kind: JsonKind,
}

enum JsonKind {
    Null,
    Bool,
    Int(fn(&dyn Array, usize) -> i128),
    Float(fn(&dyn Array, usize) -> f64),
    Text,
    Bytes,
    /// Decimals, dates, times, durations: their display text as a string.
    Display,
    List(Box<JsonColumn>, Vec<(usize, usize)>),
    Struct(Vec<(String, JsonColumn)>),
    Map(Box<JsonColumn>, Box<JsonColumn>, Vec<(usize, usize)>),
}

impl JsonColumn {
    fn new(array: &ArrayRef) -> Result<Self> {
        macro_rules! int {
            ($t:ty) => {
                JsonKind::Int(|a, i| i128::from(a.as_primitive::<$t>().value(i)))
            };
        }
        let kind = match array.data_type() {
            DataType::Null => JsonKind::Null,
            DataType::Boolean => JsonKind::Bool,
            DataType::Int8 => int!(Int8Type),
            DataType::Int16 => int!(Int16Type),
            DataType::Int32 => int!(Int32Type),
            DataType::Int64 => int!(Int64Type),
            DataType::UInt8 => int!(UInt8Type),
            DataType::UInt16 => int!(UInt16Type),
            DataType::UInt32 => int!(UInt32Type),
            DataType::UInt64 => int!(UInt64Type),
            DataType::Float16 => JsonKind::Float(|a, i| f64::from(a.as_primitive::<Float16Type>().value(i))),
            DataType::Float32 => JsonKind::Float(|a, i| f64::from(a.as_primitive::<Float32Type>().value(i))),
            DataType::Float64 => JsonKind::Float(|a, i| a.as_primitive::<Float64Type>().value(i)),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => JsonKind::Text,
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => {
                JsonKind::Bytes
            }
            DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(_, _) => {
                let (values, ranges) = list_parts(array.as_ref());
                JsonKind::List(Box::new(JsonColumn::new(&values)?), ranges)
            }
            DataType::Struct(_) => {
                let s = array.as_struct();
                let mut fields: Vec<(String, JsonColumn)> = s
                    .fields()
                    .iter()
                    .zip(s.columns())
                    .map(|(f, c)| Ok((f.name().clone(), JsonColumn::new(c)?)))
                    .collect::<Result<_>>()?;
                fields.sort_by(|a, b| a.0.cmp(&b.0));
                JsonKind::Struct(fields)
            }
            DataType::Map(_, _) => {
                let m = array.as_map();
                let ranges = (0..m.len())
                    .map(|i| {
                        let o = m.value_offsets();
                        (o[i] as usize, o[i + 1] as usize)
                    })
                    .collect();
                JsonKind::Map(
                    Box::new(JsonColumn::new(m.keys())?),
                    Box::new(JsonColumn::new(m.values())?),
                    ranges,
                )
            }
            DataType::Dictionary(_, _) => {
                let plain = arrow::compute::cast(array, &dictionary_value_type(array.data_type()))
                    .map_err(|e| Error::Data(format!("decoding a dictionary column: {e}")))?;
                return JsonColumn::new(&plain);
            }
            _ => JsonKind::Display,
        };
        Ok(JsonColumn {
            array: Arc::clone(array),
            kind,
        })
    }

    fn write(&self, row: usize, out: &mut String) {
        let a = self.array.as_ref();
        if a.is_null(row) {
            out.push_str("null");
            return;
        }
        match &self.kind {
            JsonKind::Null => out.push_str("null"),
            JsonKind::Bool => out.push_str(if a.as_boolean().value(row) { "true" } else { "false" }),
            JsonKind::Int(f) => out.push_str(&f(a, row).to_string()),
            JsonKind::Float(f) => out.push_str(&python_float_repr(f(a, row))),
            JsonKind::Text => {
                let s = match a.data_type() {
                    DataType::Utf8 => a.as_string::<i32>().value(row),
                    DataType::LargeUtf8 => a.as_string::<i64>().value(row),
                    _ => a.as_string_view().value(row),
                };
                write_str(out, s);
            }
            JsonKind::Bytes => {
                let read = bytes_reader(a).expect("binary column");
                out.push('"');
                out.push_str(&sf_manifest::format::base64::encode(read(row)));
                out.push('"');
            }
            JsonKind::Display => {
                let options = FormatOptions::default();
                let text = ArrayFormatter::try_new(a, &options)
                    .map(|f| f.value(row).to_string())
                    .unwrap_or_default();
                write_str(out, &text);
            }
            JsonKind::List(values, ranges) => {
                out.push('[');
                let (start, end) = ranges[row];
                for (n, i) in (start..end).enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    values.write(i, out);
                }
                out.push(']');
            }
            JsonKind::Struct(fields) => {
                out.push('{');
                for (n, (name, col)) in fields.iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    write_str(out, name);
                    out.push(':');
                    col.write(row, out);
                }
                out.push('}');
            }
            JsonKind::Map(keys, values, ranges) => {
                // JSON object keys are strings; sort them as Python's sort_keys does.
                let (start, end) = ranges[row];
                let mut entries: Vec<(String, usize)> = (start..end)
                    .map(|i| {
                        let mut k = String::new();
                        keys.write(i, &mut k);
                        let k = serde_json::from_str::<String>(&k).unwrap_or(k);
                        (k, i)
                    })
                    .collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                out.push('{');
                for (n, (k, i)) in entries.iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    write_str(out, k);
                    out.push(':');
                    values.write(*i, out);
                }
                out.push('}');
            }
        }
    }
}

fn dictionary_value_type(dt: &DataType) -> DataType {
    match dt {
        DataType::Dictionary(_, v) => v.as_ref().clone(),
        other => other.clone(),
    }
}

fn list_parts(array: &dyn Array) -> (ArrayRef, Vec<(usize, usize)>) {
    match array.data_type() {
        DataType::List(_) => {
            let l = array.as_list::<i32>();
            let o = l.value_offsets();
            (
                Arc::clone(l.values()),
                (0..l.len()).map(|i| (o[i] as usize, o[i + 1] as usize)).collect(),
            )
        }
        DataType::LargeList(_) => {
            let l = array.as_list::<i64>();
            let o = l.value_offsets();
            (
                Arc::clone(l.values()),
                (0..l.len()).map(|i| (o[i] as usize, o[i + 1] as usize)).collect(),
            )
        }
        _ => {
            let l = array.as_fixed_size_list();
            let n = l.value_length() as usize;
            (
                Arc::clone(l.values()),
                (0..l.len()).map(|i| (i * n, (i + 1) * n)).collect(),
            )
        }
    }
}

/// Encodes columns `cols` of `batch` as one line of Arrow's own JSON per
/// row ([`ValueSpec::ArrowJson`]): nulls left out, strings escaped, so a
/// value decodes back to the exact Arrow types given the schema.
pub fn encode_arrow_json(batch: &RecordBatch, cols: &[String]) -> Result<BinaryArray> {
    let indices: Vec<usize> = cols
        .iter()
        .map(|c| {
            batch
                .schema()
                .index_of(c)
                .map_err(|_| Error::Data(format!("value column {c:?} is not in the input")))
        })
        .collect::<Result<_>>()?;
    let values = batch.project(&indices).map_err(|e| Error::Internal(e.to_string()))?;
    let mut buf = Vec::with_capacity(values.get_array_memory_size());
    {
        let mut w = arrow::json::WriterBuilder::new()
            .with_explicit_nulls(false)
            .build::<_, arrow::json::writer::LineDelimited>(&mut buf);
        w.write(&values)
            .map_err(|e| Error::Data(format!("encoding values: {e}")))?;
        w.finish().map_err(|e| Error::Data(format!("encoding values: {e}")))?;
    }
    // Strings are escaped, so a newline only ever ends a row.
    let mut offsets = Vec::with_capacity(batch.num_rows() + 1);
    offsets.push(0i32);
    let mut data = Vec::with_capacity(buf.len());
    for line in buf.split(|b| *b == b'\n').take(batch.num_rows()) {
        data.extend_from_slice(line);
        offsets.push(i32::try_from(data.len()).map_err(|_| Error::Data("values of one batch exceed 2 GiB".into()))?);
    }
    if offsets.len() != batch.num_rows() + 1 {
        return Err(Error::Internal("the JSON encoder wrote fewer lines than rows".into()));
    }
    Ok(BinaryArray::new(
        arrow::buffer::OffsetBuffer::new(arrow::buffer::ScalarBuffer::from(offsets)),
        arrow::buffer::Buffer::from_vec(data),
        None,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array, ListArray, StringArray, StructArray,
        UInt64Array,
    };
    use arrow::datatypes::{Field, Int32Type as I32};

    fn batch(cols: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(cols).expect("batch")
    }

    fn texts(a: &BinaryArray) -> Vec<String> {
        (0..a.len())
            .map(|i| String::from_utf8(a.value(i).to_vec()).expect("utf8"))
            .collect()
    }

    #[test]
    fn json_values_match_python_json_dumps() {
        let b = batch(vec![
            (
                "name",
                Arc::new(StringArray::from(vec![Some("héllo \"q\""), None])) as ArrayRef,
            ),
            ("n", Arc::new(Int64Array::from(vec![7, -1])) as ArrayRef),
            ("f", Arc::new(Float64Array::from(vec![1.0, 1e-5])) as ArrayRef),
            ("g", Arc::new(Float32Array::from(vec![0.1, 2.5])) as ArrayRef),
            ("ok", Arc::new(BooleanArray::from(vec![true, false])) as ArrayRef),
        ]);
        let spec = ValueSpec::JsonCols(vec!["ok".into(), "name".into(), "n".into(), "f".into(), "g".into()]);
        let v = encode_values(&b, &spec).expect("encode");
        // What Python prints for {"name": "héllo \"q\"", "n": 7, "f": 1.0, "g": float32(0.1), "ok": True}.
        assert_eq!(
            texts(&v),
            vec![
                r#"{"f":1.0,"g":0.10000000149011612,"n":7,"name":"h\u00e9llo \"q\"","ok":true}"#,
                r#"{"f":1e-05,"g":2.5,"n":-1,"name":null,"ok":false}"#,
            ]
        );
    }

    #[test]
    fn nested_values_become_arrays_and_objects() {
        let list = ListArray::from_iter_primitive::<I32, _, _>(vec![Some(vec![Some(1), None]), Some(vec![])]);
        let inner = StructArray::from(vec![
            (
                Arc::new(Field::new("z", DataType::Int32, false)),
                Arc::new(Int32Array::from(vec![1, 2])) as ArrayRef,
            ),
            (
                Arc::new(Field::new("a", DataType::Utf8, true)),
                Arc::new(StringArray::from(vec![Some("x"), None])) as ArrayRef,
            ),
        ]);
        let bin = arrow::array::BinaryArray::from_vec(vec![b"\x00\xffab", b""]);
        let b = batch(vec![
            ("l", Arc::new(list) as ArrayRef),
            ("s", Arc::new(inner) as ArrayRef),
            ("b", Arc::new(bin) as ArrayRef),
        ]);
        let spec = ValueSpec::JsonCols(vec!["l".into(), "s".into(), "b".into()]);
        assert_eq!(
            texts(&encode_values(&b, &spec).expect("encode")),
            vec![
                r#"{"b":"AP9hYg==","l":[1,null],"s":{"a":"x","z":1}}"#,
                r#"{"b":"","l":[],"s":{"a":null,"z":2}}"#
            ]
        );
    }

    #[test]
    fn binary_col_takes_bytes_and_empties_nulls() {
        let b = batch(vec![(
            "p",
            Arc::new(StringArray::from(vec![Some("abc"), None])) as ArrayRef,
        )]);
        let v = encode_values(&b, &ValueSpec::BinaryCol("p".into())).expect("encode");
        assert_eq!(v.value(0), b"abc");
        assert_eq!(v.value(1), b"");
        // Without nulls the column's buffers are shared, slices included.
        for col in [
            Arc::new(StringArray::from(vec!["x", "abc", "", "de"])) as ArrayRef,
            Arc::new(arrow::array::BinaryArray::from_vec(vec![b"x", b"abc", b"", b"de"])) as ArrayRef,
        ] {
            let b = batch(vec![("p", col.slice(1, 3))]);
            let v = encode_values(&b, &ValueSpec::BinaryCol("p".into())).expect("encode");
            let got: Vec<&[u8]> = (0..v.len()).map(|i| v.value(i)).collect();
            assert_eq!(got, vec![&b"abc"[..], b"", b"de"]);
        }
        let n = batch(vec![("p", Arc::new(Int64Array::from(vec![1])) as ArrayRef)]);
        let e = encode_values(&n, &ValueSpec::BinaryCol("p".into())).expect_err("int value");
        assert!(e.to_string().contains("must be text or binary"), "{e}");
    }

    #[test]
    fn keys_encode_by_encoding_with_range_checks() {
        let k = encode_keys(&Int64Array::from(vec![1, 256]), KeyEncoding::U64Be, "id").expect("u64be");
        assert_eq!(k.value(1), &[0, 0, 0, 0, 0, 0, 1, 0]);
        let k = encode_keys(&UInt64Array::from(vec![u64::MAX]), KeyEncoding::U64Be, "id").expect("u64 max");
        assert_eq!(k.value(0), &[0xff; 8]);
        let e = encode_keys(&Int64Array::from(vec![3, -5]), KeyEncoding::U64Be, "id").expect_err("negative");
        assert!(e.to_string().contains("row 1") && e.to_string().contains("-5"), "{e}");
        let e = encode_keys(&Int64Array::from(vec![1 << 40]), KeyEncoding::U32Be, "id").expect_err("u32");
        assert!(e.to_string().contains("u32be"), "{e}");
        let k = encode_keys(&StringArray::from(vec!["user:7"]), KeyEncoding::Utf8, "id").expect("utf8");
        assert_eq!(k.value(0), b"user:7");
        let bad = arrow::array::BinaryArray::from_vec(vec![b"\xff"]);
        assert!(encode_keys(&bad, KeyEncoding::Utf8, "id").is_err());
        assert_eq!(
            encode_keys(&bad, KeyEncoding::Raw, "id").expect("raw").value(0),
            b"\xff"
        );
        let e = encode_keys(&Int64Array::from(vec![Some(1), None]), KeyEncoding::U64Be, "id").expect_err("null");
        assert!(e.to_string().contains("null at row 1"), "{e}");
    }
}
