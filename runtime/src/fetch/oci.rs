//! Modules in OCI registries: pulling the manifest and the wasm layer, resolving a tag to
//! a digest, and pushing a module as a CNCF Wasm OCI artifact.
//!
//! Two layouts are accepted when pulling: the wasm-to-oci one (a
//! `application/vnd.wasm.content.layer.v1+wasm` layer) and the CNCF TAG Runtime one (a
//! `application/wasm` layer with config `application/vnd.wasm.config.v0+json`). Registries
//! on loopback addresses, and those the node lists as insecure, are spoken to over plain
//! HTTP, as Docker does; all others over HTTPS.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{
    ImageIndexEntry, OciDescriptor, OciImageManifest, OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth as OciAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

use super::store::{is_sha256_hex, Store, Stored, WASM_MAGIC};
use super::{FetchError, RegistryAuth};

/// The layer media type written by wasm-to-oci (and many early tools).
pub const WASM_LAYER_WASM_TO_OCI: &str = "application/vnd.wasm.content.layer.v1+wasm";
/// The layer media type of the CNCF Wasm OCI artifact layout.
pub const WASM_LAYER_CNCF: &str = "application/wasm";
/// The config media type of the CNCF Wasm OCI artifact layout.
pub const WASM_CONFIG_CNCF: &str = "application/vnd.wasm.config.v0+json";

/// Registry clients, one per (plain HTTP?, credential): oci-client keeps one credential
/// per registry inside a client, so pods with different pull secrets for one registry
/// need different clients.
pub(crate) struct Registries {
    insecure: Vec<String>,
    connect_timeout: Duration,
    read_timeout: Duration,
    clients: Mutex<HashMap<ClientKey, Client>>,
}

/// Plain HTTP or not, and the basic-auth user and password (None for anonymous).
type ClientKey = (bool, Option<(String, String)>);

/// A module pulled (or found) for a reference.
pub(crate) struct Pulled {
    pub stored: Stored,
    /// The digest that names what the reference resolved to: the image index when there
    /// was one, otherwise the manifest.
    pub top_digest: String,
    /// The platform manifest's digest (equal to `top_digest` without an index).
    pub manifest_digest: String,
}

impl Registries {
    pub fn new(
        insecure: Vec<String>,
        connect_timeout: Duration,
        read_timeout: Duration,
    ) -> Registries {
        Registries {
            insecure,
            connect_timeout,
            read_timeout,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, registry: &str, auth: &OciAuth) -> Result<Client, FetchError> {
        let plain_http = is_plain_http(registry, &self.insecure);
        let creds = match auth {
            OciAuth::Basic(u, p) => Some((u.clone(), p.clone())),
            _ => None,
        };
        let key = (plain_http, creds);
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = build_client(plain_http, self.connect_timeout, self.read_timeout)?;
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// Asks the registry which digest `reference` (a tag) points at now: one HEAD request.
    pub async fn resolve(
        &self,
        reference: &Reference,
        image: &str,
        auths: &[RegistryAuth],
    ) -> Result<String, FetchError> {
        let candidates = candidates(reference, auths);
        let mut last = None;
        for auth in &candidates {
            let client = self.client(reference.resolve_registry(), auth)?;
            match client.fetch_manifest_digest(reference, auth).await {
                Ok(digest) => return Ok(digest),
                Err(e) => {
                    let err = FetchError::from_oci(image, e);
                    if !err.is_unauthorized() {
                        return Err(err);
                    }
                    last = Some(err);
                }
            }
        }
        Err(last.unwrap_or_else(|| FetchError::Registry {
            image: image.to_string(),
            detail: "no credentials to try".into(),
        }))
    }

    /// Pulls the manifest of `reference` and its wasm layer into the store (skipping the
    /// download when the store already has those bytes).
    pub async fn pull(
        &self,
        store: &Store,
        reference: &Reference,
        image: &str,
        auths: &[RegistryAuth],
        limit: u64,
    ) -> Result<Pulled, FetchError> {
        let candidates = candidates(reference, auths);
        let mut last = None;
        for auth in &candidates {
            let client = self.client(reference.resolve_registry(), auth)?;
            match pull_with(&client, auth, store, reference, image, limit).await {
                Err(err) if err.is_unauthorized() => last = Some(err),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| FetchError::Registry {
            image: image.to_string(),
            detail: "no credentials to try".into(),
        }))
    }
}

/// The credentials to try in order: those meant for the reference's registry, else none.
fn candidates(reference: &Reference, auths: &[RegistryAuth]) -> Vec<OciAuth> {
    let matching: Vec<OciAuth> = auths
        .iter()
        .filter(|a| a.matches(reference.registry()))
        .map(|a| OciAuth::Basic(a.username.clone(), a.password.clone()))
        .collect();
    if matching.is_empty() {
        vec![OciAuth::Anonymous]
    } else {
        matching
    }
}

async fn pull_with(
    client: &Client,
    auth: &OciAuth,
    store: &Store,
    reference: &Reference,
    image: &str,
    limit: u64,
) -> Result<Pulled, FetchError> {
    let (manifest, manifest_digest, list_digest) = client
        .pull_image_manifest_and_list_digest(reference, auth)
        .await
        .map_err(|e| FetchError::from_oci(image, e))?;
    let layer = wasm_layer(&manifest, image)?;
    if layer.size < 0 || layer.size as u64 > limit {
        return Err(FetchError::TooLarge {
            image: image.to_string(),
            limit,
        });
    }
    let hex = layer
        .digest
        .strip_prefix("sha256:")
        .filter(|h| is_sha256_hex(h))
        .ok_or_else(|| FetchError::Registry {
            image: image.to_string(),
            detail: format!("layer digest {} is not a sha256 digest", layer.digest),
        })?
        .to_ascii_lowercase();
    let top_digest = list_digest.unwrap_or_else(|| manifest_digest.clone());
    if let Some(stored) = store.get(&hex).await {
        tracing::debug!(image, digest = %layer.digest, "module bytes already in the store");
        return Ok(Pulled {
            stored,
            top_digest,
            manifest_digest,
        });
    }
    tracing::info!(image, digest = %layer.digest, size = layer.size, "pulling module layer");
    let mut blob = client
        .pull_blob_stream(reference, layer)
        .await
        .map_err(|e| FetchError::from_oci(image, e))?;
    let mut writer = store.writer(image, limit).await?;
    while let Some(chunk) = blob.next().await {
        let chunk = chunk.map_err(|e| FetchError::from_io_in_transfer(image, e))?;
        writer.write(&chunk).await?;
    }
    let stored = writer.finish(Some(&hex)).await?;
    Ok(Pulled {
        stored,
        top_digest,
        manifest_digest,
    })
}

fn wasm_layer<'m>(
    manifest: &'m OciImageManifest,
    image: &str,
) -> Result<&'m OciDescriptor, FetchError> {
    let mut wasm = manifest
        .layers
        .iter()
        .filter(|l| l.media_type == WASM_LAYER_WASM_TO_OCI || l.media_type == WASM_LAYER_CNCF);
    let first = wasm.next().ok_or_else(|| FetchError::NotWasmArtifact {
        image: image.to_string(),
        config_media_type: manifest.config.media_type.clone(),
        layer_media_types: manifest
            .layers
            .iter()
            .map(|l| l.media_type.clone())
            .collect(),
    })?;
    if wasm.next().is_some() {
        tracing::warn!(image, "artifact has several wasm layers; running the first");
    }
    if manifest.config.media_type != WASM_CONFIG_CNCF
        && manifest.config.media_type != oci_client::manifest::WASM_CONFIG_MEDIA_TYPE
    {
        tracing::debug!(image, config = %manifest.config.media_type, "wasm layer with an unusual config media type");
    }
    Ok(first)
}

/// Picks the wasm entry of an image index, else the only entry, else the host platform's.
fn wasm_platform_resolver(entries: &[ImageIndexEntry]) -> Option<String> {
    let wasm = entries.iter().find(|e| {
        e.platform
            .as_ref()
            .is_some_and(|p| p.architecture.to_string() == "wasm")
    });
    match (wasm, entries) {
        (Some(entry), _) => Some(entry.digest.clone()),
        (None, [only]) => Some(only.digest.clone()),
        (None, _) => oci_client::client::current_platform_resolver(entries),
    }
}

/// Installs the process-wide rustls provider (ring) if no one has yet: reqwest and
/// oci-client are built without one.
pub(crate) fn install_crypto_provider() {
    // An error only means a provider is already installed, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn build_client(
    plain_http: bool,
    connect_timeout: Duration,
    read_timeout: Duration,
) -> Result<Client, FetchError> {
    install_crypto_provider();
    let config = ClientConfig {
        protocol: if plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        platform_resolver: Some(Box::new(wasm_platform_resolver)),
        connect_timeout: Some(connect_timeout),
        read_timeout: Some(read_timeout),
        user_agent: concat!("wasmkube/", env!("CARGO_PKG_VERSION")),
        ..ClientConfig::default()
    };
    Client::try_from(config).map_err(|e| FetchError::Client {
        what: "registry",
        detail: super::error::error_chain(&e),
    })
}

/// True for registries spoken to over plain HTTP: loopback ones and the node's insecure
/// list (entries are `host[:port]`; an entry without a port covers every port).
pub(crate) fn is_plain_http(registry: &str, insecure: &[String]) -> bool {
    let host = host_of(registry);
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    if host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()) {
        return true;
    }
    insecure.iter().any(|entry| {
        let entry = entry.trim();
        entry.eq_ignore_ascii_case(registry)
            || (host_of(entry) == entry && entry.eq_ignore_ascii_case(host))
    })
}

/// The host part of `host[:port]` or `[v6]:port`.
fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match registry.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => registry,
    }
}

/// Parses an OCI reference the way Kubernetes does (Docker Hub defaults: `hello` is
/// `docker.io/library/hello:latest`).
pub(crate) fn parse_reference(image: &str) -> Result<Reference, FetchError> {
    let reference = image
        .parse::<Reference>()
        .map_err(|e| FetchError::InvalidImageName {
            image: image.to_string(),
            reason: e.to_string(),
        })?;
    // The parser lets some upper-case repositories through; registries never accept them.
    if reference
        .repository()
        .bytes()
        .any(|b| b.is_ascii_uppercase())
    {
        return Err(FetchError::InvalidImageName {
            image: image.to_string(),
            reason: "repository names must be lowercase".into(),
        });
    }
    Ok(reference)
}

/// The store key of a reference: by digest when it has one (a digest outranks a tag, as
/// in Kubernetes), else by tag.
pub(crate) fn reference_key(reference: &Reference) -> String {
    match reference.digest() {
        Some(digest) => digest_key(reference, digest),
        None => format!(
            "oci:{}/{}:{}",
            reference.registry(),
            reference.repository(),
            reference.tag().unwrap_or("latest")
        ),
    }
}

pub(crate) fn digest_key(reference: &Reference, digest: &str) -> String {
    format!(
        "oci:{}/{}@{}",
        reference.registry(),
        reference.repository(),
        digest
    )
}

/// What Kubernetes shows as the container's imageID: `registry/repository@digest`.
pub(crate) fn image_id(reference: &Reference, digest: &str) -> String {
    format!(
        "{}/{}@{}",
        reference.registry(),
        reference.repository(),
        digest
    )
}

/// Pushes the wasm module in `file` to `reference` as a CNCF Wasm OCI artifact (config
/// `application/vnd.wasm.config.v0+json`, one `application/wasm` layer) and returns the
/// manifest digest. Refuses a file that is not wasm. Loopback registries and those in
/// `insecure_registries` are spoken to over plain HTTP.
pub async fn push(
    file: &Path,
    reference: &str,
    auth: Option<&RegistryAuth>,
    insecure_registries: &[String],
) -> Result<String, FetchError> {
    let image = file.display().to_string();
    let bytes = tokio::fs::read(file)
        .await
        .map_err(|source| FetchError::ReadFile {
            path: file.to_path_buf(),
            source,
        })?;
    if !bytes.starts_with(WASM_MAGIC) {
        return Err(FetchError::NotWasm {
            image,
            looks_like: super::store::describe_non_wasm(&bytes[..bytes.len().min(64)]),
        });
    }
    let target = parse_reference(reference)?;
    if target.digest().is_some() {
        return Err(FetchError::InvalidImageName {
            image: reference.to_string(),
            reason: "push needs a tag, not a digest (the digest is computed from the content)"
                .into(),
        });
    }
    let created = tokio::fs::metadata(file)
        .await
        .and_then(|m| m.modified())
        .ok()
        .map(chrono::DateTime::<chrono::Utc>::from)
        .unwrap_or_else(chrono::Utc::now);
    let (layer, config, manifest) = artifact(bytes, created);
    let body = serde_json::to_vec(&manifest).map_err(|e| FetchError::Registry {
        image: reference.to_string(),
        detail: format!("cannot encode the manifest: {e}"),
    })?;
    let manifest_digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));

    let registries = Registries::new(
        insecure_registries.to_vec(),
        Duration::from_secs(10),
        Duration::from_secs(300),
    );
    let oci_auth = match auth {
        Some(a) => OciAuth::Basic(a.username.clone(), a.password.clone()),
        None => OciAuth::Anonymous,
    };
    let client = registries.client(target.resolve_registry(), &oci_auth)?;
    let err = |e| FetchError::from_oci(reference, e);
    client
        .auth(&target, &oci_auth, oci_client::RegistryOperation::Push)
        .await
        .map_err(err)?;
    for (data, digest) in [
        (layer.data, &manifest.layers[0].digest),
        (config.data, &manifest.config.digest),
    ] {
        if client.blob_exists(&target, digest).await.map_err(err)? {
            continue;
        }
        client.push_blob(&target, data, digest).await.map_err(err)?;
    }
    let content_type = http::HeaderValue::from_static(OCI_IMAGE_MEDIA_TYPE);
    client
        .push_manifest_raw(&target, body, content_type)
        .await
        .map_err(err)?;
    tracing::info!(reference, digest = %manifest_digest, "pushed wasm module");
    Ok(manifest_digest)
}

/// Builds the layer, config and manifest of a CNCF Wasm OCI artifact. `created` is the
/// file's modification time, so pushing the same file twice gives the same digest.
fn artifact(
    bytes: Vec<u8>,
    created: chrono::DateTime<chrono::Utc>,
) -> (ImageLayer, Config, OciImageManifest) {
    // A component's version field is 0x0d (and layer 1); core modules are version 1.
    let is_component = bytes.get(4..8) == Some(&[0x0d, 0x00, 0x01, 0x00][..]);
    let layer = ImageLayer::new(bytes, WASM_LAYER_CNCF.to_string(), None);
    let layer_digest = layer.sha256_digest();
    let mut config_json = serde_json::json!({
        "created": created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "architecture": "wasm",
        "os": if is_component { "wasip2" } else { "wasip1" },
        "layerDigests": [layer_digest],
    });
    if is_component {
        // The spec asks for the component's world; without a WIT decoder at hand we
        // declare it present but empty rather than guess.
        config_json["component"] = serde_json::json!({"exports": [], "imports": []});
    }
    let config = Config::new(
        config_json.to_string().into_bytes(),
        WASM_CONFIG_CNCF.to_string(),
        None,
    );
    let manifest = OciImageManifest {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_MEDIA_TYPE.to_string()),
        config: OciDescriptor {
            media_type: WASM_CONFIG_CNCF.to_string(),
            digest: config.sha256_digest(),
            size: config.data.len() as i64,
            ..OciDescriptor::default()
        },
        layers: vec![OciDescriptor {
            media_type: WASM_LAYER_CNCF.to_string(),
            digest: layer_digest,
            size: layer.data.len() as i64,
            ..OciDescriptor::default()
        }],
        ..OciImageManifest::default()
    };
    (layer, config, manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_listed_registries_use_plain_http() {
        assert!(is_plain_http("localhost:5000", &[]));
        assert!(is_plain_http("127.0.0.1:5000", &[]));
        assert!(is_plain_http("127.3.2.1", &[]));
        assert!(is_plain_http("[::1]:5000", &[]));
        assert!(!is_plain_http("ghcr.io", &[]));
        assert!(!is_plain_http("10.0.0.5:5000", &[]));
        let insecure = vec!["10.0.0.5:5000".to_string(), "reg.lan".to_string()];
        assert!(is_plain_http("10.0.0.5:5000", &insecure));
        assert!(!is_plain_http("10.0.0.5:5001", &insecure));
        assert!(is_plain_http("reg.lan:8080", &insecure));
        assert!(is_plain_http("reg.lan", &insecure));
    }

    #[test]
    fn references_follow_docker_hub_defaults() {
        let r = parse_reference("hello").expect("parse");
        assert_eq!(reference_key(&r), "oci:docker.io/library/hello:latest");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse_reference(&format!("localhost:5000/x/y:v1@{d}")).expect("parse");
        assert_eq!(reference_key(&r), format!("oci:localhost:5000/x/y@{d}"));
        assert_eq!(image_id(&r, &d), format!("localhost:5000/x/y@{d}"));
        assert_eq!(
            parse_reference("UPPER/x").expect_err("bad").reason(),
            "InvalidImageName"
        );
    }

    #[test]
    fn artifact_follows_the_cncf_layout() {
        let created = chrono::DateTime::<chrono::Utc>::from(std::time::UNIX_EPOCH);
        let (_, config, manifest) = artifact(b"\0asm\x01\0\0\0".to_vec(), created);
        assert_eq!(manifest.config.media_type, WASM_CONFIG_CNCF);
        assert_eq!(manifest.layers[0].media_type, WASM_LAYER_CNCF);
        let cfg: serde_json::Value = serde_json::from_slice(&config.data).expect("json");
        assert_eq!(cfg["os"], "wasip1");
        assert_eq!(cfg["architecture"], "wasm");
        assert_eq!(
            cfg["layerDigests"][0],
            serde_json::json!(manifest.layers[0].digest)
        );
        let (_, config, _) = artifact(b"\0asm\x0d\0\x01\0".to_vec(), created);
        let cfg: serde_json::Value = serde_json::from_slice(&config.data).expect("json");
        assert_eq!(cfg["os"], "wasip2");
    }
}
