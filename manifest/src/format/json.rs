//! Deterministic JSON text: keys sorted at every level, with the exact
//! spacing and escaping of the reference implementation (Python's `json`).
//!
//! Two styles appear in the format:
//! - [`JsonStyle::Python`]: `json.dumps(v, sort_keys=True)`, i.e. `", "` and
//!   `": "` separators with non-ASCII escaped; used for the manifest's JSON
//!   columns (`sharding`, `custom`, `writer_info`, `min_key`, `max_key`).
//! - [`JsonStyle::Compact`]: `","` and `":"` with non-ASCII escaped; used for
//!   `_CURRENT` and for JSON-encoded values (`value.json_cols`).
//!
//! Floats are printed as Python's `repr` does (`1.0`, `1e-05`, `1.5e+16`,
//! `NaN`, `Infinity`), so a value encoded here has the same bytes as one
//! encoded by the reference.

use serde_json::Value;

/// Separator style; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonStyle {
    /// `,` and `:` separators.
    Compact,
    /// `, ` and `: ` separators (Python's defaults).
    Python,
}

/// Encodes `value` with sorted keys in the given style.
pub fn to_sorted_string(value: &Value, style: JsonStyle) -> String {
    let mut out = String::with_capacity(64);
    write_value(&mut out, value, style);
    out
}

/// Appends `value` to `out` with sorted keys in the given style.
pub fn write_value(out: &mut String, value: &Value, style: JsonStyle) {
    let (item_sep, key_sep) = match style {
        JsonStyle::Compact => (",", ":"),
        JsonStyle::Python => (", ", ": "),
    };
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.push_str(&i.to_string());
            } else if let Some(u) = n.as_u64() {
                out.push_str(&u.to_string());
            } else {
                out.push_str(&python_float_repr(n.as_f64().unwrap_or(f64::NAN)));
            }
        }
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                write_value(out, item, style);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                write_str(out, k);
                out.push_str(key_sep);
                write_value(out, v, style);
            }
            out.push('}');
        }
    }
}

/// Appends a JSON string literal, escaping as Python's `ensure_ascii=True` does.
pub fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            c if !(' '..='~').contains(&c) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A float as Python's `repr(float)` prints it (and so `json.dumps`).
pub fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.to_string();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.to_string();
    }
    // Rust's `{:e}` prints the shortest digits that round-trip, like Python's repr.
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} always has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        let body = if exp < 0 {
            format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
        } else if exp + 1 >= n {
            format!("{}{}.0", digits, "0".repeat((exp + 1 - n) as usize))
        } else {
            let (int, frac) = digits.split_at((exp + 1) as usize);
            format!("{int}.{frac}")
        };
        format!("{sign}{body}")
    } else {
        let mant = if digits.len() == 1 {
            digits
        } else {
            format!("{}.{}", &digits[..1], &digits[1..])
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mant}e{esign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_style_matches_the_reference_manifest_text() {
        let v = json!({"strategy": "hash", "routing_values": null, "hash_algorithm": "xxh3_64", "cel_expr": null, "cel_columns": null});
        assert_eq!(
            to_sorted_string(&v, JsonStyle::Python),
            r#"{"cel_columns": null, "cel_expr": null, "hash_algorithm": "xxh3_64", "routing_values": null, "strategy": "hash"}"#
        );
        let w = json!({"task_attempt_id": null, "stage_id": null, "duration_ms": 0, "attempt": 0});
        assert_eq!(
            to_sorted_string(&w, JsonStyle::Python),
            r#"{"attempt": 0, "duration_ms": 0, "stage_id": null, "task_attempt_id": null}"#
        );
        let nested = json!({"b": {"d": 1, "c": [1, 2]}, "a": "x"});
        assert_eq!(
            to_sorted_string(&nested, JsonStyle::Compact),
            r#"{"a":"x","b":{"c":[1,2],"d":1}}"#
        );
    }

    #[test]
    fn escapes_like_ensure_ascii() {
        assert_eq!(to_sorted_string(&json!("héllo"), JsonStyle::Compact), r#""h\u00e9llo""#);
        assert_eq!(
            to_sorted_string(&json!("a\"b\\c\n\u{1}"), JsonStyle::Compact),
            r#""a\"b\\c\n\u0001""#
        );
        assert_eq!(to_sorted_string(&json!("😀"), JsonStyle::Compact), r#""\ud83d\ude00""#);
        assert_eq!(to_sorted_string(&json!("\u{7f}"), JsonStyle::Compact), r#""\u007f""#);
    }

    #[test]
    fn floats_print_like_python_repr() {
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (123456.789, "123456.789"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (9999999999999998.0, "9999999999999998.0"),
            (-2.5, "-2.5"),
            (1e22, "1e+22"),
            (3.0e-310, "3e-310"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
            (-0.0, "-0.0"),
        ];
        for (f, want) in cases {
            assert_eq!(python_float_repr(f), want, "{f}");
        }
    }
}
