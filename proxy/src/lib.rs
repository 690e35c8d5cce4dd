//! wasmkube-proxy: the userspace TCP/UDP Service proxy that runs on every node.
//!
//! It is an API client only: it watches Services, EndpointSlices and Nodes through the
//! Kubernetes API (kube-rs watchers), listens on every ClusterIP:port and, for NodePort
//! Services, on the node's address at the nodePort, and forwards each connection or UDP
//! session to a ready endpoint. Endpoints on other nodes are reached through that node's
//! proxy over a mutually authenticated, multiplexed tunnel (TLS, HTTP/2 streams),
//! because pod IPs are node-local (127.0.0.0/8 in the default address plan).
//!
//! ## Layout
//! - [`start`] / [`Proxy`]: wiring (this file);
//! - `model`: Service + EndpointSlices + Nodes → frontends to listen on and the endpoints
//!   behind them (pure functions);
//! - `balancer`: one service port's endpoints, round-robin and ClientIP affinity;
//! - `proxier`: the single writer that applies object changes, opens and closes
//!   listeners and retries failed binds;
//! - `tcp`: TCP frontends: connect with retry, bidirectional copy with half-close;
//! - `splice`: zero-copy moves of bulk TCP data through pipes lent per thread;
//! - `udp`: UDP frontends: per-client sessions with idle expiry;
//! - `tunnel`: the node-to-node tunnel (TLS with client certificates, one HTTP/2 stream
//!   per forwarded connection or UDP session);
//! - `metrics`: counters, `/metrics` (Prometheus text) and `/healthz`;
//! - `watch`: the watchers feeding the proxier, and publishing the tunnel port;
//! - `workers`: the data path's threads, where TCP connections are accepted and
//!   forwarded.
//!
//! ## Choices
//! - No endpoint: a TCP connection is accepted and reset at once (linger 0), so
//!   clients fail promptly; UDP datagrams are dropped (and counted).
//! - Removed endpoints: established TCP connections drain (they end when either side
//!   closes), as with Kubernetes' proxies, which leave established flows alone; UDP
//!   sessions to an endpoint that left are dropped and the next datagram picks a new one
//!   (kube-proxy clears UDP conntrack entries for the same reason).
//! - A deleted Service closes its listeners; connections in flight drain.
//! - A bind failure (e.g. another agent on the same host owns the address) is logged,
//!   counted and retried with back-off, never fatal.

mod balancer;
mod metrics;
mod model;
mod proxier;
mod splice;
mod tcp;
#[cfg(test)]
mod tests;
mod tunnel;
mod udp;
mod watch;
mod workers;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use model::TUNNEL_PORT_ANNOTATION;

/// How a node's proxy is set up.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    pub node_name: String,
    /// The node's address: NodePorts listen here; other nodes' proxies reach this node's
    /// tunnel here.
    pub node_ip: IpAddr,
    /// Port of the proxy-to-proxy tunnel listener on `node_ip` (0 = any free port; the
    /// port the proxy got is published as the annotation [`TUNNEL_PORT_ANNOTATION`] on
    /// its Node, where other proxies find it).
    pub tunnel_port: u16,
    /// Where `/healthz` and `/metrics` are served (None = not served).
    pub metrics_addr: Option<SocketAddr>,
    /// The node's credentials for the mutually authenticated tunnel.
    pub tls: TunnelCredentials,
    /// How long one connect attempt to an endpoint (or through a tunnel) may take.
    pub connect_timeout: Duration,
    /// A UDP session without traffic in either direction for this long is closed.
    pub udp_idle_timeout: Duration,
    /// A tunnel connection to another node that has carried no stream for this long is
    /// closed (the next cross-node connection dials again).
    pub tunnel_idle_timeout: Duration,
    /// Threads that forward TCP (each connection stays on the one that accepted it);
    /// 0 = one per CPU.
    pub threads: usize,
    /// The pods' addresses (the cluster's --cluster-cidr). A UDP client in it, when a
    /// loopback address, is the address backends see its datagrams come from, as a
    /// pod's egress lets it answer other pods; other clients' datagrams come from the
    /// Service's ClusterIP. None: always the ClusterIP.
    pub cluster_cidr: Option<IpNet>,
}

impl ProxyOptions {
    /// Defaults for everything but the node and its credentials: tunnel on a free port,
    /// no metrics endpoint, 5 s connect timeout, 30 s UDP idle timeout, 90 s tunnel idle
    /// timeout, one forwarding thread per CPU, UDP datagrams sent from the ClusterIP.
    pub fn new(node_name: String, node_ip: IpAddr, tls: TunnelCredentials) -> ProxyOptions {
        ProxyOptions {
            node_name,
            node_ip,
            tunnel_port: 0,
            metrics_addr: None,
            tls,
            connect_timeout: Duration::from_secs(5),
            udp_idle_timeout: Duration::from_secs(30),
            tunnel_idle_timeout: Duration::from_secs(90),
            threads: 0,
            cluster_cidr: None,
        }
    }
}

/// The node's credentials (PEM), all signed by the cluster CA.
#[derive(Clone)]
pub struct TunnelCredentials {
    /// The cluster CA: peers' certificates must chain to it.
    pub ca_pem: String,
    /// The node's serving certificate (its SANs cover `node_ip`), presented by the
    /// tunnel listener.
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
    /// The node's client certificate (`system:node:<name>`, group `system:nodes`),
    /// presented when this proxy opens a tunnel to another node.
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

impl std::fmt::Debug for TunnelCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print keys.
        f.debug_struct("TunnelCredentials").finish_non_exhaustive()
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The tunnel credentials are unusable.
    #[error("tunnel credentials: {0}")]
    Credentials(String),
    /// The data path's threads could not be started.
    #[error("starting the proxy's worker threads: {0}")]
    Workers(#[source] std::io::Error),
    /// A listener of the proxy itself (tunnel, metrics) could not be opened.
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running proxy. It stops when the `stop` token given to [`start`] is cancelled.
pub struct Proxy {
    tunnel_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Where the tunnel listener listens.
    pub fn tunnel_addr(&self) -> SocketAddr {
        self.tunnel_addr
    }

    /// Where `/healthz` and `/metrics` are served, if they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Waits until the proxy has stopped (after its `stop` token was cancelled): its
    /// listeners are closed and its connections ended.
    pub async fn wait(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the service proxy task failed");
        }
    }
}

/// Starts the proxy: binds the tunnel (and metrics) listeners, then watches Services,
/// EndpointSlices and Nodes and keeps the Service listeners in line with them.
pub async fn start(
    client: kube::Client,
    options: ProxyOptions,
    stop: CancellationToken,
) -> Result<Proxy, ProxyError> {
    let core = Core::start(&options, stop.clone()).await?;
    let Core {
        proxier,
        tunnel_addr,
        metrics_addr,
        tasks,
    } = core;
    let watch = tokio::spawn(watch::run(
        client,
        proxier,
        watch::Publish {
            node_name: options.node_name.clone(),
            tunnel_port: tunnel_addr.port(),
        },
        stop.clone(),
    ));
    let task = tokio::spawn(async move {
        let _ = watch.await;
        for t in tasks {
            let _ = t.await;
        }
        tracing::info!("the service proxy stopped");
    });
    tracing::info!(node = %options.node_name, %tunnel_addr, ?metrics_addr, "service proxy is up");
    Ok(Proxy {
        tunnel_addr,
        metrics_addr,
        task,
    })
}

/// Everything but the API watchers: what unit tests drive directly.
pub(crate) struct Core {
    pub proxier: proxier::Proxier,
    pub tunnel_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub tasks: Vec<JoinHandle<()>>,
}

impl Core {
    pub(crate) async fn start(
        options: &ProxyOptions,
        stop: CancellationToken,
    ) -> Result<Core, ProxyError> {
        let tls = tunnel::Tls::new(&options.tls)?;
        let tunnel_bind = SocketAddr::new(options.node_ip, options.tunnel_port);
        let tunnel_listener =
            tcp::listen_socket(tunnel_bind).map_err(|source| ProxyError::Bind {
                addr: tunnel_bind,
                source,
            })?;
        let tunnel_addr = tunnel_listener
            .local_addr()
            .map_err(|source| ProxyError::Bind {
                addr: tunnel_bind,
                source,
            })?;
        let metrics_listener = match options.metrics_addr {
            Some(addr) => {
                let l = tcp::listen(addr).map_err(|source| ProxyError::Bind { addr, source })?;
                Some(l)
            }
            None => None,
        };
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());

        let threads = match options.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let (workers, workers_done) =
            workers::Workers::start(threads, &stop).map_err(ProxyError::Workers)?;
        let shared = Arc::new(proxier::Shared::new(
            options,
            tunnel::Dialer::new(
                tls.client.clone(),
                options.tunnel_idle_timeout,
                stop.clone(),
            ),
            workers,
            stop.clone(),
        ));
        tunnel::serve(tunnel_listener, tls.server.clone(), shared.clone());
        let mut tasks = vec![tokio::spawn(workers_done)];
        if let Some(l) = metrics_listener {
            tasks.push(tokio::spawn(metrics::serve(l, shared.clone())));
        }
        Ok(Core {
            proxier: proxier::Proxier::new(shared),
            tunnel_addr,
            metrics_addr,
            tasks,
        })
    }
}
