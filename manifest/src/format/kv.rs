//! The table every SQLite shard holds: `kv`, one row per key, the key and
//! the value as blobs, the key the primary key of a `WITHOUT ROWID` table
//! (docs/FORMAT.md, "SQLite shards"). The writer creates it (through SQL or
//! its page writer) and every reader shard reads it with these statements,
//! so the schema is spelled here once.

/// The table's name.
pub const TABLE: &str = "kv";
/// The key column.
pub const KEY_COLUMN: &str = "k";
/// The value column.
pub const VALUE_COLUMN: &str = "v";

/// The table's DDL, exactly as the reference writes it (it is also the
/// `sql` of the table's row in `sqlite_schema`).
pub const DDL: &str = "CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID";
/// Inserts one row (`?1` key, `?2` value).
pub const INSERT: &str = "INSERT INTO kv (k, v) VALUES (?1, ?2)";
/// Inserts one row, replacing the row of the same key.
pub const INSERT_OR_REPLACE: &str = "INSERT OR REPLACE INTO kv (k, v) VALUES (?1, ?2)";
/// The value of key `?1`.
pub const LOOKUP: &str = "SELECT v FROM kv WHERE k = ?1";
/// Every row in key order.
pub const SCAN: &str = "SELECT k, v FROM kv ORDER BY k";
/// Rows after key `?1` in key order, at most `?2`.
pub const SCAN_AFTER: &str = "SELECT k, v FROM kv WHERE k > ?1 ORDER BY k LIMIT ?2";
/// The first `?1` rows in key order.
pub const SCAN_FIRST: &str = "SELECT k, v FROM kv ORDER BY k LIMIT ?1";
/// Row count and the smallest and largest key.
pub const STATS: &str = "SELECT count(*), min(k), max(k) FROM kv";

/// `SELECT k, v FROM kv WHERE k IN (?1, .., ?n)` for `n` keys.
pub fn lookup_many(n: usize) -> String {
    let params: Vec<String> = (1..=n).map(|i| format!("?{i}")).collect();
    format!(
        "SELECT {KEY_COLUMN}, {VALUE_COLUMN} FROM {TABLE} WHERE {KEY_COLUMN} IN ({})",
        params.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statement_names_the_one_table_and_its_columns() {
        let ddl =
            format!("CREATE TABLE {TABLE} ({KEY_COLUMN} BLOB PRIMARY KEY, {VALUE_COLUMN} BLOB NOT NULL) WITHOUT ROWID");
        assert_eq!(DDL, ddl);
        for sql in [INSERT, INSERT_OR_REPLACE, LOOKUP, SCAN, SCAN_AFTER, SCAN_FIRST, STATS] {
            assert!(
                sql.contains(&format!(" {TABLE} ")) || sql.ends_with(&format!(" {TABLE}")),
                "{sql}"
            );
        }
        assert_eq!(lookup_many(2), "SELECT k, v FROM kv WHERE k IN (?1, ?2)");
    }

    #[cfg(feature = "codec")]
    #[test]
    fn the_statements_run_against_the_ddl() {
        let c = rusqlite::Connection::open_in_memory().expect("open");
        c.execute_batch(DDL).expect("ddl");
        c.execute(INSERT, (b"a".to_vec(), b"1".to_vec())).expect("insert");
        c.execute(INSERT_OR_REPLACE, (b"a".to_vec(), b"2".to_vec()))
            .expect("replace");
        c.execute(INSERT, (b"b".to_vec(), b"3".to_vec())).expect("insert");
        let v: Vec<u8> = c.query_row(LOOKUP, [b"a".to_vec()], |r| r.get(0)).expect("lookup");
        assert_eq!(v, b"2");
        let (n, min, max): (i64, Vec<u8>, Vec<u8>) = c
            .query_row(STATS, [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("stats");
        assert_eq!((n, min, max), (2, b"a".to_vec(), b"b".to_vec()));
        let mut s = c.prepare(SCAN_AFTER).expect("prepare");
        let keys: Vec<Vec<u8>> = s
            .query_map((b"a".to_vec(), 10), |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(keys, vec![b"b".to_vec()]);
        let mut s = c.prepare(&lookup_many(2)).expect("prepare");
        let n = s
            .query_map((b"a".to_vec(), b"b".to_vec()), |r| r.get::<_, Vec<u8>>(0))
            .expect("query")
            .count();
        assert_eq!(n, 2);
    }
}
