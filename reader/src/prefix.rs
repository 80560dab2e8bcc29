//! Where a snapshot prefix is: the URL people give (`_CURRENT`'s own or
//! its folder's), resolved to a location to read it through. The reader
//! and [`Admin`](crate::Admin) take the same URLs.

use std::sync::Arc;

use object_store::ObjectStore;
use sf_manifest::{Location, StorageOptions};

use crate::error::Result;

/// Splits a `--current-url` into the prefix URL: the URL of `_CURRENT`
/// itself or of its folder are both accepted.
fn prefix_of(current_url: &str) -> &str {
    let t = current_url.trim_end_matches('/');
    t.strip_suffix(sf_manifest::format::layout::CURRENT)
        .map(|p| p.trim_end_matches('/'))
        .filter(|p| !p.is_empty() && !p.ends_with(':'))
        .unwrap_or(t)
}

/// Resolves the prefix location, with `store` replacing the resolved one.
pub(crate) fn prefix_location(
    current_url: &str,
    options: &StorageOptions,
    store: Option<Arc<dyn ObjectStore>>,
) -> Result<Location> {
    let mut location = sf_manifest::resolve(prefix_of(current_url), options)?;
    if let Some(s) = store {
        location.store = s;
    }
    Ok(location)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_urls_name_the_prefix() {
        assert_eq!(prefix_of("s3://b/p/_CURRENT"), "s3://b/p");
        assert_eq!(prefix_of("s3://b/p/"), "s3://b/p");
        assert_eq!(prefix_of("s3://b/p"), "s3://b/p");
        assert_eq!(prefix_of("/data/snap/_CURRENT"), "/data/snap");
        assert_eq!(prefix_of("file:///data/snap/_CURRENT"), "file:///data/snap");
    }
}
