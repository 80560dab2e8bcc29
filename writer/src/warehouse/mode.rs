//! Save modes of warehouse tables.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What saving a warehouse table does when the table exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SaveMode {
    /// Fail, writing nothing.
    #[default]
    Error,
    /// Replace its rows with a new run (compare-and-swap on `_CURRENT`).
    Overwrite,
    /// A new run holding the old rows and the new ones; a key in both
    /// keeps the new row (`on_duplicate = "error"` fails instead).
    Append,
    /// Do nothing.
    Ignore,
}

impl std::str::FromStr for SaveMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "error" | "errorifexists" => Ok(SaveMode::Error),
            "overwrite" => Ok(SaveMode::Overwrite),
            "append" => Ok(SaveMode::Append),
            "ignore" => Ok(SaveMode::Ignore),
            _ => Err(Error::config(
                "mode",
                format!("{s:?}; expected error, overwrite, append or ignore"),
            )),
        }
    }
}
