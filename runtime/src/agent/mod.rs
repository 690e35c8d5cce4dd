//! The node agent: joins the cluster, registers and heartbeats its Node, serves its
//! HTTPS endpoint (logs, exec, port-forward), and runs the pods bound to it. (The node's
//! Service proxy, `wasmkube-proxy`, runs beside it with its credentials.)
//!
//! - [`bootstrap`]: the node's credentials, from the join token once, then from disk;
//! - [`node`]: registration, capacity, Lease heartbeat;
//! - [`pods`]: the watch on this node's pods and one worker per pod;
//! - [`worker`]: a pod's state machine (fetch → volumes → init containers → containers
//!   → running → terminating);
//! - [`probes`]: liveness, readiness and startup probes, postStart and preStop hooks;
//! - [`status`]: the `PodStatus` derived from what the worker knows;
//! - [`sandbox`]: what each running container was given, so exec, exec probes and
//!   hooks run the container's module again inside the same sandbox;
//! - [`podnet`]: pod IPs from the node's podCIDR;
//! - [`services`]: the Services cache behind the containers' Service variables;
//! - [`events`]: Events on pods;
//! - [`objects`]: the ConfigMaps and Secrets pods read, through a short cache;
//! - [`server`]: the HTTPS endpoint only the API server may call, with [`exec`]
//!   (websocket v5) and [`portforward`] (SPDY/3.1 over websocket or upgrade, [`spdy`]);
//! - [`rlimit`]: the open-files limit raised to what many pods need.
//!
//! Data directory layout: `kubeconfig` and `pki/` (credentials), `modules/` (fetched
//! modules by digest), `compiled/` (compiled artifacts), `pods/<uid>/` (a pod's
//! volumes), `logs/` (container logs, as the kubelet's /var/log/pods).

pub mod api_client;
pub mod bootstrap;
pub mod dns;
pub mod events;
pub mod exec;
pub mod memory_dir;
pub mod node;
pub mod objects;
pub mod podnet;
pub mod pods;
pub mod portforward;
pub mod probes;
pub mod rlimit;
pub mod sandbox;
pub mod server;
pub mod services;
pub mod spdy;
pub mod status;
pub mod worker;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::fetch::{ModuleStore, StoreOptions};
use crate::logs::{LogLimits, LogStore};
use crate::wasm::{EngineOptions, WasmEngine};

/// The server's default `--cluster-cidr`.
pub const DEFAULT_CLUSTER_CIDR: &str = "127.128.0.0/10";
/// The server's default `--service-cidr`.
pub const DEFAULT_SERVICE_CIDR: &str = "127.96.0.0/16";

/// How the agent is set up (the `wasmkube agent` flags).
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The API server URL (`https://host:port`).
    pub server: String,
    /// The cluster's join token; needed only until the node has its own credential.
    pub join_token: Option<String>,
    /// The cluster CA certificate, to verify the server while joining.
    pub ca_cert: Option<PathBuf>,
    pub node_name: String,
    pub data_dir: PathBuf,
    /// The node's address: published as InternalIP, and where the HTTPS endpoint listens.
    pub node_ip: IpAddr,
    /// The HTTPS endpoint's port (0 picks a free one).
    pub kubelet_port: u16,
    /// Pods the node takes (capacity `pods`); also sizes the instance pool.
    pub max_pods: u32,
    /// Extra node labels.
    pub labels: BTreeMap<String, String>,
    /// Registries reached over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// The cluster's pod range (`--cluster-cidr` of the server): pods may connect there.
    pub cluster_cidr: ipnet::IpNet,
    /// The Service ClusterIP range (`--service-cidr` of the server): pods may connect
    /// there.
    pub service_cidr: ipnet::IpNet,
    /// The cluster's DNS domain: pods find Services as `<name>.<ns>.svc.<domain>`.
    pub cluster_domain: String,
    /// Where memory-backed volumes (secret, projected, downwardAPI, emptyDir with
    /// `medium: Memory`) go.
    pub memory_dir: memory_dir::MemoryDir,
    /// Makes the API client from the node's credentials instead of connecting to
    /// `server`: `wasmkube up` passes its API server's in-process clients.
    pub connector: Option<ApiConnector>,
}

/// Makes an API client authenticated with the node's credentials.
#[derive(Clone)]
pub struct ApiConnector(pub Arc<ConnectFn>);

/// What an [`ApiConnector`] calls.
pub type ConnectFn = dyn Fn(&bootstrap::Credentials) -> Result<kube::Client> + Send + Sync;

impl std::fmt::Debug for ApiConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiConnector")
    }
}

impl AgentOptions {
    /// Defaults for everything but the server, the node name and the data directory.
    pub fn new(server: String, node_name: String, data_dir: PathBuf) -> AgentOptions {
        AgentOptions {
            server,
            join_token: None,
            ca_cert: None,
            node_name,
            data_dir,
            node_ip: IpAddr::from([127, 0, 0, 1]),
            kubelet_port: 0,
            max_pods: 1000,
            labels: BTreeMap::new(),
            insecure_registries: Vec::new(),
            cluster_cidr: DEFAULT_CLUSTER_CIDR.parse().expect("valid default CIDR"),
            service_cidr: DEFAULT_SERVICE_CIDR.parse().expect("valid default CIDR"),
            cluster_domain: dns::DEFAULT_CLUSTER_DOMAIN.to_string(),
            memory_dir: memory_dir::MemoryDir::Auto,
            connector: None,
        }
    }
}

/// A running agent.
pub struct Agent {
    /// Where the HTTPS endpoint listens.
    pub addr: SocketAddr,
    /// The node's credentials (for the Service proxy that runs beside the agent).
    pub credentials: bootstrap::Credentials,
    /// The agent's API client (the Service proxy beside it shares it).
    pub client: kube::Client,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Agent {
    /// Joins (if needed), registers the node and starts serving and running pods.
    pub async fn start(opts: AgentOptions) -> Result<Agent> {
        // Every TLS user in the process (kube, reqwest, oci-client) shares one provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        match rlimit::raise_open_files() {
            Ok((soft, _)) if soft < u64::from(opts.max_pods) * 8 => tracing::warn!(
                open_files = soft,
                max_pods = opts.max_pods,
                "the open-files limit may not hold max-pods pods (about 5 descriptors each)"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reading the open-files limit"),
        }
        std::fs::create_dir_all(&opts.data_dir)
            .with_context(|| format!("creating {}", opts.data_dir.display()))?;
        let memory_pods_dir = opts
            .memory_dir
            .resolve(&opts.data_dir)
            .context("setting up the directory for memory-backed volumes")?;
        let creds = bootstrap::credentials(
            &opts.data_dir,
            &opts.server,
            &opts.node_name,
            &[opts.node_ip],
            opts.join_token.as_deref(),
            opts.ca_cert.as_deref(),
        )
        .await?;
        let client = match &opts.connector {
            Some(connect) => (connect.0)(&creds)?,
            None => creds.client().await?,
        };

        let listener = tokio::net::TcpListener::bind((opts.node_ip, opts.kubelet_port))
            .await
            .with_context(|| format!("binding {}:{}", opts.node_ip, opts.kubelet_port))?;
        let addr = listener.local_addr()?;
        let tls = server::tls_config(
            &creds.ca_pem,
            &creds.serving_cert_pem,
            &creds.serving_key_pem,
        )?;

        let spec = node::NodeSpec {
            name: opts.node_name.clone(),
            ip: opts.node_ip,
            kubelet_port: addr.port(),
            max_pods: opts.max_pods,
            labels: opts.labels.clone(),
        };
        node::register(&client, &spec)
            .await
            .with_context(|| format!("registering node {}", opts.node_name))?;

        let engine = WasmEngine::new(EngineOptions {
            cache_dir: opts.data_dir.join("compiled"),
            max_instances: opts.max_pods.saturating_mul(2).max(16),
            ..EngineOptions::default()
        })
        .context("setting up wasmtime")?;
        let modules = ModuleStore::new(
            opts.data_dir.join("modules"),
            StoreOptions {
                insecure_registries: opts.insecure_registries.clone(),
                ..StoreOptions::default()
            },
        )
        .context("setting up the module store")?;
        let logs = Arc::new(LogStore::new(
            opts.data_dir.join("logs"),
            LogLimits::default(),
        ));

        let sandboxes = Arc::new(sandbox::Sandboxes::default());
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(node::heartbeat(
            client.clone(),
            spec.clone(),
            stop.clone(),
        )));
        tasks.push(tokio::spawn(server::serve(
            listener,
            tls,
            server::router(logs.clone(), sandboxes.clone()),
            stop.clone(),
        )));
        let services = services::Services::start(client.clone(), stop.clone());
        let client_for_proxy = client.clone();
        let ctx = Arc::new(pods::Context {
            client: client.clone(),
            node_name: opts.node_name.clone(),
            node_ip: opts.node_ip,
            engine,
            modules: Arc::new(modules),
            logs,
            objects: objects::CachedSource::new(client.clone()),
            recorder: Arc::new(events::Recorder::new(client, &opts.node_name)),
            pods_dir: opts.data_dir.join("pods"),
            memory_pods_dir,
            sandboxes,
            pod_egress: Arc::from(vec![opts.cluster_cidr, opts.service_cidr]),
            names: dns::ClusterNames::new(services.clone(), &opts.cluster_domain),
            services,
        });
        tasks.push(tokio::spawn(pods::run(ctx, stop.clone())));
        tracing::info!(node = %opts.node_name, %addr, "node agent is up");
        Ok(Agent {
            addr,
            credentials: creds,
            client: client_for_proxy,
            stop,
            tasks,
        })
    }

    /// Stops every pod instance and the agent's tasks. Pods stay bound to the node: a
    /// restarted agent runs them again.
    pub async fn shutdown(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}
