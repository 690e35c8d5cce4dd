//! A pod's volumes, laid out as host directories its containers preopen.
//!
//! Every volume lives in one of the pod's two directories ([`PodDirs`]) except
//! hostPath, which is the host directory itself. Volumes the kubelet backs with memory
//! (secret, downwardAPI, projected, and emptyDir with `medium: Memory`) go to
//! `<memory>/<name>`, which the agent keeps on a tmpfs, so Secrets and tokens never
//! reach the disk; the others go to `<disk>/volumes/<name>`:
//!
//! - emptyDir: a plain directory, kept across container restarts and removed with the
//!   pod (its `sizeLimit` is checked by the pod worker through [`usage`]);
//! - hostPath: types `""`, `DirectoryOrCreate` and `Directory` (a missing path is
//!   created for `""`, as containerd does); file, socket and device types are refused
//!   because a WASI preopen is always a directory;
//! - configMap, secret, downwardAPI and projected (configMap, secret, downwardAPI,
//!   serviceAccountToken): files published by the [`atomic`] writer, re-projected by
//!   [`PodVolumes::refresh`] so updates of the objects reach the files. File modes
//!   (`defaultMode`, `items[].mode`) are ignored: WASI has no permission bits.
//!
//! [`PodVolumes::preopens`] turns a container's volumeMounts into [`Preopen`]s;
//! `subPath` / `subPathExpr` are resolved with cap-std inside the volume ([`subpath`]).
//! configMap, secret, downwardAPI and projected mounts are always read-only.
//!
//! Filesystem work is done inline: it touches a handful of small local files.

pub mod atomic;
pub mod downward;
pub mod source;
pub mod subpath;
pub mod usage;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, HostPathVolumeSource, KeyToPath, Pod,
    ServiceAccountTokenProjection, Volume,
};

pub use self::downward::DownwardError;
pub use self::source::{IssuedToken, ObjectSource, SourceError, TokenSpec};
pub use self::subpath::SubPathError;
use crate::wasm::Preopen;

/// A volume or mount that cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// Setting up or refreshing one volume failed; worded like the kubelet's
    /// `FailedMount` event so it can be shown as is.
    #[error("MountVolume.SetUp failed for volume \"{volume}\" : {reason}")]
    SetUp {
        /// The volume's name in the pod spec.
        volume: String,
        /// What went wrong.
        #[source]
        reason: SetUpError,
    },
    /// A volumeMount names a volume the pod does not declare.
    #[error("cannot find volume \"{volume}\" to mount into container \"{container}\"")]
    UnknownVolume {
        /// The volume named by the mount.
        volume: String,
        /// The container with the mount.
        container: String,
    },
    /// A mount's `subPath` cannot be used.
    #[error("container \"{container}\": subPath \"{sub_path}\" of volume \"{volume}\" {reason}")]
    SubPath {
        /// The container with the mount.
        container: String,
        /// The mounted volume.
        volume: String,
        /// The sub-path after `subPathExpr` expansion.
        sub_path: String,
        /// Why it is refused.
        #[source]
        reason: SubPathError,
    },
    /// A mount's `subPathExpr` cannot be expanded.
    #[error("container \"{container}\": subPathExpr of volume \"{volume}\": {message}")]
    SubPathExpr {
        /// The container with the mount.
        container: String,
        /// The mounted volume.
        volume: String,
        /// What is wrong (missing variables, both subPath and subPathExpr set).
        message: String,
    },
    /// The pod's own directory could not be created, opened or removed.
    #[error("pod directory {}: {source}", path.display())]
    PodDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Why one volume could not be set up (messages match the kubelet's where it has one).
#[derive(Debug, thiserror::Error)]
pub enum SetUpError {
    /// A non-optional ConfigMap does not exist.
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    /// A non-optional Secret does not exist.
    #[error("secret \"{0}\" not found")]
    SecretNotFound(String),
    /// `items` names a key the ConfigMap lacks.
    #[error("configmap references non-existent config key: {0}")]
    MissingConfigMapKey(String),
    /// `items` names a key the Secret lacks.
    #[error("secret references non-existent secret key: {0}")]
    MissingSecretKey(String),
    /// A downwardAPI item cannot be rendered.
    #[error(transparent)]
    Downward(#[from] DownwardError),
    /// The TokenRequest for a projected serviceAccountToken failed.
    #[error("failed to fetch token: {0}")]
    Token(#[source] SourceError),
    /// Reading a ConfigMap or Secret from the API failed.
    #[error(transparent)]
    Api(SourceError),
    /// A hostPath volume is unusable (type check failed or not a directory).
    #[error("{0}")]
    HostPath(String),
    /// The volume type cannot be offered to WASI containers.
    #[error("volume type {0} is not supported on wasmkube nodes")]
    Unsupported(String),
    /// The volume spec is malformed (bad name, missing field).
    #[error("{0}")]
    Invalid(String),
    /// Publishing the files failed.
    #[error(transparent)]
    Atomic(#[from] atomic::AtomicError),
    /// Another filesystem error.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The kinds of volume a wasmkube node can offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeKind {
    /// `emptyDir`.
    EmptyDir,
    /// `hostPath`.
    HostPath,
    /// `configMap`.
    ConfigMap,
    /// `secret`.
    Secret,
    /// `downwardAPI`.
    DownwardApi,
    /// `projected`.
    Projected,
}

impl VolumeKind {
    /// Kubernetes mounts API-projected volumes read-only whatever the mount says.
    pub fn always_read_only(self) -> bool {
        self.is_projected()
    }

    /// Whether the agent writes the contents (and [`PodVolumes::refresh`] updates them).
    pub fn is_projected(self) -> bool {
        matches!(
            self,
            Self::ConfigMap | Self::Secret | Self::DownwardApi | Self::Projected
        )
    }

    /// Whether the kubelet backs this volume with memory (a tmpfs): Secrets, tokens
    /// and the downward API, and emptyDirs that ask for it.
    fn memory_backed(self, volume: &Volume) -> bool {
        match self {
            Self::Secret | Self::DownwardApi | Self::Projected => true,
            Self::EmptyDir => {
                volume.empty_dir.as_ref().and_then(|e| e.medium.as_deref()) == Some("Memory")
            }
            Self::HostPath | Self::ConfigMap => false,
        }
    }

    /// Missing sub-paths are created in writable volumes, as the kubelet does.
    fn creates_sub_paths(self) -> bool {
        matches!(self, Self::EmptyDir | Self::HostPath)
    }

    fn of(volume: &Volume) -> Result<Self, SetUpError> {
        let kinds = [
            (volume.empty_dir.is_some(), Self::EmptyDir),
            (volume.host_path.is_some(), Self::HostPath),
            (volume.config_map.is_some(), Self::ConfigMap),
            (volume.secret.is_some(), Self::Secret),
            (volume.downward_api.is_some(), Self::DownwardApi),
            (volume.projected.is_some(), Self::Projected),
        ];
        if let Some((_, kind)) = kinds.iter().find(|(set, _)| *set) {
            return Ok(*kind);
        }
        Err(SetUpError::Unsupported(
            unsupported_kind_name(volume).into(),
        ))
    }
}

fn unsupported_kind_name(volume: &Volume) -> &'static str {
    if volume.persistent_volume_claim.is_some() {
        "persistentVolumeClaim"
    } else if volume.ephemeral.is_some() {
        "ephemeral"
    } else if volume.csi.is_some() {
        "csi"
    } else if volume.image.is_some() {
        "image"
    } else if volume.nfs.is_some() {
        "nfs"
    } else if volume.git_repo.is_some() {
        "gitRepo"
    } else {
        "(unknown or none)"
    }
}

/// One laid-out volume.
#[derive(Debug, Clone)]
struct PreparedVolume {
    kind: VolumeKind,
    /// The host directory containers see (for hostPath, the host path itself).
    path: PathBuf,
}

/// A projected token and when to replace it.
#[derive(Debug, Clone)]
struct CachedToken {
    token: String,
    refresh_at: SystemTime,
}

/// The kubelet rotates a token after 80% of its lifetime, or after a day.
const TOKEN_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// The API default for `serviceAccountToken.expirationSeconds`.
const DEFAULT_TOKEN_SECONDS: i64 = 3600;

/// Where one pod's files go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodDirs {
    /// The pod's directory on disk; its other volumes are in `volumes/` below it.
    pub disk: PathBuf,
    /// The directory of the pod's memory-backed volumes.
    pub memory: PathBuf,
}

impl PodDirs {
    /// The directories of pod `uid` under the agent's roots; without a memory root the
    /// memory-backed volumes stay beside the others on disk.
    pub fn of(pods_root: &Path, memory_root: Option<&Path>, uid: &str) -> PodDirs {
        let disk = pods_root.join(uid);
        let memory = match memory_root {
            Some(root) => root.join(uid),
            None => disk.join("volumes"),
        };
        PodDirs { disk, memory }
    }

    /// Everything under `pod_dir` (no tmpfs).
    pub fn on_disk(pod_dir: &Path) -> PodDirs {
        PodDirs {
            disk: pod_dir.to_path_buf(),
            memory: pod_dir.join("volumes"),
        }
    }

    /// Deletes both directories (see [`remove_pod_dir`]); missing ones are fine.
    pub fn remove(&self) -> Result<(), VolumeError> {
        let memory = if self.memory.starts_with(&self.disk) {
            Ok(())
        } else {
            remove_pod_dir(&self.memory)
        };
        remove_pod_dir(&self.disk).and(memory)
    }
}

/// The volumes of one pod, laid out in its [`PodDirs`].
#[derive(Debug)]
pub struct PodVolumes {
    dirs: PodDirs,
    volumes: BTreeMap<String, PreparedVolume>,
    /// Projected tokens by (volume, source index), so refreshes reuse a token until it
    /// is due for rotation instead of requesting one every time.
    tokens: Mutex<HashMap<(String, usize), CachedToken>>,
    /// Open sub-path directories by container: the `/proc/<pid>/fd/<n>` paths handed
    /// out by [`PodVolumes::preopens`] stay valid while these live. Replaced on the
    /// container's next `preopens` call (its restart).
    sub_paths: Mutex<HashMap<String, Vec<subpath::SubPathDir>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded maps stay consistent even if a holder panicked mid-way.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl PodVolumes {
    /// Lays out every volume of `pod` in `dirs`. Idempotent: called again for the same
    /// pod (after an agent restart) it keeps emptyDir contents and only rewrites
    /// projected files that changed. A pod without volumes creates no directory.
    pub async fn prepare<S: ObjectSource>(
        source: &S,
        pod: &Pod,
        dirs: &PodDirs,
    ) -> Result<PodVolumes, VolumeError> {
        let mut prepared = PodVolumes {
            dirs: dirs.clone(),
            volumes: BTreeMap::new(),
            tokens: Mutex::new(HashMap::new()),
            sub_paths: Mutex::new(HashMap::new()),
        };
        let spec_volumes = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_deref())
            .unwrap_or_default();
        for volume in spec_volumes {
            let set_up = |reason| VolumeError::SetUp {
                volume: volume.name.clone(),
                reason,
            };
            if prepared.volumes.contains_key(&volume.name) {
                return Err(set_up(SetUpError::Invalid("duplicate volume name".into())));
            }
            check_volume_name(&volume.name).map_err(set_up)?;
            let kind = VolumeKind::of(volume).map_err(set_up)?;
            let path = match (&volume.host_path, kind) {
                (Some(host), VolumeKind::HostPath) => check_host_path(host).map_err(set_up)?,
                _ => {
                    let root = if kind.memory_backed(volume) {
                        dirs.memory.clone()
                    } else {
                        dirs.disk.join("volumes")
                    };
                    std::fs::create_dir_all(&root).map_err(|source| VolumeError::PodDir {
                        path: root.clone(),
                        source,
                    })?;
                    // The name is a plain file name (checked above), so it stays in root.
                    let path = root.join(&volume.name);
                    match std::fs::create_dir(&path) {
                        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                            return Err(set_up(e.into()))
                        }
                        _ => path,
                    }
                }
            };
            prepared
                .volumes
                .insert(volume.name.clone(), PreparedVolume { kind, path });
            if kind.is_projected() {
                let changed = prepared
                    .project(source, pod, volume)
                    .await
                    .map_err(set_up)?;
                tracing::debug!(pod = %pod_key(pod), volume = %volume.name, changed, "volume projected");
            }
        }
        Ok(prepared)
    }

    /// The kind and host directory of a volume, if the pod declares it.
    pub fn volume(&self, name: &str) -> Option<(VolumeKind, &Path)> {
        self.volumes.get(name).map(|v| (v.kind, v.path.as_path()))
    }

    /// Re-projects configMap, secret, downwardAPI and projected volumes from the current
    /// objects and `pod` (labels and annotations may have changed), rotating
    /// serviceAccountTokens past 80% of their lifetime. Returns whether any file
    /// changed. A volume that fails keeps its previous contents; every volume is tried
    /// and the first failure is returned.
    pub async fn refresh<S: ObjectSource>(
        &self,
        source: &S,
        pod: &Pod,
    ) -> Result<bool, VolumeError> {
        let spec_volumes = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_deref())
            .unwrap_or_default();
        let mut changed = false;
        let mut first_error = None;
        for volume in spec_volumes {
            let Some(prepared) = self.volumes.get(&volume.name) else {
                continue;
            };
            if !prepared.kind.is_projected() {
                continue;
            }
            match self.project(source, pod, volume).await {
                Ok(true) => {
                    tracing::info!(pod = %pod_key(pod), volume = %volume.name, "volume contents updated");
                    changed = true;
                }
                Ok(false) => {}
                Err(reason) => {
                    tracing::warn!(pod = %pod_key(pod), volume = %volume.name, error = %reason, "volume refresh failed");
                    first_error.get_or_insert(VolumeError::SetUp {
                        volume: volume.name.clone(),
                        reason,
                    });
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(changed),
        }
    }

    /// The preopens for `container`'s volumeMounts, in mount order. `env` is the
    /// container's resolved environment, used to expand `subPathExpr`.
    ///
    /// Sub-path mounts are returned as `/proc/<pid>/fd/<n>` paths of directories opened
    /// here; they stay valid until the next call for the same container or until these
    /// volumes are dropped.
    pub fn preopens(
        &self,
        container: &Container,
        env: &[(String, String)],
    ) -> Result<Vec<Preopen>, VolumeError> {
        let mut preopens = Vec::new();
        let mut handles = Vec::new();
        for mount in container.volume_mounts.iter().flatten() {
            let volume =
                self.volumes
                    .get(&mount.name)
                    .ok_or_else(|| VolumeError::UnknownVolume {
                        volume: mount.name.clone(),
                        container: container.name.clone(),
                    })?;
            let read_only = mount.read_only.unwrap_or(false) || volume.kind.always_read_only();
            let sub_path = sub_path_of(container, mount, env)?;
            let host = if sub_path.is_empty() {
                volume.path.clone()
            } else {
                let handle =
                    subpath::open(&volume.path, &sub_path, volume.kind.creates_sub_paths())
                        .map_err(|reason| VolumeError::SubPath {
                            container: container.name.clone(),
                            volume: mount.name.clone(),
                            sub_path: sub_path.clone(),
                            reason,
                        })?;
                let host = handle.host_path();
                handles.push(handle);
                host
            };
            preopens.push(Preopen {
                host,
                guest: mount.mount_path.clone(),
                read_only,
            });
        }
        lock(&self.sub_paths).insert(container.name.clone(), handles);
        Ok(preopens)
    }

    /// Deletes the pod's directories with everything in them (see [`PodDirs::remove`]).
    pub fn remove(self) -> Result<(), VolumeError> {
        let dirs = self.dirs.clone();
        drop(self);
        dirs.remove()
    }

    /// Builds a projected-kind volume's payload and publishes it.
    async fn project<S: ObjectSource>(
        &self,
        source: &S,
        pod: &Pod,
        volume: &Volume,
    ) -> Result<bool, SetUpError> {
        let payload = self.payload(source, pod, volume).await?;
        let path = match self.volumes.get(&volume.name) {
            Some(prepared) => &prepared.path,
            None => return Err(SetUpError::Invalid("volume not prepared".into())),
        };
        let dir = Dir::open_ambient_dir(path, ambient_authority())?;
        Ok(atomic::write(&dir, &payload)?)
    }

    async fn payload<S: ObjectSource>(
        &self,
        source: &S,
        pod: &Pod,
        volume: &Volume,
    ) -> Result<atomic::Payload, SetUpError> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let mut payload = atomic::Payload::new();
        if let Some(cm) = &volume.config_map {
            config_map_files(
                source,
                ns,
                &cm.name,
                cm.items.as_deref(),
                cm.optional,
                &mut payload,
            )
            .await?;
        } else if let Some(secret) = &volume.secret {
            let name = secret
                .secret_name
                .as_deref()
                .ok_or_else(|| SetUpError::Invalid("secret volume without secretName".into()))?;
            secret_files(
                source,
                ns,
                name,
                secret.items.as_deref(),
                secret.optional,
                &mut payload,
            )
            .await?;
        } else if let Some(downward) = &volume.downward_api {
            downward_files(pod, downward.items.as_deref(), &mut payload)?;
        } else if let Some(projected) = &volume.projected {
            for (index, projection) in projected.sources.iter().flatten().enumerate() {
                if let Some(cm) = &projection.config_map {
                    config_map_files(
                        source,
                        ns,
                        &cm.name,
                        cm.items.as_deref(),
                        cm.optional,
                        &mut payload,
                    )
                    .await?;
                } else if let Some(secret) = &projection.secret {
                    secret_files(
                        source,
                        ns,
                        &secret.name,
                        secret.items.as_deref(),
                        secret.optional,
                        &mut payload,
                    )
                    .await?;
                } else if let Some(downward) = &projection.downward_api {
                    downward_files(pod, downward.items.as_deref(), &mut payload)?;
                } else if let Some(token) = &projection.service_account_token {
                    let value = self.token(source, pod, &volume.name, index, token).await?;
                    payload.insert(token.path.clone(), value.into_bytes());
                } else if projection.cluster_trust_bundle.is_some() {
                    return Err(SetUpError::Unsupported(
                        "projected clusterTrustBundle".into(),
                    ));
                } else {
                    return Err(SetUpError::Unsupported("projected source (unknown)".into()));
                }
            }
        }
        Ok(payload)
    }

    /// The cached token for a projected source, or a fresh one when none is cached or
    /// the cached one is due for rotation.
    async fn token<S: ObjectSource>(
        &self,
        source: &S,
        pod: &Pod,
        volume: &str,
        index: usize,
        projection: &ServiceAccountTokenProjection,
    ) -> Result<String, SetUpError> {
        let key = (volume.to_string(), index);
        let now = SystemTime::now();
        if let Some(cached) = lock(&self.tokens).get(&key) {
            if now < cached.refresh_at {
                return Ok(cached.token.clone());
            }
        }
        let spec = pod.spec.as_ref();
        #[allow(deprecated)] // `serviceAccount` is the deprecated alias, still honoured.
        let service_account = spec
            .and_then(|s| {
                s.service_account_name
                    .clone()
                    .or_else(|| s.service_account.clone())
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into());
        let request = TokenSpec {
            namespace: pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            service_account,
            audiences: projection
                .audience
                .iter()
                .filter(|a| !a.is_empty())
                .cloned()
                .collect(),
            expiration_seconds: projection
                .expiration_seconds
                .unwrap_or(DEFAULT_TOKEN_SECONDS),
            pod_name: pod.metadata.name.clone().unwrap_or_default(),
            pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
        };
        let issued = source
            .service_account_token(&request)
            .await
            .map_err(SetUpError::Token)?;
        let lifetime = issued.expires_at.duration_since(now).unwrap_or_default();
        let refresh_at = now + (lifetime.mul_f64(0.8)).min(TOKEN_MAX_AGE);
        tracing::debug!(pod = %pod_key(pod), volume, "service account token issued");
        lock(&self.tokens).insert(
            key,
            CachedToken {
                token: issued.token.clone(),
                refresh_at,
            },
        );
        Ok(issued.token)
    }
}

/// Deletes `pod_dir` and everything below it without following symlinks, so nothing
/// outside it (hostPath contents, a symlink planted by a container) is touched. A
/// missing directory is not an error.
pub fn remove_pod_dir(pod_dir: &Path) -> Result<(), VolumeError> {
    let pod_dir_err = |source| VolumeError::PodDir {
        path: pod_dir.to_path_buf(),
        source,
    };
    let (Some(parent), Some(name)) = (pod_dir.parent(), pod_dir.file_name()) else {
        return Err(pod_dir_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a removable directory",
        )));
    };
    let parent = match Dir::open_ambient_dir(parent, ambient_authority()) {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(pod_dir_err(e)),
    };
    match parent.remove_dir_all(name) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(pod_dir_err(e)),
    }
}

fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

/// Volume names become directory names, so only plain names are accepted (the API
/// server requires DNS labels; this guards against one that does not).
fn check_volume_name(name: &str) -> Result<(), SetUpError> {
    let plain = !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if plain {
        Ok(())
    } else {
        Err(SetUpError::Invalid(format!("invalid volume name {name:?}")))
    }
}

/// Checks (or creates) a hostPath volume's directory per its `type`.
fn check_host_path(source: &HostPathVolumeSource) -> Result<PathBuf, SetUpError> {
    let path = PathBuf::from(&source.path);
    if !path.is_absolute() {
        return Err(SetUpError::HostPath(format!(
            "hostPath {} must be an absolute path",
            source.path
        )));
    }
    let kind = source.type_.as_deref().unwrap_or("");
    match kind {
        "" | "DirectoryOrCreate" => {
            if let Err(e) = std::fs::create_dir_all(&path) {
                if e.kind() != io::ErrorKind::AlreadyExists {
                    return Err(SetUpError::HostPath(format!(
                        "hostPath {} cannot be created: {e}",
                        source.path
                    )));
                }
            }
        }
        "Directory" => {}
        "File" | "FileOrCreate" | "Socket" | "CharDevice" | "BlockDevice" => {
            return Err(SetUpError::HostPath(format!(
                "hostPath type {kind} is not supported: WASI preopens can only be directories"
            )));
        }
        other => {
            return Err(SetUpError::HostPath(format!(
                "invalid hostPath type {other:?}"
            )));
        }
    }
    if path.is_dir() {
        Ok(path)
    } else {
        Err(SetUpError::HostPath(format!(
            "hostPath type check failed: {} is not a directory",
            source.path
        )))
    }
}

/// The mount's sub-path: `subPath`, or `subPathExpr` expanded against the container's
/// environment (a reference to an unset or empty variable is an error, as in the
/// kubelet).
fn sub_path_of(
    container: &Container,
    mount: &k8s_openapi::api::core::v1::VolumeMount,
    env: &[(String, String)],
) -> Result<String, VolumeError> {
    let expr_err = |message: String| VolumeError::SubPathExpr {
        container: container.name.clone(),
        volume: mount.name.clone(),
        message,
    };
    let sub_path = mount.sub_path.as_deref().unwrap_or("");
    let Some(expr) = mount.sub_path_expr.as_deref().filter(|e| !e.is_empty()) else {
        return Ok(sub_path.to_string());
    };
    if !sub_path.is_empty() {
        return Err(expr_err(
            "subPath and subPathExpr are mutually exclusive".into(),
        ));
    }
    let mut missing = Vec::new();
    let expanded = crate::env::expand_with(expr, |name| {
        match env.iter().rev().find(|(k, _)| k == name) {
            Some((_, v)) if !v.is_empty() => Some(v.clone()),
            _ => {
                missing.push(name.to_string());
                Some(String::new())
            }
        }
    });
    if !missing.is_empty() {
        missing.sort();
        missing.dedup();
        return Err(expr_err(format!(
            "missing value for {}",
            missing.join(", ")
        )));
    }
    Ok(expanded)
}

/// Adds a ConfigMap's keys (all, or `items`) to `payload`; `data` and `binaryData`.
async fn config_map_files<S: ObjectSource>(
    source: &S,
    namespace: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
    payload: &mut atomic::Payload,
) -> Result<(), SetUpError> {
    let optional = optional.unwrap_or(false);
    let Some(cm) = source
        .config_map(namespace, name)
        .await
        .map_err(SetUpError::Api)?
    else {
        return if optional {
            Ok(())
        } else {
            Err(SetUpError::ConfigMapNotFound(name.into()))
        };
    };
    let mut data: BTreeMap<String, Vec<u8>> = cm
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    data.extend(
        cm.binary_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0)),
    );
    select_items(
        data,
        items,
        optional,
        payload,
        SetUpError::MissingConfigMapKey,
    )
}

/// Adds a Secret's keys (all, or `items`) to `payload`, base64-decoded.
async fn secret_files<S: ObjectSource>(
    source: &S,
    namespace: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
    payload: &mut atomic::Payload,
) -> Result<(), SetUpError> {
    let optional = optional.unwrap_or(false);
    let Some(secret) = source
        .secret(namespace, name)
        .await
        .map_err(SetUpError::Api)?
    else {
        return if optional {
            Ok(())
        } else {
            Err(SetUpError::SecretNotFound(name.into()))
        };
    };
    // `data` arrives base64-decoded (ByteString); `stringData` is write-only on a real
    // API server but honoured in case a source returns it.
    let mut data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    data.extend(
        secret
            .string_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes())),
    );
    select_items(data, items, optional, payload, SetUpError::MissingSecretKey)
}

/// Maps keys to paths: every key under its own name without `items`, else each item's
/// key to its path (a missing key is skipped when optional, an error otherwise).
fn select_items(
    mut data: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    optional: bool,
    payload: &mut atomic::Payload,
    missing: fn(String) -> SetUpError,
) -> Result<(), SetUpError> {
    match items.filter(|i| !i.is_empty()) {
        None => payload.extend(data),
        Some(items) => {
            for item in items {
                match data.remove(&item.key) {
                    Some(value) => {
                        payload.insert(item.path.clone(), value);
                    }
                    None if optional => {}
                    None => return Err(missing(item.key.clone())),
                }
            }
        }
    }
    Ok(())
}

/// Renders downwardAPI items into `payload`.
fn downward_files(
    pod: &Pod,
    items: Option<&[DownwardAPIVolumeFile]>,
    payload: &mut atomic::Payload,
) -> Result<(), SetUpError> {
    for item in items.unwrap_or_default() {
        let value = if let Some(field) = &item.field_ref {
            downward::metadata_field(pod, &field.field_path)?
        } else if let Some(resource) = &item.resource_field_ref {
            let container = resource.container_name.as_deref().ok_or_else(|| {
                SetUpError::Invalid(format!(
                    "downwardAPI item {:?}: resourceFieldRef needs a containerName",
                    item.path
                ))
            })?;
            downward::container_resource(
                pod,
                container,
                &resource.resource,
                resource.divisor.as_ref(),
                downward::node_allocatable(),
            )?
        } else {
            return Err(SetUpError::Invalid(format!(
                "downwardAPI item {:?} has neither fieldRef nor resourceFieldRef",
                item.path
            )));
        };
        payload.insert(item.path.clone(), value.into_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
