//! wasmkube-proxy: the userspace TCP/UDP Service proxy that runs on every node.
//!
//! Nothing lives here yet: the proxy arrives with the issue "Services: userspace TCP/UDP
//! proxy on every node". It will watch Services and EndpointSlices through the Kubernetes
//! API, never the control plane's internals.
