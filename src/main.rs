//! The `wasmkube` binary: parses the command line and wires the crates together. No
//! logic of its own lives here.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use wasmkube_control::server::{Server, ServerOptions};
use wasmkube_runtime::agent::memory_dir::MemoryDir;
use wasmkube_runtime::agent::{Agent, AgentOptions, ApiConnector};
use wasmkube_runtime::fetch::RegistryAuth;

/// mimalloc instead of glibc malloc: a long-running server that serves big lists now and
/// then kept hundreds of MiB of freed memory in glibc's per-thread arenas (measured by
/// benches/apiserver.rs); mimalloc returns it. Built with `no_thp`: otherwise it advises
/// transparent huge pages for its 1 GiB arenas, and every small heap touches whole 2 MiB
/// pages — an idle agent held 16 MiB of heap that way instead of 3 (benches/agent.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "wasmkube",
    version,
    about = "A Kubernetes-compatible orchestrator for WebAssembly pods",
    long_about = "wasmkube runs a Kubernetes-compatible control plane on etcd that the stock kubectl drives, and node agents that run pods as WASI modules in wasmtime.\n\nQuick start: `wasmkube up`, then `kubectl --kubeconfig ~/.wasmkube/kubeconfig get nodes`."
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: the API server on etcd (a managed etcd child unless
    /// --etcd-servers is given), the scheduler and the controllers.
    Server(ServerArgs),
    /// Run a single-node cluster in one process (the control plane, a node agent and
    /// its Service proxy) and write DATA_DIR/kubeconfig.
    Up(UpArgs),
    /// Run a node agent: join the cluster, register this node, run the pods bound to it
    /// as WASI modules, and run the node's Service proxy.
    Agent(AgentArgs),
    /// Push a WebAssembly module to an OCI registry as a Wasm OCI artifact.
    Push(PushArgs),
    /// Print the version.
    Version,
}

#[derive(Args)]
struct ServerArgs {
    /// Directory for the PKI, the managed etcd's data and the admin kubeconfig.
    #[arg(long, default_value_os_t = default_data_dir())]
    data_dir: PathBuf,
    /// Comma-separated etcd client URLs; without it a managed etcd child is started.
    #[arg(long, value_delimiter = ',')]
    etcd_servers: Vec<String>,
    /// Address to serve the API on.
    #[arg(long, default_value = "127.0.0.1")]
    bind_address: IpAddr,
    /// Port to serve HTTPS on (0 picks a free one).
    #[arg(long, default_value_t = 6443)]
    secure_port: u16,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
struct UpArgs {
    /// Directory for all cluster state; the admin kubeconfig is written to DATA_DIR/kubeconfig.
    #[arg(long, default_value_os_t = default_data_dir())]
    data_dir: PathBuf,
    /// API server port (default: a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Address to serve the API on.
    #[arg(long, default_value = "127.0.0.1")]
    bind_address: IpAddr,
    /// The node's name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// The node's address: published as its InternalIP; the agent's HTTPS endpoint and
    /// NodePorts listen there, and other nodes' proxies tunnel to it.
    #[arg(long, default_value = "127.0.0.1")]
    node_ip: IpAddr,
    /// Pods the node takes.
    #[arg(long, default_value_t = 1000)]
    max_pods: u32,
    /// Where secret, projected, downwardAPI and emptyDir-with-medium-Memory volumes go:
    /// `auto` (a directory of this node's on /dev/shm when that is a writable tmpfs,
    /// so Secrets never reach the disk; else the disk), `disk`, or a directory.
    #[arg(long, default_value = "auto", value_name = "auto|disk|DIR")]
    memory_volumes: MemoryDir,
    #[command(flatten)]
    proxy: ProxyArgs,
    #[command(flatten)]
    common: CommonArgs,
}

/// The node `up` runs beside its control plane.
struct UpNode {
    name: String,
    ip: IpAddr,
    max_pods: u32,
    memory_volumes: MemoryDir,
}

/// The node's Service proxy (for `agent` and `up`).
#[derive(Args, Clone, Copy)]
struct ProxyArgs {
    /// Do not run the Service proxy on this node: ClusterIPs and NodePorts are then not
    /// served here, and pods on other nodes cannot reach this node's pods through
    /// Services.
    #[arg(long)]
    no_proxy: bool,
    /// Port of the Service proxy's node-to-node tunnel on the node address (0: a free
    /// one, published on the Node as proxy.wasmkube.io/tunnel-port).
    #[arg(long, default_value_t = 0)]
    proxy_tunnel_port: u16,
    /// Port on 127.0.0.1 where the Service proxy serves /healthz and /metrics
    /// (default: not served; 0: a free one, logged).
    #[arg(long)]
    proxy_metrics_port: Option<u16>,
    /// Threads the Service proxy forwards TCP on (each connection stays on one);
    /// 0: one per CPU.
    #[arg(long, default_value_t = 0)]
    proxy_threads: usize,
}

/// The node's Service proxy, running beside its agent until `stop`.
struct NodeProxy {
    proxy: wasmkube_proxy::Proxy,
    stop: CancellationToken,
}

impl ProxyArgs {
    /// Starts the Service proxy for the node `agent` runs, with the node's credentials
    /// (serving certificate for its tunnel listener, client certificate for the tunnels
    /// it opens) and the cluster's pod range; `None` with --no-proxy.
    async fn start(
        self,
        agent: &Agent,
        node_name: &str,
        node_ip: IpAddr,
        cluster_cidr: ipnet::IpNet,
    ) -> Result<Option<NodeProxy>> {
        if self.no_proxy {
            return Ok(None);
        }
        let creds = &agent.credentials;
        let (client_cert_pem, client_key_pem) = creds.client_pem()?;
        let tls = wasmkube_proxy::TunnelCredentials {
            ca_pem: creds.ca_pem.clone(),
            serving_cert_pem: creds.serving_cert_pem.clone(),
            serving_key_pem: creds.serving_key_pem.clone(),
            client_cert_pem,
            client_key_pem,
        };
        let mut options = wasmkube_proxy::ProxyOptions::new(node_name.to_string(), node_ip, tls);
        options.tunnel_port = self.proxy_tunnel_port;
        options.threads = self.proxy_threads;
        options.cluster_cidr = Some(cluster_cidr);
        options.metrics_addr = self
            .proxy_metrics_port
            .map(|port| SocketAddr::from(([127, 0, 0, 1], port)));
        let stop = CancellationToken::new();
        let proxy = wasmkube_proxy::start(agent.client.clone(), options, stop.clone())
            .await
            .context("starting the Service proxy")?;
        Ok(Some(NodeProxy { proxy, stop }))
    }
}

impl NodeProxy {
    async fn shutdown(proxy: Option<NodeProxy>) {
        if let Some(p) = proxy {
            p.stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(10), p.proxy.wait()).await;
        }
    }
}

#[derive(Args)]
struct AgentArgs {
    /// The API server URL, e.g. https://127.0.0.1:6443.
    #[arg(long)]
    server: String,
    /// The cluster's join token (the server's DATA_DIR/join-token); needed until the
    /// node has its own credential.
    #[arg(long, env = "WASMKUBE_JOIN_TOKEN")]
    token: Option<String>,
    /// The cluster CA certificate (the server's DATA_DIR/pki/ca.crt), to verify the
    /// server while joining.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// The node's name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// Directory for the node's credentials, modules, pod volumes and logs.
    #[arg(long, default_value_os_t = default_data_dir().join("agent"))]
    data_dir: PathBuf,
    /// The node's address: published as its InternalIP; the agent's HTTPS endpoint
    /// listens there.
    #[arg(long, default_value = "127.0.0.1")]
    node_ip: IpAddr,
    /// Port of the agent's HTTPS endpoint (0 picks a free one).
    #[arg(long, default_value_t = 10250)]
    kubelet_port: u16,
    /// Pods the node takes.
    #[arg(long, default_value_t = 1000)]
    max_pods: u32,
    /// Where secret, projected, downwardAPI and emptyDir-with-medium-Memory volumes go:
    /// `auto` (a directory of this node's on /dev/shm when that is a writable tmpfs,
    /// so Secrets never reach the disk; else the disk), `disk`, or a directory.
    #[arg(long, default_value = "auto", value_name = "auto|disk|DIR")]
    memory_volumes: MemoryDir,
    /// Extra node labels, as key=value[,key=value…].
    #[arg(long, value_delimiter = ',')]
    node_labels: Vec<String>,
    /// A registry (host[:port]) reached over plain HTTP; loopback ones always are.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// The cluster's pod range (the server's --cluster-cidr): pods may connect there,
    /// and the proxy passes UDP clients there on to backends as themselves.
    #[arg(long, default_value = wasmkube_runtime::agent::DEFAULT_CLUSTER_CIDR)]
    cluster_cidr: ipnet_arg::Cidr,
    /// The Service ClusterIP range (the server's --service-cidr): pods may connect
    /// there. Other destinations need the pod annotation network.wasmkube.io/egress.
    #[arg(long, default_value = wasmkube_runtime::agent::DEFAULT_SERVICE_CIDR)]
    service_cidr: ipnet_arg::Cidr,
    /// The cluster's DNS domain: pods find Services as NAME.NAMESPACE.svc.DOMAIN (and by
    /// the shorter forms their search path allows), answered in the agent.
    #[arg(long, default_value = wasmkube_runtime::agent::dns::DEFAULT_CLUSTER_DOMAIN)]
    cluster_domain: String,
    #[command(flatten)]
    proxy: ProxyArgs,
}

#[derive(Args)]
struct PushArgs {
    /// The module (.wasm) to push.
    file: PathBuf,
    /// Where to push it: registry/repository:tag.
    reference: String,
    /// Registry user name.
    #[arg(long, env = "WASMKUBE_REGISTRY_USERNAME")]
    username: Option<String>,
    /// Registry password.
    #[arg(long, env = "WASMKUBE_REGISTRY_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// A registry (host[:port]) reached over plain HTTP; loopback ones always are.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
}

#[derive(Args)]
struct CommonArgs {
    /// Extra subject alternative name (IP or DNS) for the serving certificate; repeatable.
    #[arg(long = "tls-san")]
    tls_sans: Vec<String>,
    /// Range Service ClusterIPs are allocated from.
    #[arg(long, default_value = "127.96.0.0/16")]
    service_cidr: ipnet_arg::Cidr,
    /// The cluster's DNS domain: the serving certificate names
    /// kubernetes.default.svc.DOMAIN (and `up`'s pods find Services as
    /// NAME.NAMESPACE.svc.DOMAIN).
    #[arg(long, default_value = wasmkube_runtime::agent::dns::DEFAULT_CLUSTER_DOMAIN)]
    cluster_domain: String,
    /// Range NodePorts are allocated from, as FIRST-LAST.
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
    /// Static token file: CSV lines `token,user,uid,"group1,group2"`.
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// The issuer (`iss`) of ServiceAccount tokens, also the API's token audience.
    #[arg(long, default_value = wasmkube_control::apiserver::tokens::DEFAULT_ISSUER)]
    service_account_issuer: String,
    /// PKCS#8 PEM P-256 key that signs ServiceAccount tokens, created if missing
    /// (default: DATA_DIR/pki/sa.key). Control planes sharing one etcd should share it.
    #[arg(long)]
    service_account_signing_key_file: Option<PathBuf>,
    /// How often etcd history is compacted, in seconds.
    #[arg(long, default_value_t = 300)]
    compaction_interval_seconds: u64,
    /// Requests of workload users (everyone but nodes and control-plane components, the
    /// admin included) that execute at once; more wait their turn, served fairly across
    /// users, so a flood cannot starve the nodes. 0 turns the limit off. Default: two
    /// per CPU core.
    #[arg(long)]
    max_workload_requests_inflight: Option<usize>,
    /// Do not run the controllers in this process.
    #[arg(long)]
    disable_controllers: bool,
    /// Do not run the scheduler in this process.
    #[arg(long)]
    disable_scheduler: bool,
    /// How long a node may miss heartbeats before it is marked unreachable, in seconds.
    #[arg(long, default_value_t = 40)]
    node_monitor_grace_period_seconds: u64,
    /// How long pods stay on an unreachable node before they are evicted, in seconds
    /// (for pods without a toleration of their own).
    #[arg(long, default_value_t = 300)]
    pod_eviction_timeout_seconds: u64,
    /// Range node pod CIDRs (and so pod IPs) are allocated from.
    #[arg(long, default_value = "127.128.0.0/10")]
    cluster_cidr: ipnet_arg::Cidr,
    /// Prefix length of each node's pod CIDR (22: 1,021 pod IPs, as many as an agent's
    /// default --max-pods).
    #[arg(long, default_value_t = 22)]
    node_cidr_mask_size: u8,
}

/// A CIDR argument, parsed by clap.
mod ipnet_arg {
    #[derive(Clone, Debug)]
    pub struct Cidr(pub wasmkube_control::server::Ipv4Net);

    impl std::str::FromStr for Cidr {
        type Err = String;
        fn from_str(s: &str) -> Result<Self, String> {
            s.parse()
                .map(Cidr)
                .map_err(|e| format!("{s:?} is not an IPv4 CIDR: {e}"))
        }
    }
}

fn default_data_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".wasmkube")
}

fn parse_port_range(s: &str) -> Result<(u16, u16)> {
    let (a, b) = s
        .split_once('-')
        .with_context(|| format!("--service-node-port-range {s:?}: expected FIRST-LAST"))?;
    let (a, b): (u16, u16) = (
        a.trim()
            .parse()
            .context("--service-node-port-range: bad first port")?,
        b.trim()
            .parse()
            .context("--service-node-port-range: bad last port")?,
    );
    anyhow::ensure!(a <= b, "--service-node-port-range: {a} is above {b}");
    Ok((a, b))
}

fn options(
    data_dir: PathBuf,
    bind: IpAddr,
    port: u16,
    common: CommonArgs,
) -> Result<ServerOptions> {
    let mut opts = ServerOptions::new(data_dir);
    opts.bind_address = bind;
    opts.secure_port = port;
    opts.tls_sans = common.tls_sans;
    opts.service_cidr = common.service_cidr.0;
    opts.cluster_domain = common.cluster_domain;
    opts.node_port_range = parse_port_range(&common.service_node_port_range)?;
    opts.token_auth_file = common.token_auth_file;
    opts.service_account_issuer = common.service_account_issuer;
    opts.service_account_signing_key_file = common.service_account_signing_key_file;
    opts.compaction_interval = Duration::from_secs(common.compaction_interval_seconds.max(1));
    if let Some(seats) = common.max_workload_requests_inflight {
        opts.max_workload_requests_inflight = seats;
    }
    opts.run_controllers = !common.disable_controllers;
    opts.run_scheduler = !common.disable_scheduler;
    anyhow::ensure!(
        common.node_cidr_mask_size >= common.cluster_cidr.0.prefix_len()
            && common.node_cidr_mask_size <= 32,
        "--node-cidr-mask-size {} must be between the --cluster-cidr prefix length and 32",
        common.node_cidr_mask_size
    );
    opts.controllers.node_lifecycle.grace_period =
        Duration::from_secs(common.node_monitor_grace_period_seconds.max(1));
    opts.controllers.node_lifecycle.eviction_timeout =
        Duration::from_secs(common.pod_eviction_timeout_seconds);
    opts.controllers.node_ipam.cluster_cidr = common.cluster_cidr.0.into();
    opts.controllers.node_ipam.node_mask_size = common.node_cidr_mask_size;
    Ok(opts)
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,kube=warn,tower=warn,hyper=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run_until_signal(opts: ServerOptions) -> Result<()> {
    let server = Server::start(opts).await?;
    eprintln!(
        "wasmkube is serving at {}\n  kubectl --kubeconfig {} get namespaces",
        server.url,
        server.kubeconfig.display()
    );
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

/// `up`: the control plane, then one agent joined to it with the server's own token.
async fn run_cluster(opts: ServerOptions, node: UpNode, proxy: ProxyArgs) -> Result<()> {
    let data_dir = opts.data_dir.clone();
    let cluster_cidr = opts.controllers.node_ipam.cluster_cidr;
    let service_cidr = opts.service_cidr;
    let cluster_domain = opts.cluster_domain.clone();
    let server = Server::start(opts).await?;
    let mut agent_opts = AgentOptions::new(server.url.clone(), node.name, data_dir.join("agent"));
    agent_opts.join_token = Some(server.join_token.clone());
    agent_opts.ca_cert = Some(data_dir.join("pki").join("ca.crt"));
    agent_opts.node_ip = node.ip;
    agent_opts.max_pods = node.max_pods;
    agent_opts.memory_dir = node.memory_volumes;
    agent_opts.cluster_domain = cluster_domain;
    // The agent shares the process with the API server: its requests skip the wire.
    let local = server.local.clone();
    agent_opts.connector = Some(ApiConnector(Arc::new(move |creds| {
        let (cert_pem, _key) = creds.client_pem()?;
        Ok(local.client(&cert_pem)?)
    })));
    let node_ip = agent_opts.node_ip;
    let node = agent_opts.node_name.clone();
    agent_opts.cluster_cidr = cluster_cidr;
    agent_opts.service_cidr = service_cidr.into();
    let agent = match Agent::start(agent_opts).await {
        Ok(a) => a,
        Err(e) => {
            server.shutdown().await;
            return Err(e.context("starting the node agent"));
        }
    };
    let proxy = match proxy.start(&agent, &node, node_ip, cluster_cidr).await {
        Ok(p) => p,
        Err(e) => {
            agent.shutdown().await;
            server.shutdown().await;
            return Err(e);
        }
    };
    eprintln!(
        "wasmkube is serving at {}\n  kubectl --kubeconfig {} get nodes",
        server.url,
        server.kubeconfig.display()
    );
    shutdown_signal().await;
    tracing::info!("shutting down");
    NodeProxy::shutdown(proxy).await;
    agent.shutdown().await;
    server.shutdown().await;
    Ok(())
}

async fn run_agent(a: AgentArgs) -> Result<()> {
    let node_name = a.node_name.unwrap_or_else(host_name);
    let mut opts = AgentOptions::new(a.server, node_name, a.data_dir);
    opts.join_token = a.token;
    opts.ca_cert = a.ca_cert;
    opts.node_ip = a.node_ip;
    opts.kubelet_port = a.kubelet_port;
    opts.max_pods = a.max_pods;
    opts.memory_dir = a.memory_volumes;
    opts.insecure_registries = a.insecure_registries;
    let cluster_cidr = a.cluster_cidr.0.into();
    opts.cluster_cidr = cluster_cidr;
    opts.service_cidr = a.service_cidr.0.into();
    opts.cluster_domain = a.cluster_domain;
    for l in a.node_labels.iter().filter(|l| !l.is_empty()) {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("--node-labels {l:?}: expected key=value"))?;
        opts.labels.insert(k.to_string(), v.to_string());
    }
    let (node, node_ip) = (opts.node_name.clone(), opts.node_ip);
    let agent = Agent::start(opts).await?;
    let proxy = match a.proxy.start(&agent, &node, node_ip, cluster_cidr).await {
        Ok(p) => p,
        Err(e) => {
            agent.shutdown().await;
            return Err(e);
        }
    };
    eprintln!("wasmkube agent is up (HTTPS endpoint {})", agent.addr);
    shutdown_signal().await;
    tracing::info!("shutting down");
    NodeProxy::shutdown(proxy).await;
    agent.shutdown().await;
    Ok(())
}

async fn run_push(a: PushArgs) -> Result<()> {
    let auth = match (a.username, a.password) {
        (Some(username), Some(password)) => Some(RegistryAuth {
            registry: String::new(),
            username,
            password,
        }),
        (None, None) => None,
        _ => anyhow::bail!("--username and --password go together"),
    };
    let digest =
        wasmkube_runtime::fetch::push(&a.file, &a.reference, auth.as_ref(), &a.insecure_registries)
            .await
            .with_context(|| format!("pushing {} to {}", a.file.display(), a.reference))?;
    println!(
        "{}@{digest}",
        a.reference.split('@').next().unwrap_or(&a.reference)
    );
    Ok(())
}

/// The host name, lowercased, as the kubelet names its node by default.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let result = match cli.command {
        Command::Version => {
            println!(
                "wasmkube {} (Kubernetes API v1.33)",
                env!("CARGO_PKG_VERSION")
            );
            Ok(())
        }
        Command::Server(a) => options(a.data_dir, a.bind_address, a.secure_port, a.common)
            .and_then(|mut opts| {
                opts.etcd_servers = a.etcd_servers;
                runtime()?.block_on(run_until_signal(opts))
            }),
        Command::Up(a) => {
            let node = UpNode {
                name: a.node_name.clone().unwrap_or_else(host_name),
                ip: a.node_ip,
                max_pods: a.max_pods,
                memory_volumes: a.memory_volumes.clone(),
            };
            options(a.data_dir, a.bind_address, a.port, a.common)
                .and_then(|opts| runtime()?.block_on(run_cluster(opts, node, a.proxy)))
        }
        Command::Agent(a) => runtime().and_then(|rt| rt.block_on(run_agent(a))),
        Command::Push(a) => runtime().and_then(|rt| rt.block_on(run_push(a))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
