//! Module fetching: resolves a container's `image` to WebAssembly bytes stored on the node
//! by digest.
//!
//! An image is one of:
//! - `file:///abs/path.wasm`: a file on the node, read again whenever it changes;
//! - `http(s)://host/x.wasm`, optionally pinned as `http(s)://host/x.wasm@sha256:<hex>`
//!   (bytes with another digest are refused);
//! - anything else: an OCI reference (`host[:port]/repo[:tag]`, `repo@sha256:…`, Docker Hub
//!   defaults as in Kubernetes) to a wasm artifact; see the `oci` module for the layouts accepted.
//!
//! Every module must start with the wasm magic `\0asm` (core modules and components both
//! do). [`ModuleStore::fetch`] honours the pull policy: IfNotPresent answers from the store
//! when a tag, digest or URL was fetched before (records survive restarts), Always asks the
//! source again (a HEAD for a registry tag; the bytes are downloaded only when the digest
//! is new), Never only looks in the store. Errors carry the Kubernetes reason
//! ([`FetchError::reason`]).
//!
//! Layout: `store` (content-addressed files and reference records), `oci` (registry
//! pull and push), `http` (URL downloads), `auth` (imagePullSecrets), `error`.

mod auth;
mod error;
mod http;
mod oci;
mod store;
#[cfg(test)]
mod testing;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;

pub use auth::{auths_from_docker_config, RegistryAuth};
pub use error::FetchError;
pub use oci::{push, WASM_CONFIG_CNCF, WASM_LAYER_CNCF, WASM_LAYER_WASM_TO_OCI};

use store::{is_sha256_hex, Store, Stored};

/// A container's imagePullPolicy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Ask the source every time (the bytes are downloaded only when they changed).
    Always,
    /// Use the store when the image was fetched before.
    IfNotPresent,
    /// Only use the store.
    Never,
}

impl PullPolicy {
    /// The policy for a container: its `imagePullPolicy` if set, else Kubernetes' default
    /// for the image (Always for an untagged or `:latest` OCI image and an unpinned URL,
    /// IfNotPresent otherwise).
    pub fn from_k8s(policy: Option<&str>, image: &str) -> PullPolicy {
        match policy {
            Some("Always") => PullPolicy::Always,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            Some("Never") => PullPolicy::Never,
            _ => PullPolicy::default_for(image),
        }
    }

    /// Kubernetes' default policy for an image.
    pub fn default_for(image: &str) -> PullPolicy {
        match Source::parse(image) {
            Ok(Source::Url { pin: None, .. }) => PullPolicy::Always,
            Ok(Source::Oci(r)) if r.digest().is_none() && r.tag().is_none_or(|t| t == "latest") => {
                PullPolicy::Always
            }
            _ => PullPolicy::IfNotPresent,
        }
    }
}

/// Settings of a [`ModuleStore`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Registries (`host[:port]`, or `host` for every port) spoken to over plain HTTP in
    /// addition to loopback ones.
    pub insecure_registries: Vec<String>,
    /// The largest module accepted, in bytes.
    pub max_module_bytes: u64,
    /// How long connecting to a registry or web server may take.
    pub connect_timeout: Duration,
    /// How long a registry or web server may stay silent during a transfer.
    pub read_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            insecure_registries: Vec::new(),
            max_module_bytes: 256 * 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// A module ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// `sha256:<hex>` of the module bytes (the store's name for them).
    pub digest: String,
    /// Where the bytes are on the node.
    pub path: PathBuf,
    /// What Kubernetes shows as the container's imageID: `registry/repo@sha256:…` for OCI
    /// images (the manifest or index digest), the URL with `@sha256:<module digest>`
    /// otherwise.
    pub image_id: String,
    /// True when the source was consulted (registry, web server, or a changed file);
    /// false when the store alone answered.
    pub pulled: bool,
    /// Size of the module in bytes.
    pub size: u64,
}

/// The node's module store and fetcher. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct ModuleStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ModuleStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleStore")
            .field("dir", &self.inner.store.root())
            .field("opts", &self.inner.opts)
            .finish_non_exhaustive()
    }
}

struct Inner {
    store: Store,
    opts: StoreOptions,
    http: reqwest::Client,
    registries: oci::Registries,
    /// One lock per image key, so a burst of pods using one new image downloads it once.
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// What each `file://` module was when last read, to notice when it changes.
    files: Mutex<HashMap<PathBuf, (FileStamp, Stored)>>,
    /// Recent results by key, sparing a disk read per pod when many share an image.
    memo: Mutex<HashMap<String, Fetched>>,
}

/// Identifies a version of a file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> FileStamp {
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Where an image's bytes come from.
#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    Url { url: String, pin: Option<String> },
    Oci(oci_client::Reference),
}

impl Source {
    fn parse(image: &str) -> Result<Source, FetchError> {
        let invalid = |reason: &str| FetchError::InvalidImageName {
            image: image.to_string(),
            reason: reason.to_string(),
        };
        if image.trim().is_empty() {
            return Err(invalid("the image is empty"));
        }
        if image.trim() != image {
            return Err(invalid("the image has leading or trailing whitespace"));
        }
        let lower = image.to_ascii_lowercase();
        if lower.starts_with("file:") {
            let path = image
                .get("file://".len()..)
                .filter(|_| lower.starts_with("file://"))
                .ok_or_else(|| {
                    invalid("a file image must be written file:///absolute/path.wasm")
                })?;
            if !path.starts_with('/') {
                return Err(invalid(
                    "a file image needs an absolute path on the node: file:///absolute/path.wasm",
                ));
            }
            return Ok(Source::File(PathBuf::from(path)));
        }
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let (url, pin) = match image.rsplit_once("@sha256:") {
                Some((url, hex)) if !hex.contains('/') => {
                    if !is_sha256_hex(hex) {
                        return Err(invalid("the @sha256: pin must be 64 hexadecimal digits"));
                    }
                    (url, Some(hex.to_ascii_lowercase()))
                }
                _ => (image, None),
            };
            let parsed =
                reqwest::Url::parse(url).map_err(|e| invalid(&format!("not a valid URL: {e}")))?;
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(invalid("the URL has no host"));
            }
            return Ok(Source::Url {
                url: url.to_string(),
                pin,
            });
        }
        if lower.contains("://") {
            return Err(invalid(
                "only file://, http:// and https:// URLs are accepted; anything else must be an OCI reference",
            ));
        }
        oci::parse_reference(image).map(Source::Oci)
    }

    fn key(&self) -> String {
        match self {
            Source::File(path) => format!("file:{}", path.display()),
            Source::Url {
                url,
                pin: Some(hex),
            } => format!("url:{url}@sha256:{hex}"),
            Source::Url { url, pin: None } => format!("url:{url}"),
            Source::Oci(reference) => oci::reference_key(reference),
        }
    }
}

impl ModuleStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn new(dir: PathBuf, opts: StoreOptions) -> Result<ModuleStore, FetchError> {
        oci::install_crypto_provider();
        let store = Store::open(dir)?;
        let http = http::build_client(opts.connect_timeout, opts.read_timeout)?;
        let registries = oci::Registries::new(
            opts.insecure_registries.clone(),
            opts.connect_timeout,
            opts.read_timeout,
        );
        Ok(ModuleStore {
            inner: Arc::new(Inner {
                store,
                opts,
                http,
                registries,
                inflight: Mutex::new(HashMap::new()),
                files: Mutex::new(HashMap::new()),
                memo: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        self.inner.store.root()
    }

    /// The path of the module with this digest (`sha256:<hex>`), if it is in the store.
    pub fn module_path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        if !is_sha256_hex(hex) {
            return None;
        }
        let path = self.inner.store.module_path(&hex.to_ascii_lowercase());
        path.is_file().then_some(path)
    }

    /// Resolves `image` to a module in the store, fetching it as `policy` allows, with
    /// `auths` (from the pod's imagePullSecrets) for registries that need credentials.
    pub async fn fetch(
        &self,
        image: &str,
        policy: PullPolicy,
        auths: &[RegistryAuth],
    ) -> Result<Fetched, FetchError> {
        let source = Source::parse(image)?;
        let key = source.key();
        if let Some(found) = self.local(&source, &key, policy).await {
            tracing::debug!(image, digest = %found.digest, "module served from the store");
            return Ok(found);
        }
        if policy == PullPolicy::Never && !matches!(source, Source::File(_)) {
            return Err(FetchError::NeverPull {
                image: image.to_string(),
            });
        }
        let _one_at_a_time = self.one_at_a_time(&key).await;
        // Whoever held the lock before us may have fetched it meanwhile.
        if let Some(found) = self.local(&source, &key, policy).await {
            return Ok(found);
        }
        let result = self.remote(&source, &key, image, policy, auths).await;
        match &result {
            Ok(f) => {
                tracing::info!(image, digest = %f.digest, image_id = %f.image_id, size = f.size, pulled = f.pulled, "module fetched");
                self.memo_put(&key, f);
            }
            Err(error) => {
                tracing::warn!(image, %error, reason = error.reason(), "module fetch failed")
            }
        }
        result
    }

    /// Answers from the store alone, when the policy allows it and the store knows.
    async fn local(&self, source: &Source, key: &str, policy: PullPolicy) -> Option<Fetched> {
        let store = &self.inner.store;
        match source {
            Source::File(path) => {
                let meta = tokio::fs::metadata(path).await.ok()?;
                let stamp = FileStamp::of(&meta);
                let stored = {
                    let files = lock(&self.inner.files);
                    let (known, stored) = files.get(path)?;
                    (known == &stamp).then(|| stored.clone())?
                };
                stored
                    .path
                    .is_file()
                    .then(|| fetched(&stored, file_image_id(path, &stored), false))
            }
            Source::Url {
                url,
                pin: Some(hex),
            } => {
                let stored = store.get(hex).await?;
                Some(fetched(&stored, format!("{url}@sha256:{hex}"), false))
            }
            Source::Url { pin: None, .. } if policy == PullPolicy::Always => None,
            Source::Oci(reference)
                if policy == PullPolicy::Always && reference.digest().is_none() =>
            {
                None
            }
            Source::Url { .. } | Source::Oci(_) => self.lookup(key).await,
        }
    }

    /// A remembered resolution of `key` whose module is still in the store.
    async fn lookup(&self, key: &str) -> Option<Fetched> {
        let memo = lock(&self.inner.memo).get(key).cloned();
        if let Some(found) = memo.filter(|f| f.path.is_file()) {
            return Some(Fetched {
                pulled: false,
                ..found
            });
        }
        let (record, stored) = self.inner.store.lookup(key).await?;
        let found = fetched(&stored, record.image_id, false);
        self.memo_put(key, &found);
        Some(found)
    }

    fn memo_put(&self, key: &str, f: &Fetched) {
        lock(&self.inner.memo).insert(
            key.to_string(),
            Fetched {
                pulled: false,
                ..f.clone()
            },
        );
    }

    /// Fetches from the source.
    async fn remote(
        &self,
        source: &Source,
        key: &str,
        image: &str,
        policy: PullPolicy,
        auths: &[RegistryAuth],
    ) -> Result<Fetched, FetchError> {
        let inner = &self.inner;
        let limit = inner.opts.max_module_bytes;
        match source {
            Source::File(path) => self.read_file(path, image).await,
            Source::Url { url, pin } => {
                let stored =
                    http::download(&inner.http, &inner.store, url, image, pin.as_deref(), limit)
                        .await?;
                let image_id = format!("{url}@sha256:{}", stored.hex);
                if pin.is_none() {
                    inner
                        .store
                        .remember(key, &stored.digest(), &image_id)
                        .await?;
                }
                Ok(fetched(&stored, image_id, true))
            }
            Source::Oci(reference) => {
                let mut target = reference.clone();
                if policy == PullPolicy::Always && reference.digest().is_none() {
                    let digest = inner.registries.resolve(reference, image, auths).await?;
                    if let Some(found) = self.lookup(&oci::digest_key(reference, &digest)).await {
                        inner
                            .store
                            .remember(key, &found.digest, &found.image_id)
                            .await?;
                        return Ok(Fetched {
                            pulled: true,
                            ..found
                        });
                    }
                    // Pull exactly what was resolved, even if the tag moves meanwhile.
                    target = reference.clone_with_digest(digest);
                }
                let pulled = inner
                    .registries
                    .pull(&inner.store, &target, image, auths, limit)
                    .await?;
                let digest = pulled.stored.digest();
                let image_id = oci::image_id(reference, &pulled.top_digest);
                let mut keys = vec![
                    key.to_string(),
                    oci::digest_key(reference, &pulled.top_digest),
                    oci::digest_key(reference, &pulled.manifest_digest),
                ];
                keys.dedup();
                for k in &keys {
                    inner.store.remember(k, &digest, &image_id).await?;
                }
                Ok(fetched(&pulled.stored, image_id, true))
            }
        }
    }

    async fn read_file(&self, path: &Path, image: &str) -> Result<Fetched, FetchError> {
        let read_err = |source: std::io::Error| FetchError::ReadFile {
            path: path.to_path_buf(),
            source,
        };
        let mut file = match tokio::fs::File::open(path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(FetchError::NotFound {
                    image: image.to_string(),
                    detail: format!("there is no file {} on this node", path.display()),
                })
            }
            Err(e) => return Err(read_err(e)),
        };
        let meta = file.metadata().await.map_err(read_err)?;
        if !meta.is_file() {
            return Err(read_err(std::io::Error::other("not a regular file")));
        }
        let stamp = FileStamp::of(&meta);
        let mut writer = self
            .inner
            .store
            .writer(image, self.inner.opts.max_module_bytes)
            .await?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf).await.map_err(read_err)?;
            if n == 0 {
                break;
            }
            writer.write(&buf[..n]).await?;
        }
        let stored = writer.finish(None).await?;
        let image_id = file_image_id(path, &stored);
        lock(&self.inner.files).insert(path.to_path_buf(), (stamp, stored.clone()));
        Ok(fetched(&stored, image_id, true))
    }

    /// Serialises fetches of one image key; the map entry goes when no one waits on it.
    async fn one_at_a_time(&self, key: &str) -> InflightGuard<'_> {
        let mutex = lock(&self.inner.inflight)
            .entry(key.to_string())
            .or_default()
            .clone();
        let guard = mutex.lock_owned().await;
        InflightGuard {
            inner: &self.inner,
            key: key.to_string(),
            guard: Some(guard),
        }
    }
}

struct InflightGuard<'a> {
    inner: &'a Inner,
    key: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = lock(&self.inner.inflight);
        // Clones are only taken under the map lock, so a count of one (the map's) means
        // nobody holds or awaits this entry.
        if map
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            map.remove(&self.key);
        }
    }
}

/// Locks a std mutex, ignoring poisoning: the maps stay consistent across a panic.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn fetched(stored: &Stored, image_id: String, pulled: bool) -> Fetched {
    Fetched {
        digest: stored.digest(),
        path: stored.path.clone(),
        image_id,
        pulled,
        size: stored.size,
    }
}

fn file_image_id(path: &Path, stored: &Stored) -> String {
    format!("file://{}@sha256:{}", path.display(), stored.hex)
}

#[cfg(test)]
mod tests {
    use super::testing::{module, sha256_hex, TestRegistry, TestWeb};
    use super::*;

    fn new_store(dir: &tempfile::TempDir) -> ModuleStore {
        ModuleStore::new(dir.path().join("modules"), StoreOptions::default()).expect("store")
    }

    async fn push_module(
        registry: &TestRegistry,
        tmp: &tempfile::TempDir,
        name: &str,
        reference: &str,
    ) -> (Vec<u8>, String) {
        let bytes = module(name);
        let file = tmp.path().join(format!("{name}.wasm"));
        std::fs::write(&file, &bytes).expect("write module");
        let digest = push(&file, &format!("{}/{reference}", registry.addr), None, &[])
            .await
            .expect("push");
        (bytes, digest)
    }

    /// Pushes a hand-made artifact (layouts other than the one `push` writes).
    async fn push_raw(
        registry: &TestRegistry,
        reference: &str,
        layer_type: &str,
        config_type: &str,
        bytes: &[u8],
    ) {
        use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
        oci::install_crypto_provider();
        let client = oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..ClientConfig::default()
        });
        let target: oci_client::Reference = format!("{}/{reference}", registry.addr)
            .parse()
            .expect("reference");
        let layers = [ImageLayer::new(
            bytes.to_vec(),
            layer_type.to_string(),
            None,
        )];
        let config = Config::new(b"{}".to_vec(), config_type.to_string(), None);
        client
            .push(
                &target,
                &layers,
                config,
                &oci_client::secrets::RegistryAuth::Anonymous,
                None,
            )
            .await
            .expect("raw push");
    }

    #[test]
    fn image_forms_parse_or_are_refused() {
        assert!(
            matches!(Source::parse("file:///opt/m.wasm"), Ok(Source::File(p)) if p == Path::new("/opt/m.wasm"))
        );
        for bad in [
            "file://m.wasm",
            "file:m.wasm",
            "ftp://h/m.wasm",
            "",
            " hello",
            "Hello/World",
            "http://",
            "https://h/m.wasm@sha256:abc",
        ] {
            let err = Source::parse(bad).expect_err(bad);
            assert_eq!(err.reason(), "InvalidImageName", "{bad}: {err}");
        }
        let hex = "ab".repeat(32);
        match Source::parse(&format!("https://h.example/m.wasm@sha256:{hex}")) {
            Ok(Source::Url { url, pin }) => {
                assert_eq!(url, "https://h.example/m.wasm");
                assert_eq!(pin.as_deref(), Some(hex.as_str()));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Source::parse("https://u:p@h.example/m.wasm"),
            Ok(Source::Url { pin: None, .. })
        ));
        assert!(matches!(
            Source::parse("ghcr.io/o/m:v1"),
            Ok(Source::Oci(_))
        ));
    }

    #[test]
    fn default_pull_policies_follow_kubernetes() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(PullPolicy::default_for("hello"), PullPolicy::Always);
        assert_eq!(PullPolicy::default_for("hello:latest"), PullPolicy::Always);
        assert_eq!(
            PullPolicy::default_for("hello:v1"),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            PullPolicy::default_for(&format!("hello@{d}")),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            PullPolicy::default_for("http://h/m.wasm"),
            PullPolicy::Always
        );
        assert_eq!(
            PullPolicy::default_for(&format!("http://h/m.wasm@{d}")),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            PullPolicy::from_k8s(Some("Never"), "hello"),
            PullPolicy::Never
        );
        assert_eq!(
            PullPolicy::from_k8s(None, "hello:v1"),
            PullPolicy::IfNotPresent
        );
    }

    #[tokio::test]
    async fn registry_pull_by_tag_and_digest_then_offline() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut registry = TestRegistry::start().await;
        let (bytes, manifest_digest) = push_module(&registry, &tmp, "hello", "hello:v1").await;
        let tag = format!("{}/hello:v1", registry.addr);
        let by_digest = format!("{}/hello@{manifest_digest}", registry.addr);

        let store = new_store(&tmp);
        let first = store
            .fetch(&tag, PullPolicy::IfNotPresent, &[])
            .await
            .expect("pull by tag");
        assert!(first.pulled);
        assert_eq!(first.digest, format!("sha256:{}", sha256_hex(&bytes)));
        assert_eq!(first.image_id, by_digest);
        assert_eq!(first.size, bytes.len() as u64);
        assert_eq!(std::fs::read(&first.path).expect("read module"), bytes);
        assert_eq!(
            first.path,
            tmp.path().join("modules/sha256").join(sha256_hex(&bytes))
        );
        assert_eq!(store.module_path(&first.digest), Some(first.path.clone()));

        // The tag pull remembered the digest too.
        let again = store
            .fetch(&by_digest, PullPolicy::Always, &[])
            .await
            .expect("by digest");
        assert!(!again.pulled);
        assert_eq!(again.path, first.path);

        // A fresh store pulls by digest from the registry.
        let tmp2 = tempfile::tempdir().expect("tempdir");
        let other = new_store(&tmp2);
        let by_d = other
            .fetch(&by_digest, PullPolicy::IfNotPresent, &[])
            .await
            .expect("pull by digest");
        assert!(by_d.pulled);
        assert_eq!(by_d.digest, first.digest);

        // With the registry gone, everything already fetched is still served...
        registry.stop();
        let offline = store
            .fetch(&tag, PullPolicy::IfNotPresent, &[])
            .await
            .expect("offline tag");
        assert!(!offline.pulled);
        assert_eq!(offline.image_id, first.image_id);
        store
            .fetch(&tag, PullPolicy::Never, &[])
            .await
            .expect("never, present");
        store
            .fetch(&by_digest, PullPolicy::Always, &[])
            .await
            .expect("digest never re-pulled");
        // ...also by a new process on the same directory (records are on disk)...
        let restarted = new_store(&tmp);
        let r = restarted
            .fetch(&tag, PullPolicy::IfNotPresent, &[])
            .await
            .expect("after restart");
        assert!(!r.pulled);
        assert_eq!(r.digest, first.digest);
        // ...but Always must ask the registry, and says why it cannot.
        let err = store
            .fetch(&tag, PullPolicy::Always, &[])
            .await
            .expect_err("registry down");
        assert!(matches!(err, FetchError::Network { .. }), "{err}");
        assert_eq!(err.reason(), "ErrImagePull");
        assert!(err.to_string().contains("refused"), "{err}");
    }

    #[tokio::test]
    async fn always_follows_a_moving_tag_and_if_not_present_does_not() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let registry = TestRegistry::start().await;
        let (a, _) = push_module(&registry, &tmp, "a", "app:stable").await;
        let tag = format!("{}/app:stable", registry.addr);
        let store = new_store(&tmp);
        let first = store
            .fetch(&tag, PullPolicy::Always, &[])
            .await
            .expect("pull a");
        assert_eq!(first.digest, format!("sha256:{}", sha256_hex(&a)));
        let inode = std::fs::metadata(&first.path).expect("stat").ino();

        // Same digest: the registry is asked (pulled) but the bytes are not written again.
        let second = store
            .fetch(&tag, PullPolicy::Always, &[])
            .await
            .expect("resolve again");
        assert!(second.pulled);
        assert_eq!(second.digest, first.digest);
        assert_eq!(std::fs::metadata(&second.path).expect("stat").ino(), inode);

        let (b, _) = push_module(&registry, &tmp, "b", "app:stable").await;
        let cached = store
            .fetch(&tag, PullPolicy::IfNotPresent, &[])
            .await
            .expect("cached");
        assert_eq!(
            cached.digest, first.digest,
            "IfNotPresent keeps what it has"
        );
        let moved = store
            .fetch(&tag, PullPolicy::Always, &[])
            .await
            .expect("pull b");
        assert_eq!(moved.digest, format!("sha256:{}", sha256_hex(&b)));
        assert_ne!(moved.image_id, first.image_id);
        let now = store
            .fetch(&tag, PullPolicy::IfNotPresent, &[])
            .await
            .expect("cached b");
        assert_eq!(now.digest, moved.digest);
    }

    #[tokio::test]
    async fn registry_failures_are_specific() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let registry = TestRegistry::start().await;
        push_module(&registry, &tmp, "x", "x:v1").await;
        let store = new_store(&tmp);

        let missing_tag = format!("{}/x:nope", registry.addr);
        let err = store
            .fetch(&missing_tag, PullPolicy::IfNotPresent, &[])
            .await
            .expect_err("missing tag");
        assert!(matches!(err, FetchError::NotFound { .. }), "{err}");
        assert_eq!(err.reason(), "ErrImagePull");
        let msg = err.to_string();
        assert!(
            msg.contains(&missing_tag)
                && msg.contains("manifest unknown")
                && msg.contains("/v2/x/manifests/nope"),
            "{msg}"
        );

        let missing_repo = format!("{}/nothing-here:v1", registry.addr);
        let err = store
            .fetch(&missing_repo, PullPolicy::Always, &[])
            .await
            .expect_err("missing repo");
        assert!(matches!(err, FetchError::NotFound { .. }), "{err}");

        let wrong_digest = format!("{}/x@sha256:{}", registry.addr, "0".repeat(64));
        let err = store
            .fetch(&wrong_digest, PullPolicy::IfNotPresent, &[])
            .await
            .expect_err("wrong digest");
        assert!(matches!(err, FetchError::NotFound { .. }), "{err}");

        let never = format!("{}/x:v1", registry.addr);
        let err = store
            .fetch(&never, PullPolicy::Never, &[])
            .await
            .expect_err("never");
        assert_eq!(err.reason(), "ErrImageNeverPull");
        assert!(
            err.to_string().contains("imagePullPolicy is Never"),
            "{err}"
        );

        let err = store
            .fetch("Bad Name", PullPolicy::IfNotPresent, &[])
            .await
            .expect_err("invalid");
        assert_eq!(err.reason(), "InvalidImageName");

        // A container image is not a wasm artifact.
        push_raw(
            &registry,
            "container:v1",
            oci_client::manifest::IMAGE_LAYER_GZIP_MEDIA_TYPE,
            oci_client::manifest::IMAGE_CONFIG_MEDIA_TYPE,
            b"\x1f\x8b\x08\0",
        )
        .await;
        let err = store
            .fetch(
                &format!("{}/container:v1", registry.addr),
                PullPolicy::IfNotPresent,
                &[],
            )
            .await
            .expect_err("container");
        assert!(matches!(err, FetchError::NotWasmArtifact { .. }), "{err}");
        assert!(err.to_string().contains("tar+gzip"), "{err}");

        // A wasm layer whose bytes are an ELF binary.
        let elf = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0".repeat(8);
        push_raw(&registry, "elf:v1", WASM_LAYER_CNCF, WASM_CONFIG_CNCF, &elf).await;
        let err = store
            .fetch(
                &format!("{}/elf:v1", registry.addr),
                PullPolicy::IfNotPresent,
                &[],
            )
            .await
            .expect_err("elf");
        assert!(matches!(err, FetchError::NotWasm { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("starts with 7f 45 4c 46 (an ELF binary)"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_dir(tmp.path().join("modules/tmp"))
                .expect("tmp")
                .count(),
            0
        );

        // push refuses a non-wasm file.
        let text = tmp.path().join("notes.txt");
        std::fs::write(&text, "just some notes").expect("write");
        let err = push(&text, &format!("{}/notes:v1", registry.addr), None, &[])
            .await
            .expect_err("not wasm");
        assert!(matches!(err, FetchError::NotWasm { .. }), "{err}");
        assert!(err.to_string().contains("(text)"), "{err}");
    }

    #[tokio::test]
    async fn wasm_to_oci_layout_is_accepted() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let registry = TestRegistry::start().await;
        let bytes = module("legacy");
        push_raw(
            &registry,
            "legacy:v1",
            WASM_LAYER_WASM_TO_OCI,
            oci_client::manifest::WASM_CONFIG_MEDIA_TYPE,
            &bytes,
        )
        .await;
        let store = new_store(&tmp);
        let f = store
            .fetch(
                &format!("{}/legacy:v1", registry.addr),
                PullPolicy::IfNotPresent,
                &[],
            )
            .await
            .expect("legacy layout");
        assert_eq!(std::fs::read(&f.path).expect("read"), bytes);
    }

    #[tokio::test]
    async fn identical_bytes_are_stored_once() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let registry = TestRegistry::start().await;
        push_module(&registry, &tmp, "same", "one:v1").await;
        push_module(&registry, &tmp, "same", "two:v1").await;
        let web = TestWeb::start().await;
        web.put("/same.wasm", &module("same"));
        let store = new_store(&tmp);
        let a = store
            .fetch(
                &format!("{}/one:v1", registry.addr),
                PullPolicy::IfNotPresent,
                &[],
            )
            .await
            .expect("one");
        let b = store
            .fetch(
                &format!("{}/two:v1", registry.addr),
                PullPolicy::IfNotPresent,
                &[],
            )
            .await
            .expect("two");
        let c = store
            .fetch(
                &format!("{}/same.wasm", web.base),
                PullPolicy::IfNotPresent,
                &[],
            )
            .await
            .expect("url");
        assert_eq!(a.path, b.path);
        assert_eq!(a.path, c.path);
        assert_eq!(
            std::fs::read_dir(tmp.path().join("modules/sha256"))
                .expect("dir")
                .count(),
            1
        );
    }

    #[tokio::test]
    async fn http_modules_pinned_and_unpinned() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let web = TestWeb::start().await;
        let bytes = module("web");
        let hex = sha256_hex(&bytes);
        web.put("/m.wasm", &bytes);
        web.put("/tool", b"\x7fELF\x02\x01\x01\0");
        let store = new_store(&tmp);
        let url = format!("{}/m.wasm", web.base);

        let err = store
            .fetch(&url, PullPolicy::Never, &[])
            .await
            .expect_err("never");
        assert_eq!(err.reason(), "ErrImageNeverPull");
        let f = store
            .fetch(&url, PullPolicy::IfNotPresent, &[])
            .await
            .expect("download");
        assert!(f.pulled);
        assert_eq!(f.image_id, format!("{url}@sha256:{hex}"));
        assert_eq!(web.hits(), 1);
        let f = store
            .fetch(&url, PullPolicy::IfNotPresent, &[])
            .await
            .expect("cached");
        assert!(!f.pulled);
        assert_eq!(web.hits(), 1);
        store
            .fetch(&url, PullPolicy::Always, &[])
            .await
            .expect("again");
        assert_eq!(web.hits(), 2, "Always downloads an unpinned URL again");

        // Pinned: a module already in the store is never downloaded again.
        let pinned = format!("{url}@sha256:{hex}");
        let f = store
            .fetch(&pinned, PullPolicy::Always, &[])
            .await
            .expect("pinned");
        assert!(!f.pulled);
        assert_eq!(web.hits(), 2);
        let tmp2 = tempfile::tempdir().expect("tempdir");
        let fresh = new_store(&tmp2);
        let f = fresh
            .fetch(&pinned, PullPolicy::IfNotPresent, &[])
            .await
            .expect("pinned download");
        assert!(f.pulled);
        assert_eq!(f.digest, format!("sha256:{hex}"));

        let wrong = "1".repeat(64);
        let err = fresh
            .fetch(
                &format!("{url}@sha256:{wrong}"),
                PullPolicy::IfNotPresent,
                &[],
            )
            .await
            .expect_err("mismatch");
        assert!(matches!(err, FetchError::DigestMismatch { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("expected sha256:{wrong}"))
                && msg.contains(&format!("got sha256:{hex}")),
            "{msg}"
        );

        let missing = format!("{}/missing.wasm", web.base);
        let err = store
            .fetch(&missing, PullPolicy::IfNotPresent, &[])
            .await
            .expect_err("404");
        assert!(matches!(err, FetchError::NotFound { .. }), "{err}");
        assert!(
            err.to_string().contains("404") && err.to_string().contains(&missing),
            "{err}"
        );

        let err = store
            .fetch(&format!("{}/tool", web.base), PullPolicy::IfNotPresent, &[])
            .await
            .expect_err("elf");
        assert!(
            err.to_string()
                .contains("starts with 7f 45 4c 46 (an ELF binary)"),
            "{err}"
        );

        let small = ModuleStore::new(
            tmp.path().join("small"),
            StoreOptions {
                max_module_bytes: 8,
                ..StoreOptions::default()
            },
        )
        .expect("store");
        let err = small
            .fetch(&url, PullPolicy::IfNotPresent, &[])
            .await
            .expect_err("too large");
        assert!(
            matches!(err, FetchError::TooLarge { limit: 8, .. }),
            "{err}"
        );

        let closed = format!("http://127.0.0.1:{}/m.wasm", {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        });
        let err = store
            .fetch(&closed, PullPolicy::IfNotPresent, &[])
            .await
            .expect_err("refused");
        assert!(matches!(err, FetchError::Network { .. }), "{err}");
    }

    #[tokio::test]
    async fn concurrent_fetches_of_one_image_download_once() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let web = TestWeb::start().await;
        web.put("/m.wasm", &module("burst"));
        let store = new_store(&tmp);
        let url = format!("{}/m.wasm", web.base);
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let store = store.clone();
                let url = url.clone();
                tokio::spawn(async move { store.fetch(&url, PullPolicy::IfNotPresent, &[]).await })
            })
            .collect();
        for t in tasks {
            t.await.expect("join").expect("fetch");
        }
        assert_eq!(web.hits(), 1);
        assert!(lock(&store.inner.inflight).is_empty());
    }

    #[tokio::test]
    async fn file_modules_are_read_again_when_they_change() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = new_store(&tmp);
        let path = tmp.path().join("m.wasm");
        let image = format!("file://{}", path.display());

        let err = store
            .fetch(&image, PullPolicy::IfNotPresent, &[])
            .await
            .expect_err("missing");
        assert!(matches!(err, FetchError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("no file"), "{err}");

        std::fs::write(&path, module("one")).expect("write");
        let a = store
            .fetch(&image, PullPolicy::Never, &[])
            .await
            .expect("read");
        assert!(a.pulled);
        assert_eq!(a.image_id, format!("{image}@{}", a.digest));
        let again = store
            .fetch(&image, PullPolicy::IfNotPresent, &[])
            .await
            .expect("unchanged");
        assert!(!again.pulled);
        assert_eq!(again.digest, a.digest);

        std::fs::write(&path, module("two, longer")).expect("rewrite");
        let b = store
            .fetch(&image, PullPolicy::IfNotPresent, &[])
            .await
            .expect("changed");
        assert!(b.pulled);
        assert_ne!(b.digest, a.digest);

        std::fs::write(&path, "#!/bin/sh\necho hi\n").expect("script");
        let err = store
            .fetch(&image, PullPolicy::IfNotPresent, &[])
            .await
            .expect_err("script");
        assert!(err.to_string().contains("(a script)"), "{err}");
    }

    /// bcrypt of "s3cret" (cost 5), made once with `perl -e 'print crypt("s3cret", "$2b$05$abcdefghijklmnopqrstuu")'`
    /// so the test needs no hashing tool.
    const ALICE_HTPASSWD: &str =
        "alice:$2b$05$abcdefghijklmnopqrstuuLK7U1u6pVRmL7L1BBM2aS35PSZnDXlK";

    #[tokio::test]
    async fn registry_with_basic_auth_needs_pull_secrets() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let registry = TestRegistry::start_with_htpasswd(ALICE_HTPASSWD).await;
        let file = tmp.path().join("private.wasm");
        let bytes = module("private");
        std::fs::write(&file, &bytes).expect("write");
        let reference = format!("{}/private:v1", registry.addr);
        let alice = RegistryAuth {
            registry: registry.addr.clone(),
            username: "alice".into(),
            password: "s3cret".into(),
        };
        let mallory = RegistryAuth {
            password: "guess".into(),
            ..alice.clone()
        };

        let err = push(&file, &reference, None, &[])
            .await
            .expect_err("anonymous push");
        assert!(matches!(err, FetchError::Unauthorized { .. }), "{err}");
        push(&file, &reference, Some(&alice), &[])
            .await
            .expect("push with credentials");

        let store = new_store(&tmp);
        let err = store
            .fetch(&reference, PullPolicy::IfNotPresent, &[])
            .await
            .expect_err("anonymous");
        assert!(matches!(err, FetchError::Unauthorized { .. }), "{err}");
        assert_eq!(err.reason(), "ErrImagePull");
        let err = store
            .fetch(
                &reference,
                PullPolicy::IfNotPresent,
                std::slice::from_ref(&mallory),
            )
            .await
            .expect_err("wrong password");
        assert!(matches!(err, FetchError::Unauthorized { .. }), "{err}");

        // From a pod's imagePullSecret; a wrong credential listed first is skipped.
        use base64::Engine as _;
        let secret = format!(
            r#"{{"auths": {{"http://{}": {{"auth": "{}"}}}}}}"#,
            registry.addr,
            base64::engine::general_purpose::STANDARD.encode("alice:s3cret")
        );
        let mut auths = vec![mallory];
        auths.extend(auths_from_docker_config(secret.as_bytes()).expect("secret"));
        let f = store
            .fetch(&reference, PullPolicy::Always, &auths)
            .await
            .expect("pull with secret");
        assert_eq!(std::fs::read(&f.path).expect("read"), bytes);
    }
}
