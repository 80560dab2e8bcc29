//! Phase 1: sorted rows to a local spool file of length-prefixed records,
//! and reading them back.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use sf_manifest::DbId;
use sf_manifest::format::checksum::KvHasher;
use tokio::io::{AsyncReadExt, BufReader as AsyncBufReader};

use super::ops::Ops;
use super::settings::SlateDbSettings;
use crate::build::backend::contract::{
    AttemptTarget, BuildContext, Row, ShardBuilder, ShardContent, StagedShard, Uploaded, show_key,
};
use crate::error::{Error, Result};

/// Write buffer of the local spool (the builder's memory for rows).
pub(super) const SPOOL_BUFFER: usize = 1 << 20;

fn record_len(bytes: &[u8]) -> u32 {
    // Keys are at most u16::MAX bytes and values are checked against
    // u32::MAX before they get here; saturating keeps this total.
    u32::try_from(bytes.len()).unwrap_or(u32::MAX)
}

/// Phase 1: sorted rows, each key once, to the spool.
pub(super) struct SlateDbBuilder {
    pub(super) out: BufWriter<File>,
    pub(super) spool: PathBuf,
    pub(super) checksum: KvHasher,
    pub(super) min_key: Option<Vec<u8>>,
    /// The last key written.
    pub(super) last_key: Vec<u8>,
    pub(super) settings: SlateDbSettings,
    pub(super) ctx: BuildContext,
}

impl SlateDbBuilder {
    /// Writes a row to the spool.
    fn push(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        if self.min_key.is_some() && key <= self.last_key.as_slice() {
            return Err(Error::Internal(format!(
                "shard {}: rows arrived out of key order although sorted ({} after {})",
                self.ctx.db_id,
                show_key(key, self.ctx.key_encoding),
                show_key(&self.last_key, self.ctx.key_encoding),
            )));
        }
        check_row(self.ctx.db_id, self.ctx.key_encoding, key, value)?;
        let spool = &self.spool;
        let io = |e| Error::io(format!("writing the SlateDB spool {}", spool.display()), e);
        self.out.write_all(&record_len(key).to_le_bytes()).map_err(io)?;
        self.out.write_all(key).map_err(io)?;
        self.out.write_all(&record_len(value).to_le_bytes()).map_err(io)?;
        self.out.write_all(value).map_err(io)?;
        self.checksum.add(key, value);
        if self.min_key.is_none() {
            self.min_key = Some(key.to_vec());
        }
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        Ok(())
    }
}

/// SlateDB cannot store empty keys, keys over 64 KiB or values over 4 GiB
/// (it panics); say so before it gets that far.
pub(super) fn check_row(db_id: DbId, encoding: sf_manifest::KeyEncoding, key: &[u8], value: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::Data(format!(
            "shard {db_id}: SlateDB cannot store an empty key; use the sqlite backend for such keys"
        )));
    }
    if key.len() > usize::from(u16::MAX) {
        return Err(Error::Data(format!(
            "shard {db_id}: key {} has {} bytes; SlateDB stores keys of at most {} bytes",
            show_key(&key[..16], encoding),
            key.len(),
            u16::MAX
        )));
    }
    if u32::try_from(value.len()).is_err() {
        return Err(Error::Data(format!(
            "shard {db_id}: the value of key {} has {} bytes; SlateDB stores values below 4 GiB",
            show_key(key, encoding),
            value.len()
        )));
    }
    Ok(())
}

impl ShardBuilder for SlateDbBuilder {
    fn add(&mut self, rows: &[Row<'_>]) -> Result<()> {
        for (key, value) in rows {
            self.push(key, value)?;
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<Arc<dyn StagedShard>> {
        let spool = self.spool;
        let file = self
            .out
            .into_inner()
            .map_err(|e| Error::io(format!("writing the SlateDB spool {}", spool.display()), e.into_error()))?;
        drop(file);
        let max_key = self.min_key.is_some().then_some(self.last_key);
        Ok(Arc::new(StagedSlateDb {
            spool,
            settings: self.settings,
            content: ShardContent {
                row_count: self.checksum.rows(),
                duplicates: 0,
                min_key: self.min_key,
                max_key,
                checksum: self.checksum.finish(),
                objects_checksum: None,
                page_size: None,
            },
        }))
    }
}

/// Phase 2: a spool ready to be written into attempt folders.
#[derive(Debug)]
pub(super) struct StagedSlateDb {
    pub(super) spool: PathBuf,
    pub(super) settings: SlateDbSettings,
    pub(super) content: ShardContent,
}

#[async_trait]
impl StagedShard for StagedSlateDb {
    fn content(&self) -> &ShardContent {
        &self.content
    }

    async fn upload(&self, target: &AttemptTarget) -> Result<Uploaded> {
        let ops = Ops::new(
            Some(target.db_id),
            Some(target.attempt),
            &target.location,
            self.settings.stall_timeout(),
        );
        self.upload_with(&ops, target).await
    }
}

pub(super) async fn read_field(r: &mut AsyncBufReader<tokio::fs::File>) -> std::io::Result<Vec<u8>> {
    let len = r.read_u32_le().await? as usize;
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}
