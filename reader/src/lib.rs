//! # sf-reader: online reads by manifest
//!
//! Opens `_CURRENT`, routes keys with `sf-router`, and serves `get` and
//! `multi_get` from SQLite and SlateDB shards.
