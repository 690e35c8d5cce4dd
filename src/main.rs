//! The `wasmkube` binary: parses the command line and wires the crates together. No
//! logic of its own lives here.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use wasmkube_control::server::{Server, ServerOptions};

/// mimalloc instead of glibc malloc: a long-running server that serves big lists now and
/// then kept hundreds of MiB of freed memory in glibc's per-thread arenas (measured by
/// benches/apiserver.rs); mimalloc returns it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "wasmkube",
    version,
    about = "A Kubernetes-compatible orchestrator for WebAssembly pods",
    long_about = "wasmkube runs a Kubernetes-compatible control plane on etcd that the stock kubectl drives.\n\nQuick start: `wasmkube up`, then `kubectl --kubeconfig ~/.wasmkube/kubeconfig get ns`."
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
    /// Run a single-node cluster in one process (today: the control plane) and write
    /// DATA_DIR/kubeconfig.
    Up(UpArgs),
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
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
struct CommonArgs {
    /// Extra subject alternative name (IP or DNS) for the serving certificate; repeatable.
    #[arg(long = "tls-san")]
    tls_sans: Vec<String>,
    /// Range Service ClusterIPs are allocated from.
    #[arg(long, default_value = "127.96.0.0/16")]
    service_cidr: ipnet_arg::Cidr,
    /// Range NodePorts are allocated from, as FIRST-LAST.
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
    /// Static token file: CSV lines `token,user,uid,"group1,group2"`.
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// How often etcd history is compacted, in seconds.
    #[arg(long, default_value_t = 300)]
    compaction_interval_seconds: u64,
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
    /// Prefix length of each node's pod CIDR.
    #[arg(long, default_value_t = 24)]
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
    opts.node_port_range = parse_port_range(&common.service_node_port_range)?;
    opts.token_auth_file = common.token_auth_file;
    opts.compaction_interval = Duration::from_secs(common.compaction_interval_seconds.max(1));
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
        Command::Up(a) => options(a.data_dir, a.bind_address, a.port, a.common)
            .and_then(|opts| runtime()?.block_on(run_until_signal(opts))),
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
