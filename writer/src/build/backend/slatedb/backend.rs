//! The SlateDB [`ShardBackend`]: starts phase 1 into a spool, verifies a
//! published attempt.

use std::fs::File;
use std::io::BufWriter;

use async_trait::async_trait;
use sf_manifest::format::checksum::KvHasher;
use sf_manifest::{DbId, Location};

use super::ops::Ops;
use super::read::verify_attempt;
use super::settings::SlateDbSettings;
use super::spool::{SPOOL_BUFFER, SlateDbBuilder};
use crate::build::backend::contract::{BuildContext, ShardBackend, ShardBuilder, ShardContent};
use crate::error::{Error, Result};

/// The SlateDB [`ShardBackend`].
#[derive(Debug, Clone)]
pub struct SlateDbBackend {
    settings: SlateDbSettings,
}

impl SlateDbBackend {
    /// A backend with `settings`.
    pub fn new(settings: SlateDbSettings) -> Self {
        SlateDbBackend { settings }
    }
}

#[async_trait]
impl ShardBackend for SlateDbBackend {
    fn name(&self) -> &'static str {
        "slatedb"
    }

    fn builder(&self, ctx: BuildContext) -> Result<Box<dyn ShardBuilder>> {
        self.settings.validate()?;
        if !ctx.sorted {
            return Err(Error::config(
                "output.slatedb",
                "the slatedb backend needs each shard's rows sorted by key (it streams them to disk in \
                 order); keep sort_within_shard = true, or use the sqlite backend",
            ));
        }
        let spool = ctx.work_dir.join("slatedb.spool");
        let file = File::create(&spool)
            .map_err(|e| Error::io(format!("creating the SlateDB spool {}", spool.display()), e))?;
        Ok(Box::new(SlateDbBuilder {
            out: BufWriter::with_capacity(SPOOL_BUFFER, file),
            spool,
            checksum: KvHasher::default(),
            min_key: None,
            last_key: Vec::new(),
            settings: self.settings.clone(),
            ctx,
        }))
    }

    async fn verify(&self, attempt: &Location, db_id: DbId, expected: &ShardContent) -> Result<()> {
        if sf_manifest::publish::failpoint::sabotaged("skip-checksum-reread") {
            return Ok(());
        }
        let ops = Ops::new(Some(db_id), None, attempt, self.settings.stall_timeout());
        verify_attempt(&ops, attempt, db_id, expected).await
    }
}
