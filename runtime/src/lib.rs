//! wasmkube-runtime: the node agent (kubelet) that runs pod containers as WASI modules.
//!
//! Nothing lives here yet: the agent arrives with the issue "Node agent: run pods as WASI
//! modules with wasmtime". Like every peer crate it will meet the control plane only
//! through the Kubernetes API.
