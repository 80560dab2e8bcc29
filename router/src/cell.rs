//! One Arrow cell as a routing value: the conversion the vectorised kernel
//! (per CEL row) and the row-by-row routing check (per sampled row) share,
//! so both read a column's values the same way.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type, UInt32Type,
    UInt64Type,
};
use sf_manifest::{CelType, Key};

use crate::cel::ContextValue;
use crate::error::{Error, Result};

/// An integer cell widened to `i128` (every Arrow integer fits), or `None`
/// when the column is not an integer column.
pub(crate) fn int_at(array: &dyn Array, row: usize) -> Option<i128> {
    Some(match array.data_type() {
        DataType::Int8 => i128::from(array.as_primitive::<Int8Type>().value(row)),
        DataType::Int16 => i128::from(array.as_primitive::<Int16Type>().value(row)),
        DataType::Int32 => i128::from(array.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => i128::from(array.as_primitive::<Int64Type>().value(row)),
        DataType::UInt8 => i128::from(array.as_primitive::<UInt8Type>().value(row)),
        DataType::UInt16 => i128::from(array.as_primitive::<UInt16Type>().value(row)),
        DataType::UInt32 => i128::from(array.as_primitive::<UInt32Type>().value(row)),
        DataType::UInt64 => i128::from(array.as_primitive::<UInt64Type>().value(row)),
        _ => return None,
    })
}

/// The bytes of a text or binary cell, or `None` for other columns.
pub(crate) fn bytes_at(array: &dyn Array, row: usize) -> Option<&[u8]> {
    Some(match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().value(row).as_bytes(),
        DataType::LargeUtf8 => array.as_string::<i64>().value(row).as_bytes(),
        DataType::Utf8View => array.as_string_view().value(row).as_bytes(),
        DataType::Binary => array.as_binary::<i32>().value(row),
        DataType::LargeBinary => array.as_binary::<i64>().value(row),
        DataType::BinaryView => array.as_binary_view().value(row),
        _ => return None,
    })
}

fn is_text(dt: &DataType) -> bool {
    matches!(dt, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// A key column's cell at `row` as a [`Key`]: integers as integers (above
/// `i64::MAX` as [`Key::UInt`]), text as text, binary as bytes. `column`
/// names the column in errors.
pub fn key_at(array: &dyn Array, row: usize, column: &str) -> Result<Key> {
    if array.is_null(row) {
        return Err(Error::Null {
            column: column.to_string(),
            row,
        });
    }
    if let Some(v) = int_at(array, row) {
        return Ok(match i64::try_from(v) {
            Ok(i) => Key::Int(i),
            // Only a UInt64 column gets here: its value is at most u64::MAX.
            Err(_) => Key::from_u64(u64::try_from(v).unwrap_or(u64::MAX)),
        });
    }
    match bytes_at(array, row) {
        Some(b) if is_text(array.data_type()) => Ok(Key::Str(String::from_utf8_lossy(b).into_owned())),
        Some(b) => Ok(Key::Bytes(b.to_vec())),
        None => Err(Error::UnsupportedType {
            column: column.to_string(),
            data_type: array.data_type().to_string(),
            hint: "keys must be integers, text or binary".into(),
        }),
    }
}

/// A routing column's cell at `row` as a value of CEL type `ty`; `column`
/// names the column in errors.
pub fn context_value_at(array: &dyn Array, row: usize, ty: CelType, column: &str) -> Result<ContextValue> {
    if array.is_null(row) {
        return Err(Error::Null {
            column: column.to_string(),
            row,
        });
    }
    let wrong = |found: String| Error::WrongType {
        what: format!("routing column {column:?} at row {row}"),
        expected: ty.to_string(),
        found,
    };
    let dt = array.data_type();
    Ok(match ty {
        CelType::Int => {
            let v = int_at(array, row).ok_or_else(|| wrong(dt.to_string()))?;
            ContextValue::Int(i64::try_from(v).map_err(|_| wrong(format!("{v}, out of range")))?)
        }
        CelType::Uint => {
            let v = int_at(array, row).ok_or_else(|| wrong(dt.to_string()))?;
            ContextValue::UInt(u64::try_from(v).map_err(|_| wrong(format!("{v}, out of range")))?)
        }
        CelType::Double => match dt {
            DataType::Float64 => ContextValue::Double(array.as_primitive::<Float64Type>().value(row)),
            DataType::Float32 => ContextValue::Double(f64::from(array.as_primitive::<Float32Type>().value(row))),
            _ => ContextValue::Double(int_at(array, row).ok_or_else(|| wrong(dt.to_string()))? as f64),
        },
        CelType::String => match bytes_at(array, row) {
            Some(b) if is_text(dt) => ContextValue::Str(String::from_utf8_lossy(b).into_owned()),
            _ => return Err(wrong(dt.to_string())),
        },
        CelType::Bytes => ContextValue::Bytes(bytes_at(array, row).ok_or_else(|| wrong(dt.to_string()))?.to_vec()),
        CelType::Bool => match dt {
            DataType::Boolean => ContextValue::Bool(array.as_boolean().value(row)),
            _ => return Err(wrong(dt.to_string())),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{BinaryArray, BooleanArray, Float32Array, Int8Array, LargeStringArray, UInt64Array};

    #[test]
    fn every_integer_width_reads_as_its_value() {
        use arrow::array::{Int16Array, Int32Array, UInt8Array, UInt16Array, UInt32Array};
        let cases: Vec<(Box<dyn Array>, i128)> = vec![
            (Box::new(Int16Array::from(vec![-300])), -300),
            (Box::new(Int32Array::from(vec![-70_000])), -70_000),
            (Box::new(UInt8Array::from(vec![200])), 200),
            (Box::new(UInt16Array::from(vec![60_000])), 60_000),
            (Box::new(UInt32Array::from(vec![4_000_000_000])), 4_000_000_000),
        ];
        for (array, want) in cases {
            assert_eq!(int_at(array.as_ref(), 0), Some(want), "{}", array.data_type());
        }
    }

    #[test]
    fn every_text_and_binary_layout_reads_as_its_bytes() {
        use arrow::array::{BinaryViewArray, LargeBinaryArray, StringViewArray};
        let view = StringViewArray::from(vec!["a string longer than twelve bytes"]);
        assert_eq!(
            key_at(&view, 0, "k").expect("utf8 view"),
            Key::Str("a string longer than twelve bytes".into())
        );
        let large = LargeBinaryArray::from_vec(vec![b"\x01\x02"]);
        assert_eq!(key_at(&large, 0, "k").expect("large binary"), Key::Bytes(vec![1, 2]));
        let bview = BinaryViewArray::from(vec![&b"\x03"[..]]);
        assert_eq!(key_at(&bview, 0, "k").expect("binary view"), Key::Bytes(vec![3]));
    }

    #[test]
    fn context_values_take_their_column_types() {
        use arrow::array::{Float64Array, StringArray};
        assert_eq!(
            context_value_at(&Float64Array::from(vec![2.5]), 0, CelType::Double, "x").expect("f64"),
            ContextValue::Double(2.5)
        );
        assert_eq!(
            context_value_at(&Float32Array::from(vec![1.5]), 0, CelType::Double, "x").expect("f32"),
            ContextValue::Double(1.5)
        );
        assert_eq!(
            context_value_at(&StringArray::from(vec!["eu"]), 0, CelType::String, "x").expect("text"),
            ContextValue::Str("eu".into())
        );
        let e = context_value_at(&BinaryArray::from_vec(vec![b"eu"]), 0, CelType::String, "x")
            .expect_err("binary is not a string");
        assert!(e.to_string().contains("Binary"), "{e}");
    }

    #[test]
    fn keys_of_every_column_type() {
        assert_eq!(key_at(&Int8Array::from(vec![-3]), 0, "k").expect("i8"), Key::Int(-3));
        let big = UInt64Array::from(vec![u64::MAX, 7]);
        assert_eq!(key_at(&big, 0, "k").expect("u64"), Key::UInt(u64::MAX));
        assert_eq!(key_at(&big, 1, "k").expect("u64"), Key::Int(7));
        assert_eq!(
            key_at(&LargeStringArray::from(vec!["héllo"]), 0, "k").expect("text"),
            Key::Str("héllo".into())
        );
        assert_eq!(
            key_at(&BinaryArray::from_vec(vec![b"\x00\xff"]), 0, "k").expect("bytes"),
            Key::Bytes(vec![0, 0xff])
        );
        let e = key_at(&Int8Array::from(vec![None]), 0, "id").expect_err("null");
        assert!(e.to_string().contains("\"id\" is null at row 0"), "{e}");
        let e = key_at(&Float32Array::from(vec![1.0]), 0, "id").expect_err("float");
        assert!(e.to_string().contains("Float32"), "{e}");
    }

    #[test]
    fn context_values_follow_the_declared_type() {
        let ints = UInt64Array::from(vec![5, u64::MAX]);
        assert_eq!(
            context_value_at(&ints, 0, CelType::Int, "c").expect("int"),
            ContextValue::Int(5)
        );
        assert_eq!(
            context_value_at(&ints, 1, CelType::Uint, "c").expect("uint"),
            ContextValue::UInt(u64::MAX)
        );
        let e = context_value_at(&ints, 1, CelType::Int, "c").expect_err("out of range");
        assert!(e.to_string().contains("out of range"), "{e}");
        assert_eq!(
            context_value_at(&ints, 0, CelType::Double, "c").expect("double"),
            ContextValue::Double(5.0)
        );
        let text = LargeStringArray::from(vec!["eu"]);
        assert_eq!(
            context_value_at(&text, 0, CelType::String, "region").expect("string"),
            ContextValue::Str("eu".into())
        );
        assert_eq!(
            context_value_at(&text, 0, CelType::Bytes, "region").expect("bytes"),
            ContextValue::Bytes(b"eu".to_vec())
        );
        assert_eq!(
            context_value_at(&BooleanArray::from(vec![true]), 0, CelType::Bool, "b").expect("bool"),
            ContextValue::Bool(true)
        );
        let e = context_value_at(&text, 0, CelType::Bool, "region").expect_err("wrong type");
        assert!(e.to_string().contains("\"region\""), "{e}");
    }
}
