//! The default cache folder, private to the user who runs the reader.
//!
//! Without `cache_dir` the reader caches under
//! `<temp dir>/shardforge-cache-<uid>`, created with mode 0700. A folder
//! of that name that another user owns, that is not a folder (a symbolic
//! link, say), or that group or others may write to is refused: another
//! user could otherwise read the cached shards, or plant files the reader
//! would serve.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `<temp dir>/shardforge-cache-<uid>` (`shardforge-cache` where there are
/// no uids).
pub(crate) fn default_cache_dir() -> Result<PathBuf> {
    let base = std::env::temp_dir();
    #[cfg(unix)]
    {
        let uid = current_uid(&base)?;
        Ok(base.join(format!("shardforge-cache-{uid}")))
    }
    #[cfg(not(unix))]
    {
        Ok(base.join("shardforge-cache"))
    }
}

/// Creates the default folder `dir` (mode 0700), or checks that the one
/// there is this user's and private.
pub(crate) fn prepare_default(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let base = dir.parent().unwrap_or(dir);
        ensure_private(dir, current_uid(base)?)
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating the shard cache", dir, e))
    }
}

/// The uid this process runs as: from `/proc/self/status` where there is
/// one, else the owner of a file created for the purpose in `scratch`.
#[cfg(unix)]
fn current_uid(scratch: &Path) -> Result<u32> {
    use std::os::unix::fs::MetadataExt;
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(uid) = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|effective| effective.parse().ok())
    {
        return Ok(uid);
    }
    let probe = scratch.join(format!(".shardforge-uid-{}", sf_manifest::format::ids::unique_hex()));
    let file = std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| Error::io("finding this user's id (creating a file)", &probe, e))?;
    let uid = file.metadata().map(|m| m.uid());
    drop(file);
    let _ = std::fs::remove_file(&probe);
    uid.map_err(|e| Error::io("finding this user's id (reading a file's owner)", &probe, e))
}

/// Creates `dir` with mode 0700 unless it exists, then refuses it unless
/// it is a folder (not a link) owned by `uid` that only its owner may
/// write to.
#[cfg(unix)]
fn ensure_private(dir: &Path, uid: u32) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io("creating the shard cache", dir, e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| Error::io("checking the shard cache", dir, e))?;
    let refuse = |why: String| {
        Error::config(
            "cache_dir",
            format!(
                "the default shard cache folder {} {why}; remove it, or name a folder of your own \
                 with --cache-dir (cache_dir)",
                dir.display()
            ),
        )
    };
    if !meta.file_type().is_dir() {
        return Err(refuse("is not a folder".into()));
    }
    if meta.uid() != uid {
        return Err(refuse(format!(
            "belongs to another user (uid {}; this process runs as uid {uid})",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(refuse(format!(
            "may be written by group or others (mode {:o})",
            meta.mode() & 0o777
        )));
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn the_default_folder_is_created_private_and_named_by_the_uid() {
        let root = tempfile::tempdir().expect("root");
        let uid = current_uid(root.path()).expect("uid");
        let owner = std::fs::metadata(root.path()).expect("meta").uid();
        assert_eq!(uid, owner, "the uid is this user's");
        let dir = root.path().join("cache");
        ensure_private(&dir, uid).expect("created");
        assert_eq!(std::fs::metadata(&dir).expect("meta").mode() & 0o777, 0o700);
        ensure_private(&dir, uid).expect("our own folder, again");
        assert!(
            default_cache_dir()
                .expect("default")
                .ends_with(format!("shardforge-cache-{uid}"))
        );
    }

    #[test]
    fn a_folder_of_another_user_or_open_to_others_is_refused_naming_it() {
        let root = tempfile::tempdir().expect("root");
        let uid = current_uid(root.path()).expect("uid");
        let dir = root.path().join("cache");
        ensure_private(&dir, uid).expect("created");
        let e = ensure_private(&dir, uid + 1).expect_err("another user's").to_string();
        assert!(
            e.contains(&dir.display().to_string()) && e.contains("another user"),
            "{e}"
        );
        assert!(e.contains("--cache-dir"), "{e}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let e = ensure_private(&dir, uid).expect_err("open to others").to_string();
        assert!(e.contains("written by group or others (mode 777)"), "{e}");
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).expect("link");
        let e = ensure_private(&link, uid).expect_err("a link").to_string();
        assert!(e.contains("is not a folder"), "{e}");
    }
}
