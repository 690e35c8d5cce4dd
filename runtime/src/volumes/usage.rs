//! How much space a pod's emptyDir volumes use, against their limits — what the
//! kubelet's eviction manager checks to evict a pod whose emptyDir outgrew its
//! `sizeLimit`, or whose local storage outgrew its containers' `ephemeral-storage`
//! limits.
//!
//! Usage is counted as `du` does: allocated blocks of every file and directory below
//! the volume, symlinks not followed, so a sparse file counts what it holds and a
//! memory-backed volume what its tmpfs pages hold.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{PodVolumes, VolumeKind};

/// The most space one emptyDir may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeLimit {
    /// The volume's name.
    pub volume: String,
    pub bytes: u64,
    /// The limit as the pod gave it (`1Mi`), for messages.
    pub shown: String,
}

/// The bytes allocated below `path`. Entries that vanish while being counted (a guest
/// deleting files meanwhile) count as nothing.
pub fn usage(path: &Path) -> io::Result<u64> {
    let meta = std::fs::symlink_metadata(path)?;
    let mut total = meta.blocks() * 512;
    if !meta.is_dir() {
        return Ok(total);
    }
    let mut pending = vec![path.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            total += meta.blocks() * 512;
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Ok(total)
}

impl PodVolumes {
    /// What the pod's emptyDirs on disk use (memory-backed ones count as memory, not
    /// local storage, as on the kubelet).
    pub fn disk_usage(&self) -> u64 {
        self.volumes
            .values()
            .filter(|v| v.kind == VolumeKind::EmptyDir && v.path.starts_with(&self.dirs.disk))
            .filter_map(|v| usage(&v.path).ok())
            .sum()
    }

    /// The first of `limits` whose emptyDir uses more than it may, with its usage.
    /// Volumes that are not emptyDirs of this pod, or cannot be read, are skipped.
    pub fn over_limit<'a>(&self, limits: &'a [SizeLimit]) -> Option<(&'a SizeLimit, u64)> {
        limits.iter().find_map(|limit| {
            let (kind, path) = self.volume(&limit.volume)?;
            if kind != VolumeKind::EmptyDir {
                return None;
            }
            let used = usage(path).ok()?;
            (used > limit.bytes).then_some((limit, used))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_allocated_bytes_below_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let empty = usage(dir.path()).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a"), vec![1u8; 300 * 1024]).unwrap();
        std::fs::write(dir.path().join("b"), vec![1u8; 100 * 1024]).unwrap();
        // A link to a big file elsewhere counts as the link, not the file.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("big"), vec![1u8; 1 << 20]).unwrap();
        std::os::unix::fs::symlink(outside.path().join("big"), dir.path().join("link")).unwrap();
        let used = usage(dir.path()).unwrap() - empty;
        assert!(
            (400 * 1024..600 * 1024).contains(&used),
            "{used} bytes for 400 KiB of files"
        );
        assert!(usage(&dir.path().join("missing")).is_err());
    }
}
