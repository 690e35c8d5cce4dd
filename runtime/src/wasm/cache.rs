//! Compiled artifacts on disk.
//!
//! Layout: `<cache_dir>/<engine>/<digest>.cwasm`, where `<engine>` is a hash of
//! `Engine::precompile_compatibility_hash()` (wasmtime version, target, and every
//! setting that changes generated code) and `<digest>` is the module digest with `:`
//! turned into `-`. A changed engine therefore looks in a different directory and can
//! never pick up a stale artifact. Artifacts are written to a temporary file and renamed
//! into place, so a reader sees a whole artifact or none, and a file once in place is
//! never modified (which is what memory-mapping it requires).

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use super::WasmError;

/// Distinguishes temporary files of concurrent writers within this process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The artifact directory of one engine configuration.
#[derive(Debug, Clone)]
pub(crate) struct ArtifactCache {
    dir: PathBuf,
}

impl ArtifactCache {
    /// Opens (creating it if needed) the directory for `engine`'s artifacts under `root`.
    pub(crate) fn open(root: &Path, engine: &wasmtime::Engine) -> Result<Self, WasmError> {
        let dir = root.join(engine_key(engine));
        fs::create_dir_all(&dir).map_err(|source| WasmError::CacheDir {
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    /// The directory holding this engine's artifacts.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the artifact of `digest` lives (whether or not it exists yet).
    pub(crate) fn path(&self, digest: &str) -> Result<PathBuf, WasmError> {
        Ok(self.dir.join(format!("{}.cwasm", file_stem(digest)?)))
    }

    /// Stores `bytes` as the artifact at `path` atomically.
    pub(crate) fn store(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = self.dir.join(format!(
            ".{name}.{}.{}.tmp",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let mut file = fs::File::create(&temp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            fs::rename(&temp, path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written
    }
}

/// A file name for `digest`: `sha256:ab12…` becomes `sha256-ab12…`; anything that could
/// escape the directory or surprise a filesystem is refused.
pub(crate) fn file_stem(digest: &str) -> Result<String, WasmError> {
    let ok = !digest.is_empty()
        && digest.len() <= 200
        && !digest.starts_with('.')
        && digest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '.' | '_' | '-'));
    if !ok {
        return Err(WasmError::InvalidDigest(digest.to_owned()));
    }
    Ok(digest.replace(':', "-"))
}

/// A stable name for the engine's compatibility: the first 16 hex digits of a SHA-256
/// over what `precompile_compatibility_hash` feeds a hasher. (`DefaultHasher` is not
/// promised to be stable across Rust releases; SHA-256 is.)
fn engine_key(engine: &wasmtime::Engine) -> String {
    let mut hasher = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let digest = hasher.0.finalize();
    hex::encode(&digest[..8])
}

/// Feeds `Hash` input into SHA-256.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_become_safe_file_names() {
        assert_eq!(file_stem("sha256:00ff").unwrap(), "sha256-00ff");
        for bad in ["", "../x", "a/b", ".hidden", "sha256:ab cd", "x\0y"] {
            assert!(
                matches!(file_stem(bad), Err(WasmError::InvalidDigest(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn engine_key_is_stable_for_one_engine_config() {
        let a = wasmtime::Engine::default();
        let b = wasmtime::Engine::default();
        assert_eq!(engine_key(&a), engine_key(&b));
        assert_eq!(engine_key(&a).len(), 16);
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let c = wasmtime::Engine::new(&config).unwrap();
        assert_ne!(engine_key(&a), engine_key(&c));
    }

    #[test]
    fn store_replaces_atomically_and_leaves_no_temp_files() {
        let root = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::open(root.path(), &wasmtime::Engine::default()).unwrap();
        let path = cache.path("sha256:aa").unwrap();
        cache.store(&path, b"one").unwrap();
        cache.store(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(cache.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("sha256-aa.cwasm")]);
    }
}
