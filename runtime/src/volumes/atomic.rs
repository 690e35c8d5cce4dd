//! Atomic updates of a volume's file set, laid out as the kubelet's atomic writer does.
//!
//! ```text
//! <volume>/..2025_01_31_12_00_00.1234567/   the current file set (a timestamped dir)
//! <volume>/..data -> ..2025_01_31_12_00_00.1234567
//! <volume>/<key>  -> ..data/<key>           one relative symlink per top-level name
//! ```
//!
//! An update writes a new timestamped dir, then replaces `..data` with `rename(2)` of a
//! freshly made `..data_tmp` symlink, so a reader resolving `<key>` sees either the old
//! set or the new one, never a mix. Every symlink is relative and stays inside the volume,
//! and all I/O goes through a `cap_std::fs::Dir` of the volume, so a payload path can
//! never land outside it.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use cap_std::fs::Dir;

/// The symlink naming the current file set.
pub const DATA_LINK: &str = "..data";
/// The symlink built before it replaces [`DATA_LINK`].
const DATA_TMP: &str = "..data_tmp";

/// Files to publish: path relative to the volume (`key` or `dir/key`) → contents.
pub type Payload = BTreeMap<String, Vec<u8>>;

/// Why a payload could not be published.
#[derive(Debug, thiserror::Error)]
pub enum AtomicError {
    /// A payload path is absolute, empty, contains `..` or starts with `..`.
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given in the volume source (`items[].path`, `path`).
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A filesystem operation in the volume failed.
    #[error("{what}: {source}")]
    Io {
        /// The operation and the name it was applied to.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> AtomicError {
    let what = what.into();
    move |source| AtomicError::Io { what, source }
}

/// Checks and normalises payload paths the way the kubelet does (`path.Clean`, then
/// refuse absolute paths, `..` elements and a leading `..`), and refuses a path that is
/// both a file and a directory of another path.
pub fn clean_payload(payload: &Payload) -> Result<Payload, AtomicError> {
    let mut cleaned = Payload::new();
    for (path, data) in payload {
        cleaned.insert(clean_path(path)?, data.clone());
    }
    for path in cleaned.keys() {
        let prefix = format!("{path}/");
        if let Some((other, _)) = cleaned.range(prefix.clone()..).next() {
            if other.starts_with(&prefix) {
                return Err(AtomicError::InvalidPath {
                    path: path.clone(),
                    reason: "it is a file and also the directory of another path",
                });
            }
        }
    }
    Ok(cleaned)
}

fn clean_path(path: &str) -> Result<String, AtomicError> {
    let invalid = |reason| AtomicError::InvalidPath {
        path: path.to_string(),
        reason,
    };
    if path.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if path.starts_with('/') {
        return Err(invalid("must be a relative path"));
    }
    if path.len() > 4096 {
        return Err(invalid("must be at most 4096 bytes"));
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.is_empty() {
        return Err(invalid("must name a file"));
    }
    if parts.contains(&"..") {
        return Err(invalid("must not contain '..'"));
    }
    if parts[0].starts_with("..") {
        return Err(invalid("must not start with '..'"));
    }
    if parts.iter().any(|p| p.len() > 255 || p.contains('\0')) {
        return Err(invalid("has an element longer than 255 bytes or a NUL"));
    }
    Ok(parts.join("/"))
}

/// Publishes `payload` in the volume `dir`. Returns whether anything changed (an
/// identical payload leaves the volume untouched, so readers see no churn).
pub fn write(dir: &Dir, payload: &Payload) -> Result<bool, AtomicError> {
    let payload = clean_payload(payload)?;
    let new_visible = top_level_names(&payload);

    let old_set = current_set(dir);
    let old_payload = old_set.as_ref().and_then(|set| read_set(dir, set));
    if old_payload.as_ref() == Some(&payload) {
        create_visible(dir, &new_visible)?;
        return Ok(false);
    }
    let old_visible = old_payload
        .as_ref()
        .map(top_level_names)
        .unwrap_or_default();

    let set = create_set_dir(dir)?;
    for (path, data) in &payload {
        let target = Path::new(&set).join(path);
        if let Some(parent) = target.parent() {
            dir.create_dir_all(parent)
                .map_err(io_err(format!("create {}", parent.display())))?;
        }
        dir.write(&target, data)
            .map_err(io_err(format!("write {}", target.display())))?;
    }

    // A crash may have left a stale temporary link behind.
    match dir.remove_file(DATA_TMP) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("remove {DATA_TMP}"))(e)),
    }
    dir.symlink(&set, DATA_TMP)
        .map_err(io_err(format!("symlink {DATA_TMP}")))?;
    dir.rename(DATA_TMP, dir, DATA_LINK)
        .map_err(io_err(format!("rename {DATA_TMP} to {DATA_LINK}")))?;

    create_visible(dir, &new_visible)?;
    for gone in old_visible.difference(&new_visible) {
        let is_link = dir
            .symlink_metadata(gone)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false);
        if is_link {
            dir.remove_file(gone)
                .map_err(io_err(format!("remove {gone}")))?;
        }
    }
    remove_stale_sets(dir, &set)?;
    Ok(true)
}

/// The first path element of every payload path: the names readers see.
fn top_level_names(payload: &Payload) -> BTreeSet<String> {
    payload
        .keys()
        .map(|k| k.split('/').next().unwrap_or(k).to_string())
        .collect()
}

/// The dir `..data` points at, if it is one of ours.
fn current_set(dir: &Dir) -> Option<String> {
    let target = dir.read_link_contents(DATA_LINK).ok()?;
    let name = target.to_str()?;
    is_set_name(name).then(|| name.to_string())
}

fn is_set_name(name: &str) -> bool {
    name.starts_with("..") && name != DATA_LINK && name != DATA_TMP && !name.contains('/')
}

/// Reads a whole file set back; `None` when it holds anything unexpected (then it is
/// simply replaced).
fn read_set(dir: &Dir, set: &str) -> Option<Payload> {
    let root = dir.open_dir(set).ok()?;
    let mut out = Payload::new();
    read_tree(&root, PathBuf::new(), &mut out)?;
    Some(out)
}

fn read_tree(dir: &Dir, prefix: PathBuf, out: &mut Payload) -> Option<()> {
    for entry in dir.entries().ok()? {
        let entry = entry.ok()?;
        let name = entry.file_name();
        let rel = prefix.join(&name);
        let file_type = entry.file_type().ok()?;
        if file_type.is_dir() {
            read_tree(&entry.open_dir().ok()?, rel, out)?;
        } else if file_type.is_file() {
            out.insert(rel.to_str()?.to_string(), dir.read(&name).ok()?);
        } else {
            return None;
        }
    }
    Some(())
}

/// Makes a new, uniquely named file-set dir (`..YYYY_MM_DD_HH_MM_SS.<random>`).
fn create_set_dir(dir: &Dir) -> Result<String, AtomicError> {
    let stamp = chrono::Utc::now().format("..%Y_%m_%d_%H_%M_%S");
    let mut last_error = None;
    for _ in 0..16 {
        let name = format!("{stamp}.{:09}", rand::random::<u32>() % 1_000_000_000);
        match dir.create_dir(&name) {
            Ok(()) => return Ok(name),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_error = Some(e),
            Err(e) => return Err(io_err(format!("create {name}"))(e)),
        }
    }
    let source = last_error.unwrap_or_else(|| io::Error::other("no unique name found"));
    Err(io_err("create a timestamped dir")(source))
}

/// Creates the missing `name -> ..data/name` links (existing entries are left alone, as
/// the kubelet does).
fn create_visible(dir: &Dir, names: &BTreeSet<String>) -> Result<(), AtomicError> {
    for name in names {
        match dir.symlink_metadata(name) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                dir.symlink(Path::new(DATA_LINK).join(name), name)
                    .map_err(io_err(format!("symlink {name}")))?;
            }
            Err(e) => return Err(io_err(format!("inspect {name}"))(e)),
        }
    }
    Ok(())
}

/// Removes every file-set dir except `keep`: the previous one, and any an interrupted
/// write left behind.
fn remove_stale_sets(dir: &Dir, keep: &str) -> Result<(), AtomicError> {
    let entries = dir.entries().map_err(io_err("list the volume"))?;
    for entry in entries {
        let entry = entry.map_err(io_err("list the volume"))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == keep || !is_set_name(name) {
            continue;
        }
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir {
            dir.remove_dir_all(name)
                .map_err(io_err(format!("remove {name}")))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cap_std::ambient_authority;

    fn payload(items: &[(&str, &str)]) -> Payload {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn open(path: &Path) -> Dir {
        Dir::open_ambient_dir(path, ambient_authority()).expect("open temp dir")
    }

    fn link_target(path: &Path) -> PathBuf {
        std::fs::read_link(path).expect("read link")
    }

    #[test]
    fn paths_are_cleaned_and_checked() {
        assert_eq!(clean_path("a/./b//c").ok().as_deref(), Some("a/b/c"));
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "..data",
            "..x/y",
            ".",
        ] {
            assert!(clean_path(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(clean_path("a/..b").is_ok());
        assert!(clean_payload(&payload(&[("a", "1"), ("a/b", "2")])).is_err());
        assert!(clean_payload(&payload(&[("a", "1"), ("ab/c", "2")])).is_ok());
    }

    #[test]
    fn first_write_lays_out_links_and_data() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = open(tmp.path());
        let changed = write(&dir, &payload(&[("k", "v"), ("sub/deep/f", "x")])).expect("write");
        assert!(changed);

        let data = link_target(&tmp.path().join(DATA_LINK));
        let set = data.to_str().expect("utf8").to_string();
        assert!(set.starts_with("..20"), "timestamped dir, got {set}");
        assert!(!data.is_absolute());
        assert_eq!(link_target(&tmp.path().join("k")), Path::new("..data/k"));
        assert_eq!(
            link_target(&tmp.path().join("sub")),
            Path::new("..data/sub")
        );
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("k"))
                .ok()
                .as_deref(),
            Some("v")
        );
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("sub/deep/f"))
                .ok()
                .as_deref(),
            Some("x")
        );
    }

    #[test]
    fn unchanged_payload_is_not_rewritten() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = open(tmp.path());
        let p = payload(&[("k", "v")]);
        assert!(write(&dir, &p).expect("write"));
        let before = link_target(&tmp.path().join(DATA_LINK));
        assert!(!write(&dir, &p).expect("second write"));
        assert_eq!(link_target(&tmp.path().join(DATA_LINK)), before);
    }

    #[test]
    fn update_swaps_the_set_and_prunes_old_names() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = open(tmp.path());
        assert!(write(&dir, &payload(&[("keep", "1"), ("drop", "2")])).expect("write"));
        let old_set = link_target(&tmp.path().join(DATA_LINK));

        // A reader that opened a file of the old set keeps reading the old contents.
        let mut old_file = std::fs::File::open(tmp.path().join("keep")).expect("open keep");

        assert!(write(&dir, &payload(&[("keep", "1b"), ("new", "3")])).expect("update"));
        let new_set = link_target(&tmp.path().join(DATA_LINK));
        assert_ne!(old_set, new_set);
        assert!(!tmp.path().join(&old_set).exists(), "old set removed");
        assert!(
            tmp.path().join("drop").symlink_metadata().is_err(),
            "obsolete link removed"
        );
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("keep"))
                .ok()
                .as_deref(),
            Some("1b")
        );
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("new"))
                .ok()
                .as_deref(),
            Some("3")
        );
        let mut old_contents = String::new();
        std::io::Read::read_to_string(&mut old_file, &mut old_contents).expect("read old");
        assert_eq!(old_contents, "1");

        let names: BTreeSet<String> = std::fs::read_dir(tmp.path())
            .expect("list")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        let expected: BTreeSet<String> = [
            DATA_LINK.to_string(),
            new_set.to_string_lossy().into_owned(),
            "keep".into(),
            "new".into(),
        ]
        .into();
        assert_eq!(names, expected);
    }

    #[test]
    fn leftovers_of_an_interrupted_write_are_cleaned() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = open(tmp.path());
        assert!(write(&dir, &payload(&[("k", "v")])).expect("write"));
        std::fs::create_dir(tmp.path().join("..2001_01_01_00_00_00.1")).expect("stale set");
        std::os::unix::fs::symlink("..2001_01_01_00_00_00.1", tmp.path().join(DATA_TMP))
            .expect("stale tmp link");
        assert!(write(&dir, &payload(&[("k", "w")])).expect("update"));
        assert!(!tmp.path().join("..2001_01_01_00_00_00.1").exists());
        assert!(tmp.path().join(DATA_TMP).symlink_metadata().is_err());
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("k"))
                .ok()
                .as_deref(),
            Some("w")
        );
    }

    #[test]
    fn empty_payload_publishes_an_empty_set() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = open(tmp.path());
        assert!(write(&dir, &Payload::new()).expect("write"));
        assert!(tmp.path().join(DATA_LINK).is_dir());
        assert!(!write(&dir, &Payload::new()).expect("rewrite"));
    }
}
