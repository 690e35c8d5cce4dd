//! The node's API client: every request and watch of the agent and its Service proxy
//! over one HTTP/2 connection to the API server.
//!
//! kube-rs' stock client speaks HTTP/1.1 only, so each concurrent watch holds a TLS
//! connection of its own: pods, Services, headless EndpointSlices, the proxy's three and
//! whatever is being fetched, so about eight per node, each a descriptor and TLS state on
//! both the node and the API server. client-go multiplexes them over HTTP/2; so does this
//! client (the server offers `h2` over ALPN), with HTTP/2 pings so that a connection that
//! died silently — a partitioned edge link — is noticed within
//! [`KEEPALIVE_INTERVAL`] + [`KEEPALIVE_TIMEOUT`] rather than at the next watch timeout,
//! and every watch resumes on a fresh connection. A server that speaks only HTTP/1.1
//! still works: ALPN picks it.

use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::ConfigExt as _;
use tower::ServiceBuilder;

/// How long a connect to the API server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an HTTP/2 ping goes out on the connection, idle or not.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// How long a ping may go unanswered before the connection is dropped.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for `config` (its server, CA, credentials and default namespace) that
/// multiplexes everything over one HTTP/2 connection per server. A kubeconfig's
/// `proxy-url` and `tls-server-name` are not honoured: the node's own kubeconfig, which
/// the agent writes at join, names neither.
pub fn multiplexed(config: &kube::Config) -> Result<kube::Client, kube::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.rustls_client_config()?)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .http2_keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .http2_keep_alive_while_idle(true)
        .build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(tower::BoxError::from)
        .service(client);
    Ok(kube::Client::new(service, config.default_namespace.clone()))
}
