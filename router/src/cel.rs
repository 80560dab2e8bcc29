//! CEL routing: an expression over typed columns, compiled once, with
//! `shard_hash()` available; its result is the db id (direct mode) or a
//! token looked up in `routing_values` (categorical mode).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use cel::{Context, Env, ExecutionError, Program, Value};
use sf_manifest::format::sharding::text_as_bytes;
use sf_manifest::{CelType, RoutingValue};

use crate::error::{Error, Result};
use crate::key::{hash_bytes, hash_i64};

/// A value bound to a CEL column for one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum ContextValue {
    /// `int`
    Int(i64),
    /// `uint`
    UInt(u64),
    /// `string`
    Str(String),
    /// `bytes`
    Bytes(Vec<u8>),
    /// `double`
    Double(f64),
    /// `bool`
    Bool(bool),
}

impl ContextValue {
    /// Parses command-line text as a value of `ty`.
    pub fn parse(ty: CelType, text: &str) -> Result<Self> {
        let bad = |expected: &str| Error::WrongType {
            what: format!("routing context value {text:?}"),
            expected: expected.to_string(),
            found: "text".into(),
        };
        Ok(match ty {
            CelType::Int => ContextValue::Int(text.trim().parse().map_err(|_| bad("an int"))?),
            CelType::Uint => ContextValue::UInt(text.trim().trim_end_matches('u').parse().map_err(|_| bad("a uint"))?),
            CelType::String => ContextValue::Str(text.to_string()),
            CelType::Bytes => ContextValue::Bytes(text_as_bytes(text).map_err(|_| bad("text or hex:<hex>"))?),
            CelType::Double => ContextValue::Double(text.trim().parse().map_err(|_| bad("a double"))?),
            CelType::Bool => ContextValue::Bool(match text.trim() {
                "true" => true,
                "false" => false,
                _ => return Err(bad("true or false")),
            }),
        })
    }

    pub(crate) fn into_cel(self) -> Value {
        match self {
            ContextValue::Int(i) => Value::Int(i),
            ContextValue::UInt(u) => Value::UInt(u),
            ContextValue::Str(s) => Value::String(Arc::new(s)),
            ContextValue::Bytes(b) => Value::Bytes(Arc::new(b)),
            ContextValue::Double(f) => Value::Float(f),
            ContextValue::Bool(b) => Value::Bool(b),
        }
    }

    /// The zero value of a type, used to try an expression at compile time.
    fn zero(ty: CelType) -> Self {
        match ty {
            CelType::Int => ContextValue::Int(0),
            CelType::Uint => ContextValue::UInt(0),
            CelType::String => ContextValue::Str(String::new()),
            CelType::Bytes => ContextValue::Bytes(Vec::new()),
            CelType::Double => ContextValue::Double(0.0),
            CelType::Bool => ContextValue::Bool(false),
        }
    }
}

/// How the expression's result becomes a db id.
#[derive(Debug)]
enum Resolve {
    /// No resolution: only raw tokens are read (inference from data).
    Raw,
    Direct {
        num_dbs: u32,
    },
    Categorical {
        ints: HashMap<i64, u32>,
        strs: HashMap<String, u32>,
        bytes: HashMap<Vec<u8>, u32>,
    },
}

/// What an evaluation routed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// This shard.
    Db(u32),
    /// A categorical token the snapshot does not know (a miss on read).
    UnknownToken,
}

/// A compiled routing expression. `Send + Sync`: share one per process.
pub struct CelRouting {
    expr: String,
    program: Program,
    env: Arc<Env>,
    columns: BTreeMap<String, CelType>,
    resolve: Resolve,
}

impl std::fmt::Debug for CelRouting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CelRouting")
            .field("expr", &self.expr)
            .field("columns", &self.columns)
            .field("resolve", &self.resolve)
            .finish_non_exhaustive()
    }
}

fn shard_hash(v: Value) -> std::result::Result<Value, ExecutionError> {
    let h = match v {
        Value::Int(i) => hash_i64(i),
        Value::UInt(u) => hash_i64(i64::try_from(u).map_err(|_| {
            ExecutionError::function_error(
                "shard_hash",
                format!("{u}u is above the signed 64-bit range keys hash in"),
            )
        })?),
        Value::String(s) => hash_bytes(s.as_bytes()),
        Value::Bytes(b) => hash_bytes(&b),
        other => {
            return Err(ExecutionError::function_error(
                "shard_hash",
                format!("takes int, uint, string or bytes, not {}", other.type_of()),
            ));
        }
    };
    Ok(Value::UInt(h))
}

impl CelRouting {
    /// Compiles `expr` over `columns`. `routing_values` selects categorical
    /// mode; otherwise the result must be a db id in `0..num_dbs`.
    ///
    /// The expression is tried once on zero values of its columns, so an
    /// unknown name, a type mix-up (`key % 4` on a `uint` key; write `4u`)
    /// or a result of the wrong type is reported now, not on the first row.
    pub fn compile(
        expr: &str,
        columns: &BTreeMap<String, CelType>,
        routing_values: Option<&[RoutingValue]>,
        num_dbs: u32,
    ) -> Result<Self> {
        Self::compile_with(expr, columns, routing_values, Some(num_dbs))
    }

    /// Compiles `expr` to read raw tokens only ([`Scope::token`]), as when
    /// routing values or a direct expression's `num_dbs` are inferred from
    /// the data.
    pub fn compile_tokens(expr: &str, columns: &BTreeMap<String, CelType>) -> Result<Self> {
        Self::compile_with(expr, columns, None, None)
    }

    fn compile_with(
        expr: &str,
        columns: &BTreeMap<String, CelType>,
        routing_values: Option<&[RoutingValue]>,
        num_dbs: Option<u32>,
    ) -> Result<Self> {
        let compile_err = |reason: String| Error::CelCompile {
            expr: expr.to_string(),
            reason,
        };
        if columns.is_empty() {
            return Err(compile_err(
                "declares no columns; cel_columns needs at least one name and type".into(),
            ));
        }
        let env = Arc::new(Env::stdlib());
        let program = env
            .compile(expr)
            .map_err(|e| compile_err(format!("does not compile: {e}")))?;
        let resolve = match (routing_values, num_dbs) {
            (_, None) => Resolve::Raw,
            (None, Some(num_dbs)) => Resolve::Direct { num_dbs },
            (Some(values), Some(num_dbs)) => {
                sf_manifest::format::sharding::validate_routing_values(values)
                    .map_err(|e| Error::Spec(e.to_string()))?;
                if values.len() != num_dbs as usize {
                    return Err(Error::Spec(format!(
                        "{} routing_values for num_dbs {num_dbs}; categorical routing has one shard per value",
                        values.len()
                    )));
                }
                let mut ints = HashMap::new();
                let mut strs = HashMap::new();
                let mut bytes = HashMap::new();
                for (i, v) in values.iter().enumerate() {
                    let idx = u32::try_from(i).map_err(|_| Error::Spec("too many routing_values".into()))?;
                    match v {
                        RoutingValue::Int(n) => {
                            ints.insert(*n, idx);
                        }
                        RoutingValue::Str(s) => {
                            strs.insert(s.clone(), idx);
                            bytes.insert(text_as_bytes(s).unwrap_or_else(|_| s.as_bytes().to_vec()), idx);
                        }
                    }
                }
                Resolve::Categorical { ints, strs, bytes }
            }
        };
        let routing = CelRouting {
            expr: expr.to_string(),
            program,
            env,
            columns: columns.clone(),
            resolve,
        };
        routing.try_on_zero_values()?;
        Ok(routing)
    }

    fn try_on_zero_values(&self) -> Result<()> {
        let mut scope = self.scope();
        for (name, ty) in &self.columns {
            scope.set(name, ContextValue::zero(*ty));
        }
        let value = match self.program.execute(&scope.ctx) {
            Ok(v) => v,
            Err(e) => {
                return match e {
                    ExecutionError::UndeclaredReference(name) => Err(Error::CelCompile {
                        expr: self.expr.clone(),
                        reason: format!(
                            "uses {name:?}, which is neither a declared column ({}) nor a known function",
                            self.columns.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    }),
                    ExecutionError::NoSuchOverload(_)
                    | ExecutionError::UnsupportedBinaryOperator(..)
                    | ExecutionError::UnexpectedType { .. }
                    | ExecutionError::ValuesNotComparable(..) => Err(Error::CelCompile {
                        expr: self.expr.clone(),
                        reason: format!(
                            "has a type error: {e} (int and uint do not mix in CEL: write 4u for a uint constant)"
                        ),
                    }),
                    // Data-dependent failures (division by zero, ...) may not
                    // happen on real rows; they are reported per row.
                    _ => Ok(()),
                };
            }
        };
        let checked = match self.resolve {
            Resolve::Raw => token_of(&self.expr, &value).map(|_| ()),
            _ => self.token(value).map(|_| ()),
        };
        match checked {
            Err(e @ Error::CelResultType { .. }) => Err(Error::CelCompile {
                expr: self.expr.clone(),
                reason: e
                    .to_string()
                    .replacen(&format!("CEL expression {:?} ", self.expr), "", 1),
            }),
            _ => Ok(()),
        }
    }

    /// Whether the expression yields bytes (tried on zero values of its
    /// columns, as at compile time): its categorical tokens are then
    /// bytes, which a vector-only snapshot's `custom.vector` marks as such.
    pub fn yields_bytes(&self) -> bool {
        let mut scope = self.scope();
        for (name, ty) in &self.columns {
            scope.set(name, ContextValue::zero(*ty));
        }
        matches!(scope.eval(), Ok(Value::Bytes(_)))
    }

    /// The expression text.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The declared columns.
    pub fn columns(&self) -> &BTreeMap<String, CelType> {
        &self.columns
    }

    /// A fresh evaluation scope (one per thread or batch; reuse it across rows).
    pub fn scope(&self) -> Scope<'_> {
        let mut ctx = Context::with_env(Arc::clone(&self.env));
        ctx.add_function("shard_hash", shard_hash)
            .expect("shard_hash is not a standard CEL function");
        Scope { routing: self, ctx }
    }

    fn token(&self, value: Value) -> Result<Routed> {
        let wrong = |wanted: &'static str, v: &Value| Error::CelResultType {
            expr: self.expr.clone(),
            row: None,
            found: format!("a {}", v.type_of()),
            wanted,
        };
        match &self.resolve {
            Resolve::Raw => Err(Error::Spec(format!(
                "CEL expression {:?} was compiled to read tokens, not to route",
                self.expr
            ))),
            Resolve::Direct { num_dbs } => {
                let id: Option<u64> = match &value {
                    Value::Int(i) => u64::try_from(*i).ok(),
                    Value::UInt(u) => Some(*u),
                    v => return Err(wrong("direct routing needs an int or uint db id", v)),
                };
                match id.and_then(|i| u32::try_from(i).ok()).filter(|i| i < num_dbs) {
                    Some(db) => Ok(Routed::Db(db)),
                    None => Err(Error::DbIdOutOfRange {
                        value: match value {
                            Value::Int(i) => i.to_string(),
                            Value::UInt(u) => u.to_string(),
                            _ => unreachable!("checked above"),
                        },
                        num_dbs: *num_dbs,
                        row: None,
                    }),
                }
            }
            Resolve::Categorical { ints, strs, bytes } => {
                let hit = match &value {
                    Value::Int(i) => ints.get(i),
                    Value::UInt(u) => i64::try_from(*u).ok().and_then(|i| ints.get(&i)),
                    Value::String(s) => strs.get(s.as_str()),
                    Value::Bytes(b) => bytes.get(b.as_slice()),
                    v => {
                        return Err(wrong(
                            "categorical routing needs an int, uint, string or bytes token",
                            v,
                        ));
                    }
                };
                Ok(hit.map_or(Routed::UnknownToken, |db| Routed::Db(*db)))
            }
        }
    }
}

/// A raw CEL result as a routing token.
fn token_of(expr: &str, value: &Value) -> Result<RoutingValue> {
    match value {
        Value::Int(i) => Ok(RoutingValue::Int(*i)),
        Value::UInt(u) => i64::try_from(*u)
            .map(RoutingValue::Int)
            .map_err(|_| Error::DbIdOutOfRange {
                value: u.to_string(),
                num_dbs: u32::MAX,
                row: None,
            }),
        Value::String(s) => Ok(RoutingValue::Str(s.as_ref().clone())),
        Value::Bytes(b) => Ok(RoutingValue::Str(sf_manifest::format::sharding::bytes_as_text(b))),
        v => Err(Error::CelResultType {
            expr: expr.to_string(),
            row: None,
            found: format!("a {}", v.type_of()),
            wanted: "routing tokens are int, uint, string or bytes",
        }),
    }
}

/// One evaluation context of a [`CelRouting`]; set the columns, then route.
#[allow(missing_debug_implementations)]
pub struct Scope<'r> {
    routing: &'r CelRouting,
    ctx: Context<'static, 'static>,
}

impl Scope<'_> {
    /// Binds column `name` for the next evaluation.
    pub fn set(&mut self, name: &str, value: ContextValue) {
        self.ctx.add_variable_from_value(name, value.into_cel());
    }

    pub(crate) fn set_cel(&mut self, name: &str, value: Value) {
        self.ctx.add_variable_from_value(name, value);
    }

    /// Evaluates with the current bindings.
    pub fn route(&self) -> Result<Routed> {
        let value = self.eval()?;
        self.routing.token(value)
    }

    /// Evaluates with the current bindings and returns the raw result as a
    /// routing token (for inferring routing values or `num_dbs` from data):
    /// an int (or a uint that fits one), or text (bytes as
    /// [`bytes_as_text`](sf_manifest::format::sharding::bytes_as_text)).
    pub fn token(&self) -> Result<RoutingValue> {
        token_of(&self.routing.expr, &self.eval()?)
    }

    fn eval(&self) -> Result<Value> {
        self.routing.program.execute(&self.ctx).map_err(|e| Error::CelEval {
            expr: self.routing.expr.clone(),
            row: None,
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sf_manifest::Classified;

    fn cols(pairs: &[(&str, CelType)]) -> BTreeMap<String, CelType> {
        pairs.iter().map(|(n, t)| (n.to_string(), *t)).collect()
    }

    #[test]
    fn an_expression_yielding_bytes_is_told_apart() {
        let bytes = cols(&[("b", CelType::Bytes), ("s", CelType::String)]);
        let yields = |expr: &str| {
            CelRouting::compile_tokens(expr, &bytes)
                .expect("compile")
                .yields_bytes()
        };
        assert!(yields("b"));
        assert!(!yields("s"));
        assert!(!yields("shard_hash(b) % 4u"));
    }

    #[test]
    fn direct_routing_with_shard_hash() {
        let r = CelRouting::compile("shard_hash(key) % 4u", &cols(&[("key", CelType::Int)]), None, 4).expect("compile");
        let mut s = r.scope();
        // Integer keys 0..9 over 4 shards route to 1,2,3,1,0,0,3,3,2,3 (docs/FORMAT.md).
        let want = [1, 2, 3, 1, 0, 0, 3, 3, 2, 3];
        for (k, w) in want.iter().enumerate() {
            s.set("key", ContextValue::Int(k as i64));
            assert_eq!(s.route().expect("route"), Routed::Db(*w), "key {k}");
        }
    }

    #[test]
    fn categorical_routing_and_unknown_tokens() {
        let values = vec![
            RoutingValue::Str("ap".into()),
            RoutingValue::Str("eu".into()),
            RoutingValue::Str("us".into()),
        ];
        let r =
            CelRouting::compile("region", &cols(&[("region", CelType::String)]), Some(&values), 3).expect("compile");
        let mut s = r.scope();
        s.set("region", ContextValue::Str("us".into()));
        assert_eq!(s.route().expect("us"), Routed::Db(2));
        s.set("region", ContextValue::Str("mars".into()));
        assert_eq!(s.route().expect("mars"), Routed::UnknownToken);
        let rb = CelRouting::compile("b", &cols(&[("b", CelType::Bytes)]), Some(&values), 3).expect("bytes");
        let mut s = rb.scope();
        s.set("b", ContextValue::Bytes(b"eu".to_vec()));
        assert_eq!(s.route().expect("eu"), Routed::Db(1));
    }

    #[test]
    fn compile_errors_are_clear() {
        let c = cols(&[("key", CelType::Uint)]);
        let e = CelRouting::compile("key %", &c, None, 4).unwrap_err();
        assert!(e.to_string().contains("does not compile"), "{e}");
        let e = CelRouting::compile("key % 4", &c, None, 4).unwrap_err();
        assert!(e.to_string().contains("4u"), "{e}");
        let e = CelRouting::compile("nope(key)", &c, None, 4).unwrap_err();
        assert!(e.to_string().contains("\"nope\""), "{e}");
        let e = CelRouting::compile("region", &c, None, 4).unwrap_err();
        assert!(e.to_string().contains("\"region\""), "{e}");
        let e = CelRouting::compile("key > 3u", &c, None, 4).unwrap_err();
        assert!(e.to_string().contains("returned a bool"), "{e}");
        assert_eq!(e.kind(), sf_manifest::ErrorKind::Config);
    }

    #[test]
    fn uint_ids_out_of_range_name_their_value() {
        let r = CelRouting::compile("key", &cols(&[("key", CelType::Uint)]), None, 4).expect("compile");
        assert_eq!(r.expr(), "key");
        let mut s = r.scope();
        s.set("key", ContextValue::UInt(3));
        assert_eq!(s.route().expect("in range"), Routed::Db(3));
        s.set("key", ContextValue::UInt(9));
        match s.route() {
            Err(Error::DbIdOutOfRange { value, num_dbs: 4, .. }) => assert_eq!(value, "9"),
            other => panic!("{other:?}"),
        }
        let debug = format!("{r:?}");
        assert!(
            debug.contains("CelRouting") && debug.contains("expr: \"key\""),
            "{debug}"
        );
    }

    #[test]
    fn token_expressions_are_type_checked_when_compiled() {
        let c = cols(&[("region", CelType::String)]);
        let r = CelRouting::compile_tokens("region", &c).expect("a string token");
        assert_eq!(r.expr(), "region");
        let e = CelRouting::compile_tokens("region == \"eu\"", &c).expect_err("a bool is no token");
        assert!(e.to_string().contains("returned a bool"), "{e}");
        assert_eq!(e.kind(), sf_manifest::ErrorKind::Config);
    }

    #[test]
    fn booleans_parse_both_ways() {
        assert_eq!(
            ContextValue::parse(CelType::Bool, " true").expect("true"),
            ContextValue::Bool(true)
        );
        assert_eq!(
            ContextValue::parse(CelType::Bool, "false ").expect("false"),
            ContextValue::Bool(false)
        );
        assert!(ContextValue::parse(CelType::Bool, "yes").is_err());
    }

    #[test]
    fn out_of_range_ids_and_runtime_errors_are_reported() {
        let r = CelRouting::compile("key", &cols(&[("key", CelType::Int)]), None, 4).expect("compile");
        let mut s = r.scope();
        s.set("key", ContextValue::Int(4));
        assert!(matches!(s.route(), Err(Error::DbIdOutOfRange { num_dbs: 4, .. })));
        s.set("key", ContextValue::Int(-1));
        assert!(matches!(s.route(), Err(Error::DbIdOutOfRange { .. })));
        let r = CelRouting::compile("4 / key", &cols(&[("key", CelType::Int)]), None, 4).expect("data-dependent");
        let s = r.scope();
        assert!(matches!(s.route(), Err(Error::CelEval { .. })));
    }

    #[test]
    fn context_values_parse_by_type() {
        assert_eq!(
            ContextValue::parse(CelType::Int, "-3").expect("int"),
            ContextValue::Int(-3)
        );
        assert_eq!(
            ContextValue::parse(CelType::Uint, "3u").expect("uint"),
            ContextValue::UInt(3)
        );
        assert_eq!(
            ContextValue::parse(CelType::Bool, "true").expect("bool"),
            ContextValue::Bool(true)
        );
        assert!(ContextValue::parse(CelType::Int, "x").is_err());
    }
}
