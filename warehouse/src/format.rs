//! How a warehouse table's rows are stored in a snapshot.
//!
//! The key column is the shard key. Every other column goes into the value
//! as one line of Arrow's own JSON encoding, and the table's Arrow schema
//! (IPC-encoded) is recorded in the manifest's `custom.shardforge.table`,
//! so reading a table restores its types exactly: nulls, timestamps with
//! zones, decimals, lists, structs, maps, binary. Values stay JSON, so the
//! plain reader and `sf-read` show them readably.

use std::io::Cursor;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BinaryArray, RecordBatch};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use serde_json::{Value, json};
use sf_manifest::{Key, KeyEncoding, Manifest};

use sf_manifest::format::base64;

use crate::error::{Error, Result};

/// `custom.shardforge.table.value_format` of tables written here.
pub const VALUE_FORMAT: &str = "arrow-json";

/// What the manifest records about a table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableMeta {
    /// `catalog.db.table`.
    pub name: String,
    /// The key column.
    pub key_col: String,
    /// The full schema, key included, in column order.
    pub schema: SchemaRef,
}

impl TableMeta {
    /// The JSON stored at `custom.shardforge.table`.
    pub fn to_json(&self) -> Result<Value> {
        Ok(json!({
            "name": self.name,
            "key_col": self.key_col,
            "value_format": VALUE_FORMAT,
            "arrow_schema": encode_schema(&self.schema)?,
            "columns": self.schema.fields().iter().map(|f| json!({"name": f.name(), "type": f.data_type().to_string(), "nullable": f.is_nullable()})).collect::<Vec<_>>(),
        }))
    }

    /// Reads it back from a manifest; `None` when the snapshot is not a table.
    pub fn from_manifest(m: &Manifest) -> Result<Option<Self>> {
        let Some(t) = m.build.custom.get("shardforge").and_then(|s| s.get("table")) else {
            return Ok(None);
        };
        Self::from_json(t, &format!("manifest of run {}", m.build.run_id)).map(Some)
    }

    /// Reads [`to_json`](Self::to_json)'s output; `context` names where it
    /// came from in errors.
    pub fn from_json(t: &Value, context: &str) -> Result<Self> {
        let bad = |why: &str| Error::table(context, format!("custom.shardforge.table {why}"));
        if t.get("value_format").and_then(Value::as_str) != Some(VALUE_FORMAT) {
            return Err(bad("has an unknown value_format"));
        }
        let name = t
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("has no name"))?;
        let key_col = t
            .get("key_col")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("has no key_col"))?;
        let schema = t
            .get("arrow_schema")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("has no arrow_schema"))
            .and_then(|text| decode_schema(text).map_err(|e| bad(&e)))?;
        if schema.field_with_name(key_col).is_err() {
            return Err(bad("names a key column the schema lacks"));
        }
        Ok(TableMeta {
            name: name.to_string(),
            key_col: key_col.to_string(),
            schema: Arc::new(schema),
        })
    }

    /// The schema of the value: every column but the key.
    pub fn value_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.schema
                .fields()
                .iter()
                .filter(|f| f.name() != &self.key_col)
                .cloned()
                .collect::<Vec<_>>(),
        ))
    }

    /// Rows back as a batch of the table's schema (restricted to
    /// `projection` when given): keys decoded by `encoding` and cast to
    /// the key column's type, values decoded from Arrow JSON.
    pub fn decode(
        &self,
        encoding: KeyEncoding,
        rows: &[(Vec<u8>, Vec<u8>)],
        projection: Option<&[usize]>,
    ) -> Result<RecordBatch> {
        let value_schema = self.value_schema();
        let mut decoder = arrow::json::ReaderBuilder::new(Arc::clone(&value_schema))
            .with_batch_size(rows.len().max(1))
            .build_decoder()
            .map_err(|e| Error::table(&self.name, e))?;
        let mut text = Vec::with_capacity(rows.iter().map(|(_, v)| v.len() + 1).sum());
        for (_, v) in rows {
            text.extend_from_slice(v);
            text.push(b'\n');
        }
        decoder
            .decode(&text)
            .map_err(|e| Error::table(&self.name, format!("a stored value does not decode: {e}")))?;
        let values = decoder
            .flush()
            .map_err(|e| Error::table(&self.name, e))?
            .unwrap_or_else(|| RecordBatch::new_empty(Arc::clone(&value_schema)));
        if values.num_rows() != rows.len() {
            return Err(Error::table(
                &self.name,
                format!("{} values decoded into {} rows", rows.len(), values.num_rows()),
            ));
        }
        let key_field = self
            .schema
            .field_with_name(&self.key_col)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let keys = decode_keys(rows, encoding, key_field.data_type()).map_err(|e| Error::table(&self.name, e))?;
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for f in self.schema.fields() {
            if f.name() == &self.key_col {
                columns.push(Arc::clone(&keys));
            } else {
                let c = values
                    .column_by_name(f.name())
                    .ok_or_else(|| Error::Internal(format!("decoded values lack column {}", f.name())))?;
                columns.push(Arc::clone(c));
            }
        }
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns).map_err(|e| Error::table(&self.name, e))?;
        match projection {
            Some(p) => batch.project(p).map_err(|e| Error::Internal(e.to_string())),
            None => Ok(batch),
        }
    }
}

fn decode_keys(rows: &[(Vec<u8>, Vec<u8>)], encoding: KeyEncoding, dt: &DataType) -> Result<ArrayRef, String> {
    let keys: Vec<Key> = rows
        .iter()
        .map(|(k, _)| sf_router::decode_key(k, encoding))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let array: ArrayRef = match encoding {
        KeyEncoding::U64Be | KeyEncoding::U32Be => {
            let ints: Vec<u64> = keys
                .iter()
                .map(|k| match k {
                    Key::Int(i) => *i as u64,
                    Key::UInt(u) => *u,
                    _ => 0,
                })
                .collect();
            Arc::new(arrow::array::UInt64Array::from(ints))
        }
        KeyEncoding::Utf8 => Arc::new(arrow::array::StringArray::from_iter_values(
            keys.iter().map(|k| k.to_string()),
        )),
        KeyEncoding::Raw => Arc::new(BinaryArray::from_iter_values(rows.iter().map(|(k, _)| k.as_slice()))),
    };
    if array.data_type() == dt {
        return Ok(array);
    }
    let options = arrow::compute::CastOptions {
        safe: false,
        ..Default::default()
    };
    arrow::compute::cast_with_options(&array, dt, &options)
        .map_err(|e| format!("stored keys do not fit the key column's type {dt}: {e}"))
}

/// The schema as base64 of an Arrow IPC stream holding only the schema.
pub fn encode_schema(schema: &Schema) -> Result<String> {
    let mut buf = Vec::new();
    let mut w = StreamWriter::try_new(&mut buf, schema).map_err(|e| Error::Internal(e.to_string()))?;
    w.finish().map_err(|e| Error::Internal(e.to_string()))?;
    drop(w);
    Ok(base64::encode(&buf))
}

/// The inverse of [`encode_schema`].
pub fn decode_schema(text: &str) -> Result<Schema, String> {
    let bytes = base64::decode(text).ok_or("arrow_schema is not base64")?;
    let reader =
        StreamReader::try_new(Cursor::new(bytes), None).map_err(|e| format!("arrow_schema does not decode: {e}"))?;
    Ok(reader.schema().as_ref().clone())
}

/// Checks every non-key column can be stored and read back; errors name
/// the column.
pub fn check_storable(schema: &Schema, key_col: &str) -> Result<()> {
    for f in schema.fields() {
        if f.name() == key_col {
            continue;
        }
        let one = Schema::new(vec![f.as_ref().clone()]);
        arrow::json::ReaderBuilder::new(Arc::new(one))
            .build_decoder()
            .map_err(|e| {
                Error::config(
                    format!("column {:?}", f.name()),
                    format!("type {} cannot be stored in a table: {e}", f.data_type()),
                )
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Decimal128Array, Int64Array, ListArray, StringArray, StructArray, TimestampMicrosecondArray};
    use arrow::datatypes::{Field, Int32Type};

    fn all_types() -> RecordBatch {
        let ts = TimestampMicrosecondArray::from(vec![Some(1_700_000_000_123_456), None]).with_timezone("+05:30");
        let dec = Decimal128Array::from(vec![Some(12345), None])
            .with_precision_and_scale(10, 2)
            .expect("decimal");
        let list = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![Some(vec![Some(1), None]), None]);
        let st = StructArray::from(vec![
            (
                Arc::new(Field::new("a", DataType::Utf8, true)),
                Arc::new(StringArray::from(vec![Some("x"), None])) as ArrayRef,
            ),
            (
                Arc::new(Field::new("b", DataType::Int64, true)),
                Arc::new(Int64Array::from(vec![Some(1), Some(2)])) as ArrayRef,
            ),
        ]);
        RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from(vec![5, 9])) as ArrayRef),
            ("ts", Arc::new(ts) as ArrayRef),
            ("amount", Arc::new(dec) as ArrayRef),
            ("tags", Arc::new(list) as ArrayRef),
            ("info", Arc::new(st) as ArrayRef),
            (
                "blob",
                Arc::new(BinaryArray::from_opt_vec(vec![Some(b"\x00\xff"), None])) as ArrayRef,
            ),
            (
                "note",
                Arc::new(StringArray::from(vec![Some("line\nbreak \"q\""), None])) as ArrayRef,
            ),
        ])
        .expect("batch")
    }

    #[test]
    fn every_common_type_round_trips_exactly() {
        let batch = all_types();
        let meta = TableMeta {
            name: "wh.db.t".into(),
            key_col: "id".into(),
            schema: batch.schema(),
        };
        check_storable(&batch.schema(), "id").expect("storable");
        let cols: Vec<String> = meta.value_schema().fields().iter().map(|f| f.name().clone()).collect();
        let values = sf_writer::route::encode::encode_arrow_json(&batch, &cols).expect("encode");
        let keys =
            sf_writer::route::encode::encode_keys(batch.column(0).as_ref(), KeyEncoding::U64Be, "id").expect("keys");
        let rows: Vec<(Vec<u8>, Vec<u8>)> = (0..2)
            .map(|i| (keys.value(i).to_vec(), values.value(i).to_vec()))
            .collect();
        let back = meta.decode(KeyEncoding::U64Be, &rows, None).expect("decode");
        assert_eq!(back, batch);
        let projected = meta
            .decode(KeyEncoding::U64Be, &rows, Some(&[2, 0]))
            .expect("projection");
        assert_eq!(projected.schema().field(0).name(), "amount");
    }

    #[test]
    fn the_schema_travels_in_the_manifest_json() {
        let schema = all_types().schema();
        let text = encode_schema(&schema).expect("encode");
        assert_eq!(decode_schema(&text).expect("decode"), schema.as_ref().clone());
        assert!(decode_schema("not base64!").is_err());
    }

    #[test]
    fn unstorable_columns_are_named() {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new(
                "span",
                DataType::Interval(arrow::datatypes::IntervalUnit::DayTime),
                true,
            ),
        ]);
        let e = check_storable(&schema, "id").expect_err("interval");
        assert!(e.to_string().contains("\"span\""), "{e}");
    }
}
