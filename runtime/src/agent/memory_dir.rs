//! The agent's directory for memory-backed volumes.
//!
//! The kubelet backs Secret, projected, downwardAPI and `emptyDir: {medium: Memory}`
//! volumes with tmpfs, so Secrets and tokens never reach the disk. The agent cannot
//! mount a tmpfs without privileges, but `/dev/shm` is one almost everywhere: unless
//! told otherwise ([`MemoryDir::At`]), the agent keeps those volumes in a directory of
//! its own there (`/dev/shm/wasmkube-XXXXXX`), found again after a restart through
//! the symlink `DATA_DIR/memory`. Without a writable tmpfs they stay on disk beside
//! the pod's other volumes.
//!
//! A tmpfs directory outlives a data directory deleted without stopping its pods
//! (tests do that all the time), so each one records its owner (`owner`: the data
//! directory's path) and any agent that starts removes those whose owner is gone.
//! The pods' directories are in `pods/` below it.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Where memory-backed volumes go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum MemoryDir {
    /// A directory of the agent's own under `/dev/shm` if that is a writable tmpfs,
    /// else the disk.
    #[default]
    Auto,
    /// This directory (created if missing), whatever filesystem it is on.
    At(PathBuf),
    /// On disk, beside the pod's other volumes.
    Disk,
}

impl std::str::FromStr for MemoryDir {
    type Err = std::convert::Infallible;

    /// `auto`, `disk`, or a directory.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "auto" => MemoryDir::Auto,
            "disk" => MemoryDir::Disk,
            dir => MemoryDir::At(PathBuf::from(dir)),
        })
    }
}

/// The shared tmpfs almost every Linux system has.
const SHM: &str = "/dev/shm";
/// Name prefix of the agents' directories in [`SHM`].
const PREFIX: &str = "wasmkube-";
/// The file naming a tmpfs directory's data directory.
const OWNER_FILE: &str = "owner";
/// The symlink in the data directory that leads to its tmpfs directory.
const LINK: &str = "memory";

impl MemoryDir {
    /// Resolves the choice for the agent with `data_dir`: the root under which each
    /// pod's memory-backed volumes get a directory named by its UID, or None for "on
    /// disk".
    pub fn resolve(&self, data_dir: &Path) -> io::Result<Option<PathBuf>> {
        match self {
            MemoryDir::Disk => Ok(None),
            MemoryDir::At(dir) => {
                let pods = dir.join("pods");
                std::fs::create_dir_all(&pods)?;
                Ok(Some(pods))
            }
            MemoryDir::Auto => {
                if !is_tmpfs(Path::new(SHM)) {
                    return Ok(None);
                }
                remove_abandoned(Path::new(SHM));
                match own_tmpfs_dir(Path::new(SHM), data_dir) {
                    Ok(dir) => Ok(Some(dir.join("pods"))),
                    // A read-only or full /dev/shm: the disk still works.
                    Err(e) => {
                        tracing::warn!(error = %e, "no directory in {SHM}; memory-backed volumes stay on disk");
                        Ok(None)
                    }
                }
            }
        }
    }
}

/// Whether `path` is on a tmpfs.
fn is_tmpfs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c_path` is NUL-terminated; `stat` is read only after statfs filled it.
    // (The field's integer type differs between libcs; the magic fits in all of them.)
    #[allow(clippy::unnecessary_cast)]
    unsafe {
        libc::statfs(c_path.as_ptr(), stat.as_mut_ptr()) == 0
            && stat.assume_init().f_type as i64 == libc::TMPFS_MAGIC as i64
    }
}

/// The data directory's tmpfs directory under `shm`: the one its link leads to if
/// that is still there and still its own, else a new one.
fn own_tmpfs_dir(shm: &Path, data_dir: &Path) -> io::Result<PathBuf> {
    let owner = std::path::absolute(data_dir)?;
    let link = data_dir.join(LINK);
    if let Ok(target) = std::fs::read_link(&link) {
        let owned =
            std::fs::read(target.join(OWNER_FILE)).is_ok_and(|o| o == owner.as_os_str().as_bytes());
        if owned && target.join("pods").is_dir() {
            return Ok(target);
        }
    }
    let dir = tempfile::Builder::new()
        .prefix(PREFIX)
        .tempdir_in(shm)?
        .keep();
    std::fs::create_dir(dir.join("pods"))?;
    std::fs::write(dir.join(OWNER_FILE), owner.as_os_str().as_bytes())?;
    match std::fs::remove_file(&link) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::os::unix::fs::symlink(&dir, &link)?;
    tracing::info!(dir = %dir.display(), "memory-backed volumes go to a tmpfs directory");
    Ok(dir)
}

/// Removes the agents' directories under `shm` whose data directory no longer exists.
/// One without an owner yet may be an agent's that is being made: it is left alone.
fn remove_abandoned(shm: &Path) {
    let Ok(entries) = std::fs::read_dir(shm) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.as_bytes().starts_with(PREFIX.as_bytes()) {
            continue;
        }
        let Ok(owner) = std::fs::read(entry.path().join(OWNER_FILE)) else {
            continue;
        };
        let owner = Path::new(OsStr::from_bytes(&owner));
        if owner.as_os_str().is_empty() || owner.exists() {
            continue;
        }
        tracing::info!(dir = %entry.path().display(), owner = %owner.display(), "removing the tmpfs directory of a data directory that is gone");
        if let Err(e) = crate::volumes::remove_pod_dir(&entry.path()) {
            tracing::warn!(dir = %entry.path().display(), error = %e, "removing an abandoned tmpfs directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_finds_its_directory_again_and_a_new_one_when_it_is_gone() {
        let shm = tempfile::tempdir().expect("shm");
        let data = tempfile::tempdir().expect("data");
        let first = own_tmpfs_dir(shm.path(), data.path()).expect("first");
        assert!(first.starts_with(shm.path()) && first.join("pods").is_dir());
        assert_eq!(
            own_tmpfs_dir(shm.path(), data.path()).expect("again"),
            first,
            "a restarted agent keeps its pods' volumes"
        );
        std::fs::remove_dir_all(&first).expect("remove");
        let second = own_tmpfs_dir(shm.path(), data.path()).expect("second");
        assert_ne!(second, first);
        assert_eq!(
            std::fs::read_link(data.path().join(LINK)).expect("link"),
            second
        );
    }

    #[test]
    fn directories_of_deleted_data_dirs_are_removed_and_others_kept() {
        let shm = tempfile::tempdir().expect("shm");
        let live = tempfile::tempdir().expect("live");
        let gone = tempfile::tempdir().expect("gone");
        let kept = own_tmpfs_dir(shm.path(), live.path()).expect("live dir");
        let abandoned = own_tmpfs_dir(shm.path(), gone.path()).expect("gone dir");
        std::fs::create_dir_all(abandoned.join("pods/uid/secret")).expect("pod");
        let being_made = shm.path().join(format!("{PREFIX}new"));
        std::fs::create_dir(&being_made).expect("new");
        let unrelated = shm.path().join("other");
        std::fs::create_dir(&unrelated).expect("other");
        drop(gone);
        remove_abandoned(shm.path());
        assert!(!abandoned.exists());
        assert!(kept.exists() && being_made.exists() && unrelated.exists());
    }

    #[test]
    fn an_explicit_directory_is_used_and_disk_means_none() {
        let data = tempfile::tempdir().expect("data");
        let at = data.path().join("mem");
        assert_eq!(
            MemoryDir::At(at.clone()).resolve(data.path()).expect("at"),
            Some(at.join("pods"))
        );
        assert_eq!(MemoryDir::Disk.resolve(data.path()).expect("disk"), None);
    }

    #[test]
    fn dev_shm_is_recognised_as_what_the_mount_table_says() {
        if !Path::new(SHM).is_dir() {
            return;
        }
        assert_eq!(is_tmpfs(Path::new(SHM)), is_tmpfs_by_mounts(SHM));
    }

    /// What /proc/self/mounts says about `path`'s filesystem type.
    fn is_tmpfs_by_mounts(path: &str) -> bool {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        mounts
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() > 2 && f[1] == path).then(|| f[2] == "tmpfs")
            })
            .next_back()
            .unwrap_or(false)
    }
}
