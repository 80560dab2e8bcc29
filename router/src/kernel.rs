//! The Arrow kernel: a RecordBatch in, a `UInt32Array` of db ids out.
//!
//! Hash routing runs a tight loop per key column type (no per-row dynamic
//! dispatch, no allocation); CEL routing evaluates the compiled program per
//! row, reusing one evaluation scope per batch.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryViewArray, LargeBinaryArray, LargeStringArray, RecordBatch,
    StringArray, StringViewArray, UInt32Array,
};
use arrow::datatypes::{DataType, Int32Type, Int64Type, UInt32Type, UInt64Type};
use sf_manifest::{CelType, RoutingValue};

use crate::cel::{CelRouting, Routed, Scope};
use crate::error::{Error, Result};
use crate::key::{hash_bytes, hash_i64};
use crate::router::{KEY_VARIABLE, Router};

const KEY_TYPES_HINT: &str =
    "use an Int64, Int32, UInt64, UInt32, Utf8, LargeUtf8, Utf8View, Binary, LargeBinary or BinaryView key column";

impl Router {
    /// Routes every row of `batch`; `key_col` names the key column.
    ///
    /// A null key (or routing column), a key outside the canonical range, or
    /// (on the write side) an unknown categorical token is an error naming
    /// the row.
    pub fn route_batch(&self, batch: &RecordBatch, key_col: &str) -> Result<UInt32Array> {
        let key = column(batch, key_col)?;
        match self.cel() {
            None => self.route_hash_array(key.as_ref(), key_col),
            Some(_) => self.route_cel_batch(batch, key_col),
        }
    }

    /// Hash-routes one key array.
    pub fn route_hash_array(&self, key: &dyn Array, name: &str) -> Result<UInt32Array> {
        if key.null_count() > 0 {
            let row = (0..key.len()).find(|i| key.is_null(*i)).unwrap_or(0);
            return Err(Error::Null {
                column: name.to_string(),
                row,
            });
        }
        // A local copy of the reducer lets the compiler keep it in registers.
        let fm = self.reducer();
        let out: Vec<u32> = match key.data_type() {
            DataType::Int64 => {
                let a = key.as_primitive::<Int64Type>();
                a.values().iter().map(|v| fm.reduce(hash_i64(*v))).collect()
            }
            DataType::Int32 => {
                let a = key.as_primitive::<Int32Type>();
                a.values().iter().map(|v| fm.reduce(hash_i64(i64::from(*v)))).collect()
            }
            DataType::UInt32 => {
                let a = key.as_primitive::<UInt32Type>();
                a.values().iter().map(|v| fm.reduce(hash_i64(i64::from(*v)))).collect()
            }
            DataType::UInt64 => {
                let a = key.as_primitive::<UInt64Type>();
                let mut out = Vec::with_capacity(a.len());
                for (row, v) in a.values().iter().enumerate() {
                    let i = i64::try_from(*v).map_err(|_| Error::KeyOutOfRange {
                        key: v.to_string(),
                        encoding: self.key_encoding(),
                        reason: format!(
                            "integer keys are hashed as signed 64-bit and must be at most 9223372036854775807 (column {name:?}, row {row})"
                        ),
                    })?;
                    out.push(fm.reduce(hash_i64(i)));
                }
                out
            }
            DataType::Utf8 => {
                self.hash_strings(key.as_any().downcast_ref::<StringArray>(), |a, i| a.value(i).as_bytes())
            }
            DataType::LargeUtf8 => self.hash_strings(key.as_any().downcast_ref::<LargeStringArray>(), |a, i| {
                a.value(i).as_bytes()
            }),
            DataType::Utf8View => self.hash_strings(key.as_any().downcast_ref::<StringViewArray>(), |a, i| {
                a.value(i).as_bytes()
            }),
            DataType::Binary => self.hash_strings(key.as_any().downcast_ref::<BinaryArray>(), |a, i| a.value(i)),
            DataType::LargeBinary => {
                self.hash_strings(key.as_any().downcast_ref::<LargeBinaryArray>(), |a, i| a.value(i))
            }
            DataType::BinaryView => {
                self.hash_strings(key.as_any().downcast_ref::<BinaryViewArray>(), |a, i| a.value(i))
            }
            other => {
                return Err(Error::UnsupportedType {
                    column: name.to_string(),
                    data_type: other.to_string(),
                    hint: KEY_TYPES_HINT.into(),
                });
            }
        };
        Ok(UInt32Array::from(out))
    }

    fn hash_strings<A: Array>(&self, a: Option<&A>, value: impl Fn(&A, usize) -> &[u8]) -> Vec<u32> {
        let a = a.expect("downcast matches the data type just checked");
        let fm = self.reducer();
        (0..a.len()).map(|i| fm.reduce(hash_bytes(value(a, i)))).collect()
    }

    fn route_cel_batch(&self, batch: &RecordBatch, key_col: &str) -> Result<UInt32Array> {
        let cel = self.cel().expect("CEL path");
        let mut out = Vec::with_capacity(batch.num_rows());
        for_each_cel_row(cel, batch, key_col, |row, scope, inputs| {
            match scope.route().map_err(|e| e.at_row(row))? {
                Routed::Db(d) => out.push(d),
                Routed::UnknownToken => {
                    let shown = inputs
                        .iter()
                        .map(|(n, ty, a)| {
                            let v = cel_value(a.as_ref(), row, *ty, n)
                                .map(|v| format!("{v:?}"))
                                .unwrap_or_default();
                            format!("{n}={v}")
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(Error::UnknownToken {
                        token: shown,
                        row: Some(row),
                    });
                }
            }
            Ok(())
        })?;
        Ok(UInt32Array::from(out))
    }
}

/// The raw CEL result of every row of `batch` as a routing token (see
/// [`Scope::token`](crate::cel::Scope::token)); used to infer categorical
/// routing values, or a direct expression's `num_dbs`, from the data.
pub fn cel_tokens(cel: &CelRouting, batch: &RecordBatch, key_col: &str) -> Result<Vec<RoutingValue>> {
    let mut out = Vec::with_capacity(batch.num_rows());
    for_each_cel_row(cel, batch, key_col, |row, scope, _| {
        out.push(scope.token().map_err(|e| e.at_row(row))?);
        Ok(())
    })?;
    Ok(out)
}

type CelInputs<'a> = Vec<(&'a str, CelType, ArrayRef)>;

/// Binds each row's declared CEL columns in one reused scope and calls `f`.
fn for_each_cel_row<'c>(
    cel: &'c CelRouting,
    batch: &RecordBatch,
    key_col: &str,
    mut f: impl FnMut(usize, &Scope<'c>, &CelInputs<'c>) -> Result<()>,
) -> Result<()> {
    // Resolve every declared column once per batch.
    let mut inputs: CelInputs<'c> = Vec::with_capacity(cel.columns().len());
    for (name, ty) in cel.columns() {
        let array = match batch.column_by_name(name) {
            Some(a) => Arc::clone(a),
            None if name == KEY_VARIABLE => column(batch, key_col)?,
            None => {
                return Err(Error::MissingColumn {
                    column: name.clone(),
                    hint: format!(
                        " from the input; the CEL expression reads it (input columns: {})",
                        batch
                            .schema()
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
        };
        if !cel_column_type_fits(*ty, array.data_type()) {
            return Err(Error::UnsupportedType {
                column: name.clone(),
                data_type: array.data_type().to_string(),
                hint: format!("cel_columns declares it {ty}"),
            });
        }
        inputs.push((name.as_str(), *ty, array));
    }
    let mut scope = cel.scope();
    for row in 0..batch.num_rows() {
        for (name, ty, array) in &inputs {
            let v = cel_value(array.as_ref(), row, *ty, name).map_err(|e| e.at_row(row))?;
            scope.set_cel(name, v);
        }
        f(row, &scope, &inputs)?;
    }
    Ok(())
}

fn column(batch: &RecordBatch, name: &str) -> Result<ArrayRef> {
    batch.column_by_name(name).cloned().ok_or_else(|| Error::MissingColumn {
        column: name.to_string(),
        hint: format!(
            " from the input (columns: {})",
            batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

/// Whether an Arrow column of type `dt` can feed a CEL column declared `ty`.
pub fn cel_column_type_fits(ty: CelType, dt: &DataType) -> bool {
    match ty {
        CelType::Int | CelType::Uint => dt.is_integer(),
        CelType::Double => dt.is_integer() || matches!(dt, DataType::Float32 | DataType::Float64),
        CelType::String => matches!(dt, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View),
        CelType::Bytes => matches!(
            dt,
            DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Binary
                | DataType::LargeBinary
                | DataType::BinaryView
        ),
        CelType::Bool => matches!(dt, DataType::Boolean),
    }
}

/// The value of `array[row]` as a CEL value of type `ty` (types checked by
/// [`cel_column_type_fits`] before).
fn cel_value(array: &dyn Array, row: usize, ty: CelType, column: &str) -> Result<cel::Value> {
    Ok(crate::cell::context_value_at(array, row, ty, column)?.into_cel())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{BinaryArray, Int32Array, Int64Array, LargeStringArray, StringArray, UInt64Array};
    use proptest::prelude::*;
    use sf_manifest::{Key, KeyEncoding, RoutingValue, ShardingSpec};
    use std::collections::BTreeMap;

    fn batch(name: &str, a: ArrayRef) -> RecordBatch {
        RecordBatch::try_from_iter([(name, a)]).expect("batch")
    }

    fn row_route(r: &Router, k: &Key) -> u32 {
        match r.route_key(k).expect("row route") {
            Routed::Db(d) => d,
            Routed::UnknownToken => panic!("no tokens here"),
        }
    }

    #[test]
    fn a_declared_column_missing_from_the_input_is_named() {
        let cols = BTreeMap::from([("region".to_string(), CelType::String)]);
        let cel = CelRouting::compile_tokens("region", &cols).expect("compile");
        let b = batch("id", Arc::new(StringArray::from(vec!["eu"])));
        let e = cel_tokens(&cel, &b, "id").expect_err("no region column");
        assert!(
            matches!(&e, Error::MissingColumn { column, .. } if column == "region"),
            "{e}"
        );
    }

    #[test]
    fn column_types_fit_their_cel_types() {
        use arrow::datatypes::DataType as D;
        assert!(cel_column_type_fits(CelType::Int, &D::Int16));
        assert!(!cel_column_type_fits(CelType::Int, &D::Utf8));
        assert!(cel_column_type_fits(CelType::Double, &D::Int64));
        assert!(cel_column_type_fits(CelType::Double, &D::Float32));
        assert!(!cel_column_type_fits(CelType::Double, &D::Utf8));
        assert!(cel_column_type_fits(CelType::String, &D::Utf8View));
        assert!(!cel_column_type_fits(CelType::String, &D::Binary));
        assert!(cel_column_type_fits(CelType::Bytes, &D::LargeBinary));
        assert!(!cel_column_type_fits(CelType::Bool, &D::Int8));
    }

    #[test]
    fn cel_tokens_are_each_rows_raw_result() {
        let cols = BTreeMap::from([("region".to_string(), CelType::String)]);
        let cel = CelRouting::compile_tokens("region", &cols).expect("compile");
        let b = batch("region", Arc::new(StringArray::from(vec!["eu", "us", "eu"])));
        assert_eq!(
            cel_tokens(&cel, &b, "id").expect("tokens"),
            vec![
                RoutingValue::Str("eu".into()),
                RoutingValue::Str("us".into()),
                RoutingValue::Str("eu".into())
            ]
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The row router and the Arrow kernel agree on random keys and shard counts.
        #[test]
        fn kernel_agrees_with_row_router_on_ints(keys in prop::collection::vec(any::<i64>(), 1..200), n in 1u32..100_000) {
            let r = Router::hash(n, KeyEncoding::U64Be).expect("router");
            let ids = r.route_batch(&batch("k", Arc::new(Int64Array::from(keys.clone()))), "k").expect("kernel");
            for (k, id) in keys.iter().zip(ids.values()) {
                prop_assert_eq!(*id, row_route(&r, &Key::Int(*k)));
            }
            let small: Vec<i32> = keys.iter().map(|k| *k as i32).collect();
            let ids = r.route_batch(&batch("k", Arc::new(Int32Array::from(small.clone()))), "k").expect("kernel");
            for (k, id) in small.iter().zip(ids.values()) {
                prop_assert_eq!(*id, row_route(&r, &Key::Int(i64::from(*k))));
            }
            let unsigned: Vec<u64> = keys.iter().map(|k| k.unsigned_abs() >> 1).collect();
            let ids = r.route_batch(&batch("k", Arc::new(UInt64Array::from(unsigned.clone()))), "k").expect("kernel");
            for (k, id) in unsigned.iter().zip(ids.values()) {
                prop_assert_eq!(*id, row_route(&r, &Key::from_u64(*k)));
            }
        }

        #[test]
        fn kernel_agrees_with_row_router_on_strings_and_bytes(
            keys in prop::collection::vec(".{0,24}", 1..100),
            raw in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..100),
            n in 1u32..100_000,
        ) {
            let r = Router::hash(n, KeyEncoding::Utf8).expect("router");
            let want: Vec<u32> = keys.iter().map(|k| row_route(&r, &Key::Str(k.clone()))).collect();
            let a = r.route_batch(&batch("k", Arc::new(StringArray::from(keys.clone()))), "k").expect("utf8");
            prop_assert_eq!(a.values().to_vec(), want.clone());
            let b = r.route_batch(&batch("k", Arc::new(LargeStringArray::from(keys.clone()))), "k").expect("large");
            prop_assert_eq!(b.values().to_vec(), want.clone());
            let v = r.route_batch(&batch("k", Arc::new(StringViewArray::from(keys.clone()))), "k").expect("view");
            prop_assert_eq!(v.values().to_vec(), want);
            let rr = Router::hash(n, KeyEncoding::Raw).expect("router");
            let want: Vec<u32> = raw.iter().map(|k| row_route(&rr, &Key::Bytes(k.clone()))).collect();
            let refs: Vec<&[u8]> = raw.iter().map(|k| k.as_slice()).collect();
            let c = rr.route_batch(&batch("k", Arc::new(BinaryArray::from(refs))), "k").expect("binary");
            prop_assert_eq!(c.values().to_vec(), want);
        }

        /// On the CEL path too, over the key alone.
        #[test]
        fn cel_kernel_agrees_with_row_router(keys in prop::collection::vec(0i64..i64::MAX, 1..50), n in 1u32..64) {
            let spec = ShardingSpec::cel(
                format!("shard_hash(key) % {n}u"),
                BTreeMap::from([("key".to_string(), sf_manifest::CelType::Int)]),
                None,
            );
            let r = Router::new(&spec, n, KeyEncoding::U64Be).expect("router");
            let h = Router::hash(n, KeyEncoding::U64Be).expect("hash router");
            let ids = r.route_batch(&batch("id", Arc::new(Int64Array::from(keys.clone()))), "id").expect("kernel");
            for (k, id) in keys.iter().zip(ids.values()) {
                prop_assert_eq!(*id, row_route(&r, &Key::Int(*k)));
                // shard_hash(key) % n in CEL is hash routing.
                prop_assert_eq!(*id, row_route(&h, &Key::Int(*k)));
            }
        }
    }

    #[test]
    fn null_keys_and_bad_columns_name_the_row() {
        let r = Router::hash(4, KeyEncoding::U64Be).expect("router");
        let b = batch("k", Arc::new(Int64Array::from(vec![Some(1), None, Some(3)])));
        let e = r.route_batch(&b, "k").unwrap_err();
        assert_eq!(
            e.to_string(),
            "column \"k\" is null at row 1; keys and routing columns must not be null"
        );
        let e = r.route_batch(&b, "id").unwrap_err();
        assert!(
            e.to_string().contains("\"id\"") && e.to_string().contains("columns: k"),
            "{e}"
        );
        let big = batch("k", Arc::new(UInt64Array::from(vec![1, u64::MAX])));
        let e = r.route_batch(&big, "k").unwrap_err();
        assert!(e.to_string().contains("row 1"), "{e}");
        let f = batch("k", Arc::new(arrow::array::Float64Array::from(vec![1.0])));
        let e = r.route_batch(&f, "k").unwrap_err();
        assert!(e.to_string().contains("Float64"), "{e}");
    }

    #[test]
    fn categorical_cel_over_a_column_errors_on_unknown_tokens() {
        let spec = ShardingSpec::cel(
            "region",
            BTreeMap::from([("region".to_string(), sf_manifest::CelType::String)]),
            Some(vec![RoutingValue::Str("eu".into()), RoutingValue::Str("us".into())]),
        );
        let r = Router::new(&spec, 2, KeyEncoding::U64Be).expect("router");
        let b = RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
            (
                "region",
                Arc::new(StringArray::from(vec!["us", "eu", "mars"])) as ArrayRef,
            ),
        ])
        .expect("batch");
        let e = r.route_batch(&b, "id").unwrap_err();
        assert!(e.to_string().contains("row 2") && e.to_string().contains("mars"), "{e}");
        let ok = b.slice(0, 2);
        assert_eq!(r.route_batch(&ok, "id").expect("route").values().to_vec(), vec![1, 0]);
        let direct = ShardingSpec::cel(
            "id % 2",
            BTreeMap::from([("id".to_string(), sf_manifest::CelType::Int)]),
            None,
        );
        let r = Router::new(&direct, 1, KeyEncoding::U64Be).expect("router");
        let e = r.route_batch(&b, "id").unwrap_err();
        assert!(matches!(e, Error::DbIdOutOfRange { row: Some(0), .. }), "{e}");
    }
}
