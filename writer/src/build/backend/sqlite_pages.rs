//! Writing a shard file's SQLite pages directly from rows in key order.
//!
//! Inserting through SQLite costs a B-tree descent per row, through a page
//! cache, and a rebalance whenever a page fills. When rows arrive strictly
//! ascending (the shard sorter's output), the whole tree can instead be
//! laid out bottom up in one pass: leaves are filled in key order and each
//! completed page is written once, sequentially, never read back.
//!
//! The file is what SQLite itself would accept as
//! `CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID`
//! (SQLite's "Database File Format" document is the contract):
//!
//! ```text
//! page 1   database header + schema table (one row: the kv table, root 2)
//! page 2   root of kv, written last: its level is known only at the end
//! page 3.. leaves, interior pages and overflow pages, in the order
//!          they are completed (the lock-byte page at 1 GiB stays empty)
//! ```
//!
//! Page 2 is the root because that is where SQLite's `CREATE TABLE` puts
//! it: a shard small enough for one leaf comes out byte-identical to the
//! file the reference library writes through SQLite for the same rows,
//! header fields included (the tests rebuild its fixtures).
//!
//! A `WITHOUT ROWID` table is an index b-tree, a true B-tree: each row is
//! stored once, and the row between two pages *moves* up into their
//! parent as the separator (with its overflow chain, if it has one).
//! Memory is bounded by the tree's height: each level holds the page being
//! filled, plus the last completed page and the separator after it, held
//! back so that the last two pages of each level can be balanced at the
//! end instead of leaving an empty or one-cell page on the right edge.
//!
//! Every header field is fixed, so the same rows always give the same
//! bytes, and the shard's checksum depends on its rows alone.

use std::cmp::{Ordering, Reverse};
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use sf_manifest::format::kv;

/// Smallest page size SQLite supports.
pub const MIN_PAGE_SIZE: u32 = 512;
/// Largest page size SQLite supports.
pub const MAX_PAGE_SIZE: u32 = 65536;
/// Records (header, key and value) must stay under this many bytes:
/// SQLite's default `SQLITE_MAX_LENGTH`, above which readers fail with
/// `SQLITE_TOOBIG`.
pub const MAX_RECORD_BYTES: u64 = 1_000_000_000;
/// The most pages a file may have: SQLite's default maximum page count
/// before 3.45, so that older readers open every file we write.
pub const MAX_PAGE_COUNT: u32 = 1_073_741_823;

/// The SQLite version recorded as the file's last writer (offset 96): the
/// one the reference library's files carry, so that small shards match
/// them byte for byte.
const SQLITE_VERSION_NUMBER: u32 = 3_040_001;
/// Page types (first byte of a b-tree page).
const INDEX_LEAF: u8 = 0x0a;
const INDEX_INTERIOR: u8 = 0x02;
const TABLE_LEAF: u8 = 0x0d;
/// Where the kv table's root lives.
const KV_ROOT: u32 = 2;
/// The page that holds byte offset 1 GiB: SQLite uses that byte range for
/// file locks on some systems and never stores anything on its page.
const LOCK_BYTE_OFFSET: u64 = 1 << 30;
/// Size of the database header at the start of page 1.
const DB_HEADER: usize = 100;
/// Write buffer: large enough that page writes cost few system calls.
const WRITE_BUFFER: usize = 1 << 20;
/// Record headers are at most 11 bytes: a 1-byte length and two serial
/// types of at most 5 bytes each (blobs stay under 1e9 bytes).
const MAX_RECORD_HEADER: usize = 11;
/// Bytes of a key shown in an error.
const SHOWN_KEY_BYTES: usize = 32;

/// Why a row or a file could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PageError {
    /// The page size is not one SQLite supports.
    #[error("page size {0} is not a power of two between 512 and 65536")]
    PageSize(u32),

    /// A row's key is smaller than the previous row's. Rows count from 1.
    #[error(
        "row {row}: key {key} ({key_len} bytes) sorts before the previous row's key {previous} ({previous_len} bytes); rows must be strictly ascending"
    )]
    OutOfOrder {
        row: u64,
        key: String,
        key_len: usize,
        previous: String,
        previous_len: usize,
    },

    /// A row's key equals the previous row's. Rows count from 1.
    #[error("row {row}: key {key} ({key_len} bytes) is the previous row's key again; keys must be unique")]
    Duplicate { row: u64, key: String, key_len: usize },

    /// A row's record would be too large for SQLite to read back.
    #[error(
        "row {row}: its record would be {record_len} bytes (key {key_len}, value {value_len}); SQLite reads records under {MAX_RECORD_BYTES} bytes"
    )]
    RecordTooBig {
        row: u64,
        key_len: usize,
        value_len: usize,
        record_len: u64,
    },

    /// The file would have more pages than SQLite opens.
    #[error("the file would need more than {MAX_PAGE_COUNT} pages of {page_size} bytes")]
    TooManyPages { page_size: u32 },

    /// Writing the file failed.
    #[error("writing the shard file: {0}")]
    Io(#[from] io::Error),
}

/// What a finished file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSummary {
    /// Pages in the file (the lock-byte page included when the file
    /// reaches it).
    pub pages: u32,
    /// Size of the file in bytes.
    pub bytes: u64,
    /// Rows stored.
    pub rows: u64,
}

/// Streams strictly ascending, unique rows into a new shard file; see the
/// [module docs](self).
///
/// A refused row (out of order, duplicate, too big) leaves the writer as
/// it was; after any other error the file is incomplete and the writer
/// should be dropped.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use sf_writer::build::backend::sqlite_pages::SqliteFileWriter;
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("shard.db");
/// let mut writer = SqliteFileWriter::create(&path, 4096)?;
/// writer.push(b"apple", b"red")?;
/// writer.push(b"banana", b"yellow")?;
/// assert!(writer.push(b"avocado", b"green").is_err(), "out of order");
/// let summary = writer.finish()?;
/// assert_eq!((summary.rows, summary.pages, summary.bytes), (2, 2, 8192));
///
/// let db = rusqlite::Connection::open(&path)?;
/// let v: Vec<u8> = db.query_row("SELECT v FROM kv WHERE k = x'6170706c65'", [], |r| r.get(0))?;
/// assert_eq!(v, b"red");
/// # Ok(()) }
/// ```
pub struct SqliteFileWriter {
    geometry: Geometry,
    out: PageStream,
    /// Level 0 holds the leaves; each further level their parents.
    levels: Vec<Level>,
    /// One overflow page at a time.
    overflow_page: Vec<u8>,
    last_key: Vec<u8>,
    rows: u64,
}

impl fmt::Debug for SqliteFileWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteFileWriter")
            .field("page_size", &self.geometry.page_size)
            .field("rows", &self.rows)
            .field("pages_written", &self.out.written)
            .field("levels", &self.levels.len())
            .finish()
    }
}

impl SqliteFileWriter {
    /// Creates (or truncates) the file at `path` for pages of `page_size`
    /// bytes (a power of two, 512..=65536).
    pub fn create(path: &Path, page_size: u32) -> Result<Self, PageError> {
        let geometry = Geometry::new(page_size)?;
        // Readable too: `finish_hashed` reads the file back through it.
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        let mut out = PageStream {
            out: BufWriter::with_capacity(WRITE_BUFFER, file),
            page_size,
            next_free: KV_ROOT + 1,
            written: 0,
            lock_page: u32::try_from(LOCK_BYTE_OFFSET / u64::from(page_size) + 1)
                .expect("1 GiB over at least 512-byte pages is a small page number"),
        };
        // Pages 1 and 2 are filled in at the end; hold their place so the
        // rest of the file is written strictly in order.
        out.zeros()?;
        out.zeros()?;
        Ok(SqliteFileWriter {
            levels: vec![Level::new(&geometry, false)],
            overflow_page: vec![0; page_size as usize],
            out,
            geometry,
            last_key: Vec::new(),
            rows: 0,
        })
    }

    /// Rows pushed so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Appends one row; its key must sort strictly after the previous one
    /// (bytewise).
    pub fn push(&mut self, key: &[u8], value: &[u8]) -> Result<(), PageError> {
        let row = self.rows + 1;
        if self.rows > 0 {
            match key.cmp(&self.last_key) {
                Ordering::Greater => {}
                Ordering::Equal => {
                    return Err(PageError::Duplicate {
                        row,
                        key: show(key),
                        key_len: key.len(),
                    });
                }
                Ordering::Less => {
                    return Err(PageError::OutOfOrder {
                        row,
                        key: show(key),
                        key_len: key.len(),
                        previous: show(&self.last_key),
                        previous_len: self.last_key.len(),
                    });
                }
            }
        }
        let record_len = record_len(key.len(), value.len());
        if record_len >= MAX_RECORD_BYTES {
            return Err(PageError::RecordTooBig {
                row,
                key_len: key.len(),
                value_len: value.len(),
                record_len,
            });
        }
        let record = Record::new(key, value);
        let local = self.geometry.local_bytes(record.len);
        let spills = local < record.len as usize;
        let cell_len = varint_len(record.len) + local + if spills { 4 } else { 0 };
        let first_overflow = if spills {
            self.write_overflow(&record, local)?
        } else {
            0
        };
        let leaves = &mut self.levels[0];
        if leaves.open.fits(cell_len) {
            write_cell(leaves.open.reserve(cell_len), &record, local, first_overflow);
        } else {
            // The leaf is full: this row becomes the separator between it
            // and the next leaf.
            let mut separator = vec![0; cell_len];
            write_cell(&mut separator, &record, local, first_overflow);
            if let Some((child, row)) = self.close(0, separator)? {
                self.promote(1, child, row)?;
            }
        }
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        self.rows = row;
        Ok(())
    }

    /// Writes the last pages, the root and page 1, and closes the file.
    pub fn finish(self) -> Result<FileSummary, PageError> {
        self.finish_file().map(|(summary, _)| summary)
    }

    /// [`finish`](Self::finish), then the file's `xxh3_128` checksum read
    /// back through the still open file (no second open, no re-stat: the
    /// pages are in the page cache, one positioned read per MiB).
    pub fn finish_hashed(self) -> Result<(FileSummary, String), PageError> {
        use std::os::unix::fs::FileExt;
        let (summary, file) = self.finish_file()?;
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut buf = vec![0u8; (1usize << 20).min(summary.bytes as usize).max(1)];
        let mut at = 0u64;
        // Bounded by the file's size: every pass reads at least a byte or fails.
        while at < summary.bytes {
            let want = buf.len().min((summary.bytes - at) as usize);
            file.read_exact_at(&mut buf[..want], at)?;
            hasher.update(&buf[..want]);
            at += want as u64;
        }
        Ok((summary, sf_manifest::format::checksum::file_checksum(&hasher)))
    }

    fn finish_file(mut self) -> Result<(FileSummary, File), PageError> {
        let mut level = 0;
        let mut root = loop {
            let interior = level > 0;
            let held = self.levels[level].held.take();
            let Some(Held { page: left, separator }) = held else {
                // A level with a single page is the top of the tree.
                break std::mem::replace(&mut self.levels[level].open, Page::new(&self.geometry, interior));
            };
            let right = std::mem::replace(&mut self.levels[level].open, Page::new(&self.geometry, interior));
            let (mut left, separator, mut right) = balance(&self.geometry, left, separator, right);
            let left_number = self.out.write(left.finish())?;
            self.promote(level + 1, left_number, separator)?;
            let right_number = self.out.write(right.finish())?;
            self.levels[level + 1].open.set_right_child(right_number);
            level += 1;
        };
        let pages = self.out.written;
        let file = self.out.out.into_inner().map_err(|e| e.into_error())?;
        // Positioned writes: no seeks.
        {
            use std::os::unix::fs::FileExt;
            file.write_all_at(
                root.finish(),
                u64::from(self.geometry.page_size) * u64::from(KV_ROOT - 1),
            )?;
            file.write_all_at(&first_page(self.geometry.page_size, pages), 0)?;
        }
        let bytes = u64::from(pages) * u64::from(self.geometry.page_size);
        Ok((
            FileSummary {
                pages,
                bytes,
                rows: self.rows,
            },
            file,
        ))
    }

    /// Writes the part of `record` after its first `local` bytes to a
    /// chain of overflow pages; returns the first page's number.
    fn write_overflow(&mut self, record: &Record<'_>, local: usize) -> Result<u32, PageError> {
        let room = self.overflow_page.len() - 4;
        let first = self.out.allocate()?;
        let mut page = first;
        let mut at = local as u64;
        loop {
            let n = room.min((record.len - at) as usize);
            let last = at + n as u64 == record.len;
            let next = if last { 0 } else { self.out.allocate()? };
            let buf = &mut self.overflow_page;
            buf[..4].copy_from_slice(&next.to_be_bytes());
            record.copy_to(at, &mut buf[4..4 + n]);
            buf[4 + n..].fill(0);
            self.out.put(page, buf)?;
            if last {
                return Ok(first);
            }
            at += n as u64;
            page = next;
        }
    }

    /// Ends the open page of `level`, `separator` being the row that did
    /// not fit in it (a cell without child pointer). The page is held
    /// back; the one held before it is written, and returned with its own
    /// separator for the parent level.
    fn close(&mut self, level: usize, separator: Vec<u8>) -> Result<Option<(u32, Vec<u8>)>, PageError> {
        let interior = level > 0;
        let (fresh, written) = match self.levels[level].held.take() {
            Some(Held { mut page, separator }) => {
                let number = self.out.write(page.finish())?;
                page.clear();
                (page, Some((number, separator)))
            }
            None => (Page::new(&self.geometry, interior), None),
        };
        let lvl = &mut self.levels[level];
        let full = std::mem::replace(&mut lvl.open, fresh);
        lvl.held = Some(Held { page: full, separator });
        Ok(written)
    }

    /// Adds the separator `row` (a cell without child pointer) whose left
    /// child is page `child` to interior `level`, closing that level's
    /// page, and so on upwards, when it is full.
    fn promote(&mut self, mut level: usize, mut child: u32, mut row: Vec<u8>) -> Result<(), PageError> {
        loop {
            if level == self.levels.len() {
                self.levels.push(Level::new(&self.geometry, true));
            }
            let open = &mut self.levels[level].open;
            let cell_len = 4 + row.len();
            if open.fits(cell_len) {
                let cell = open.reserve(cell_len);
                cell[..4].copy_from_slice(&child.to_be_bytes());
                cell[4..].copy_from_slice(&row);
                return Ok(());
            }
            // The row's left child ends this page on its right; the row
            // itself moves up.
            open.set_right_child(child);
            match self.close(level, row)? {
                None => return Ok(()),
                Some((up_child, up_row)) => {
                    level += 1;
                    child = up_child;
                    row = up_row;
                }
            }
        }
    }
}

/// Sizes that follow from the page size.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    page_size: u32,
    /// Largest payload kept whole in an index cell (X).
    max_local: u64,
    /// Payload kept in the cell when it spills (M), unless the spill
    /// rule allows more.
    min_local: u64,
}

impl Geometry {
    fn new(page_size: u32) -> Result<Self, PageError> {
        if !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(PageError::PageSize(page_size));
        }
        // No reserved bytes: the usable size is the page size.
        let usable = u64::from(page_size);
        Ok(Geometry {
            page_size,
            max_local: (usable - 12) * 64 / 255 - 23,
            min_local: (usable - 12) * 32 / 255 - 23,
        })
    }

    /// Bytes of a `payload`-byte record stored in its cell, the same on
    /// leaf and interior index pages; the rest goes to overflow pages.
    fn local_bytes(&self, payload: u64) -> usize {
        let local = if payload <= self.max_local {
            payload
        } else {
            let fill = self.min_local + (payload - self.min_local) % (u64::from(self.page_size) - 4);
            if fill <= self.max_local { fill } else { self.min_local }
        };
        local as usize
    }
}

/// One row as an SQLite record: header (length, two blob serial types),
/// key, value; never copied whole.
struct Record<'a> {
    header: [u8; MAX_RECORD_HEADER],
    header_len: usize,
    key: &'a [u8],
    value: &'a [u8],
    /// Header, key and value bytes.
    len: u64,
}

impl<'a> Record<'a> {
    fn new(key: &'a [u8], value: &'a [u8]) -> Self {
        let mut header = [0u8; MAX_RECORD_HEADER];
        let mut at = 1;
        // Callers have checked the record is under 1e9 bytes, so each
        // serial type takes at most 5 bytes.
        at += put_varint(&mut header[at..], blob_serial_type(key.len() as u64));
        at += put_varint(&mut header[at..], blob_serial_type(value.len() as u64));
        // The length counts itself; at most 11, so it takes one byte.
        header[0] = at as u8;
        Record {
            header,
            header_len: at,
            key,
            value,
            len: at as u64 + key.len() as u64 + value.len() as u64,
        }
    }

    /// Copies the record's bytes from offset `from` into all of `out`.
    fn copy_to(&self, from: u64, out: &mut [u8]) {
        let mut skip = from;
        let mut filled = 0;
        for part in [&self.header[..self.header_len], self.key, self.value] {
            if filled == out.len() {
                return;
            }
            let len = part.len() as u64;
            if skip >= len {
                skip -= len;
                continue;
            }
            let part = &part[skip as usize..];
            skip = 0;
            let n = part.len().min(out.len() - filled);
            out[filled..filled + n].copy_from_slice(&part[..n]);
            filled += n;
        }
    }
}

/// Bytes of the record for a key and a value of these lengths.
fn record_len(key_len: usize, value_len: usize) -> u64 {
    let (key_len, value_len) = (key_len as u64, value_len as u64);
    let header = 1 + varint_len(blob_serial_type(key_len)) + varint_len(blob_serial_type(value_len));
    (header as u64).saturating_add(key_len).saturating_add(value_len)
}

/// Serial type of a blob of `len` bytes.
fn blob_serial_type(len: u64) -> u64 {
    len.saturating_mul(2).saturating_add(12)
}

/// Writes an index cell without child pointer: payload size, the first
/// `local` bytes of the record, and the first overflow page if it spills.
fn write_cell(cell: &mut [u8], record: &Record<'_>, local: usize, first_overflow: u32) {
    let at = put_varint(cell, record.len);
    record.copy_to(0, &mut cell[at..at + local]);
    if at + local < cell.len() {
        cell[at + local..].copy_from_slice(&first_overflow.to_be_bytes());
    }
}

/// One level of the tree being built.
struct Level {
    /// The page being filled.
    open: Page,
    /// The last completed page and the row after it, not yet written.
    held: Option<Held>,
}

impl Level {
    fn new(geometry: &Geometry, interior: bool) -> Self {
        Level {
            open: Page::new(geometry, interior),
            held: None,
        }
    }
}

struct Held {
    page: Page,
    /// The row between this page and the next one (a cell without child
    /// pointer), bound for the parent level.
    separator: Vec<u8>,
}

/// An index b-tree page laid out as it will be written: cells placed from
/// the end of the page down, pointers from the header up.
struct Page {
    image: Vec<u8>,
    interior: bool,
    /// 8 on leaves, 12 on interior pages (the right-most child).
    header: usize,
    cells: usize,
    /// Start of the cell content area.
    content: usize,
}

impl Page {
    fn new(geometry: &Geometry, interior: bool) -> Self {
        let size = geometry.page_size as usize;
        Page {
            image: vec![0; size],
            interior,
            header: if interior { 12 } else { 8 },
            cells: 0,
            content: size,
        }
    }

    fn clear(&mut self) {
        self.cells = 0;
        self.content = self.image.len();
    }

    /// Whether a cell of `len` bytes and its pointer fit.
    fn fits(&self, len: usize) -> bool {
        self.header + 2 * self.cells + 2 + len <= self.content
    }

    /// Room for the next cell (in key order) of `len` bytes; the caller
    /// has checked it [`fits`](Self::fits).
    fn reserve(&mut self, len: usize) -> &mut [u8] {
        self.content -= len;
        let pointer = self.header + 2 * self.cells;
        // Offsets are below the page size, so at most 65535.
        self.image[pointer..pointer + 2].copy_from_slice(&(self.content as u16).to_be_bytes());
        self.cells += 1;
        &mut self.image[self.content..self.content + len]
    }

    /// Cell `i` (with its child pointer on interior pages): cells lie back
    /// to back, the first at the end of the page.
    fn cell(&self, i: usize) -> &[u8] {
        let pointer = |i: usize| {
            let at = self.header + 2 * i;
            usize::from(u16::from_be_bytes([self.image[at], self.image[at + 1]]))
        };
        let end = if i == 0 { self.image.len() } else { pointer(i - 1) };
        &self.image[pointer(i)..end]
    }

    fn set_right_child(&mut self, child: u32) {
        self.image[8..12].copy_from_slice(&child.to_be_bytes());
    }

    fn right_child(&self) -> u32 {
        u32::from_be_bytes([self.image[8], self.image[9], self.image[10], self.image[11]])
    }

    /// The page's bytes, header written and unused space zeroed.
    fn finish(&mut self) -> &[u8] {
        let image = &mut self.image;
        image[0] = if self.interior { INDEX_INTERIOR } else { INDEX_LEAF };
        // No freeblocks, no fragmented bytes.
        image[1..3].fill(0);
        image[3..5].copy_from_slice(&(self.cells as u16).to_be_bytes());
        // A content area starting at 65536 (an empty 64 KiB page) is 0.
        image[5..7].copy_from_slice(&(self.content as u16).to_be_bytes());
        image[7] = 0;
        image[self.header + 2 * self.cells..self.content].fill(0);
        &self.image
    }
}

/// Shares the cells of the last two pages of a level and the separator
/// between them so that neither page is nearly empty: the right page ends
/// wherever the input ended, possibly with no cell at all.
fn balance(geometry: &Geometry, mut left: Page, separator: Vec<u8>, mut right: Page) -> (Page, Vec<u8>, Page) {
    let interior = left.interior;
    let child = if interior { 4 } else { 0 };
    let mut cells: Vec<Vec<u8>> = (0..left.cells).map(|i| left.cell(i).to_vec()).collect();
    let mut middle = Vec::with_capacity(child + separator.len());
    if interior {
        middle.extend_from_slice(&left.right_child().to_be_bytes());
    }
    middle.extend_from_slice(&separator);
    cells.push(middle);
    cells.extend((0..right.cells).map(|i| right.cell(i).to_vec()));
    let right_most = if interior { right.right_child() } else { 0 };

    // Cells with their pointers, against the room below the page header.
    let room = geometry.page_size as usize - left.header;
    let total: usize = cells.iter().map(|c| c.len() + 2).sum();
    // Among the splits where both pages fit and neither is empty, prefer
    // two cells or more on each side, then the most even one. Every page
    // holds at least four cells (the overflow thresholds see to that), so
    // such a split exists; the split as it came is the fallback.
    let mut best: Option<((usize, Reverse<usize>), usize)> = None;
    let mut before = 0;
    for (i, cell) in cells.iter().enumerate() {
        let after = total - before - (cell.len() + 2);
        let fewest = i.min(cells.len() - 1 - i);
        if before <= room && after <= room && fewest > 0 {
            let score = (fewest.min(2), Reverse(before.abs_diff(after)));
            if best.as_ref().is_none_or(|(s, _)| score > *s) {
                best = Some((score, i));
            }
        }
        before += cell.len() + 2;
    }
    let best = best.map_or(left.cells, |(_, i)| i);

    left.clear();
    for cell in &cells[..best] {
        left.reserve(cell.len()).copy_from_slice(cell);
    }
    right.clear();
    for cell in &cells[best + 1..] {
        right.reserve(cell.len()).copy_from_slice(cell);
    }
    let mut separator = std::mem::take(&mut cells[best]);
    if interior {
        left.set_right_child(u32::from_be_bytes([
            separator[0],
            separator[1],
            separator[2],
            separator[3],
        ]));
        separator.drain(..4);
        right.set_right_child(right_most);
    }
    (left, separator, right)
}

/// The file's pages in order, through a buffer.
struct PageStream {
    out: BufWriter<File>,
    page_size: u32,
    /// Next page number to hand out.
    next_free: u32,
    /// Pages in the file so far.
    written: u32,
    lock_page: u32,
}

impl PageStream {
    /// A number for a new page. Pages must be [`put`](Self::put) in the
    /// order their numbers were handed out.
    fn allocate(&mut self) -> Result<u32, PageError> {
        let mut number = self.next_free;
        if number == self.lock_page {
            number += 1;
        }
        if number > MAX_PAGE_COUNT {
            return Err(PageError::TooManyPages {
                page_size: self.page_size,
            });
        }
        self.next_free = number + 1;
        Ok(number)
    }

    /// Writes page `number`, the next one allocated.
    fn put(&mut self, number: u32, bytes: &[u8]) -> io::Result<()> {
        if self.written + 1 == self.lock_page {
            self.zeros()?;
        }
        debug_assert_eq!(number, self.written + 1, "pages are written in allocation order");
        debug_assert_eq!(bytes.len(), self.page_size as usize);
        self.out.write_all(bytes)?;
        self.written += 1;
        Ok(())
    }

    /// Allocates and writes a page; returns its number.
    fn write(&mut self, bytes: &[u8]) -> Result<u32, PageError> {
        let number = self.allocate()?;
        self.put(number, bytes)?;
        Ok(number)
    }

    /// A page of zeros: a place holder, or the lock-byte page.
    fn zeros(&mut self) -> io::Result<()> {
        io::copy(&mut io::repeat(0).take(u64::from(self.page_size)), &mut self.out)?;
        self.written += 1;
        Ok(())
    }
}

/// Page 1: the database header, then the schema table's only leaf with
/// one row, `('table', 'kv', 'kv', 2, KV_DDL)`.
fn first_page(page_size: u32, pages: u32) -> Vec<u8> {
    let mut page = vec![0u8; page_size as usize];
    let h = &mut page[..DB_HEADER];
    h[..16].copy_from_slice(b"SQLite format 3\0");
    // 65536 does not fit in two bytes and is written as 1.
    let stored_size = if page_size == MAX_PAGE_SIZE {
        1
    } else {
        page_size as u16
    };
    h[16..18].copy_from_slice(&stored_size.to_be_bytes());
    // Rollback journal for writes and reads (2 would be WAL).
    h[18] = 1;
    h[19] = 1;
    // No reserved bytes; the fixed payload fractions.
    h[20] = 0;
    h[21] = 64;
    h[22] = 32;
    h[23] = 32;
    let mut put = |at: usize, value: u32| h[at..at + 4].copy_from_slice(&value.to_be_bytes());
    // Change counter and version-valid-for agree, so readers trust the
    // page count (28). Freelist (32, 36), default cache size (48),
    // auto-vacuum (52, 64), user version (60) and application id (68)
    // stay 0.
    put(24, 1);
    put(28, pages);
    put(40, 1); // schema cookie
    put(44, 4); // schema format
    put(56, 1); // UTF-8
    put(92, 1);
    put(96, SQLITE_VERSION_NUMBER);

    // The schema row: type, name, tbl_name, rootpage, sql.
    let sql = kv::DDL.as_bytes();
    let text_type = |len: usize| 2 * len as u64 + 13;
    let (root_type, root_bytes) = integer_serial(KV_ROOT);
    let mut types = Vec::with_capacity(MAX_RECORD_HEADER);
    for serial in [
        text_type(5),
        text_type(kv::TABLE.len()),
        text_type(kv::TABLE.len()),
        root_type,
        text_type(sql.len()),
    ] {
        let mut buf = [0u8; 9];
        let n = put_varint(&mut buf, serial);
        types.extend_from_slice(&buf[..n]);
    }
    let mut record = Vec::with_capacity(128 + sql.len());
    // The header length counts itself; it is far below 128.
    record.push(1 + types.len() as u8);
    record.extend_from_slice(&types);
    record.extend_from_slice(b"table");
    // name and tbl_name
    record.extend_from_slice(kv::TABLE.as_bytes());
    record.extend_from_slice(kv::TABLE.as_bytes());
    record.extend_from_slice(&root_bytes);
    record.extend_from_slice(sql);
    let mut cell = [0u8; 18];
    let mut n = put_varint(&mut cell, record.len() as u64);
    n += put_varint(&mut cell[n..], 1); // rowid
    let content = page.len() - n - record.len();
    page[content..content + n].copy_from_slice(&cell[..n]);
    page[content + n..].copy_from_slice(&record);

    let leaf = &mut page[DB_HEADER..DB_HEADER + 10];
    leaf[0] = TABLE_LEAF;
    leaf[3..5].copy_from_slice(&1u16.to_be_bytes());
    leaf[5..7].copy_from_slice(&(content as u16).to_be_bytes());
    leaf[8..10].copy_from_slice(&(content as u16).to_be_bytes());
    page
}

/// Serial type and big-endian bytes of a positive integer, in the fewest
/// bytes SQLite's encoding allows (1, 2, 3 or 4).
fn integer_serial(value: u32) -> (u64, Vec<u8>) {
    let bytes = value.to_be_bytes();
    match value {
        0..=0x7f => (1, bytes[3..].to_vec()),
        0x80..=0x7fff => (2, bytes[2..].to_vec()),
        0x8000..=0x7f_ffff => (3, bytes[1..].to_vec()),
        _ => (4, bytes.to_vec()),
    }
}

/// Writes `value` as an SQLite varint (big-endian 7-bit groups, the
/// ninth byte whole); returns its length.
fn put_varint(out: &mut [u8], value: u64) -> usize {
    if value <= 0x7f {
        out[0] = value as u8;
        return 1;
    }
    if value >> 56 != 0 {
        let mut v = value;
        out[8] = v as u8;
        v >>= 8;
        for i in (0..8).rev() {
            out[i] = (v as u8 & 0x7f) | 0x80;
            v >>= 7;
        }
        return 9;
    }
    let len = varint_len(value);
    let mut v = value;
    for i in (0..len).rev() {
        out[i] = (v as u8 & 0x7f) | 0x80;
        v >>= 7;
    }
    out[len - 1] &= 0x7f;
    len
}

/// Bytes [`put_varint`] takes for `value`.
fn varint_len(value: u64) -> usize {
    match value {
        0..=0x7f => 1,
        0x80..=0x3fff => 2,
        0x4000..=0x1f_ffff => 3,
        0x20_0000..=0xfff_ffff => 4,
        0x1000_0000..=0x7_ffff_ffff => 5,
        0x8_0000_0000..=0x3ff_ffff_ffff => 6,
        0x400_0000_0000..=0x1_ffff_ffff_ffff => 7,
        0x2_0000_0000_0000..=0xff_ffff_ffff_ffff => 8,
        _ => 9,
    }
}

/// A key for messages: hex, cut short when long.
fn show(key: &[u8]) -> String {
    if key.len() <= SHOWN_KEY_BYTES {
        format!("0x{}", hex::encode(key))
    } else {
        format!("0x{}...", hex::encode(&key[..SHOWN_KEY_BYTES]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rusqlite::{Connection, OpenFlags};
    use std::io::{Seek, SeekFrom};
    use std::path::PathBuf;
    use std::time::Instant;

    type Rows = Vec<(Vec<u8>, Vec<u8>)>;

    const PAGE_SIZES: [u32; 8] = [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536];

    fn build(path: &Path, page_size: u32, rows: &Rows) -> FileSummary {
        let mut w = SqliteFileWriter::create(path, page_size).expect("create");
        for (k, v) in rows {
            w.push(k, v).expect("push");
        }
        w.finish().expect("finish")
    }

    fn open(path: &Path) -> Connection {
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open read-only")
    }

    fn integrity(c: &Connection) -> Vec<String> {
        let mut s = c.prepare("PRAGMA integrity_check").expect("prepare");
        s.query_map([], |r| r.get(0))
            .expect("query")
            .map(|r| r.expect("row"))
            .collect()
    }

    fn pragma(c: &Connection, name: &str) -> i64 {
        c.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0)).expect(name)
    }

    /// Leaf depth of the kv tree (1: the root is a leaf), as SQLite sees it.
    fn depth(c: &Connection) -> i64 {
        c.query_row(
            "SELECT max(length(path) - length(replace(path, '/', ''))) FROM dbstat
             WHERE name = 'kv' AND pagetype = 'leaf'",
            [],
            |r| r.get(0),
        )
        .expect("depth")
    }

    /// Builds `rows` and checks the file from SQLite's side: the full
    /// integrity check, sizes, every row looked up, a full ordered scan,
    /// the root where SQLite puts it, and no non-root page left with fewer
    /// than two cells. Returns the file's leaf depth.
    fn build_and_check(page_size: u32, rows: &Rows) -> i64 {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("shard.db");
        let summary = build(&path, page_size, rows);
        let len = std::fs::metadata(&path).expect("metadata").len();
        assert_eq!(summary.bytes, len);
        assert_eq!(summary.bytes, u64::from(summary.pages) * u64::from(page_size));
        assert_eq!(summary.rows, rows.len() as u64);

        let c = open(&path);
        assert_eq!(
            integrity(&c),
            vec!["ok".to_string()],
            "{} rows, page size {page_size}",
            rows.len()
        );
        assert_eq!(pragma(&c, "page_size"), i64::from(page_size));
        assert_eq!(pragma(&c, "page_count"), i64::from(summary.pages));
        assert_eq!(pragma(&c, "freelist_count"), 0);
        let root: i64 = c
            .query_row("SELECT rootpage FROM sqlite_schema WHERE name = 'kv'", [], |r| r.get(0))
            .expect("schema row");
        assert_eq!(root, i64::from(KV_ROOT));

        let mut get = c.prepare("SELECT v FROM kv WHERE k = ?1").expect("prepare");
        for (k, v) in rows {
            let found: Vec<u8> = get.query_row([k], |r| r.get(0)).expect("every row is found");
            assert!(found == *v, "value of key {}", show(k));
        }
        let mut scan = c.prepare("SELECT k, v FROM kv ORDER BY k").expect("prepare");
        let stored: Rows = scan
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("scan")
            .map(|r| r.expect("row"))
            .collect();
        assert!(stored == *rows, "the scan returns the input, in order");

        let thin: Vec<(i64, String, i64)> = c
            .prepare(
                "SELECT pageno, pagetype, ncell FROM dbstat
                 WHERE name = 'kv' AND pagetype IN ('internal', 'leaf') AND pageno <> 2 AND ncell < 2",
            )
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("dbstat")
            .map(|r| r.expect("row"))
            .collect();
        assert!(thin.is_empty(), "non-root pages with fewer than two cells: {thin:?}");
        depth(&c)
    }

    /// A value whose bytes depend on its row and position, so a misplaced
    /// page shows.
    fn filled(len: usize, seed: u64) -> Vec<u8> {
        (0..len as u64)
            .map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(0x9e37)) as u8)
            .collect()
    }

    /// `count` rows with 8-byte big-endian keys and `value_len`-byte values.
    fn counted(count: usize, value_len: usize) -> Rows {
        (0..count as u64)
            .map(|i| (i.to_be_bytes().to_vec(), filled(value_len, i)))
            .collect()
    }

    #[test]
    fn varints_records_and_thresholds_follow_the_format() {
        let mut buf = [0u8; 9];
        for (value, bytes) in [
            (0u64, &[0x00][..]),
            (0x7f, &[0x7f]),
            (0x80, &[0x81, 0x00]),
            (212, &[0x81, 0x54]),
            (0x3fff, &[0xff, 0x7f]),
            (0x4000, &[0x81, 0x80, 0x00]),
            (u64::MAX, &[0xff; 9]),
            (1 << 56, &[0x80, 0xc0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00]),
        ] {
            let n = put_varint(&mut buf, value);
            assert_eq!(&buf[..n], bytes, "varint {value:#x}");
            assert_eq!(varint_len(value), n, "length of {value:#x}");
        }
        let (key, value) = (7u64.to_be_bytes(), [0u8; 100]);
        let record = Record::new(&key, &value);
        assert_eq!(&record.header[..record.header_len], &[0x04, 0x1c, 0x81, 0x54]);
        assert_eq!(record.len, 112);
        assert_eq!(record_len(8, 100), 112);
        let mut all = vec![0u8; 112];
        record.copy_to(0, &mut all);
        assert_eq!(&all[4..12], &key);
        let mut tail = [1u8; 10];
        record.copy_to(102, &mut tail);
        assert_eq!(tail, [0u8; 10]);

        let g = Geometry::new(4096).expect("4096");
        assert_eq!((g.max_local, g.min_local), (1002, 489));
        assert_eq!(g.local_bytes(1002), 1002);
        // K = M + (P - M) mod (U - 4): kept when it fits under X, else M.
        assert_eq!(g.local_bytes(1003), 489);
        assert_eq!(g.local_bytes(489 + 4092 + 400), 889);
        assert_eq!(g.local_bytes(489 + 2 * 4092 + 513), 1002);
        assert_eq!(g.local_bytes(489 + 4092 + 514), 489);
        for bad in [0, 256, 1000, 4095, 131072] {
            assert!(matches!(Geometry::new(bad), Err(PageError::PageSize(p)) if p == bad));
        }
    }

    #[test]
    fn an_empty_table_is_a_root_leaf_without_cells() {
        for page_size in PAGE_SIZES {
            assert_eq!(build_and_check(page_size, &Vec::new()), 1);
            let dir = tempfile::tempdir().expect("tmp");
            let path = dir.path().join("shard.db");
            let summary = build(&path, page_size, &Vec::new());
            assert_eq!(summary.pages, 2);
            let bytes = std::fs::read(&path).expect("read");
            let root = &bytes[page_size as usize..];
            let content = if page_size == 65536 { 0 } else { page_size as u16 };
            let mut header = vec![INDEX_LEAF, 0, 0, 0, 0];
            header.extend_from_slice(&content.to_be_bytes());
            assert_eq!(&root[..7], &header[..]);
            assert!(root[7..].iter().all(|b| *b == 0));
        }
    }

    #[test]
    fn row_counts_around_level_boundaries() {
        for page_size in PAGE_SIZES {
            let u = page_size as usize;
            // Cells of about a tenth of a page, whole in their cells: nine
            // or so per page, so three levels need only hundreds of rows.
            let value_len = u / 10 - 16;
            let payload = record_len(8, value_len);
            let cell = varint_len(payload) + payload as usize;
            let leaf = (u - 8) / (cell + 2);
            let interior = (u - 12) / (4 + cell + 2);
            let two_levels = (interior + 1) * leaf + interior;
            let three_levels = (interior + 1) * two_levels + interior;
            for (count, expected_depth) in [
                (1, 1),
                (2, 1),
                (leaf - 1, 1),
                (leaf, 1),
                (leaf + 1, 2),
                (leaf + 2, 2),
                (2 * leaf + 1, 2),
                (2 * leaf + 2, 2),
                (two_levels - 1, 2),
                (two_levels, 2),
                (two_levels + 1, 3),
                (two_levels + leaf + 2, 3),
                (three_levels, 3),
                (three_levels + 1, 4),
            ] {
                let depth = build_and_check(page_size, &counted(count, value_len));
                assert_eq!(depth, expected_depth, "{count} rows at page size {page_size}");
            }
        }
    }

    #[test]
    fn keys_that_overflow_stay_whole_in_interior_cells() {
        for page_size in PAGE_SIZES {
            let g = Geometry::new(page_size).expect("page size");
            // Every key alone spills, on leaves and in the interior cells
            // its row moves to; chains of one page and of several.
            for key_len in [g.max_local as usize + 1, 3 * page_size as usize] {
                let rows: Rows = (0..40u64)
                    .map(|i| {
                        let mut key = i.to_be_bytes().to_vec();
                        key.extend_from_slice(&filled(key_len - 8, i));
                        (key, filled((i % 5) as usize * 7, i + 1))
                    })
                    .collect();
                assert!(build_and_check(page_size, &rows) >= 2, "{page_size}");
                let dir = tempfile::tempdir().expect("tmp");
                let path = dir.path().join("shard.db");
                build(&path, page_size, &rows);
                let bytes = std::fs::read(&path).expect("read");
                let root = &bytes[page_size as usize..2 * page_size as usize];
                assert_eq!(root[0], INDEX_INTERIOR);
                let first = usize::from(u16::from_be_bytes([root[12], root[13]]));
                let mut payload = 0u64;
                for b in &root[first + 4..first + 13] {
                    payload = (payload << 7) | u64::from(b & 0x7f);
                    if b & 0x80 == 0 {
                        break;
                    }
                }
                assert!(payload > g.max_local, "the root's first cell spills ({payload} bytes)");
            }
        }
    }

    #[test]
    fn payloads_around_the_overflow_thresholds() {
        for page_size in PAGE_SIZES {
            let g = Geometry::new(page_size).expect("page size");
            let (x, m, room) = (g.max_local, g.min_local, u64::from(page_size) - 4);
            let mut payloads = vec![x - 1, x, x + 1, m + room - 1, m + room, m + room + 1];
            payloads.extend([x + room, x + room + 1, 2 * room + m, 3 * room + x - 1]);
            let rows: Rows = payloads
                .iter()
                .enumerate()
                .map(|(i, &p)| {
                    // Where the value's serial type grows a byte, some
                    // payloads need a longer key.
                    let (key_len, value_len) = (8..12)
                        .flat_map(|k| (p as usize - k - 8..=p as usize - k - 3).map(move |v| (k, v)))
                        .find(|&(k, v)| record_len(k, v) == p)
                        .expect("a key and a value make up the payload");
                    let mut key = (i as u64).to_be_bytes().to_vec();
                    key.resize(key_len, 0xee);
                    (key, filled(value_len, i as u64))
                })
                .collect();
            build_and_check(page_size, &rows);
        }
    }

    #[test]
    fn the_same_rows_give_the_same_bytes() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut rows = counted(5000, 37);
        rows.extend((5000..5040u64).map(|i| (i.to_be_bytes().to_vec(), filled(3000 + 100 * i as usize % 7000, i))));
        let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
        build(&a, 1024, &rows);
        build(&b, 1024, &rows);
        let (a, b) = (std::fs::read(a).expect("a"), std::fs::read(b).expect("b"));
        assert!(a.len() > 100 * 1024);
        assert!(a == b, "two builds of the same rows differ");
    }

    #[test]
    fn refused_rows_leave_the_writer_usable() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("shard.db");
        let mut w = SqliteFileWriter::create(&path, 4096).expect("create");
        w.push(b"b", b"1").expect("first");
        let e = w.push(b"b", b"2").expect_err("duplicate");
        assert!(matches!(e, PageError::Duplicate { row: 2, key_len: 1, .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "row 2: key 0x62 (1 bytes) is the previous row's key again; keys must be unique"
        );
        let e = w.push(b"a", b"2").expect_err("out of order");
        assert!(matches!(e, PageError::OutOfOrder { row: 2, .. }), "{e:?}");
        assert!(
            e.to_string()
                .contains("key 0x61 (1 bytes) sorts before the previous row's key 0x62"),
            "{e}"
        );
        // Not read, so never touched: calloc'd pages cost no memory.
        let huge = vec![0u8; 999_999_993];
        let e = w.push(b"c", &huge).expect_err("too big");
        assert!(
            matches!(
                e,
                PageError::RecordTooBig {
                    row: 2,
                    key_len: 1,
                    value_len: 999_999_993,
                    record_len: 1_000_000_001
                }
            ),
            "{e:?}"
        );
        let e = w.push(b"c", &huge[..999_999_992]).expect_err("1e9 exactly is too big");
        assert!(
            matches!(
                e,
                PageError::RecordTooBig {
                    record_len: 1_000_000_000,
                    ..
                }
            ),
            "{e:?}"
        );
        drop(huge);
        w.push(b"c", b"3").expect("a good row after refused ones");
        assert_eq!(w.rows(), 2);
        let summary = w.finish().expect("finish");
        assert_eq!(summary.rows, 2);
        let c = open(&path);
        assert_eq!(integrity(&c), vec!["ok".to_string()]);
        let n: i64 = c.query_row("SELECT count(*) FROM kv", [], |r| r.get(0)).expect("count");
        assert_eq!(n, 2);
        assert!(matches!(
            SqliteFileWriter::create(&path, 3000),
            Err(PageError::PageSize(3000))
        ));
    }

    fn fixture_shards(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("fixture folder") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                fixture_shards(&path, found);
            } else if path.file_name().is_some_and(|n| n == "shard.db") {
                found.push(path);
            }
        }
    }

    #[test]
    fn reference_shards_rebuild_byte_for_byte() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/shardyfusion-v4/sqlite-bucket-golden");
        let mut shards = Vec::new();
        fixture_shards(&root, &mut shards);
        shards.sort();
        assert!(!shards.is_empty(), "no reference shards under {}", root.display());
        let dir = tempfile::tempdir().expect("tmp");
        for shard in shards {
            let reference = std::fs::read(&shard).expect("reference shard");
            let page_size = match u16::from_be_bytes([reference[16], reference[17]]) {
                1 => 65536,
                n => u32::from(n),
            };
            let rows: Rows = {
                let c = open(&shard);
                let mut s = c.prepare("SELECT k, v FROM kv ORDER BY k").expect("prepare");
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .expect("rows")
                    .map(|r| r.expect("row"))
                    .collect()
            };
            assert!(!rows.is_empty(), "{}", shard.display());
            let rebuilt = dir.path().join("rebuilt.db");
            build(&rebuilt, page_size, &rows);
            let rebuilt = std::fs::read(&rebuilt).expect("rebuilt");
            assert_eq!(rebuilt.len(), reference.len(), "{}", shard.display());
            let first_difference = rebuilt.iter().zip(&reference).position(|(a, b)| a != b);
            assert_eq!(first_difference, None, "{}", shard.display());
        }
    }

    /// Crosses the lock-byte page at 1 GiB in an overflow chain and puts
    /// b-tree pages beyond it. Big values and few rows keep it cheap.
    #[test]
    fn a_file_past_one_gib_skips_the_lock_byte_page_slow() {
        let started = Instant::now();
        let page_size = 4096u32;
        let big_rows = 12u64;
        let big = 96 << 20;
        // Markers every 4000 bytes (not a multiple of a page's 4092 bytes
        // of payload), so a page out of place changes what is read back.
        let big_value = |row: u64, buf: &mut Vec<u8>| {
            buf.clear();
            buf.resize(big, row as u8);
            for (block, chunk) in buf.chunks_mut(4000).enumerate() {
                let n = chunk.len().min(8);
                chunk[..n].copy_from_slice(&((row << 32) | block as u64).to_be_bytes()[..n]);
            }
        };
        let small: Rows = (0..3000u64)
            .map(|i| ((1000 + i).to_be_bytes().to_vec(), filled(40, i)))
            .collect();

        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("shard.db");
        let mut w = SqliteFileWriter::create(&path, page_size).expect("create");
        let mut value = Vec::new();
        for row in 0..big_rows {
            big_value(row, &mut value);
            w.push(&row.to_be_bytes(), &value).expect("big row");
        }
        for (k, v) in &small {
            w.push(k, v).expect("small row");
        }
        let summary = w.finish().expect("finish");
        let built = started.elapsed();

        let lock_page = (LOCK_BYTE_OFFSET / u64::from(page_size) + 1) as u32;
        assert!(summary.pages > lock_page + 10, "{summary:?}");
        assert!(summary.bytes > LOCK_BYTE_OFFSET + (1 << 20));
        let c = open(&path);
        assert_eq!(integrity(&c), vec!["ok".to_string()]);
        assert_eq!(pragma(&c, "page_count"), i64::from(summary.pages));
        let beyond: i64 = c
            .query_row(
                "SELECT count(*) FROM dbstat WHERE name = 'kv' AND pagetype = 'leaf' AND pageno > ?1",
                [lock_page],
                |r| r.get(0),
            )
            .expect("dbstat");
        assert!(beyond > 2, "leaves past the lock-byte page: {beyond}");
        let mut get = c.prepare("SELECT v FROM kv WHERE k = ?1").expect("prepare");
        let mut expected = Vec::new();
        for row in 0..big_rows {
            big_value(row, &mut expected);
            let found: Vec<u8> = get.query_row([row.to_be_bytes()], |r| r.get(0)).expect("big row");
            assert!(found == expected, "big row {row}");
        }
        let mut scan = c
            .prepare("SELECT k, v FROM kv WHERE k >= ?1 ORDER BY k")
            .expect("prepare");
        let stored: Rows = scan
            .query_map([1000u64.to_be_bytes()], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("scan")
            .map(|r| r.expect("row"))
            .collect();
        assert!(stored == small);
        drop(get);
        drop(scan);
        drop(c);

        let mut file = File::open(&path).expect("open");
        file.seek(SeekFrom::Start(u64::from(lock_page - 1) * u64::from(page_size)))
            .expect("seek");
        let mut lock = vec![1u8; page_size as usize];
        file.read_exact(&mut lock).expect("lock-byte page");
        assert!(lock.iter().all(|b| *b == 0), "the lock-byte page holds nothing");
        tracing::info!(
            "{} bytes in {} pages: built in {built:.1?}, built and checked in {:.1?}",
            summary.bytes,
            summary.pages,
            started.elapsed()
        );
    }

    /// Rows for one property case: the key and value sizes are drawn
    /// relative to the page size, so every page size sees small rows,
    /// rows near the overflow threshold, and rows spilling in keys.
    fn case() -> impl Strategy<Value = (u32, Rows)> {
        (9u32..=16, 0usize..3)
            .prop_flat_map(|(shift, class)| {
                let page_size = 1u32 << shift;
                let x = Geometry::new(page_size).expect("page size").max_local as usize;
                let u = page_size as usize;
                // (longest key filler, longest value, most rows)
                let (key_max, value_max, rows_max) = match class {
                    0 => (8, 24, 1500),
                    1 => (40, x, 150),
                    _ => (2 * x, 3 * u, 40),
                };
                // Keys: a short prefix over a small alphabet (so keys are often
                // prefixes of each other), then filler.
                let row = (
                    proptest::collection::vec(0u8..4, 0..6),
                    0..=key_max,
                    0..=value_max,
                    any::<u64>(),
                );
                (Just(page_size), proptest::collection::vec(row, 0..rows_max))
            })
            .prop_map(|(page_size, specs)| {
                let mut rows: Rows = specs
                    .into_iter()
                    .map(|(mut key, filler, value_len, seed)| {
                        if filler > 0 {
                            key.extend_from_slice(&filled(filler, seed >> 1));
                        }
                        (key, filled(value_len, seed))
                    })
                    .collect();
                rows.sort_by(|a, b| a.0.cmp(&b.0));
                rows.dedup_by(|a, b| a.0 == b.0);
                (page_size, rows)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn random_rows_read_back_intact((page_size, rows) in case()) {
            build_and_check(page_size, &rows);
        }
    }
}
