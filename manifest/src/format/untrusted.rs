//! Opening SQLite files read from the bucket (manifests, shards) as
//! untrusted input.
//!
//! A file from the bucket may hold anything SQLite accepts: a view named
//! `kv` over an endless recursive CTE, triggers, functions in its schema.
//! Every connection over such a file goes through [`harden`]:
//!
//! - `SQLITE_DBCONFIG_DEFENSIVE` on and `SQLITE_DBCONFIG_TRUSTED_SCHEMA`
//!   off, so the file's schema cannot call functions with side effects and
//!   the file cannot be damaged through the connection;
//! - a progress handler that interrupts a statement once the work the
//!   caller granted with [`Budget::start`] is spent, so no statement spins
//!   forever on a reader's thread.
//!
//! [`check_table`] then requires each object the reader queries to be a
//! plain table with the expected columns.

use std::cell::Cell;

use rusqlite::Connection;
use rusqlite::config::DbConfig;

/// SQLite VM steps between two calls of the progress handler.
pub const PROGRESS_PERIOD: u64 = 1_000;

thread_local! {
    /// VM steps the statements of this thread may still take; `None`: no
    /// budget set (a statement outside a [`Budget`] is interrupted at once).
    static STEPS_LEFT: Cell<Option<u64>> = const { Cell::new(None) };
}

/// The progress handler: false (go on) while the thread's budget lasts.
fn out_of_steps() -> bool {
    STEPS_LEFT.with(|left| match left.get() {
        Some(n) if n > PROGRESS_PERIOD => {
            left.set(Some(n - PROGRESS_PERIOD));
            false
        }
        _ => true,
    })
}

/// A grant of SQLite VM steps to the statements this thread runs while it
/// lives; the statement that passes it is interrupted
/// ([`is_interrupted`] tells that error apart).
#[derive(Debug)]
pub struct Budget {
    previous: Option<u64>,
}

impl Budget {
    /// Grants `steps` VM steps (rounded up to [`PROGRESS_PERIOD`]).
    pub fn start(steps: u64) -> Budget {
        let previous = STEPS_LEFT.with(|left| left.replace(Some(steps.max(PROGRESS_PERIOD))));
        Budget { previous }
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        STEPS_LEFT.with(|left| left.set(self.previous));
    }
}

/// Whether `e` is a statement interrupted for passing its [`Budget`].
pub fn is_interrupted(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted)
}

/// Turns on defensive mode, turns off the trusted schema, and installs the
/// budget's progress handler (see the module docs).
pub fn harden(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)?;
    conn.progress_handler(PROGRESS_PERIOD as i32, Some(out_of_steps))
}

/// Checks that `name` is a plain table (not a view, not a virtual table)
/// holding every column of `columns`; the reason it is not otherwise.
pub fn check_table(conn: &Connection, name: &str, columns: &[&str]) -> rusqlite::Result<Option<String>> {
    let _budget = Budget::start(1_000_000);
    let found: Option<(String, Option<String>)> = conn
        .query_row(
            "SELECT type, sql FROM sqlite_master WHERE name = ?1 COLLATE NOCASE",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    let (kind, sql) = match found {
        None => return Ok(Some(format!("it has no table {name}"))),
        Some(f) => f,
    };
    if kind != "table" {
        return Ok(Some(format!("its {name} is a {kind}, not a table")));
    }
    if sql
        .as_deref()
        .is_some_and(|s| s.trim_start().to_ascii_uppercase().starts_with("CREATE VIRTUAL"))
    {
        return Ok(Some(format!("its {name} is a virtual table, not a table")));
    }
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_xinfo(?1)")?;
    let have: Vec<String> = stmt.query_map([name], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    for col in columns {
        if !have.iter().any(|h| h.eq_ignore_ascii_case(col)) {
            return Ok(Some(format!("its table {name} has no column {col}")));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hardened(sql: &str) -> Connection {
        let mut conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(sql).expect("schema");
        harden(&mut conn).expect("harden");
        conn
    }

    #[test]
    fn views_and_missing_columns_are_not_tables() {
        let conn = hardened(
            "CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;
             CREATE TABLE narrow (k BLOB);
             CREATE VIEW shards AS SELECT 1 AS db_id;",
        );
        assert_eq!(check_table(&conn, "kv", &["k", "v"]).expect("check"), None);
        let view = check_table(&conn, "shards", &["db_id"]).expect("check");
        assert!(view.as_deref().is_some_and(|r| r.contains("view")), "{view:?}");
        let narrow = check_table(&conn, "narrow", &["k", "v"]).expect("check");
        assert!(
            narrow.as_deref().is_some_and(|r| r.contains("no column v")),
            "{narrow:?}"
        );
        let missing = check_table(&conn, "absent", &["k"]).expect("check");
        assert!(
            missing.as_deref().is_some_and(|r| r.contains("no table absent")),
            "{missing:?}"
        );
    }

    #[test]
    fn an_endless_statement_is_interrupted_at_its_budget() {
        let conn = hardened(
            "CREATE VIEW kv AS WITH RECURSIVE r(k, v) AS (SELECT 0, 0 UNION ALL SELECT k + 1, v FROM r) \
             SELECT k, v FROM r;",
        );
        let _budget = Budget::start(100_000);
        let e = conn
            .query_row("SELECT v FROM kv WHERE k = -1", [], |r| r.get::<_, i64>(0))
            .expect_err("interrupted");
        assert!(is_interrupted(&e), "{e}");
        drop(_budget);
        let _budget = Budget::start(100_000);
        let n: i64 = conn.query_row("SELECT 41 + 1", [], |r| r.get(0)).expect("small");
        assert_eq!(n, 42, "a fresh budget lets the next statement run");
    }

    #[test]
    fn defensive_mode_and_untrusted_schema_are_on() {
        let conn = hardened("");
        assert!(conn.db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE).expect("read"));
        assert!(!conn.db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA).expect("read"));
    }
}
