//! Checking a job before anything is read or written: every key alone
//! and the keys against each other. Everything found here is a
//! configuration error naming the key (exit 2, nothing written).

use sf_manifest::RunId;

use super::schema::{
    Backend, CelMode, InputConfig, InputFormat, JobConfig, Strategy, VectorConfig, VectorShardingConfig,
};
use crate::error::{Error, Result};

fn check_input(i: &InputConfig) -> Result<()> {
    match i.format {
        InputFormat::Sql => {
            if i.sql.as_deref().is_none_or(|s| s.trim().is_empty()) {
                return Err(Error::config(
                    "input.sql",
                    "format = \"sql\" needs a query in input.sql",
                ));
            }
            if i.tables.is_empty() {
                return Err(Error::config(
                    "input.tables",
                    "format = \"sql\" needs at least one [input.tables.NAME] for the query to read",
                ));
            }
            if i.path.is_some() {
                return Err(Error::config(
                    "input.path",
                    "format = \"sql\" reads [input.tables.*]; give their paths there",
                ));
            }
            for (name, t) in &i.tables {
                if t.format == InputFormat::Sql {
                    return Err(Error::config(
                        format!("input.tables.{name}.format"),
                        "must be parquet, csv or json",
                    ));
                }
                if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(Error::config(
                        format!("input.tables.{name}"),
                        "table names are letters, digits and underscores",
                    ));
                }
            }
        }
        _ => {
            if i.path.as_deref().is_none_or(|s| s.trim().is_empty()) {
                return Err(Error::config("input.path", "needs a file, folder or glob to read"));
            }
            if i.sql.is_some() || !i.tables.is_empty() {
                return Err(Error::config(
                    "input.sql",
                    "input.sql and input.tables need format = \"sql\"",
                ));
            }
        }
    }
    for (key, csv) in std::iter::once(("input.csv".to_string(), &i.csv))
        .chain(i.tables.iter().map(|(n, t)| (format!("input.tables.{n}.csv"), &t.csv)))
    {
        if !csv.delimiter.is_ascii() {
            return Err(Error::config(format!("{key}.delimiter"), "must be one ASCII character"));
        }
    }
    Ok(())
}

impl JobConfig {
    /// Checks everything that does not need the input's schema: the input
    /// section, the output prefix and [the settings](Self::validate_settings).
    pub fn validate(&self) -> Result<()> {
        self.validate_input()?;
        self.validate_prefix()?;
        self.validate_settings()
    }

    /// The `[input]` section: present, and saying one consistent thing.
    pub fn validate_input(&self) -> Result<()> {
        let i = self
            .input
            .as_ref()
            .ok_or_else(|| Error::config("input", "the job has no [input] section saying what to read"))?;
        check_input(i)
    }

    /// The output prefix: present (see [`validate_settings`](Self::validate_settings)
    /// for its form).
    pub fn validate_prefix(&self) -> Result<()> {
        if self.output.prefix.trim().is_empty() {
            return Err(Error::config("output.prefix", "needs the snapshot's prefix URL"));
        }
        Ok(())
    }

    /// [`validate`](Self::validate) without the input and without
    /// requiring a prefix (for callers that hand in a DataFrame, or choose
    /// the prefix themselves); a prefix that is given must resolve.
    pub fn validate_settings(&self) -> Result<()> {
        self.check_columns()?;
        self.check_gates_and_retention()?;
        self.check_routing()?;
        self.check_output()?;
        self.check_write()?;
        self.check_vector()
    }

    /// `[vector]`: a column, a dimension, a metric the format can store,
    /// and SQLite shards written in key order.
    fn check_vector(&self) -> Result<()> {
        let Some(v) = &self.vector else {
            return Ok(());
        };
        if v.column.trim().is_empty() {
            return Err(Error::config("vector.column", "must name the vector column"));
        }
        let max = sf_manifest::format::vector::MAX_DIM;
        if !(1..=max).contains(&v.dim) {
            return Err(Error::config(
                "vector.dim",
                format!("{} is not a dimension from 1 to {max}", v.dim),
            ));
        }
        sf_manifest::format::vector::Metric::parse(&v.metric).map_err(|e| match e {
            sf_manifest::Error::Invalid { reason, .. } => Error::config("vector.metric", reason),
            other => Error::config("vector.metric", other.to_string()),
        })?;
        if v.id_column.as_deref().is_some_and(|c| c.trim().is_empty()) {
            return Err(Error::config(
                "vector.id_column",
                "must not be empty (omit it for the key)",
            ));
        }
        if let Some(dup) = v
            .payload_columns
            .iter()
            .enumerate()
            .find(|(i, c)| v.payload_columns[..*i].contains(c))
        {
            return Err(Error::config(
                "vector.payload_columns",
                format!("{:?} is named twice", dup.1),
            ));
        }
        if self.output.backend == Backend::Slatedb {
            return Err(Error::config(
                "vector",
                "vector snapshots are SQLite shards holding a sqlite-vec index; the slatedb backend cannot \
                 store one (set output.backend = \"sqlite\")",
            ));
        }
        if !self.write.sort_within_shard {
            return Err(Error::config(
                "write.sort_within_shard",
                "a job with [vector] writes each shard's rows in key order (each key and its vector once); \
                 sort_within_shard = false is for key-value jobs only",
            ));
        }
        match v.sharding {
            None => {
                let vector_only_keys = [
                    ("vector.num_probes", v.num_probes.is_some()),
                    ("vector.centroids", v.centroids.is_some()),
                    ("vector.num_hash_bits", v.num_hash_bits.is_some()),
                    ("vector.hyperplanes", v.hyperplanes.is_some()),
                    ("vector.shard_id_column", v.shard_id_column.is_some()),
                ];
                if let Some((key, _)) = vector_only_keys.iter().find(|(_, set)| *set) {
                    return Err(Error::config(
                        *key,
                        "is for a vector-only job (vector.sharding); a unified job's vectors go to their keys' shards",
                    ));
                }
                Ok(())
            }
            Some(sharding) => self.check_vector_only(v, sharding),
        }
    }

    /// `[vector]` with `sharding`: where vectors go, and nothing of the
    /// key-value half.
    fn check_vector_only(&self, v: &VectorConfig, sharding: VectorShardingConfig) -> Result<()> {
        if v.id_column.is_none() && self.key_col.trim().is_empty() {
            return Err(Error::config(
                "vector.id_column",
                "a vector-only job needs the id column (vector.id_column, or key_col)",
            ));
        }
        if self.value.binary_col.is_some() || self.value.json_cols.is_some() {
            return Err(Error::config(
                "value",
                "a vector-only job stores no values; remove [value] (or drop vector.sharding for a unified job)",
            ));
        }
        let r = &self.routing;
        let cel = sharding == VectorShardingConfig::Cel;
        if cel && r.strategy != Strategy::Cel {
            return Err(Error::config(
                "routing.strategy",
                "vector.sharding = \"cel\" places each vector by the job's CEL routing: set [routing] \
                 strategy = \"cel\" with expr and columns (and routing_values, or num_dbs for a direct shard id)",
            ));
        }
        if (!cel && r.strategy != Strategy::Hash) || r.max_keys_per_shard.is_some() {
            return Err(Error::config(
                "routing",
                "a vector-only job places vectors by vector.sharding; [routing] takes only num_dbs \
                 (and, for vector.sharding = \"cel\", the CEL routing)",
            ));
        }
        if cel && v.num_probes.unwrap_or(1) != 1 {
            return Err(Error::config(
                "vector.num_probes",
                "must be 1 for cel sharding: a query's routing context names its one shard",
            ));
        }
        let given_centroids = sharding == VectorShardingConfig::Cluster && v.centroids.is_some();
        if r.num_dbs.is_none() && !given_centroids && !cel {
            return Err(Error::config(
                "routing.num_dbs",
                "a vector-only job needs the number of shards (for cluster, unless vector.centroids gives them)",
            ));
        }
        if v.num_probes == Some(0) {
            return Err(Error::config("vector.num_probes", "must be at least 1"));
        }
        if let (Some(p), Some(n)) = (v.num_probes, r.num_dbs)
            && p > n
        {
            return Err(Error::config(
                "vector.num_probes",
                format!("is {p} but the snapshot has {n} shards"),
            ));
        }
        let only = |key: &str, set: bool, strategy: &str| {
            if set {
                Err(Error::config(key, format!("is for vector.sharding = \"{strategy}\"")))
            } else {
                Ok(())
            }
        };
        let not = |s: VectorShardingConfig| sharding != s;
        only(
            "vector.centroids",
            v.centroids.is_some() && not(VectorShardingConfig::Cluster),
            "cluster",
        )?;
        only(
            "vector.num_hash_bits",
            v.num_hash_bits.is_some() && not(VectorShardingConfig::Lsh),
            "lsh",
        )?;
        only(
            "vector.hyperplanes",
            v.hyperplanes.is_some() && not(VectorShardingConfig::Lsh),
            "lsh",
        )?;
        only(
            "vector.shard_id_column",
            v.shard_id_column.is_some() && not(VectorShardingConfig::Explicit),
            "explicit",
        )?;
        match sharding {
            VectorShardingConfig::Cluster if v.train_sample == 0 => {
                Err(Error::config("vector.train_sample", "must be at least 1"))
            }
            VectorShardingConfig::Lsh if !(1..=63).contains(&v.num_hash_bits.unwrap_or(8)) => Err(Error::config(
                "vector.num_hash_bits",
                format!("{} is not from 1 to 63", v.num_hash_bits.unwrap_or(8)),
            )),
            VectorShardingConfig::Explicit if v.shard_id_column.is_none() => Err(Error::config(
                "vector.shard_id_column",
                "vector.sharding = \"explicit\" needs the column holding each vector's shard id",
            )),
            VectorShardingConfig::Explicit if v.num_probes.unwrap_or(1) != 1 => Err(Error::config(
                "vector.num_probes",
                "must be 1 for explicit sharding: a query names its shards",
            )),
            _ => Ok(()),
        }
    }

    /// The key, shard id and value columns.
    fn check_columns(&self) -> Result<()> {
        let vector_only = self.vector.as_ref().is_some_and(VectorConfig::vector_only);
        if self.key_col.trim().is_empty() && !vector_only {
            return Err(Error::config("key_col", "must name the key column"));
        }
        if self.shard_id_col.trim().is_empty() {
            return Err(Error::config("shard_id_col", "must not be empty"));
        }
        if self.shard_id_col == self.key_col {
            return Err(Error::config("shard_id_col", "must differ from key_col"));
        }
        if self.value.binary_col.is_some() && self.value.json_cols.is_some() {
            return Err(Error::config("value", "set binary_col or json_cols, not both"));
        }
        if self.value.json_cols.as_ref().is_some_and(Vec::is_empty) {
            return Err(Error::config(
                "value.json_cols",
                "must name at least one column (omit it for all columns)",
            ));
        }
        Ok(())
    }

    /// `[validate]` and `[retention]`.
    fn check_gates_and_retention(&self) -> Result<()> {
        self.validate.validate()?;
        if let Some(r) = &self.retention {
            if r.keep_last == Some(0) {
                return Err(Error::config(
                    "retention.keep_last",
                    "must be at least 1 (the snapshot just published is always kept)",
                ));
            }
            if r.keep_last.is_none() && r.older_than.is_none() {
                return Err(Error::config("retention", "give keep_last, older_than or both"));
            }
        }
        Ok(())
    }

    /// `[routing]`: one consistent way to a shard, for hash or CEL.
    fn check_routing(&self) -> Result<()> {
        let r = &self.routing;
        if r.num_dbs == Some(0) {
            return Err(Error::config("routing.num_dbs", "must be at least 1"));
        }
        if let Some(n) = r.num_dbs
            && n > sf_manifest::format::manifest::MAX_NUM_DBS
        {
            return Err(Error::config(
                "routing.num_dbs",
                format!(
                    "{n} is above the maximum of {} shards a reader accepts",
                    sf_manifest::format::manifest::MAX_NUM_DBS
                ),
            ));
        }
        match r.strategy {
            Strategy::Hash => {
                // A vector-only job's shard count is checked with its
                // sharding (cluster centroids may give it).
                let vector_only = self.vector.as_ref().is_some_and(VectorConfig::vector_only);
                if r.num_dbs.is_some() == r.max_keys_per_shard.is_some() && !vector_only {
                    return Err(Error::config(
                        "routing",
                        "hash routing needs exactly one of num_dbs or max_keys_per_shard",
                    ));
                }
                if r.max_keys_per_shard == Some(0) {
                    return Err(Error::config("routing.max_keys_per_shard", "must be at least 1"));
                }
                if r.expr.is_some() || !r.columns.is_empty() || r.routing_values.is_some() || r.mode.is_some() {
                    return Err(Error::config(
                        "routing",
                        "expr, columns, routing_values and mode are for strategy = \"cel\"",
                    ));
                }
            }
            Strategy::Cel => {
                if r.expr.as_deref().is_none_or(|e| e.trim().is_empty()) {
                    return Err(Error::config("routing.expr", "strategy = \"cel\" needs an expression"));
                }
                if r.columns.is_empty() {
                    return Err(Error::config(
                        "routing.columns",
                        "strategy = \"cel\" needs the columns the expression reads, with types (e.g. columns = { region = \"string\" })",
                    ));
                }
                if r.max_keys_per_shard.is_some() {
                    return Err(Error::config("routing.max_keys_per_shard", "is for hash routing"));
                }
                // Readers (ours and the reference's) bind only the name
                // `key` to the key they are asked for; a snapshot whose
                // expression reads the key column by its own name could
                // only be read with the key passed again as context.
                // (A vector-only search gives every column by its name.)
                let vector_only = self.vector.as_ref().is_some_and(VectorConfig::vector_only);
                if !vector_only && self.key_col != sf_router::KEY_VARIABLE && r.columns.contains_key(&self.key_col) {
                    return Err(Error::config(
                        format!("routing.columns.{}", self.key_col),
                        format!(
                            "{:?} is the key column: name it \"key\" in columns and in the expression \
                             (columns = {{ key = \"{}\" }}), so readers can route from the key alone",
                            self.key_col, r.columns[&self.key_col]
                        ),
                    ));
                }
                if let Some(values) = &r.routing_values {
                    sf_manifest::format::sharding::validate_routing_values(values)
                        .map_err(|e| Error::config("routing.routing_values", e.to_string()))?;
                    if r.mode == Some(CelMode::Direct) {
                        return Err(Error::config(
                            "routing.routing_values",
                            "mode = \"direct\" takes no routing_values",
                        ));
                    }
                    if let Some(n) = r.num_dbs
                        && n as usize != values.len()
                    {
                        return Err(Error::config(
                            "routing.num_dbs",
                            format!(
                                "is {n} but routing_values has {} values (one shard per value)",
                                values.len()
                            ),
                        ));
                    }
                }
            }
        }
        if r.verify_routing && r.verify_sample_size == 0 {
            return Err(Error::config(
                "routing.verify_sample_size",
                "must be at least 1 when verify_routing is on",
            ));
        }
        Ok(())
    }

    /// `[output]`: the run id, the prefix when given, the backend.
    fn check_output(&self) -> Result<()> {
        if let Some(id) = &self.output.run_id {
            RunId::new(id.clone()).map_err(|e| Error::config("output.run_id", e.to_string()))?;
        }
        if !self.output.prefix.trim().is_empty() {
            sf_manifest::resolve(&self.output.prefix, &self.storage_options())
                .map_err(|e| Error::config("output.prefix", e.to_string()))?;
        }
        match self.output.backend {
            Backend::Sqlite => self.output.sqlite.validate()?,
            Backend::Slatedb => {
                self.output.slatedb.validate()?;
                if !self.write.sort_within_shard {
                    return Err(Error::config(
                        "write.sort_within_shard",
                        "the slatedb backend writes keys in order; sort_within_shard = false is for sqlite only",
                    ));
                }
            }
        }
        Ok(())
    }

    /// `[write]`: batches, rates, memory, uploads, the run's lease.
    fn check_write(&self) -> Result<()> {
        if self.write.run_lease_secs < 3 {
            return Err(Error::config(
                "write.run_lease_secs",
                "must be at least 3 (the lease is renewed every third of it)",
            ));
        }
        let w = &self.write;
        if w.batch_size == 0 {
            return Err(Error::config("write.batch_size", "must be at least 1"));
        }
        for (key, v) in [
            ("write.max_writes_per_second", w.max_writes_per_second),
            ("write.max_write_bytes_per_second", w.max_write_bytes_per_second),
        ] {
            if let Some(v) = v
                && !(v > 0.0 && v.is_finite())
            {
                return Err(Error::config(
                    key,
                    format!("{v} is not a positive rate; omit it for no limit"),
                ));
            }
        }
        if w.memory_limit_mib < 16 {
            return Err(Error::config("write.memory_limit_mib", "must be at least 16"));
        }
        if w.upload_concurrency == 0 {
            return Err(Error::config("write.upload_concurrency", "must be at least 1"));
        }
        Ok(())
    }
}
