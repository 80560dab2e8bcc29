//! Building one SQLite shard from sorted rows: SQLite's INSERT loop against
//! the page writer, on the same rows in the same run.
//!
//! `cargo bench -p sf-writer --bench sqlite_build [-- ROWS]` builds ROWS
//! (default 2,000,000) rows with 8-byte big-endian keys and 100-byte values
//! through the SQLite backend twice per round, once with
//! [`SqliteBackend::insert_builder`] (the INSERT loop) and once with the
//! backend's own builder (sorted input: the page writer), both from the
//! first row to the finished, checksummed file. It prints the best of
//! [`ROUNDS`] alternating rounds (this machine is shared, so single runs
//! are noisy), the ratio (target: the page writer at least 5x the INSERT
//! loop), the file sizes, and for scale the page writer alone (no builder,
//! no checksum).

// A benchmark's output is its figures.
#![allow(clippy::disallowed_macros)]

use std::path::Path;
use std::time::{Duration, Instant};

use sf_manifest::{DbId, KeyEncoding};
use sf_writer::build::backend::sqlite::SqliteBackend;
use sf_writer::build::backend::sqlite_pages::SqliteFileWriter;
use sf_writer::build::backend::{
    BuildContext, DuplicatePolicy, PageSize, Row, ShardBackend, ShardBuilder, ShardContent, SqliteSettings,
};
use sf_writer::build::merge::CHUNK_ROWS;
use sf_writer::build::ratelimit::RateLimits;

const DEFAULT_ROWS: usize = 2_000_000;
const VALUE_BYTES: usize = 100;
const ROUNDS: usize = 3;

/// Keys and values laid out flat, so the rows cost no allocation each.
struct Rows {
    keys: Vec<[u8; 8]>,
    values: Vec<u8>,
}

impl Rows {
    fn new(count: usize) -> Self {
        let keys = (0..count as u64).map(u64::to_be_bytes).collect();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let values = (0..count * VALUE_BYTES)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        Rows { keys, values }
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    fn row(&self, i: usize) -> Row<'_> {
        (&self.keys[i], &self.values[i * VALUE_BYTES..(i + 1) * VALUE_BYTES])
    }
}

fn context(dir: &Path) -> BuildContext {
    BuildContext {
        db_id: DbId(0),
        work_dir: dir.to_path_buf(),
        on_duplicate: DuplicatePolicy::Error,
        sorted: true,
        limits: RateLimits::default(),
        key_encoding: KeyEncoding::U64Be,
        vector: None,
        sizes: None,
    }
}

/// Feeds every row in the chunks the shard sorter hands on, and finishes.
fn build(mut builder: Box<dyn ShardBuilder>, rows: &Rows) -> ShardContent {
    let mut chunk = Vec::with_capacity(CHUNK_ROWS);
    for start in (0..rows.len()).step_by(CHUNK_ROWS) {
        chunk.clear();
        chunk.extend((start..(start + CHUNK_ROWS).min(rows.len())).map(|i| rows.row(i)));
        builder.add(&chunk).expect("add");
    }
    builder.finish().expect("finish").content().clone()
}

struct Measured {
    best: Duration,
    bytes: u64,
}

impl Measured {
    fn new() -> Self {
        Measured {
            best: Duration::MAX,
            bytes: 0,
        }
    }

    fn record(&mut self, took: Duration, bytes: u64) {
        self.best = self.best.min(took);
        self.bytes = bytes;
    }

    fn rate(&self, rows: usize) -> f64 {
        rows as f64 / self.best.as_secs_f64()
    }

    fn print(&self, what: &str, rows: usize) {
        println!(
            "  {what:<44} {:>12.0} rows/s ({:.2} s), file {:.1} MiB",
            self.rate(rows),
            self.best.as_secs_f64(),
            self.bytes as f64 / (1 << 20) as f64
        );
    }
}

fn main() {
    let count = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| a.parse::<usize>().expect("ROWS is a number"))
        .unwrap_or(DEFAULT_ROWS);
    let settings = SqliteSettings::default();
    let backend = SqliteBackend::new(settings.clone());
    println!(
        "{count} sorted rows (8-byte big-endian keys, {VALUE_BYTES}-byte values), page size {}, best of {ROUNDS} rounds",
        settings.page_size
    );
    let rows = Rows::new(count);

    let (mut inserts, mut pages, mut alone) = (Measured::new(), Measured::new(), Measured::new());
    for _ in 0..ROUNDS {
        let dir = tempfile::tempdir().expect("work dir");
        let t = Instant::now();
        let by_insert = build(
            backend.insert_builder(context(dir.path())).expect("insert builder"),
            &rows,
        );
        inserts.record(t.elapsed(), file_size(dir.path()));
        drop(dir);

        let dir = tempfile::tempdir().expect("work dir");
        let t = Instant::now();
        let by_pages = build(backend.builder(context(dir.path())).expect("builder"), &rows);
        pages.record(t.elapsed(), file_size(dir.path()));
        drop(dir);
        assert_eq!(
            (by_pages.row_count, &by_pages.min_key, &by_pages.max_key),
            (by_insert.row_count, &by_insert.min_key, &by_insert.max_key),
            "both paths hold the same rows"
        );

        let dir = tempfile::tempdir().expect("work dir");
        let t = Instant::now();
        // The bench writes with a fixed page size (the default, 4096).
        let page_size = match settings.page_size {
            PageSize::Fixed(n) => n,
            PageSize::Auto => 4096,
        };
        let mut writer = SqliteFileWriter::create(&dir.path().join("alone.db"), page_size).expect("create");
        for i in 0..rows.len() {
            let (k, v) = rows.row(i);
            writer.push(k, v).expect("push");
        }
        let summary = writer.finish().expect("finish");
        alone.record(t.elapsed(), summary.bytes);
    }

    inserts.print("INSERT loop (insert_builder, checksummed)", count);
    pages.print("page writer (builder, checksummed)", count);
    println!(
        "  page writer / INSERT loop: {:.1}x (target: 5x), files {:.1}% smaller",
        pages.rate(count) / inserts.rate(count),
        100.0 * (1.0 - pages.bytes as f64 / inserts.bytes as f64)
    );
    alone.print("for scale: page writer alone (no checksum)", count);
}

fn file_size(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(sf_manifest::format::layout::SQLITE_SHARD_FILE))
        .expect("shard file")
        .len()
}
