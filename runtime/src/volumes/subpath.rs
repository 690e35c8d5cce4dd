//! Safe resolution of a volumeMount's `subPath` inside its volume.
//!
//! The sub-path is a user string, so it is never joined onto a host path. It is
//! validated (relative, no `..` element), then walked with a `cap_std::fs::Dir` of the
//! volume root, which refuses any step — `..` or a symlink, absolute or relative — that
//! would leave the volume. The result is an open directory handle, published as
//! `/proc/<agent pid>/fd/<n>`: opening that path reaches exactly the directory that was
//! checked, even if the volume's contents are renamed or replaced by symlinks in the
//! meantime (the same trick the kubelet plays with bind mounts of `/proc/<pid>/fd/<n>`).

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::Dir;

/// Why a sub-path cannot be mounted.
#[derive(Debug, thiserror::Error)]
pub enum SubPathError {
    /// The sub-path is absolute or contains a `..` element.
    #[error("{0}")]
    Invalid(&'static str),
    /// The sub-path names a file; WASI mounts (preopens) can only be directories.
    #[error("is not a directory (WASI preopens can only be directories)")]
    NotADirectory,
    /// The sub-path does not exist and the volume is not one where it may be created.
    #[error("does not exist in the volume")]
    NotFound,
    /// Resolving the sub-path would leave the volume (through `..` or a symlink).
    #[error("leads outside the volume")]
    Escapes,
    /// Another filesystem error.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Checks a sub-path as Kubernetes validation does: relative, no `..` element.
pub fn validate(sub_path: &str) -> Result<(), SubPathError> {
    if sub_path.starts_with('/') {
        return Err(SubPathError::Invalid("must be a relative path"));
    }
    if sub_path.split('/').any(|part| part == "..") {
        return Err(SubPathError::Invalid("must not contain '..'"));
    }
    if sub_path.contains('\0') {
        return Err(SubPathError::Invalid("must not contain NUL"));
    }
    Ok(())
}

/// A directory inside a volume, opened safely. Its [`host_path`](Self::host_path) stays
/// valid, and points at this very directory, for as long as the handle lives.
#[derive(Debug)]
pub struct SubPathDir {
    dir: Dir,
}

impl SubPathDir {
    /// The `/proc/<pid>/fd/<n>` path naming the opened directory.
    pub fn host_path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.dir.as_raw_fd()
        ))
    }
}

/// Opens `sub_path` inside the volume rooted at `root`, creating it (and its parents,
/// inside the volume) when `create` is set — the kubelet creates missing sub-paths of
/// writable volumes before the container starts.
pub fn open(root: &Path, sub_path: &str, create: bool) -> Result<SubPathDir, SubPathError> {
    validate(sub_path)?;
    let root = Dir::open_ambient_dir(root, ambient_authority())?;
    let rel = Path::new(sub_path);
    match root.metadata(rel) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(SubPathError::NotADirectory),
        Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
            root.create_dir_all(rel).map_err(classify)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(SubPathError::NotFound),
        Err(e) => return Err(classify(e)),
    }
    let dir = root.open_dir(rel).map_err(classify)?;
    Ok(SubPathDir { dir })
}

/// cap-std reports an escape attempt as `PermissionDenied`; the agent runs with enough
/// privilege over its own pod dirs that a real permission error there is not expected.
fn classify(e: io::Error) -> SubPathError {
    match e.kind() {
        io::ErrorKind::PermissionDenied => SubPathError::Escapes,
        io::ErrorKind::NotADirectory => SubPathError::NotADirectory,
        io::ErrorKind::NotFound => SubPathError::NotFound,
        _ => SubPathError::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn validation_refuses_absolute_and_dotdot() {
        assert!(matches!(validate("/etc"), Err(SubPathError::Invalid(_))));
        assert!(matches!(validate("../x"), Err(SubPathError::Invalid(_))));
        assert!(matches!(
            validate("a/../../x"),
            Err(SubPathError::Invalid(_))
        ));
        assert!(validate("a/b").is_ok());
        assert!(validate("a/..b").is_ok());
    }

    #[test]
    fn opens_and_creates_inside_the_volume() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let handle = open(tmp.path(), "a/b", true).expect("created");
        assert!(tmp.path().join("a/b").is_dir());
        std::fs::write(handle.host_path().join("f"), "x").expect("write via handle");
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("a/b/f"))
                .ok()
                .as_deref(),
            Some("x")
        );
        assert!(matches!(
            open(tmp.path(), "missing", false),
            Err(SubPathError::NotFound)
        ));
    }

    #[test]
    fn a_file_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("file"), "x").expect("write");
        assert!(matches!(
            open(tmp.path(), "file", true),
            Err(SubPathError::NotADirectory)
        ));
    }

    #[test]
    fn a_symlink_to_etc_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        symlink("/etc", tmp.path().join("evil")).expect("plant symlink");
        for sub in ["evil", "evil/ssl"] {
            assert!(
                matches!(open(tmp.path(), sub, false), Err(SubPathError::Escapes)),
                "{sub} must not resolve"
            );
            assert!(matches!(
                open(tmp.path(), sub, true),
                Err(SubPathError::Escapes)
            ));
        }
    }

    #[test]
    fn a_relative_symlink_climbing_out_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let volume = tmp.path().join("volume");
        std::fs::create_dir_all(tmp.path().join("outside")).expect("outside");
        std::fs::create_dir_all(&volume).expect("volume");
        symlink("../outside", volume.join("up")).expect("plant symlink");
        assert!(matches!(
            open(&volume, "up", true),
            Err(SubPathError::Escapes)
        ));
        assert!(matches!(
            open(&volume, "up/new", true),
            Err(SubPathError::Escapes)
        ));
        assert!(!tmp.path().join("outside/new").exists());
    }

    #[test]
    fn a_symlink_inside_the_volume_is_followed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(tmp.path().join("real")).expect("real");
        symlink("real", tmp.path().join("alias")).expect("symlink");
        let handle = open(tmp.path(), "alias", false).expect("inside symlink ok");
        std::fs::write(handle.host_path().join("f"), "y").expect("write");
        assert!(tmp.path().join("real/f").exists());
    }

    #[test]
    fn the_handle_survives_a_swap_for_a_symlink() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("outside");
        std::fs::create_dir(tmp.path().join("d")).expect("d");
        let handle = open(tmp.path(), "d", false).expect("open");
        // After the check, someone replaces the directory with a symlink out.
        std::fs::rename(tmp.path().join("d"), tmp.path().join("moved")).expect("rename");
        symlink(outside.path(), tmp.path().join("d")).expect("swap");
        std::fs::write(handle.host_path().join("f"), "z").expect("write");
        assert!(tmp.path().join("moved/f").exists());
        assert!(!outside.path().join("f").exists());
    }
}
