//! End-to-end tests: the built `wasmkube` binary, a real etcd and the real kubectl (and
//! the official Python client), asserting on what they print as a user would see it.
//!
//! Every test starts its own cluster in a temp dir on free ports, so they run in
//! parallel. The harness (`harness.rs`) explains how a cluster is started and driven;
//! each other module is one scenario of issue 2's "How it is checked".
//!
//! Run with `cargo test --test e2e -- --test-threads=4`. Needs `etcd` (etcd-server),
//! `kubectl`, `curl` and, for the Python scenario, `pip install kubernetes`.

mod agents;
mod harness;
mod hollow;

mod apply;
mod compaction;
mod create_and_get;
mod daemonset;
mod delete_and_errors;
mod deployment;
mod endpoints;
mod eviction;
mod exec;
mod explain;
mod flowcontrol;
mod gc;
mod jobs;
mod leader;
mod limits;
mod modify;
mod namespaces;
mod nodes;
mod operations;
mod pod_limits;
mod pod_network;
mod probes;
mod python_client;
mod replicaset;
mod restart;
mod scheduler;
mod service_env;
mod serviceaccounts;
mod services;
mod tables;
mod wasm_pods;
mod watch;
