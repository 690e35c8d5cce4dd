//! wasmkube-runtime: the node agent (kubelet) that runs pod containers as WASI modules
//! in wasmtime.
//!
//! Like every peer crate it meets the control plane only through the Kubernetes API:
//! it registers its Node, renews its Lease, watches the pods bound to it and writes
//! their status back.
//!
//! - [`fetch`] resolves a container's `image` (OCI reference, pinned URL or file) to a
//!   module stored by digest;
//! - [`wasm`] compiles modules once per digest and runs instances with a WASI context;
//! - [`volumes`] lays out a pod's volumes as directories its containers preopen;
//! - [`env`] resolves a container's environment from the API;
//! - [`logs`] writes container output to rotated files and serves them;
//! - [`agent`] ties them together: node registration, heartbeat and the per-pod state
//!   machine.

pub mod agent;
pub mod env;
pub mod fetch;
pub mod logs;
pub mod volumes;
pub mod wasm;

/// The wasmtime major version the agent embeds (pinned in Cargo.toml), reported as the
/// node's container runtime version.
pub fn wasm_version() -> &'static str {
    "48"
}

/// The version reported as the node's kubelet version: the Kubernetes API version
/// wasmkube speaks, tagged with ours.
pub fn kubelet_version() -> String {
    format!("v1.33.0-wasmkube.{}", env!("CARGO_PKG_VERSION"))
}
