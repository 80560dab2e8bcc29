//! Table identifiers and the catalogs that resolve them to prefixes.

use std::collections::BTreeMap;
use std::fmt;

use sf_manifest::StorageOptions;

use crate::error::{Error, Result};

/// Default catalog and database name.
pub const DEFAULT: &str = "default";

/// The database of global temporary views (`global_temp.<view>`): no
/// table lives there, in any catalog.
pub const GLOBAL_TEMP_DB: &str = "global_temp";

/// Settings key prefix of catalogs: `sf.catalog.<name>.<key>`.
pub const CATALOG_PREFIX: &str = "sf.catalog.";

/// `catalog.db.table`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableIdent {
    /// Catalog.
    pub catalog: String,
    /// Database.
    pub db: String,
    /// Table.
    pub table: String,
}

impl fmt::Display for TableIdent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.catalog, self.db, self.table)
    }
}

/// Checks a catalog, database or table name: letters, digits and
/// underscores, not empty.
pub fn check_part(kind: &str, part: &str, whole: &str) -> Result<()> {
    if part.is_empty() {
        return Err(Error::config(
            "table name",
            format!("{whole:?} has an empty {kind} name; names are catalog.db.table"),
        ));
    }
    if let Some(c) = part.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_')) {
        return Err(Error::config(
            "table name",
            format!("{kind} name {part:?} in {whole:?} contains {c:?}; use letters, digits and underscores"),
        ));
    }
    Ok(())
}

impl TableIdent {
    /// Parses `table`, `db.table` or `catalog.db.table`; missing parts are
    /// `default_catalog` and `default`.
    pub fn parse(name: &str, default_catalog: &str) -> Result<Self> {
        let parts: Vec<&str> = name.split('.').collect();
        let (catalog, db, table) = match parts.as_slice() {
            [t] => (default_catalog, DEFAULT, *t),
            [d, t] => (default_catalog, *d, *t),
            [c, d, t] => (*c, *d, *t),
            _ => {
                return Err(Error::config(
                    "table name",
                    format!("{name:?} has {} parts; names are [catalog.][db.]table", parts.len()),
                ));
            }
        };
        check_part("catalog", catalog, name)?;
        check_part("database", db, name)?;
        check_part("table", table, name)?;
        if db.eq_ignore_ascii_case(GLOBAL_TEMP_DB) {
            return Err(Error::config(
                "table name",
                format!("{name:?}: the database {GLOBAL_TEMP_DB} holds global temporary views, not tables"),
            ));
        }
        Ok(TableIdent {
            catalog: catalog.to_ascii_lowercase(),
            db: db.to_ascii_lowercase(),
            table: table.to_ascii_lowercase(),
        })
    }
}

/// One configured catalog: a warehouse URL and its storage options.
#[derive(Clone, PartialEq)]
pub struct CatalogConfig {
    /// Name.
    pub name: String,
    /// Warehouse root URL; tables live at `<warehouse>/<db>/<table>/`.
    pub warehouse: String,
    /// Storage options for the warehouse.
    pub storage: StorageOptions,
    /// Shards of a table created by SQL (`CREATE TABLE ... AS`):
    /// `sf.catalog.<name>.num_dbs`.
    pub num_dbs: Option<u32>,
}

impl fmt::Debug for CatalogConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatalogConfig")
            .field("name", &self.name)
            .field("warehouse", &self.warehouse)
            .field("storage", &self.storage)
            .field("num_dbs", &self.num_dbs)
            .finish()
    }
}

impl CatalogConfig {
    /// The prefix URL of a table of this catalog.
    pub fn table_prefix(&self, db: &str, table: &str) -> String {
        format!("{}/{db}/{table}", self.warehouse.trim_end_matches('/'))
    }
}

/// All configured catalogs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Catalogs {
    catalogs: BTreeMap<String, CatalogConfig>,
    default: Option<String>,
}

impl Catalogs {
    /// Reads `sf.catalog.<name>.warehouse = <url>` and storage options
    /// `sf.catalog.<name>.<option> = <value>` from settings pairs;
    /// `sf.catalog.default = <name>` names the default catalog (else the
    /// one named `default`, else the only one).
    pub fn from_settings<K: AsRef<str>, V: AsRef<str>>(pairs: impl IntoIterator<Item = (K, V)>) -> Result<Self> {
        let mut warehouses: BTreeMap<String, String> = BTreeMap::new();
        let mut options: BTreeMap<String, StorageOptions> = BTreeMap::new();
        let mut num_dbs: BTreeMap<String, u32> = BTreeMap::new();
        let mut default = None;
        for (k, v) in pairs {
            let (k, v) = (k.as_ref(), v.as_ref());
            let Some(rest) = k.strip_prefix(CATALOG_PREFIX) else {
                continue;
            };
            if rest == "default" {
                default = Some(v.to_ascii_lowercase());
                continue;
            }
            let (name, key) = rest.split_once('.').ok_or_else(|| {
                Error::config(k, "expected sf.catalog.<name>.warehouse or sf.catalog.<name>.<option>")
            })?;
            check_part("catalog", name, k)?;
            let name = name.to_ascii_lowercase();
            if key == "warehouse" {
                if v.trim().is_empty() {
                    return Err(Error::config(k, "needs a URL"));
                }
                warehouses.insert(name, v.trim_end_matches('/').to_string());
            } else if key == "num_dbs" {
                let n: u32 = v
                    .trim()
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| Error::config(k, format!("{v:?} is not a shard count (a whole number >= 1)")))?;
                num_dbs.insert(name, n);
            } else {
                options.entry(name).or_default().insert(key, v);
            }
        }
        for name in options.keys().chain(num_dbs.keys()) {
            if !warehouses.contains_key(name) {
                return Err(Error::config(
                    format!("{CATALOG_PREFIX}{name}"),
                    "has options but no warehouse URL (sf.catalog.<name>.warehouse)",
                ));
            }
        }
        let catalogs: BTreeMap<String, CatalogConfig> = warehouses
            .into_iter()
            .map(|(name, warehouse)| {
                let storage = options.remove(&name).unwrap_or_default();
                let num_dbs = num_dbs.get(&name).copied();
                (
                    name.clone(),
                    CatalogConfig {
                        name,
                        warehouse,
                        storage,
                        num_dbs,
                    },
                )
            })
            .collect();
        if let Some(d) = &default
            && !catalogs.contains_key(d)
        {
            return Err(Error::config(
                "sf.catalog.default",
                format!("names {d:?}, which is not configured"),
            ));
        }
        Ok(Catalogs { catalogs, default })
    }

    /// Catalogs from the `[sf]` table of a TOML document (`[sf.catalog.NAME]`
    /// with `warehouse = "<url>"`, storage options, `num_dbs`), then `extra`
    /// `sf.catalog.*` pairs, which win.
    pub fn from_toml(sf: &toml::Table, extra: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        let mut pairs = sf_settings(sf)?;
        pairs.extend(extra);
        Self::from_settings(pairs)
    }

    /// Adds a catalog.
    pub fn with(mut self, name: &str, warehouse: &str, storage: StorageOptions) -> Result<Self> {
        check_part("catalog", name, name)?;
        let name = name.to_ascii_lowercase();
        self.catalogs.insert(
            name.clone(),
            CatalogConfig {
                name,
                warehouse: warehouse.trim_end_matches('/').to_string(),
                storage,
                num_dbs: None,
            },
        );
        Ok(self)
    }

    /// The default catalog's name.
    pub fn default_name(&self) -> &str {
        match &self.default {
            Some(d) => d,
            None if self.catalogs.contains_key(DEFAULT) || self.catalogs.len() != 1 => DEFAULT,
            None => self.catalogs.keys().next().map_or(DEFAULT, String::as_str),
        }
    }

    /// A catalog by name.
    pub fn get(&self, name: &str) -> Result<&CatalogConfig> {
        self.catalogs.get(&name.to_ascii_lowercase()).ok_or_else(|| {
            Error::config(
                "catalog",
                format!(
                    "{name:?} is not configured (configured: {}); set sf.catalog.{name}.warehouse",
                    if self.catalogs.is_empty() {
                        "none".to_string()
                    } else {
                        self.catalogs.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                ),
            )
        })
    }

    /// All catalogs.
    pub fn iter(&self) -> impl Iterator<Item = &CatalogConfig> {
        self.catalogs.values()
    }

    /// Parses a table name against the default catalog and checks the
    /// catalog exists.
    pub fn ident(&self, name: &str) -> Result<TableIdent> {
        let id = TableIdent::parse(name, self.default_name())?;
        self.get(&id.catalog)?;
        Ok(id)
    }

    /// The prefix URL and storage options of a table.
    pub fn locate(&self, id: &TableIdent) -> Result<(String, StorageOptions)> {
        let c = self.get(&id.catalog)?;
        Ok((c.table_prefix(&id.db, &id.table), c.storage.clone()))
    }
}

/// The `[sf]` table of a TOML document as dotted `sf.a.b = "v"` pairs,
/// values as strings (`[sf.catalog.NAME] warehouse = "<url>"` becomes
/// `sf.catalog.NAME.warehouse`).
pub fn sf_settings(sf: &toml::Table) -> Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    flatten("sf", sf, &mut pairs)?;
    Ok(pairs)
}

/// `a.b.c = "v"` pairs of a TOML table, values as strings.
fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, String)>) -> Result<()> {
    for (k, v) in table {
        let key = format!("{prefix}.{k}");
        match v {
            toml::Value::Table(t) => flatten(&key, t, out)?,
            toml::Value::String(s) => out.push((key, s.clone())),
            toml::Value::Integer(i) => out.push((key, i.to_string())),
            toml::Value::Boolean(b) => out.push((key, b.to_string())),
            toml::Value::Float(f) => out.push((key, f.to_string())),
            other => return Err(Error::config(key, format!("{other} is not a plain value"))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sf_manifest::Classified;

    #[test]
    fn names_take_defaults_and_reject_bad_parts() {
        let t = TableIdent::parse("users", "wh").expect("table");
        assert_eq!(t.to_string(), "wh.default.users");
        assert_eq!(
            TableIdent::parse("sales.orders", "wh").expect("db.table").to_string(),
            "wh.sales.orders"
        );
        assert_eq!(
            TableIdent::parse("Lake.Sales.Orders_2", "wh")
                .expect("full")
                .to_string(),
            "lake.sales.orders_2"
        );
        for bad in [
            "",
            "a..b",
            "a/b",
            "../etc",
            "a.b.c.d",
            "db.",
            ".t",
            "a b",
            "t-1",
            "global_temp.t",
            "wh.Global_Temp.t",
        ] {
            let e = TableIdent::parse(bad, "wh").expect_err(bad);
            assert_eq!(e.kind(), sf_manifest::ErrorKind::Config, "{bad}");
        }
    }

    #[test]
    fn catalogs_come_from_settings() {
        let c = Catalogs::from_settings([
            ("sf.catalog.wh.warehouse", "s3://bucket/warehouse/"),
            ("sf.catalog.wh.region", "eu-west-1"),
            ("sf.catalog.lake.warehouse", "file:///data/lake"),
            ("unrelated.key", "x"),
        ])
        .expect("catalogs");
        assert_eq!(c.default_name(), "default", "two catalogs and none named default");
        let id = TableIdent::parse("wh.db1.t1", c.default_name()).expect("ident");
        let (prefix, opts) = c.locate(&id).expect("locate");
        assert_eq!(prefix, "s3://bucket/warehouse/db1/t1");
        assert_eq!(opts.iter().collect::<Vec<_>>(), vec![("region", "eu-west-1")]);
        assert!(
            c.ident("t1")
                .expect_err("no default catalog")
                .to_string()
                .contains("not configured")
        );

        let one = Catalogs::from_settings([("sf.catalog.wh.warehouse", "memory://w")]).expect("one");
        assert_eq!(one.default_name(), "wh", "the only catalog is the default");
        let named = Catalogs::from_settings([
            ("sf.catalog.wh.warehouse", "memory://w"),
            ("sf.catalog.lake.warehouse", "memory://l"),
            ("sf.catalog.default", "lake"),
        ])
        .expect("named default");
        assert_eq!(named.ident("t").expect("ident").catalog, "lake");
        let shards = Catalogs::from_settings([
            ("sf.catalog.wh.warehouse", "memory://w"),
            ("sf.catalog.wh.num_dbs", "4"),
        ])
        .expect("num_dbs");
        assert_eq!(shards.get("wh").expect("wh").num_dbs, Some(4));
        assert!(
            shards.get("wh").expect("wh").storage.iter().next().is_none(),
            "num_dbs is no storage option"
        );
        let e = Catalogs::from_settings([
            ("sf.catalog.wh.warehouse", "memory://w"),
            ("sf.catalog.wh.num_dbs", "0"),
        ])
        .expect_err("zero shards");
        assert!(e.to_string().contains("shard count"), "{e}");
        let e = Catalogs::from_settings([("sf.catalog.x.region", "r")]).expect_err("no warehouse");
        assert!(e.to_string().contains("no warehouse URL"), "{e}");
    }
}
