//! # sf-writer: the snapshot build job
//!
//! Job configuration, planning on DataFusion, shard writers (SQLite and
//! SlateDB), rate limiting, winner selection and publishing.
