//! The reader's settings: serialisable knobs with defaults, kept apart from
//! its components (the object store), which come in through the builder.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How SQLite shards are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteMode {
    /// Fetch the whole file once into the local cache, then read it locally.
    /// Fastest per lookup (microseconds); costs disk and one full download.
    Download,
    /// Read pages with ranged GETs through a SQLite VFS and a shared block
    /// cache, without downloading the file. A cold lookup costs a few
    /// round trips; suits shards too large to copy or rarely read.
    Range,
    /// `memory` for shards of at most
    /// [`ReaderSettings::auto_memory_threshold_bytes`] (off by default),
    /// `range` for shards larger than
    /// [`ReaderSettings::auto_range_threshold_bytes`], `download` otherwise.
    #[default]
    Auto,
    /// Download as `download` does, then load the whole shard into memory
    /// (one arena of keys and values under a hash table): a lookup never
    /// touches SQLite. Shards that do not fit in what
    /// [`ReaderSettings::memory_limit_bytes`] leaves stay in download mode.
    Memory,
}

impl SqliteMode {
    /// The name used in settings and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            SqliteMode::Download => "download",
            SqliteMode::Range => "range",
            SqliteMode::Auto => "auto",
            SqliteMode::Memory => "memory",
        }
    }
}

impl std::str::FromStr for SqliteMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "download" => Ok(SqliteMode::Download),
            "range" => Ok(SqliteMode::Range),
            "auto" => Ok(SqliteMode::Auto),
            "memory" => Ok(SqliteMode::Memory),
            other => Err(Error::config(
                "sqlite_mode",
                format!("{other:?}; expected download, range, auto or memory"),
            )),
        }
    }
}

/// Which manifest a reader serves.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pin {
    /// Whatever `_CURRENT` points at; refresh follows it.
    #[default]
    Current,
    /// This manifest: its full URL, or its key relative to the prefix
    /// (`manifests/<ts>_run_id=R/manifest`). Refresh keeps it.
    Ref(String),
    /// The manifest at this offset of the history (0 is the newest),
    /// resolved once when the reader is built. Refresh keeps it.
    Offset(usize),
}

/// The most snapshots a reader keeps open besides the served one.
pub const MAX_KEEP_VERSIONS: usize = 16;

/// Knobs of a [`Reader`](crate::Reader). Every field has a default; see
/// each for the trade-off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReaderSettings {
    /// Folder of downloaded SQLite shards, shared by every reader and
    /// process that names it (files are named by a hash of the shard's
    /// URL and content ids, and written by atomic rename). Default:
    /// `<temp dir>/shardforge-cache-<uid>`, private to the user (created
    /// with mode 0700; refused when another user owns it or others may
    /// write to it).
    pub cache_dir: Option<PathBuf>,
    /// Bytes the cache folder may hold. After each download and each
    /// snapshot let go, cached files that no snapshot held in this process
    /// needs are removed, least recently used first, until the folder fits.
    /// Files a held snapshot needs are never removed: the folder may stay
    /// above the bound then (logged and counted, lookups unaffected).
    /// Default `None`: no bound.
    pub cache_max_bytes: Option<u64>,
    /// How often a background task polls `_CURRENT` and swaps to a new
    /// snapshot. `None` (the default): only [`Reader::refresh`](crate::Reader::refresh).
    #[serde(with = "sf_manifest::format::duration::option_serde")]
    pub refresh_interval: Option<Duration>,
    /// Ceiling of a failed background refresh's exponential backoff.
    /// Default 5 minutes.
    #[serde(with = "sf_manifest::format::duration::serde")]
    pub refresh_max_backoff: Duration,
    /// Shards a `multi_get` reads at once, and remote reads (range mode,
    /// SlateDB) in flight across the reader. Default 16.
    pub max_concurrency: usize,
    /// Download, range, auto or memory. Default auto.
    pub sqlite_mode: SqliteMode,
    /// In auto mode, shards above this size (the manifest's `db_bytes`)
    /// are read by range. Default 256 MiB.
    pub auto_range_threshold_bytes: u64,
    /// In auto mode, shards of at most this size (the manifest's
    /// `db_bytes`, when it records one) are held in memory, within
    /// `memory_limit_bytes`. Default 0: none.
    pub auto_memory_threshold_bytes: u64,
    /// In auto mode, hold every SQLite shard of a snapshot in memory when
    /// the whole snapshot fits: its shards' memory estimate (the files'
    /// sizes plus their tables, from the manifest's `db_bytes` and row
    /// counts) within `memory_limit_bytes` shared by the versions a
    /// refresh may hold at once (`keep_versions` + 1). A snapshot whose
    /// manifest leaves a shard's size out is never held whole. Default
    /// false; `sf-serve` turns it on.
    pub auto_memory_when_fits: bool,
    /// Memory all memory-mode shards of the reader may hold together (keys,
    /// values and hash tables). A shard that does not fit in what is left
    /// stays in download mode; [`ReaderStats`](crate::ReaderStats) counts
    /// it. A refresh opens the new snapshot's shards before the old ones
    /// are let go, so it needs room for both. Default 1 GiB.
    pub memory_limit_bytes: u64,
    /// Ask the kernel for transparent huge pages under each memory-mode
    /// shard's arena and table (Linux, where transparent huge pages are in
    /// their `madvise` or `always` mode; elsewhere nothing happens). A
    /// lookup then rarely misses the TLB, which shortens the tail of `get`
    /// (figures in docs/performance.md, Reading). Default true.
    pub memory_huge_pages: bool,
    /// Size of one ranged GET in range mode (a power of two, at least the
    /// 4 KiB page). Bigger blocks mean fewer round trips and more bytes per
    /// miss. Default 64 KiB.
    pub range_block_bytes: u64,
    /// Memory of the block cache shared by all range-mode shards.
    /// Default 64 MiB.
    pub page_cache_bytes: u64,
    /// Which manifest to serve. Default: `_CURRENT`.
    pub pin: Pin,
    /// Verify a shard's checksum (when the manifest records one) on first
    /// open: hashing the downloaded file, or streaming the object once in
    /// range mode, or scanning a SlateDB shard. Default true.
    pub verify_checksums: bool,
    /// Idle SQLite connections kept per open shard; more are opened when
    /// more callers read one shard at once. Default 8.
    pub max_idle_connections_per_shard: usize,
    /// Snapshots kept open after a refresh replaced them, newest first, for
    /// reads pinned to them ([`Reader::version`](crate::Reader::version)) and
    /// so that a rollback to one of them reopens nothing. Each costs its
    /// open shards (file handles, connections). Default 1.
    pub keep_versions: usize,
    /// Keys (as `sf-read` takes them: by the snapshot's key encoding, `hex:`
    /// for raw bytes) read from every new snapshot before it is served,
    /// at build and before each swap, so that their shards are open and
    /// their pages cached when traffic arrives. A warm-up read that fails
    /// fails the refresh (the previous snapshot keeps serving). Not for
    /// snapshots whose routing needs a context. Default: none.
    pub warmup_keys: Vec<String>,
    /// When the manifest `_CURRENT` names cannot be read at start
    /// (missing, corrupt, refused by the checks of untrusted manifests),
    /// open the newest readable older one of the history instead (at most
    /// three tried) and report the reader degraded until a refresh reads a
    /// good one. Off: the start fails with the current manifest's error,
    /// as `sf-read` wants it. Default on.
    pub history_fallback: bool,
    /// Keys read per second, across every caller of the reader (a `get` is
    /// one key, a `multi_get` its keys, a search one plus the values it
    /// fetches), as a token bucket holding one second's worth; see
    /// [`crate::ratelimit`]. Must be above zero. Default `None`: no limit.
    pub max_keys_per_second: Option<f64>,
    /// Bytes of values returned per second, charged when each read ends.
    /// Must be above zero. Default `None`: no limit.
    pub max_bytes_per_second: Option<f64>,
    /// The longest a read waits for the limits above to let it in,
    /// computed before it starts; a read that would wait longer fails at
    /// once with [`Error::RateLimited`](crate::Error::RateLimited), naming
    /// when to try again. `0s`: never wait. Default 1 s.
    #[serde(with = "sf_manifest::format::duration::serde")]
    pub rate_limit_max_wait: Duration,
}

impl Default for ReaderSettings {
    fn default() -> Self {
        ReaderSettings {
            cache_dir: None,
            cache_max_bytes: None,
            refresh_interval: None,
            refresh_max_backoff: Duration::from_secs(300),
            max_concurrency: 16,
            sqlite_mode: SqliteMode::Auto,
            auto_range_threshold_bytes: 256 * 1024 * 1024,
            auto_memory_threshold_bytes: 0,
            auto_memory_when_fits: false,
            memory_limit_bytes: 1024 * 1024 * 1024,
            memory_huge_pages: true,
            range_block_bytes: 64 * 1024,
            page_cache_bytes: 64 * 1024 * 1024,
            pin: Pin::Current,
            verify_checksums: true,
            max_idle_connections_per_shard: 8,
            keep_versions: 1,
            warmup_keys: Vec::new(),
            history_fallback: true,
            max_keys_per_second: None,
            max_bytes_per_second: None,
            rate_limit_max_wait: Duration::from_secs(1),
        }
    }
}

impl ReaderSettings {
    /// The cache folder these settings name, or the default one
    /// (`<temp dir>/shardforge-cache-<uid>`; finding the uid may fail).
    pub fn effective_cache_dir(&self) -> Result<PathBuf> {
        match &self.cache_dir {
            Some(dir) => Ok(dir.clone()),
            None => crate::shard::cache_dir::default_cache_dir(),
        }
    }

    /// The read limits these settings name.
    pub fn read_limits(&self) -> crate::ratelimit::ReadLimits {
        crate::ratelimit::ReadLimits {
            keys_per_second: self.max_keys_per_second,
            bytes_per_second: self.max_bytes_per_second,
            max_wait: self.rate_limit_max_wait,
        }
    }

    /// Checks the settings make sense together.
    pub fn validate(&self) -> Result<()> {
        if self.max_concurrency == 0 {
            return Err(Error::config("max_concurrency", "must be at least 1"));
        }
        if !(4096..=16 * 1024 * 1024).contains(&self.range_block_bytes) || !self.range_block_bytes.is_power_of_two() {
            return Err(Error::config(
                "range_block_bytes",
                format!(
                    "{} is not a power of two between 4096 and 16777216",
                    self.range_block_bytes
                ),
            ));
        }
        if self.page_cache_bytes < self.range_block_bytes {
            return Err(Error::config(
                "page_cache_bytes",
                format!(
                    "{} cannot hold one block of range_block_bytes {}",
                    self.page_cache_bytes, self.range_block_bytes
                ),
            ));
        }
        if let Some(i) = self.refresh_interval
            && i < Duration::from_millis(10)
        {
            return Err(Error::config(
                "refresh_interval",
                format!("{i:?} is below the 10 ms minimum"),
            ));
        }
        if self.keep_versions > MAX_KEEP_VERSIONS {
            return Err(Error::config(
                "keep_versions",
                format!("{} is above the maximum of {MAX_KEEP_VERSIONS}", self.keep_versions),
            ));
        }
        if self.refresh_max_backoff.is_zero() {
            return Err(Error::config("refresh_max_backoff", "must be above zero"));
        }
        self.read_limits()
            .validate("max_keys_per_second", "max_bytes_per_second")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let s = ReaderSettings::default();
        s.validate().expect("defaults");
        let json = serde_json::to_string(&s).expect("serialise");
        assert!(json.contains("\"refresh_max_backoff\":\"5m\""), "{json}");
        let back: ReaderSettings = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, s);
        let partial: ReaderSettings = serde_json::from_str(
            r#"{"sqlite_mode": "range", "refresh_interval": "30s", "pin": {"offset": 1}, "cache_max_bytes": 4096}"#,
        )
        .expect("partial");
        assert_eq!(partial.cache_max_bytes, Some(4096));
        assert_eq!(partial.sqlite_mode, SqliteMode::Range);
        assert_eq!(partial.refresh_interval, Some(Duration::from_secs(30)));
        assert_eq!(partial.pin, Pin::Offset(1));
        let memory: ReaderSettings =
            serde_json::from_str(r#"{"sqlite_mode": "memory", "memory_limit_bytes": 1000}"#).expect("memory");
        assert_eq!(
            (memory.sqlite_mode, memory.memory_limit_bytes),
            (SqliteMode::Memory, 1000)
        );
        assert!(serde_json::from_str::<ReaderSettings>(r#"{"bogus": 1}"#).is_err());
    }

    #[test]
    fn bad_settings_name_the_field() {
        let bad = [
            ReaderSettings {
                max_concurrency: 0,
                ..Default::default()
            },
            ReaderSettings {
                range_block_bytes: 5000,
                ..Default::default()
            },
            ReaderSettings {
                page_cache_bytes: 1,
                ..Default::default()
            },
            ReaderSettings {
                refresh_interval: Some(Duration::from_millis(1)),
                ..Default::default()
            },
            ReaderSettings {
                keep_versions: 17,
                ..Default::default()
            },
            ReaderSettings {
                max_keys_per_second: Some(0.0),
                ..Default::default()
            },
            ReaderSettings {
                max_bytes_per_second: Some(-1.0),
                ..Default::default()
            },
        ];
        for (s, field) in bad.iter().zip([
            "max_concurrency",
            "range_block_bytes",
            "page_cache_bytes",
            "refresh_interval",
            "keep_versions",
            "max_keys_per_second",
            "max_bytes_per_second",
        ]) {
            let e = s.validate().expect_err(field).to_string();
            assert!(e.contains(field), "{e}");
        }
        assert_eq!("range".parse::<SqliteMode>().expect("mode"), SqliteMode::Range);
        for mode in [
            SqliteMode::Download,
            SqliteMode::Range,
            SqliteMode::Auto,
            SqliteMode::Memory,
        ] {
            assert_eq!(mode.as_str().parse::<SqliteMode>().expect("mode"), mode);
        }
        assert!("fast".parse::<SqliteMode>().is_err());
    }
}
