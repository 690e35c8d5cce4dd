//! The sandboxes of the pods running on this node: for each running container, what its
//! instance was given (module, argv, environment, volumes, pod address, limits).
//!
//! Anything that runs "inside a container" — `kubectl exec`, exec probes, postStart and
//! preStop exec hooks — starts another instance of the container's module with the same
//! sandbox and its own argv and stdio. A wasm container has no process tree to join:
//! running the module again with the same grants is what entering it means here.
//! `kubectl port-forward` finds the pod's address here too.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncRead;
use tokio_util::sync::CancellationToken;

use crate::wasm::{Egress, Exit, Names, OutputSink, Preopen, Program, RunSpec};

/// Why a container's sandbox could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SandboxError {
    /// The pod does not run on this node (or has not started yet).
    #[error("pod {namespace}/{name} is not running on this node")]
    PodNotFound { namespace: String, name: String },
    /// The pod has no container of that name.
    #[error("container {container} is not valid for pod {name}")]
    ContainerNotFound { name: String, container: String },
    /// The container exists but is not running now.
    #[error("container {container} in pod {name} is not running")]
    NotRunning { name: String, container: String },
}

/// What one container instance runs with; cheap to clone.
#[derive(Clone)]
pub struct ContainerSandbox {
    pub program: Program,
    /// The container's own argv (command + args, expanded).
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub preopens: Vec<Preopen>,
    pub memory_limit: Option<u64>,
    /// CPU limit in millicores, if any.
    pub cpu_limit_millis: Option<u64>,
    pub pod_ip: Option<IpAddr>,
    pub egress: Egress,
    /// The names the pod's lookups try before the host's resolver.
    pub names: Option<Arc<dyn Names>>,
}

/// The standard streams of an instance started in a sandbox.
pub struct ExecIo {
    /// `None` is an empty, closed stdin.
    pub stdin: Option<Box<dyn AsyncRead + Send + Sync + Unpin>>,
    pub stdout: Arc<dyn OutputSink>,
    pub stderr: Arc<dyn OutputSink>,
}

impl ContainerSandbox {
    /// Runs the container's module with `argv` (argv[0] first) in this sandbox until it
    /// ends or `cancel`.
    pub async fn exec(&self, argv: Vec<String>, io: ExecIo, cancel: CancellationToken) -> Exit {
        let spec = RunSpec {
            argv,
            env: self.env.clone(),
            preopens: self.preopens.clone(),
            stdout: io.stdout,
            stderr: io.stderr,
            stdin: io.stdin,
            memory_limit: self.memory_limit,
            cpu_limit_millis: self.cpu_limit_millis,
            network: true,
            pod_ip: self.pod_ip,
            egress: self.egress.clone(),
            // An exec'd command's servers are nobody's readiness.
            listens: None,
            names: self.names.clone(),
        };
        self.program.run(spec, cancel).await
    }
}

/// A pod known to the registry.
#[derive(Clone)]
struct PodEntry {
    namespace: String,
    name: String,
    pod_ip: Option<IpAddr>,
    /// Every container of the pod, by name; `None` while it is not running.
    containers: HashMap<String, Option<ContainerSandbox>>,
}

/// The node's registry of pod sandboxes, keyed by pod uid.
#[derive(Default)]
pub struct Sandboxes {
    pods: Mutex<HashMap<String, PodEntry>>,
}

impl Sandboxes {
    /// Records a pod that started on this node with its containers' names (none running
    /// yet) and its address.
    pub fn add_pod(
        &self,
        uid: &str,
        namespace: &str,
        name: &str,
        pod_ip: Option<IpAddr>,
        containers: impl IntoIterator<Item = String>,
    ) {
        let entry = PodEntry {
            namespace: namespace.to_string(),
            name: name.to_string(),
            pod_ip,
            containers: containers.into_iter().map(|c| (c, None)).collect(),
        };
        self.lock().insert(uid.to_string(), entry);
    }

    /// Forgets a pod (its instances are stopped).
    pub fn remove_pod(&self, uid: &str) {
        self.lock().remove(uid);
    }

    /// Marks a container running with `sandbox`, or (with `None`) not running.
    pub fn set_container(&self, uid: &str, container: &str, sandbox: Option<ContainerSandbox>) {
        if let Some(pod) = self.lock().get_mut(uid) {
            pod.containers.insert(container.to_string(), sandbox);
        }
    }

    /// A running container of the pod `uid`.
    pub fn container(&self, uid: &str, container: &str) -> Option<ContainerSandbox> {
        self.lock()
            .get(uid)
            .and_then(|p| p.containers.get(container).cloned().flatten())
    }

    /// A running container of the pod `namespace/name`; `container` may be omitted when
    /// the pod has just one (as kubectl does for single-container pods).
    pub fn find(
        &self,
        namespace: &str,
        name: &str,
        container: Option<&str>,
    ) -> Result<ContainerSandbox, SandboxError> {
        let pods = self.lock();
        let pod = pods
            .values()
            .find(|p| p.namespace == namespace && p.name == name)
            .ok_or_else(|| SandboxError::PodNotFound {
                namespace: namespace.to_string(),
                name: name.to_string(),
            })?;
        let container = match container.filter(|c| !c.is_empty()) {
            Some(c) => c.to_string(),
            None if pod.containers.len() == 1 => {
                pod.containers.keys().next().cloned().unwrap_or_default()
            }
            None => {
                return Err(SandboxError::ContainerNotFound {
                    name: name.to_string(),
                    container: String::new(),
                })
            }
        };
        match pod.containers.get(&container) {
            None => Err(SandboxError::ContainerNotFound {
                name: name.to_string(),
                container,
            }),
            Some(None) => Err(SandboxError::NotRunning {
                name: name.to_string(),
                container,
            }),
            Some(Some(s)) => Ok(s.clone()),
        }
    }

    /// The address of the pod `namespace/name` on this node.
    pub fn pod_ip(&self, namespace: &str, name: &str) -> Result<Option<IpAddr>, SandboxError> {
        self.lock()
            .values()
            .find(|p| p.namespace == namespace && p.name == name)
            .map(|p| p.pod_ip)
            .ok_or_else(|| SandboxError::PodNotFound {
                namespace: namespace.to_string(),
                name: name.to_string(),
            })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PodEntry>> {
        match self.pods.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_pods_and_containers_are_named_in_the_error() {
        let s = Sandboxes::default();
        assert_eq!(
            s.find("ns", "p", None).err(),
            Some(SandboxError::PodNotFound {
                namespace: "ns".into(),
                name: "p".into()
            })
        );
        s.add_pod("u1", "ns", "p", None, ["app".to_string()]);
        let err = s.find("ns", "p", Some("nope")).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("container nope is not valid for pod p")
        );
        let err = s.find("ns", "p", None).err();
        assert_eq!(
            err,
            Some(SandboxError::NotRunning {
                name: "p".into(),
                container: "app".into()
            })
        );
        s.remove_pod("u1");
        assert!(s.pod_ip("ns", "p").is_err());
    }
}
