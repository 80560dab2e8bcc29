//! The manifest: build metadata plus one row per non-empty shard, stored as
//! a SQLite database file (docs/FORMAT.md, "The manifest").

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::format::ids::{Attempt, DbId, RunId, Timestamp};
#[cfg(feature = "codec")]
use crate::format::json::{JsonStyle, to_sorted_string};
use crate::format::sharding::{FORMAT_VERSION, Key, KeyEncoding, ShardingSpec};

/// Content type of a manifest object (and of `_CURRENT.manifest_content_type`).
pub const MANIFEST_CONTENT_TYPE: &str = "application/x-sqlite3";
/// `build_meta.db_path_template` in format v4.
pub const DB_PATH_TEMPLATE: &str = "db={db_id:05d}";
/// `build_meta.shard_prefix` in format v4.
pub const SHARD_PREFIX: &str = "shards";

/// The most shards a snapshot may have. Readers size a table by
/// `num_dbs`, so a manifest claiming more is refused before anything is
/// allocated for it; a million shards is far above any real snapshot
/// (the test suite publishes 100,000).
pub const MAX_NUM_DBS: u32 = 1_000_000;

/// The `build_meta` row.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildMeta {
    /// The run that built the snapshot.
    pub run_id: RunId,
    /// When the manifest was built.
    pub created_at: Timestamp,
    /// Number of shards, including empty ones left out of `shards`.
    pub num_dbs: u32,
    /// URL of the snapshot's prefix as the writer saw it.
    pub s3_prefix: String,
    /// Name of the key column in the input.
    pub key_col: String,
    /// How keys route to shards.
    pub sharding: ShardingSpec,
    /// Always [`DB_PATH_TEMPLATE`].
    pub db_path_template: String,
    /// Always [`SHARD_PREFIX`].
    pub shard_prefix: String,
    /// Always [`FORMAT_VERSION`] for manifests this build writes.
    pub format_version: i64,
    /// How keys are stored in the shards.
    pub key_encoding: KeyEncoding,
    /// Free-form extensions (sorted-key JSON object).
    pub custom: Map<String, Value>,
}

impl BuildMeta {
    /// Metadata for a new snapshot with the fixed format-v4 fields filled in.
    pub fn new(
        run_id: RunId,
        num_dbs: u32,
        s3_prefix: impl Into<String>,
        key_col: impl Into<String>,
        sharding: ShardingSpec,
        key_encoding: KeyEncoding,
    ) -> Self {
        BuildMeta {
            run_id,
            created_at: Timestamp::now(),
            num_dbs,
            s3_prefix: s3_prefix.into(),
            key_col: key_col.into(),
            sharding,
            db_path_template: DB_PATH_TEMPLATE.to_string(),
            shard_prefix: SHARD_PREFIX.to_string(),
            format_version: FORMAT_VERSION,
            key_encoding,
            custom: Map::new(),
        }
    }
}

/// `writer_info` of a shard row: who wrote the winning attempt, and how.
///
/// Unknown keys are kept in `extra` and written back, so a manifest read
/// and rewritten loses nothing (our checksum lives there too).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WriterInfo {
    /// The attempt number (same as the row's `attempt`).
    pub attempt: u32,
    /// Wall time the attempt took to write its shard.
    pub duration_ms: u64,
    /// Engine stage id, when the engine has one.
    pub stage_id: Option<i64>,
    /// Engine task attempt id; part of the winner order.
    pub task_attempt_id: Option<i64>,
    /// Any further keys.
    pub extra: BTreeMap<String, Value>,
}

/// Key in `writer_info` holding the shard's content checksum.
pub const CHECKSUM_KEY: &str = "checksum";

impl WriterInfo {
    /// The shard content checksum, when the writer recorded one.
    pub fn checksum(&self) -> Option<&str> {
        self.extra.get(CHECKSUM_KEY).and_then(Value::as_str)
    }

    /// The JSON object stored in the manifest.
    pub fn to_json(&self) -> Value {
        let mut m: Map<String, Value> = self.extra.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        m.insert("attempt".into(), Value::from(self.attempt));
        m.insert("duration_ms".into(), Value::from(self.duration_ms));
        m.insert("stage_id".into(), self.stage_id.map_or(Value::Null, Value::from));
        m.insert(
            "task_attempt_id".into(),
            self.task_attempt_id.map_or(Value::Null, Value::from),
        );
        Value::Object(m)
    }

    /// Reads the stored JSON object; missing known keys take their defaults.
    pub fn from_json(v: &Value) -> Result<Self> {
        let obj = v
            .as_object()
            .ok_or_else(|| Error::invalid("writer_info", format!("{v} is not a JSON object")))?;
        let int = |name: &str| -> Result<Option<i64>> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x
                    .as_i64()
                    .map(Some)
                    .ok_or_else(|| Error::invalid(format!("writer_info.{name}"), format!("{x} is not an integer"))),
            }
        };
        let non_negative = |name: &str| -> Result<u64> {
            let v = int(name)?.unwrap_or(0);
            u64::try_from(v).map_err(|_| Error::invalid(format!("writer_info.{name}"), format!("{v} is negative")))
        };
        Ok(WriterInfo {
            attempt: u32::try_from(non_negative("attempt")?)
                .map_err(|_| Error::invalid("writer_info.attempt", "out of range"))?,
            duration_ms: non_negative("duration_ms")?,
            stage_id: int("stage_id")?,
            task_attempt_id: int("task_attempt_id")?,
            extra: obj
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "attempt" | "duration_ms" | "stage_id" | "task_attempt_id"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }
}

/// One row of `shards`: the winning attempt of one non-empty shard.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardRow {
    /// Which shard.
    pub db_id: DbId,
    /// URL of the attempt's folder (the SQLite file is `shard.db` below it;
    /// for SlateDB it is the database root).
    pub db_url: Option<String>,
    /// The winning attempt.
    pub attempt: Attempt,
    /// Rows in the shard.
    pub row_count: u64,
    /// Size of the SQLite file; 0 for SlateDB.
    pub db_bytes: u64,
    /// Smallest key.
    pub min_key: Option<Key>,
    /// Largest key.
    pub max_key: Option<Key>,
    /// Opaque identity of the shard's content (32 hex), used as a cache key.
    pub checkpoint_id: Option<String>,
    /// Who wrote it.
    pub writer_info: WriterInfo,
}

/// A whole manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The `build_meta` row.
    pub build: BuildMeta,
    /// Shard rows sorted by `db_id`.
    pub shards: Vec<ShardRow>,
}

// The DDL is the reference's text byte for byte, so `sqlite_master.sql`
// compares equal with manifests the reference writes.
#[cfg(feature = "codec")]
const BUILD_META_DDL: &str = "CREATE TABLE build_meta (
    run_id           TEXT    NOT NULL,
    created_at       TEXT    NOT NULL,
    num_dbs          INTEGER NOT NULL,
    s3_prefix        TEXT    NOT NULL,
    key_col          TEXT    NOT NULL,
    sharding         TEXT    NOT NULL,
    db_path_template TEXT    NOT NULL,
    shard_prefix     TEXT    NOT NULL,
    format_version   INTEGER NOT NULL,
    key_encoding     TEXT    NOT NULL,
    custom           TEXT    NOT NULL DEFAULT '{}'
)";

#[cfg(feature = "codec")]
const SHARDS_DDL: &str = "CREATE TABLE shards (
    db_id         INTEGER NOT NULL PRIMARY KEY,
    db_url        TEXT,
    attempt       INTEGER NOT NULL,
    row_count     INTEGER NOT NULL,
    db_bytes      INTEGER NOT NULL,
    min_key       TEXT,
    max_key       TEXT,
    checkpoint_id TEXT,
    writer_info   TEXT    NOT NULL DEFAULT '{}'
)";

/// The first 16 bytes of every SQLite database file.
pub const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

#[cfg(feature = "codec")]
fn python_json(v: &Value) -> String {
    to_sorted_string(v, JsonStyle::Python)
}

#[cfg(feature = "codec")]
fn to_i64(v: u64, field: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::invalid(field, format!("{v} does not fit a SQLite integer")))
}

impl Manifest {
    /// Checks the invariants docs/FORMAT.md states for a manifest.
    pub fn validate(&self) -> Result<()> {
        let b = &self.build;
        if b.num_dbs > MAX_NUM_DBS {
            return Err(Error::invalid(
                "num_dbs",
                format!("{} is above the maximum of {MAX_NUM_DBS} shards", b.num_dbs),
            ));
        }
        b.sharding.validate(b.num_dbs)?;
        if b.key_col.is_empty() {
            return Err(Error::invalid("key_col", "must not be empty"));
        }
        let mut last: Option<DbId> = None;
        for s in &self.shards {
            if s.db_id.0 >= b.num_dbs {
                return Err(Error::invalid(
                    "shards.db_id",
                    format!("{} is not below num_dbs {}", s.db_id, b.num_dbs),
                ));
            }
            if last.is_some_and(|l| l >= s.db_id) {
                return Err(Error::invalid(
                    "shards.db_id",
                    format!("{} is duplicated or out of order", s.db_id),
                ));
            }
            last = Some(s.db_id);
        }
        Ok(())
    }

    /// Encodes the manifest as a SQLite database file (page size 4096).
    #[cfg(feature = "codec")]
    pub fn to_sqlite_bytes(&self) -> Result<Vec<u8>> {
        use rusqlite::{Connection, MAIN_DB, params};
        self.validate()?;
        let sql = |context: &str| {
            let context = context.to_string();
            move |source| Error::Sqlite { context, source }
        };
        let mut conn = Connection::open_in_memory().map_err(sql("opening an in-memory database"))?;
        conn.execute_batch("PRAGMA page_size = 4096;")
            .map_err(sql("setting the page size"))?;
        conn.execute(BUILD_META_DDL, []).map_err(sql("creating build_meta"))?;
        conn.execute(SHARDS_DDL, []).map_err(sql("creating shards"))?;
        let b = &self.build;
        let tx = conn.transaction().map_err(sql("starting the manifest transaction"))?;
        tx.execute(
            "INSERT INTO build_meta (run_id, created_at, num_dbs, s3_prefix, key_col, sharding, \
             db_path_template, shard_prefix, format_version, key_encoding, custom) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                b.run_id.as_str(),
                b.created_at.to_iso(),
                b.num_dbs,
                b.s3_prefix,
                b.key_col,
                python_json(&b.sharding.to_json()),
                b.db_path_template,
                b.shard_prefix,
                b.format_version,
                b.key_encoding.as_str(),
                python_json(&Value::Object(b.custom.clone())),
            ],
        )
        .map_err(sql("writing build_meta"))?;
        {
            let mut stmt = tx
                .prepare(
                    "INSERT INTO shards (db_id, db_url, attempt, row_count, db_bytes, min_key, \
                     max_key, checkpoint_id, writer_info) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .map_err(sql("preparing the shard insert"))?;
            for s in &self.shards {
                stmt.execute(params![
                    s.db_id.0,
                    s.db_url,
                    s.attempt.0,
                    to_i64(s.row_count, "row_count")?,
                    to_i64(s.db_bytes, "db_bytes")?,
                    s.min_key.as_ref().map(|k| python_json(&k.to_json())),
                    s.max_key.as_ref().map(|k| python_json(&k.to_json())),
                    s.checkpoint_id,
                    python_json(&s.writer_info.to_json()),
                ])
                .map_err(sql("writing a shard row"))?;
            }
        }
        tx.commit().map_err(sql("committing the manifest"))?;
        let data = conn.serialize(MAIN_DB).map_err(sql("serialising the manifest"))?;
        Ok(data.to_vec())
    }

    /// Decodes a manifest file. `location` names the object in errors.
    #[cfg(feature = "codec")]
    pub fn from_sqlite_bytes(bytes: &[u8], location: &str) -> Result<Self> {
        use rusqlite::{Connection, MAIN_DB};
        const WHAT: &str = "manifest";
        if bytes.len() < 100 || !bytes.starts_with(SQLITE_MAGIC) {
            return Err(Error::corrupt(
                WHAT,
                location,
                format!("not a SQLite database ({} bytes, no SQLite header)", bytes.len()),
            ));
        }
        let corrupt = |e: rusqlite::Error| Error::corrupt(WHAT, location, e);
        let mut conn = Connection::open_in_memory().map_err(corrupt)?;
        conn.deserialize_read_exact(MAIN_DB, bytes, bytes.len(), true)
            .map_err(corrupt)?;
        // The file comes from the bucket: hardened, its tables checked to be
        // tables, and its reads given a budget by its size (a real table's
        // rows take a few steps each and bytes of the file each).
        crate::format::untrusted::harden(&mut conn).map_err(corrupt)?;
        for (table, columns) in [
            (
                "build_meta",
                &[
                    "run_id",
                    "created_at",
                    "num_dbs",
                    "s3_prefix",
                    "key_col",
                    "sharding",
                    "db_path_template",
                    "shard_prefix",
                    "format_version",
                    "key_encoding",
                    "custom",
                ][..],
            ),
            (
                "shards",
                &[
                    "db_id",
                    "db_url",
                    "attempt",
                    "row_count",
                    "db_bytes",
                    "min_key",
                    "max_key",
                    "checkpoint_id",
                    "writer_info",
                ][..],
            ),
        ] {
            if let Some(reason) = crate::format::untrusted::check_table(&conn, table, columns).map_err(corrupt)? {
                return Err(Error::corrupt(WHAT, location, reason));
            }
        }
        let _budget =
            crate::format::untrusted::Budget::start((bytes.len() as u64).saturating_mul(64).saturating_add(1 << 20));

        type MetaRow = (
            String,
            String,
            i64,
            String,
            String,
            String,
            String,
            String,
            i64,
            String,
            String,
        );
        let mut stmt = conn
            .prepare(
                "SELECT run_id, created_at, num_dbs, s3_prefix, key_col, sharding, db_path_template, \
                 shard_prefix, format_version, key_encoding, custom FROM build_meta",
            )
            .map_err(corrupt)?;
        let mut rows = stmt
            .query_map([], |r| -> rusqlite::Result<MetaRow> {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                    r.get(10)?,
                ))
            })
            .map_err(corrupt)?;
        let meta = rows
            .next()
            .transpose()
            .map_err(corrupt)?
            .ok_or_else(|| Error::corrupt(WHAT, location, "build_meta has no row"))?;
        if rows.next().is_some() {
            return Err(Error::corrupt(WHAT, location, "build_meta has more than one row"));
        }
        drop(rows);
        drop(stmt);
        let (
            run_id,
            created_at,
            num_dbs,
            s3_prefix,
            key_col,
            sharding,
            db_path_template,
            shard_prefix,
            format_version,
            key_encoding,
            custom,
        ) = meta;
        if format_version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                what: WHAT,
                location: location.to_string(),
                found: format_version,
                supported: FORMAT_VERSION,
            });
        }
        let field = |name: &str, e: Error| Error::corrupt(WHAT, location, format!("build_meta.{name}: {e}"));
        let json = |name: &str, text: &str| -> Result<Value> {
            serde_json::from_str(text).map_err(|e| Error::corrupt(WHAT, location, format!("{name} is not JSON: {e}")))
        };
        let key_encoding: KeyEncoding = key_encoding.parse().map_err(|e| field("key_encoding", e))?;
        let sharding: ShardingSpec = serde_json::from_value(json("build_meta.sharding", &sharding)?)
            .map_err(|e| Error::corrupt(WHAT, location, format!("build_meta.sharding: {e}")))?;
        let custom = match json("build_meta.custom", &custom)? {
            Value::Object(m) => m,
            other => {
                return Err(Error::corrupt(
                    WHAT,
                    location,
                    format!("build_meta.custom is {other}, not an object"),
                ));
            }
        };
        let build = BuildMeta {
            run_id: RunId::new(run_id).map_err(|e| field("run_id", e))?,
            created_at: Timestamp::parse(&created_at).map_err(|e| field("created_at", e))?,
            num_dbs: u32::try_from(num_dbs)
                .ok()
                .filter(|n| (1..=MAX_NUM_DBS).contains(n))
                .ok_or_else(|| {
                    Error::corrupt(
                        WHAT,
                        location,
                        format!("build_meta.num_dbs {num_dbs} is out of range (1 to {MAX_NUM_DBS})"),
                    )
                })?,
            s3_prefix,
            key_col,
            sharding,
            db_path_template,
            shard_prefix,
            format_version,
            key_encoding,
            custom,
        };

        let mut stmt = conn
            .prepare(
                "SELECT db_id, db_url, attempt, row_count, db_bytes, min_key, max_key, checkpoint_id, \
                 writer_info FROM shards ORDER BY db_id",
            )
            .map_err(corrupt)?;
        type ShardSql = (
            i64,
            Option<String>,
            i64,
            i64,
            i64,
            Option<String>,
            Option<String>,
            Option<String>,
            String,
        );
        let rows = stmt
            .query_map([], |r| -> rusqlite::Result<ShardSql> {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ))
            })
            .map_err(corrupt)?;
        let mut shards = Vec::new();
        for row in rows {
            let (db_id, db_url, attempt, row_count, db_bytes, min_key, max_key, checkpoint_id, writer_info) =
                row.map_err(corrupt)?;
            let at =
                |name: &str, e: Error| Error::corrupt(WHAT, location, format!("shards[db_id={db_id}].{name}: {e}"));
            let non_neg = |name: &str, v: i64| -> Result<u64> {
                u64::try_from(v).map_err(|_| at(name, Error::invalid(name, format!("{v} is negative"))))
            };
            let key = |name: &str, text: Option<String>| -> Result<Option<Key>> {
                text.map(|t| {
                    let v = json(name, &t)?;
                    Key::from_json(&v, key_encoding).map_err(|e| at(name, e))
                })
                .transpose()
            };
            shards.push(ShardRow {
                db_id: DbId(u32::try_from(db_id).map_err(|_| at("db_id", Error::invalid("db_id", "out of range")))?),
                db_url,
                attempt: Attempt(
                    u32::try_from(attempt).map_err(|_| at("attempt", Error::invalid("attempt", "out of range")))?,
                ),
                row_count: non_neg("row_count", row_count)?,
                db_bytes: non_neg("db_bytes", db_bytes)?,
                min_key: key("min_key", min_key)?,
                max_key: key("max_key", max_key)?,
                checkpoint_id,
                writer_info: WriterInfo::from_json(&json("writer_info", &writer_info)?)
                    .map_err(|e| at("writer_info", e))?,
            });
        }
        drop(stmt);
        let manifest = Manifest { build, shards };
        manifest.validate().map_err(|e| Error::corrupt(WHAT, location, e))?;
        Ok(manifest)
    }

    /// Total rows over all shards.
    pub fn row_count(&self) -> u64 {
        self.shards.iter().map(|s| s.row_count).sum()
    }

    /// The row of shard `db_id`, if it is not empty (binary search).
    pub fn shard(&self, db_id: DbId) -> Option<&ShardRow> {
        self.shards
            .binary_search_by_key(&db_id, |s| s.db_id)
            .ok()
            .map(|i| &self.shards[i])
    }
}

#[cfg(all(test, feature = "codec"))]
mod tests {
    use super::*;

    fn manifest(num_dbs: u32, ids: &[u32]) -> Manifest {
        let build = BuildMeta::new(
            RunId::new("r1").expect("id"),
            num_dbs,
            "memory://t/snap",
            "k",
            ShardingSpec::hash(),
            KeyEncoding::U64Be,
        );
        let shards = ids
            .iter()
            .map(|&d| ShardRow {
                db_id: DbId(d),
                db_url: Some(format!("memory://t/snap/shards/db={d:05}")),
                attempt: Attempt(0),
                row_count: 1,
                db_bytes: 4096,
                min_key: None,
                max_key: None,
                checkpoint_id: None,
                writer_info: WriterInfo::default(),
            })
            .collect();
        Manifest { build, shards }
    }

    /// Rewrites one SQL statement into an encoded manifest.
    fn tamper(bytes: &[u8], sql: &str) -> Vec<u8> {
        use rusqlite::{Connection, MAIN_DB};
        let mut conn = Connection::open_in_memory().expect("open");
        conn.deserialize_read_exact(MAIN_DB, bytes, bytes.len(), false)
            .expect("load");
        conn.execute_batch(sql).expect("tamper");
        conn.serialize(MAIN_DB).expect("serialise").to_vec()
    }

    #[test]
    fn num_dbs_above_the_maximum_is_refused_before_the_shards_are_read() {
        assert!(manifest(MAX_NUM_DBS, &[0, MAX_NUM_DBS - 1]).validate().is_ok());
        let e = manifest(MAX_NUM_DBS + 1, &[0]).validate().expect_err("too many");
        assert!(e.to_string().contains(&MAX_NUM_DBS.to_string()), "{e}");

        let bytes = manifest(4, &[0, 2]).to_sqlite_bytes().expect("encode");
        for claimed in [4_000_000_000i64, i64::from(MAX_NUM_DBS) + 1, 0, -1] {
            let bad = tamper(&bytes, &format!("UPDATE build_meta SET num_dbs = {claimed}"));
            let e = Manifest::from_sqlite_bytes(&bad, "mem://m").expect_err("out of range");
            let text = e.to_string();
            assert!(text.contains("num_dbs") && text.contains("mem://m"), "{text}");
        }
    }

    #[test]
    fn shard_rows_must_lie_below_num_dbs() {
        let bytes = manifest(4, &[0, 2]).to_sqlite_bytes().expect("encode");
        assert_eq!(
            Manifest::from_sqlite_bytes(&bytes, "m").expect("decode").shards.len(),
            2
        );
        let bad = tamper(&bytes, "UPDATE shards SET db_id = 4 WHERE db_id = 2");
        let e = Manifest::from_sqlite_bytes(&bad, "m").expect_err("db_id 4 of 4");
        assert!(e.to_string().contains("num_dbs"), "{e}");
        assert!(manifest(4, &[1, 1]).validate().is_err(), "a duplicated db_id");
    }

    #[test]
    fn manifest_tables_that_are_views_are_refused() {
        let bytes = manifest(4, &[0, 2]).to_sqlite_bytes().expect("encode");
        let bad = tamper(
            &bytes,
            "ALTER TABLE shards RENAME TO real_shards; \
             CREATE VIEW shards AS WITH RECURSIVE r(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM r) \
             SELECT n AS db_id, NULL AS db_url, 0 AS attempt, 0 AS row_count, 0 AS db_bytes, NULL AS min_key, \
             NULL AS max_key, NULL AS checkpoint_id, '{}' AS writer_info FROM r;",
        );
        let e = Manifest::from_sqlite_bytes(&bad, "mem://m").expect_err("a view");
        let text = e.to_string();
        assert!(text.contains("shards is a view") && text.contains("mem://m"), "{text}");
        let narrow = tamper(&bytes, "ALTER TABLE build_meta DROP COLUMN custom");
        let e = Manifest::from_sqlite_bytes(&narrow, "mem://m").expect_err("a missing column");
        assert!(e.to_string().contains("no column custom"), "{e}");
    }

    proptest::proptest! {
        // Each case opens an in-memory SQLite database: few of them.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Any bytes as a manifest, with and without a SQLite header in
        /// front: decoded through the untrusted open or refused with an
        /// error naming the object, never a panic.
        #[test]
        fn any_bytes_as_a_manifest_decode_or_fail_naming_the_object(
            header in proptest::prelude::any::<bool>(),
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
        ) {
            let mut bytes = if header { SQLITE_MAGIC.to_vec() } else { Vec::new() };
            bytes.extend(tail);
            if let Err(e) = Manifest::from_sqlite_bytes(&bytes, "mem://m") {
                proptest::prop_assert!(e.to_string().contains("mem://m"), "{}", e);
            }
        }

        /// A real manifest with bytes changed (anywhere, including the
        /// page headers and the schema) or cut short: the manifest decoded
        /// (and then valid) or refused with an error naming it.
        #[test]
        fn mutated_real_manifests_decode_valid_or_fail_naming_the_object(
            edits in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 1..8),
            cut in proptest::option::of(proptest::prelude::any::<usize>()),
        ) {
            let mut bytes = manifest(4, &[0, 2]).to_sqlite_bytes().expect("encode");
            for (at, b) in edits {
                let at = at % bytes.len();
                bytes[at] = b;
            }
            if let Some(c) = cut {
                bytes.truncate(c % bytes.len());
            }
            match Manifest::from_sqlite_bytes(&bytes, "mem://m") {
                Ok(m) => proptest::prop_assert!(m.validate().is_ok()),
                Err(e) => proptest::prop_assert!(e.to_string().contains("mem://m"), "{}", e),
            }
        }
    }
}
