//! wasmkube-control: the control plane.
//!
//! # Layout
//! - [`apiserver`]: the Kubernetes HTTP API over HTTPS (routing, discovery, authn,
//!   handlers, watch, tables, Status errors).
//! - [`registry`]: one module per kind: defaulting, validation, table columns, field
//!   selectors.
//! - [`storage`]: the `Store` trait, its etcd implementation, the watch cache and the
//!   compactor. Only the API server touches it.
//! - [`etcd_process`]: the managed etcd child `wasmkube server` starts when no
//!   `--etcd-servers` are given.
//! - [`pki`]: the cluster CA, the serving certificate and client certificates.
//! - [`kubeconfig`]: admin kubeconfig files.
//! - [`metrics`]: Prometheus metrics.
//! - [`controllers`]: controllers run in the control plane, as API clients.
//! - [`cron`]: cron schedules (CronJob validation and the CronJob controller).
//! - [`leader`]: Lease-based leader election for the scheduler and the controllers.
//! - [`server`]: `wasmkube server`: everything above wired into one process.

pub mod apiserver;
pub mod controllers;
pub mod cron;
pub mod etcd_process;
pub mod kubeconfig;
pub mod leader;
pub mod metrics;
pub mod pki;
pub mod registry;
pub mod scheduler;
pub mod server;
pub mod storage;
