//! The node's content-addressed module store.
//!
//! Layout under the store's directory:
//! - `sha256/<hex>`: module bytes, named by their digest, so identical bytes are kept once
//!   however many references lead to them;
//! - `tmp/`: downloads in progress, renamed into `sha256/` only once verified (a crash
//!   never leaves a half-written module under a digest name);
//! - `refs/<hex of the key>.json`: what a tag, a digest reference or an unpinned URL
//!   resolved to last time, so IfNotPresent and Never can be answered without the network.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::FetchError;

/// The first bytes of every WebAssembly binary, core module or component.
pub(crate) const WASM_MAGIC: &[u8; 4] = b"\0asm";

/// How many leading bytes are kept to describe a file that is not wasm.
const HEAD_LEN: usize = 64;

/// Temp files older than this are leftovers of a crashed process, not downloads in progress.
const STALE_TMP_AGE: Duration = Duration::from_secs(3600);

/// Makes temp file names unique within the process (the pid makes them unique across).
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The on-disk store.
#[derive(Debug)]
pub(crate) struct Store {
    root: PathBuf,
    modules: PathBuf,
    tmp: PathBuf,
    refs: PathBuf,
}

/// A module that is in the store.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    /// Lowercase hex of the sha256 digest.
    pub hex: String,
    pub path: PathBuf,
    pub size: u64,
}

impl Stored {
    pub fn digest(&self) -> String {
        format!("sha256:{}", self.hex)
    }
}

/// What a reference resolved to when it was last fetched.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RefRecord {
    /// The key this record is for (kept for people reading the store by hand).
    pub key: String,
    /// `sha256:<hex>` of the module bytes.
    pub digest: String,
    /// The imageID shown in container statuses.
    pub image_id: String,
}

impl Store {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: PathBuf) -> Result<Store, FetchError> {
        let store = Store {
            modules: root.join("sha256"),
            tmp: root.join("tmp"),
            refs: root.join("refs"),
            root,
        };
        for dir in [&store.root, &store.modules, &store.tmp, &store.refs] {
            std::fs::create_dir_all(dir).map_err(|e| FetchError::store(dir, e))?;
        }
        store.remove_stale_tmp();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Removes temp files a crashed process left behind. Young ones may belong to another
    /// live store sharing the directory, so they stay.
    fn remove_stale_tmp(&self) {
        let Ok(entries) = std::fs::read_dir(&self.tmp) else {
            return;
        };
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > STALE_TMP_AGE);
            if old {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// The path a module with this digest has (whether or not it is present).
    pub fn module_path(&self, hex: &str) -> PathBuf {
        self.modules.join(hex)
    }

    /// The module with this digest, if present.
    pub async fn get(&self, hex: &str) -> Option<Stored> {
        if !is_sha256_hex(hex) {
            return None;
        }
        let path = self.module_path(hex);
        let meta = tokio::fs::metadata(&path).await.ok()?;
        meta.is_file().then(|| Stored {
            hex: hex.to_string(),
            path,
            size: meta.len(),
        })
    }

    /// The record for `key` together with its module, if both are present.
    pub async fn lookup(&self, key: &str) -> Option<(RefRecord, Stored)> {
        let path = self.record_path(key);
        let bytes = tokio::fs::read(&path).await.ok()?;
        let record: RefRecord = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "ignoring unreadable module reference record");
                return None;
            }
        };
        if record.key != key {
            return None;
        }
        let stored = self.get(record.digest.strip_prefix("sha256:")?).await?;
        Some((record, stored))
    }

    /// Remembers what `key` resolved to (replacing any earlier record atomically).
    pub async fn remember(
        &self,
        key: &str,
        digest: &str,
        image_id: &str,
    ) -> Result<(), FetchError> {
        let record = RefRecord {
            key: key.to_string(),
            digest: digest.to_string(),
            image_id: image_id.to_string(),
        };
        let body = serde_json::to_vec_pretty(&record)
            .map_err(|e| FetchError::store(&self.refs, std::io::Error::other(e)))?;
        let tmp = self.tmp_path();
        tokio::fs::write(&tmp, &body)
            .await
            .map_err(|e| FetchError::store(&tmp, e))?;
        let dest = self.record_path(key);
        if let Err(e) = tokio::fs::rename(&tmp, &dest).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(FetchError::store(dest, e));
        }
        Ok(())
    }

    fn record_path(&self, key: &str) -> PathBuf {
        self.refs.join(format!(
            "{}.json",
            hex::encode(Sha256::digest(key.as_bytes()))
        ))
    }

    fn tmp_path(&self) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.tmp.join(format!("{}-{}", std::process::id(), n))
    }

    /// Starts writing a module fetched for `image`, refusing more than `limit` bytes.
    pub async fn writer(&self, image: &str, limit: u64) -> Result<ModuleWriter, FetchError> {
        let tmp_path = self.tmp_path();
        let file = tokio::fs::File::create(&tmp_path)
            .await
            .map_err(|e| FetchError::store(&tmp_path, e))?;
        Ok(ModuleWriter {
            image: image.to_string(),
            file: Some(file),
            tmp_path,
            modules: self.modules.clone(),
            hasher: Sha256::new(),
            size: 0,
            limit,
            head: Vec::with_capacity(HEAD_LEN),
            finished: false,
        })
    }
}

/// A module being written: hashed and checked as it arrives, moved into place by
/// [`ModuleWriter::finish`], deleted if dropped before that.
pub(crate) struct ModuleWriter {
    image: String,
    file: Option<tokio::fs::File>,
    tmp_path: PathBuf,
    modules: PathBuf,
    hasher: Sha256,
    size: u64,
    limit: u64,
    head: Vec<u8>,
    finished: bool,
}

impl ModuleWriter {
    /// Appends a chunk. Fails early when the size limit is passed or when enough bytes
    /// have arrived to tell that this is not wasm (no point downloading the rest).
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), FetchError> {
        self.size += chunk.len() as u64;
        if self.size > self.limit {
            return Err(FetchError::TooLarge {
                image: self.image.clone(),
                limit: self.limit,
            });
        }
        if self.head.len() < HEAD_LEN {
            let take = (HEAD_LEN - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
            if self.head.len() == HEAD_LEN {
                self.check_magic()?;
            }
        }
        self.hasher.update(chunk);
        let file = self.file.as_mut().ok_or_else(|| {
            FetchError::store(
                &self.tmp_path,
                std::io::Error::other("writer already closed"),
            )
        })?;
        file.write_all(chunk)
            .await
            .map_err(|e| FetchError::store(&self.tmp_path, e))
    }

    fn check_magic(&self) -> Result<(), FetchError> {
        if self.head.starts_with(WASM_MAGIC) {
            Ok(())
        } else {
            Err(FetchError::NotWasm {
                image: self.image.clone(),
                looks_like: describe_non_wasm(&self.head),
            })
        }
    }

    /// Verifies the module (wasm magic, and the digest when one was promised) and moves
    /// it into the store.
    pub async fn finish(mut self, expected_hex: Option<&str>) -> Result<Stored, FetchError> {
        let hex = hex::encode(std::mem::take(&mut self.hasher).finalize());
        if let Some(expected) = expected_hex {
            if !expected.eq_ignore_ascii_case(&hex) {
                return Err(FetchError::DigestMismatch {
                    image: self.image.clone(),
                    expected: format!("sha256:{}", expected.to_ascii_lowercase()),
                    actual: format!("sha256:{hex}"),
                });
            }
        }
        self.check_magic()?;
        let mut file = self.file.take().ok_or_else(|| {
            FetchError::store(
                &self.tmp_path,
                std::io::Error::other("writer already closed"),
            )
        })?;
        file.flush()
            .await
            .map_err(|e| FetchError::store(&self.tmp_path, e))?;
        // The rename below may reach the disk before the data does; syncing first means a
        // crash can never leave a truncated file under a digest name.
        file.sync_all()
            .await
            .map_err(|e| FetchError::store(&self.tmp_path, e))?;
        drop(file);
        let dest = self.modules.join(&hex);
        // Identical bytes already present (e.g. fetched concurrently under another name):
        // keep the existing file, whose content is the same by construction.
        if tokio::fs::metadata(&dest).await.is_ok_and(|m| m.is_file()) {
            let _ = tokio::fs::remove_file(&self.tmp_path).await;
        } else {
            tokio::fs::rename(&self.tmp_path, &dest)
                .await
                .map_err(|e| FetchError::store(&dest, e))?;
        }
        self.finished = true;
        Ok(Stored {
            hex,
            path: dest,
            size: self.size,
        })
    }
}

impl Drop for ModuleWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}

pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Says what a non-wasm file looks like, e.g. `starts with 7f 45 4c 46 (an ELF binary)`.
/// Only the first four bytes are shown verbatim (a `file://` image may name any file on
/// the node, and its content must not leak into a pod's status); more are used to classify.
pub(crate) fn describe_non_wasm(head: &[u8]) -> String {
    if head.is_empty() {
        return "is empty".to_string();
    }
    let shown = &head[..head.len().min(4)];
    let hex: Vec<String> = shown.iter().map(|b| format!("{b:02x}")).collect();
    let hex = hex.join(" ");
    let printable = shown.iter().all(|b| b.is_ascii_graphic() || *b == b' ');
    let quoted = if printable {
        format!(" {:?}", String::from_utf8_lossy(shown))
    } else {
        String::new()
    };
    let size_note = if head.len() < 4 {
        format!(" and is only {} bytes long", head.len())
    } else {
        String::new()
    };
    format!("starts with {hex}{quoted} ({}){size_note}", classify(head))
}

fn classify(head: &[u8]) -> &'static str {
    let text = trim_text_start(head);
    let lower: Vec<u8> = text
        .iter()
        .take(16)
        .map(|b| b.to_ascii_lowercase())
        .collect();
    match head {
        [0x7f, b'E', b'L', b'F', ..] => "an ELF binary",
        [b'M', b'Z', ..] => "a Windows executable",
        [0xcf, 0xfa, 0xed, 0xfe, ..] | [0xce, 0xfa, 0xed, 0xfe, ..] => "a Mach-O binary",
        [0xca, 0xfe, 0xba, 0xbe, ..] => "a Java class file or a universal Mach-O binary",
        [0x1f, 0x8b, ..] => "gzip data",
        [b'P', b'K', 0x03, 0x04, ..] => "a zip archive",
        [0x28, 0xb5, 0x2f, 0xfd, ..] => "zstd data",
        [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => "xz data",
        [b'B', b'Z', b'h', ..] => "bzip2 data",
        [b'%', b'P', b'D', b'F', ..] => "a PDF document",
        [b'#', b'!', ..] => "a script",
        _ if lower.starts_with(b"(module") || lower.starts_with(b"(component") => {
            "WebAssembly text format; compile it to the binary format first"
        }
        _ if lower.starts_with(b"<!doctype html") || lower.starts_with(b"<html") => "an HTML page",
        _ if lower.starts_with(b"<?xml") => "an XML document",
        _ if text.starts_with(b"{") || text.starts_with(b"[") => "JSON or other text",
        _ if is_text(head) => "text",
        _ => "unrecognised binary data",
    }
}

/// Skips a UTF-8 byte order mark and leading whitespace.
fn trim_text_start(head: &[u8]) -> &[u8] {
    let head = head.strip_prefix(b"\xef\xbb\xbf").unwrap_or(head);
    let start = head
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(head.len());
    &head[start..]
}

/// Text: valid UTF-8 (allowing a character cut at the end) without control characters.
fn is_text(head: &[u8]) -> bool {
    let valid = match std::str::from_utf8(head) {
        Ok(s) => s,
        Err(e) if e.error_len().is_none() => match std::str::from_utf8(&head[..e.valid_up_to()]) {
            Ok(s) => s,
            Err(_) => return false,
        },
        Err(_) => return false,
    };
    valid
        .chars()
        .all(|c| !c.is_control() || c == '\n' || c == '\r' || c == '\t')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_common_non_wasm_files() {
        assert_eq!(
            describe_non_wasm(b"\x7fELF\x02\x01\x01\0\0\0"),
            "starts with 7f 45 4c 46 (an ELF binary)"
        );
        assert_eq!(
            describe_non_wasm(b"<!DOCTYPE html><html><body>nope</body></html>"),
            "starts with 3c 21 44 4f \"<!DO\" (an HTML page)"
        );
        assert_eq!(
            describe_non_wasm(b"(module (func))"),
            "starts with 28 6d 6f 64 \"(mod\" (WebAssembly text format; compile it to the binary format first)"
        );
        assert_eq!(
            describe_non_wasm(b"hello world\n"),
            "starts with 68 65 6c 6c \"hell\" (text)"
        );
        assert_eq!(describe_non_wasm(b""), "is empty");
        assert_eq!(
            describe_non_wasm(b"\0a"),
            "starts with 00 61 (unrecognised binary data) and is only 2 bytes long"
        );
        assert_eq!(
            describe_non_wasm(b"\x1f\x8b\x08\0"),
            "starts with 1f 8b 08 00 (gzip data)"
        );
    }

    #[tokio::test]
    async fn writer_stores_by_digest_once_and_cleans_up_on_failure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("modules")).expect("open");
        let module = b"\0asm\x01\0\0\0";
        let expected = hex::encode(Sha256::digest(module));

        let mut w = store.writer("a", 1024).await.expect("writer");
        w.write(module).await.expect("write");
        let first = w.finish(Some(&expected)).await.expect("finish");
        assert_eq!(first.hex, expected);
        assert_eq!(first.size, 8);
        assert_eq!(std::fs::read(&first.path).expect("read"), module);

        let mut w = store.writer("b", 1024).await.expect("writer");
        w.write(module).await.expect("write");
        let second = w.finish(None).await.expect("finish");
        assert_eq!(second.path, first.path);

        // Too large, wrong digest and not-wasm all leave nothing behind in tmp/.
        let mut w = store.writer("c", 4).await.expect("writer");
        assert!(matches!(
            w.write(module).await,
            Err(FetchError::TooLarge { limit: 4, .. })
        ));
        drop(w);
        let mut w = store.writer("d", 1024).await.expect("writer");
        w.write(module).await.expect("write");
        let err = w.finish(Some(&"0".repeat(64))).await.expect_err("mismatch");
        assert!(matches!(err, FetchError::DigestMismatch { .. }), "{err}");
        let mut w = store.writer("e", 1024).await.expect("writer");
        w.write(b"\x7fELF")
            .await
            .expect("short write is not judged yet");
        let err = w.finish(None).await.expect_err("not wasm");
        assert!(err.to_string().contains("an ELF binary"), "{err}");

        let leftovers = std::fs::read_dir(dir.path().join("modules/tmp"))
            .expect("tmp dir")
            .count();
        assert_eq!(leftovers, 0);
        let modules = std::fs::read_dir(dir.path().join("modules/sha256"))
            .expect("modules dir")
            .count();
        assert_eq!(modules, 1);
    }

    #[tokio::test]
    async fn records_round_trip_and_require_the_module() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().to_path_buf()).expect("open");
        let missing = format!("sha256:{}", "a".repeat(64));
        store.remember("k", &missing, "id").await.expect("remember");
        assert!(store.lookup("k").await.is_none(), "module absent");

        let mut w = store.writer("x", 100).await.expect("writer");
        w.write(b"\0asm\x01\0\0\0").await.expect("write");
        let stored = w.finish(None).await.expect("finish");
        store
            .remember("k", &stored.digest(), "reg/repo@sha256:1")
            .await
            .expect("remember");
        let (record, found) = store.lookup("k").await.expect("found");
        assert_eq!(record.image_id, "reg/repo@sha256:1");
        assert_eq!(found.path, stored.path);
        assert!(store.lookup("other").await.is_none());
    }
}
