//! Payload filters of vector searches: a CEL predicate over a hit's
//! payload, its top-level fields bound as variables
//! (`category == "a" && price < 10`).
//!
//! A filter is compiled once per query and asked of each candidate: true
//! keeps it. Anything else does not match: a result that is not a bool,
//! an evaluation error (a field the payload lacks is an undeclared
//! variable), a payload that is not a JSON object (it binds no variables),
//! and a hit without a payload, which sees no variables either (so only
//! a predicate that reads no field can match it).

use std::sync::Arc;

use cel::{Context, Env, Program, Value};

/// The longest filter accepted, in bytes.
pub const MAX_FILTER_BYTES: usize = 4096;

/// A compiled payload predicate; see the module docs. `Send + Sync`.
pub struct PayloadFilter {
    expr: String,
    program: Program,
    env: Arc<Env>,
}

impl std::fmt::Debug for PayloadFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayloadFilter")
            .field("expr", &self.expr)
            .finish_non_exhaustive()
    }
}

impl PayloadFilter {
    /// Compiles `expr`; the error says why it does not.
    pub fn compile(expr: &str) -> Result<Self, String> {
        if expr.len() > MAX_FILTER_BYTES {
            return Err(format!(
                "is {} bytes, above the {MAX_FILTER_BYTES} a filter may take",
                expr.len()
            ));
        }
        if expr.trim().is_empty() {
            return Err("is empty".into());
        }
        let env = Arc::new(Env::stdlib());
        let program = env
            .compile(expr)
            .map_err(|e| format!("{expr:?} does not compile: {e}"))?;
        Ok(PayloadFilter {
            expr: expr.to_string(),
            program,
            env,
        })
    }

    /// The expression.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// Whether a hit whose payload is `payload` (JSON text) passes.
    pub fn matches(&self, payload: Option<&str>) -> bool {
        let mut ctx = Context::with_env(Arc::clone(&self.env));
        if let Some(serde_json::Value::Object(fields)) =
            payload.and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
        {
            for (name, value) in fields {
                ctx.add_variable_from_value(name, cel_of(value));
            }
        }
        matches!(self.program.execute(&ctx), Ok(Value::Bool(true)))
    }
}

/// A JSON value as CEL sees it: an integer is an `int` when it fits one
/// (so `i % 3` and `price < 10` take JSON numbers as written), a `uint`
/// above, any other number a `double`; arrays are lists, objects maps.
fn cel_of(value: serde_json::Value) -> Value {
    use serde_json::Value as J;
    match value {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::String(Arc::new(s)),
        J::Array(items) => Value::List(Arc::new(items.into_iter().map(cel_of).collect())),
        J::Object(fields) => Value::Map(cel::objects::Map {
            map: Arc::new(
                fields
                    .into_iter()
                    .map(|(k, v)| (cel::objects::Key::String(Arc::new(k)), cel_of(v)))
                    .collect(),
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_fields_are_variables_and_anything_but_true_does_not_match() {
        let f = PayloadFilter::compile(r#"category == "a" && price < 10"#).expect("compiles");
        assert!(f.matches(Some(r#"{"category": "a", "price": 5}"#)));
        assert!(f.matches(Some(r#"{"category": "a", "price": 9.5, "other": [1, 2]}"#)));
        assert!(!f.matches(Some(r#"{"category": "b", "price": 5}"#)));
        assert!(!f.matches(Some(r#"{"category": "a", "price": 50}"#)));
        // A missing field is an error: not matching.
        assert!(!f.matches(Some(r#"{"category": "a"}"#)));
        assert!(!f.matches(None), "no payload: no variables");
        assert!(!f.matches(Some("[1, 2]")), "not an object");
        assert!(!f.matches(Some("not json")));
        // Not a bool: not matching.
        assert!(
            !PayloadFilter::compile("price")
                .expect("compiles")
                .matches(Some(r#"{"price": 1}"#))
        );
        // Nested fields and lists.
        let f = PayloadFilter::compile(r#"meta.lang == "en" && "x" in tags"#).expect("compiles");
        assert!(f.matches(Some(r#"{"meta": {"lang": "en"}, "tags": ["x", "y"]}"#)));
        assert!(!f.matches(Some(r#"{"meta": {"lang": "en"}, "tags": ["y"]}"#)));
        // Integers are ints: arithmetic with int constants works.
        let f = PayloadFilter::compile("i % 3 == 1 && big > 0u").expect("compiles");
        assert!(f.matches(Some(r#"{"i": 4, "big": 18446744073709551615}"#)));
        assert!(!f.matches(Some(r#"{"i": 3, "big": 18446744073709551615}"#)));
        // A predicate that names no field matches every hit.
        assert!(PayloadFilter::compile("true").expect("compiles").matches(None));
    }

    #[test]
    fn a_filter_that_does_not_compile_says_why() {
        assert!(
            PayloadFilter::compile("price <")
                .unwrap_err()
                .contains("does not compile")
        );
        assert!(PayloadFilter::compile("  ").unwrap_err().contains("empty"));
        let long = "a".repeat(MAX_FILTER_BYTES + 1);
        assert!(PayloadFilter::compile(&long).unwrap_err().contains("above the"));
    }
}
