//! Spill files: a shard's sorted rows on local disk, as *segments* of
//! records (`u32` LE key length, key, `u32` LE value length, value), and
//! reading a segment back. A collector's spill holds one segment per chunk
//! of every shard; a merge pass writes one segment per group it merges.

use std::fs::File;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};

/// Buffer of a spill being written, or of a merge pass's output.
const WRITE_BUFFER: usize = 256 << 10;
/// Buffer of each segment being read.
const READ_BUFFER: usize = 64 << 10;

/// A spill file, removed when the last segment reading it is gone.
#[derive(Debug)]
pub(crate) struct SpillFile {
    pub(crate) path: PathBuf,
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        // The collector's folder goes with the build; this frees disk early.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One shard's rows in a spill file or a merge pass's output.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub(crate) file: Arc<SpillFile>,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    /// Arrival rank of the chunk (or, for a merge pass, the newest source)
    /// it holds.
    pub(crate) seq: u64,
}

/// Writes a spill file's records (`u32` LE length, key, `u32` LE length,
/// value); a segment is the records between two of its positions.
pub(crate) struct SegmentWriter {
    out: BufWriter<File>,
    path: PathBuf,
    written: u64,
}

impl SegmentWriter {
    pub(crate) fn create(path: &Path) -> Result<Self> {
        let file =
            File::create(path).map_err(|e| Error::io(format!("creating the spill file {}", path.display()), e))?;
        Ok(SegmentWriter {
            out: BufWriter::with_capacity(WRITE_BUFFER, file),
            path: path.to_path_buf(),
            written: 0,
        })
    }

    pub(crate) fn position(&self) -> u64 {
        self.written
    }

    pub(crate) fn write(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let io = |e| Error::io(format!("writing the spill file {}", self.path.display()), e);
        for field in [key, value] {
            let len = u32::try_from(field.len())
                .map_err(|_| Error::Data(format!("a key or value of {} bytes is too large to sort", field.len())))?;
            self.out.write_all(&len.to_le_bytes()).map_err(io)?;
            self.out.write_all(field).map_err(io)?;
            self.written += 4 + field.len() as u64;
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<()> {
        let path = self.path;
        self.out
            .into_inner()
            .map_err(|e| Error::io(format!("writing the spill file {}", path.display()), e.into_error()))?;
        Ok(())
    }
}

/// Reads one segment's records.
pub(crate) struct SegmentReader {
    input: BufReader<std::io::Take<File>>,
    /// Keeps the file until the reader is done.
    file: Arc<SpillFile>,
    pub(crate) key: Vec<u8>,
    pub(crate) value: Vec<u8>,
}

impl SegmentReader {
    pub(crate) fn open(segment: &Segment) -> Result<Self> {
        let path = &segment.file.path;
        let io = |e| Error::io(format!("reading the spill file {}", path.display()), e);
        let mut file = File::open(path).map_err(io)?;
        file.seek(SeekFrom::Start(segment.offset)).map_err(io)?;
        Ok(SegmentReader {
            input: BufReader::with_capacity(READ_BUFFER, file.take(segment.len)),
            file: Arc::clone(&segment.file),
            key: Vec::new(),
            value: Vec::new(),
        })
    }

    /// Reads the next record; false at the end of the segment.
    pub(crate) fn advance(&mut self) -> Result<bool> {
        let path = &self.file.path;
        let io = |e| Error::io(format!("reading the spill file {}", path.display()), e);
        let mut len = [0u8; 4];
        match self.input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof && self.input.buffer().is_empty() => return Ok(false),
            Err(e) => return Err(io(e)),
        }
        read_field(&mut self.input, u32::from_le_bytes(len), &mut self.key).map_err(io)?;
        self.input.read_exact(&mut len).map_err(io)?;
        read_field(&mut self.input, u32::from_le_bytes(len), &mut self.value).map_err(io)?;
        Ok(true)
    }
}

fn read_field(input: &mut impl Read, len: u32, into: &mut Vec<u8>) -> std::io::Result<()> {
    into.clear();
    into.resize(len as usize, 0);
    input.read_exact(into)
}
