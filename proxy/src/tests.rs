//! The data path with real sockets: proxiers fed Services, EndpointSlices and Nodes
//! directly (no API server), real TCP/UDP backends, and two proxy instances joined by
//! the real TLS tunnel with certificates from a test CA.
//!
//! Every test uses its own random 127.x.y.z ClusterIPs, so tests run in parallel.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::model::tests::{service, slice};
use crate::model::{ObjectKey, Protocol};
use crate::{Core, ProxyOptions, TunnelCredentials};

const PATIENCE: Duration = Duration::from_secs(10);

/// Polls `f` until it returns Some, failing after [`PATIENCE`].
async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A loopback address of its own for a test's ClusterIPs (outside the default service
/// and cluster ranges).
fn cluster_ip() -> IpAddr {
    loopback_in(60, 30)
}

/// A random address 127.B.x.y with B in `first..first + count`.
fn loopback_in(first: u8, count: u8) -> IpAddr {
    let r: u16 = rand::random();
    IpAddr::from([
        127,
        first + (r % u16::from(count)) as u8,
        (r >> 8) as u8,
        1 + rand::random::<u8>() % 250,
    ])
}

/// A CA and the credentials it issues, as the cluster CA does at join.
struct Pki {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl Pki {
    fn new() -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "test-ca");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        Pki {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf(
        &self,
        cn: &str,
        orgs: &[&str],
        sans: &[&str],
        eku: ExtendedKeyUsagePurpose,
    ) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        for o in orgs {
            params.distinguished_name.push(DnType::OrganizationName, *o);
        }
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![eku];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn node(&self, name: &str) -> TunnelCredentials {
        self.identity(&format!("system:node:{name}"), &["system:nodes"])
    }

    fn identity(&self, cn: &str, orgs: &[&str]) -> TunnelCredentials {
        let (serving_cert_pem, serving_key_pem) =
            self.leaf(cn, &[], &["127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
        let (client_cert_pem, client_key_pem) =
            self.leaf(cn, orgs, &[], ExtendedKeyUsagePurpose::ClientAuth);
        TunnelCredentials {
            ca_pem: self.ca_pem.clone(),
            serving_cert_pem,
            serving_key_pem,
            client_cert_pem,
            client_key_pem,
        }
    }
}

/// A proxy instance without the API: the test feeds its proxier.
struct Instance {
    core: Core,
    stop: CancellationToken,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Instance {
    /// Service `name` at `vip` (`spec` gives its ports: one unnamed TCP port here) with
    /// the given (address, ready, node) endpoints on `target_port`, applied and synced.
    fn serve(
        &mut self,
        name: &str,
        vip: IpAddr,
        spec: serde_json::Value,
        target_port: u16,
        endpoints: &[(IpAddr, bool, &str)],
    ) {
        let proxier = &mut self.core.proxier;
        proxier.apply_service(svc(name, vip, spec));
        proxier.apply_slice(eps(name, "", "TCP", target_port, endpoints));
        proxier.sync();
    }
}

/// The data-path threads of each test proxy.
const THREADS: usize = 2;

async fn instance(node: &str, creds: TunnelCredentials, udp_idle: Duration) -> Instance {
    instance_with(node, creds, |o| o.udp_idle_timeout = udp_idle).await
}

async fn instance_with(
    node: &str,
    creds: TunnelCredentials,
    configure: impl FnOnce(&mut ProxyOptions),
) -> Instance {
    let mut options = ProxyOptions::new(node.into(), IpAddr::from([127, 0, 0, 1]), creds);
    options.threads = THREADS;
    options.connect_timeout = Duration::from_secs(2);
    options.metrics_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    configure(&mut options);
    let stop = CancellationToken::new();
    let core = Core::start(&options, stop.clone()).await.unwrap();
    Instance { core, stop }
}

async fn plain_instance(node: &str) -> Instance {
    instance(node, Pki::new().node(node), Duration::from_secs(30)).await
}

fn svc(name: &str, ip: IpAddr, spec: serde_json::Value) -> k8s_openapi::api::core::v1::Service {
    let mut spec = spec;
    spec["clusterIP"] = json!(ip.to_string());
    service(json!({"metadata": {"name": name, "namespace": "t"}, "spec": spec}))
}

/// An EndpointSlice for service `name` with one port and the given (address, ready, node).
fn eps(
    name: &str,
    port_name: &str,
    protocol: &str,
    port: u16,
    endpoints: &[(IpAddr, bool, &str)],
) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    let endpoints: Vec<serde_json::Value> = endpoints
        .iter()
        .map(|(ip, ready, node)| {
            json!({"addresses": [ip.to_string()], "conditions": {"ready": ready}, "nodeName": node})
        })
        .collect();
    slice(json!({
        "metadata": {"name": format!("{name}-x"), "namespace": "t",
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port, "protocol": protocol}],
        "endpoints": endpoints
    }))
}

/// TCP backends on their own addresses, all on one port (as pods on one targetPort):
/// each answers every connection with its tag and closes.
async fn tagged_backends(tags: &[&'static str]) -> (u16, Vec<IpAddr>) {
    loop {
        let first = cluster_ip();
        let l = TcpListener::bind((first, 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        let mut ips = vec![first];
        let mut listeners = vec![l];
        let mut ok = true;
        for _ in 1..tags.len() {
            let ip = cluster_ip();
            match TcpListener::bind((ip, port)).await {
                Ok(l) => {
                    ips.push(ip);
                    listeners.push(l);
                }
                Err(_) => {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            for (l, tag) in listeners.into_iter().zip(tags.iter().copied()) {
                tokio::spawn(async move {
                    while let Ok((mut s, _)) = l.accept().await {
                        let _ = s.write_all(tag.as_bytes()).await;
                    }
                });
            }
            return (port, ips);
        }
    }
}

/// The value of a metric line that starts with `series` (name and labels).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// Waits until connecting to `addr` is refused: a closed listener (the workers close
/// it as each gets to the cancellation).
async fn refused(addr: SocketAddr) {
    eventually(
        &format!("the listener on {addr} to close"),
        async || match TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
            _ => None,
        },
    )
    .await;
}

async fn fetch(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    let mut out = String::new();
    tokio::time::timeout(PATIENCE, s.read_to_string(&mut out))
        .await
        .map_err(|_| std::io::Error::other("read timed out"))??;
    Ok(out)
}

#[tokio::test]
async fn round_robin_spreads_over_three_tcp_backends() {
    let mut p = plain_instance("a").await;
    let (port, ips) = tagged_backends(&["one", "two", "three"]).await;
    let vip = cluster_ip();
    let proxier = &mut p.core.proxier;
    proxier.apply_service(svc(
        "web",
        vip,
        json!({"ports": [{"name": "http", "port": 8080, "targetPort": "web"}]}),
    ));
    proxier.apply_slice(eps(
        "web",
        "http",
        "TCP",
        port,
        &[
            (ips[0], true, "a"),
            (ips[1], true, "a"),
            (ips[2], true, "a"),
        ],
    ));
    proxier.sync();
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(fetch(SocketAddr::new(vip, 8080)).await.unwrap());
    }
    got.sort();
    assert_eq!(got, ["one", "one", "three", "three", "two", "two"]);

    let text = p.core.proxier.shared().metrics.render();
    assert!(
        text.contains(
            "wasmkube_proxy_connections_total{namespace=\"t\",service=\"web\",port=\"http\",protocol=\"TCP\"} 6"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn not_ready_endpoints_get_no_traffic_and_changes_apply_at_once() {
    let mut p = plain_instance("a").await;
    let (port, ips) = tagged_backends(&["one", "two"]).await;
    let vip = cluster_ip();
    let addr = SocketAddr::new(vip, 80);
    p.serve(
        "web",
        vip,
        json!({"ports": [{"port": 80}]}),
        port,
        &[(ips[0], true, "a"), (ips[1], false, "a")],
    );
    for _ in 0..4 {
        assert_eq!(fetch(addr).await.unwrap(), "one");
    }
    p.core.proxier.apply_slice(eps(
        "web",
        "",
        "TCP",
        port,
        &[(ips[0], false, "a"), (ips[1], true, "a")],
    ));
    p.core.proxier.sync();
    for _ in 0..4 {
        assert_eq!(fetch(addr).await.unwrap(), "two");
    }
}

#[tokio::test]
async fn half_close_travels_both_ways() {
    let mut p = plain_instance("a").await;
    let backend_ip = cluster_ip();
    // Reads until EOF, then answers with everything it read, then closes.
    let l = TcpListener::bind((backend_ip, 0)).await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                s.read_to_end(&mut got).await.unwrap();
                s.write_all(b"got: ").await.unwrap();
                s.write_all(&got).await.unwrap();
            });
        }
    });
    let vip = cluster_ip();
    p.serve(
        "echo",
        vip,
        json!({"ports": [{"port": 7}]}),
        port,
        &[(backend_ip, true, "a")],
    );

    // Large enough that both directions switch to splicing (bulk) part way.
    let mut s = TcpStream::connect((vip, 7)).await.unwrap();
    let big: Vec<u8> = (0..(4 << 20)).map(|i| (i % 251) as u8).collect();
    s.write_all(&big).await.unwrap();
    s.shutdown().await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.len(), 5 + big.len());
    assert!(
        reply[..5] == *b"got: " && reply[5..] == big,
        "the reply differs"
    );
}

#[tokio::test]
async fn without_endpoints_connections_are_reset_promptly() {
    let mut p = plain_instance("a").await;
    let vip = cluster_ip();
    p.core
        .proxier
        .apply_service(svc("empty", vip, json!({"ports": [{"port": 80}]})));
    p.core.proxier.sync();
    let started = std::time::Instant::now();
    let r = fetch(SocketAddr::new(vip, 80)).await;
    match r {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(s) => panic!("expected a reset, read {s:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_failed_connect_is_retried_on_another_endpoint() {
    let mut p = plain_instance("a").await;
    let (port, ips) = tagged_backends(&["live"]).await;
    // Nothing listens at the second address.
    let dead = cluster_ip();
    let vip = cluster_ip();
    p.serve(
        "web",
        vip,
        json!({"ports": [{"port": 80}]}),
        port,
        &[(ips[0], true, "a"), (dead, true, "a")],
    );
    for _ in 0..4 {
        assert_eq!(fetch(SocketAddr::new(vip, 80)).await.unwrap(), "live");
    }
}

#[tokio::test]
async fn client_ip_affinity_keeps_a_client_on_one_endpoint() {
    let mut p = plain_instance("a").await;
    let (port, ips) = tagged_backends(&["one", "two", "three"]).await;
    let vip = cluster_ip();
    p.core.proxier.apply_service(svc(
        "sticky",
        vip,
        json!({"ports": [{"port": 80}], "sessionAffinity": "ClientIP",
               "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
    ));
    p.core.proxier.apply_slice(eps(
        "sticky",
        "",
        "TCP",
        port,
        &[
            (ips[0], true, "a"),
            (ips[1], true, "a"),
            (ips[2], true, "a"),
        ],
    ));
    p.core.proxier.sync();
    let first = fetch(SocketAddr::new(vip, 80)).await.unwrap();
    for _ in 0..5 {
        assert_eq!(fetch(SocketAddr::new(vip, 80)).await.unwrap(), first);
    }
}

#[tokio::test]
async fn node_ports_listen_on_the_node_address() {
    let mut p = plain_instance("a").await;
    let (port, ips) = tagged_backends(&["np"]).await;
    let node_port = free_port();
    let vip = cluster_ip();
    p.core.proxier.apply_service(svc(
        "np",
        vip,
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": node_port}]}),
    ));
    p.core
        .proxier
        .apply_slice(eps("np", "", "TCP", port, &[(ips[0], true, "a")]));
    p.core.proxier.sync();
    assert_eq!(
        fetch(SocketAddr::from(([127, 0, 0, 1], node_port)))
            .await
            .unwrap(),
        "np"
    );
    assert_eq!(fetch(SocketAddr::new(vip, 80)).await.unwrap(), "np");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_deleted_service_closes_its_listener() {
    let mut p = plain_instance("a").await;
    let (port, ips) = tagged_backends(&["x"]).await;
    let vip = cluster_ip();
    p.serve(
        "gone",
        vip,
        json!({"ports": [{"port": 80}]}),
        port,
        &[(ips[0], true, "a")],
    );
    assert_eq!(fetch(SocketAddr::new(vip, 80)).await.unwrap(), "x");
    p.core.proxier.delete_service(&ObjectKey {
        namespace: "t".into(),
        name: "gone".into(),
    });
    p.core.proxier.sync();
    assert!(p.core.proxier.listening().is_empty());
    refused(SocketAddr::new(vip, 80)).await;
    assert!(!p
        .core
        .proxier
        .shared()
        .metrics
        .render()
        .contains("service=\"gone\""));
}

#[tokio::test]
async fn a_taken_address_is_retried_not_fatal() {
    let mut first = plain_instance("a").await;
    let mut second = plain_instance("b").await;
    let (port, ips) = tagged_backends(&["x"]).await;
    let vip = cluster_ip();
    for p in [&mut first, &mut second] {
        p.serve(
            "shared",
            vip,
            json!({"ports": [{"port": 80}]}),
            port,
            &[(ips[0], true, "")],
        );
    }
    assert_eq!(first.core.proxier.listening().len(), 1);
    assert!(second.core.proxier.listening().is_empty());
    assert!(second.core.proxier.next_retry().is_some());
    // The first proxy goes away: the second takes the address over on a retry.
    drop(first);
    let second = &mut second.core.proxier;
    eventually("the second proxy to take the address over", async || {
        if let Some(at) = second.next_retry() {
            tokio::time::sleep_until(at.into()).await;
        }
        second.retry_binds();
        (second.listening().len() == 1).then_some(())
    })
    .await;
    let text = second.shared().metrics.render();
    assert!(
        !text.contains("wasmkube_proxy_bind_errors_total 0"),
        "{text}"
    );
    assert_eq!(fetch(SocketAddr::new(vip, 80)).await.unwrap(), "x");
}

#[tokio::test]
async fn external_ips_are_served_where_the_node_has_them() {
    let mut p = plain_instance("a").await;
    let (port, ips) = tagged_backends(&["x"]).await;
    let (vip, here) = (cluster_ip(), cluster_ip());
    // 192.0.2.7 (TEST-NET-1) is no address of this machine: another node's, say.
    p.serve(
        "ext",
        vip,
        json!({"ports": [{"port": 80}], "externalIPs": [here.to_string(), "192.0.2.7"]}),
        port,
        &[(ips[0], true, "a")],
    );
    assert_eq!(fetch(SocketAddr::new(here, 80)).await.unwrap(), "x");
    assert_eq!(fetch(SocketAddr::new(vip, 80)).await.unwrap(), "x");
    let listening: Vec<IpAddr> = p
        .core
        .proxier
        .listening()
        .iter()
        .map(|f| f.addr.ip())
        .collect();
    assert_eq!(listening.len(), 2, "{listening:?}");
    // The other address is tried again later, but is no error.
    assert!(p.core.proxier.next_retry().is_some());
    p.core.proxier.retry_binds();
    let text = p.core.proxier.shared().metrics.render();
    assert!(
        text.contains("wasmkube_proxy_bind_errors_total 0"),
        "{text}"
    );
    // Dropped from the Service: no longer served.
    p.core
        .proxier
        .apply_service(svc("ext", vip, json!({"ports": [{"port": 80}]})));
    p.core.proxier.sync();
    refused(SocketAddr::new(here, 80)).await;
    assert!(p.core.proxier.next_retry().is_none());
}

/// A UDP backend that answers each datagram with `<tag>:<datagram> from <sender IP>`.
async fn udp_backend(tag: &'static str) -> SocketAddr {
    let s = UdpSocket::bind((cluster_ip(), 0)).await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let mut reply = format!("{tag}:").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            reply.extend_from_slice(format!(" from {}", from.ip()).as_bytes());
            let _ = s.send_to(&reply, from).await;
        }
    });
    addr
}

/// Sends `msg` from `client` to `to` until an answer comes (UDP may drop the first
/// datagram while a session is being set up); returns it and where it came from.
async fn udp_ask(client: &UdpSocket, to: SocketAddr, msg: &str) -> (String, SocketAddr) {
    let mut buf = vec![0u8; 65536];
    eventually(&format!("an answer to {msg:?} from {to}"), async || {
        client.send_to(msg.as_bytes(), to).await.ok()?;
        let (n, from) =
            tokio::time::timeout(Duration::from_millis(500), client.recv_from(&mut buf))
                .await
                .ok()?
                .ok()?;
        Some((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
    })
    .await
}

#[tokio::test]
async fn udp_sessions_answer_each_client_from_the_service_address() {
    let mut p = instance("a", Pki::new().node("a"), Duration::from_millis(200)).await;
    let backend = udp_backend("pod").await;
    let vip = cluster_ip();
    p.core.proxier.apply_service(svc(
        "dns",
        vip,
        json!({"ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}),
    ));
    p.core.proxier.apply_slice(eps(
        "dns",
        "dns",
        "UDP",
        backend.port(),
        &[(backend.ip(), true, "a")],
    ));
    p.core.proxier.sync();
    let service = SocketAddr::new(vip, 53);
    let c1 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let c2 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..3 {
        let (r1, from1) = udp_ask(&c1, service, &format!("one-{i}")).await;
        let (r2, from2) = udp_ask(&c2, service, &format!("two-{i}")).await;
        // The pod sees the datagrams come from the ClusterIP, which it may answer.
        assert_eq!(r1, format!("pod:one-{i} from {vip}"));
        assert_eq!(r2, format!("pod:two-{i} from {vip}"));
        assert_eq!(from1, service);
        assert_eq!(from2, service);
    }
    // Both sessions end once idle.
    let shared = p.core.proxier.shared().clone();
    eventually("idle UDP sessions to expire", async || {
        let text = shared.metrics.render();
        text.contains("wasmkube_proxy_active_udp_sessions{namespace=\"t\",service=\"dns\",port=\"dns\",protocol=\"UDP\"} 0")
            .then_some(())
    })
    .await;
    let text = shared.metrics.render();
    assert!(
        text.contains("wasmkube_proxy_udp_sessions_total{namespace=\"t\",service=\"dns\",port=\"dns\",protocol=\"UDP\"} 2"),
        "{text}"
    );
}

/// Node `b` as node `a` sees it: InternalIP 127.0.0.1 and its tunnel port.
fn node(name: &str, tunnel: SocketAddr) -> k8s_openapi::api::core::v1::Node {
    serde_json::from_value(json!({
        "metadata": {"name": name,
                     "annotations": {crate::TUNNEL_PORT_ANNOTATION: tunnel.port().to_string()}},
        "status": {"addresses": [{"type": "InternalIP", "address": tunnel.ip().to_string()}]}
    }))
    .unwrap()
}

#[tokio::test]
async fn the_tunnel_carries_tcp_and_udp_to_another_nodes_endpoints() {
    let pki = Pki::new();
    let mut a = instance("a", pki.node("a"), Duration::from_secs(30)).await;
    let mut b = instance("b", pki.node("b"), Duration::from_secs(30)).await;
    let (port, ips) = tagged_backends(&["on-b"]).await;
    let udp = udp_backend("udp-on-b").await;
    let vip = cluster_ip();
    let service = svc(
        "remote",
        vip,
        json!({"ports": [{"name": "tcp", "port": 80}, {"name": "udp", "port": 53, "protocol": "UDP"}]}),
    );
    let slices = [eps("remote", "tcp", "TCP", port, &[(ips[0], true, "b")]), {
        let mut s = eps("remote", "udp", "UDP", udp.port(), &[(udp.ip(), true, "b")]);
        s.metadata.name = Some("remote-udp".into());
        s
    }];
    // Node a has the Service (and routes to b); node b only knows its own endpoints.
    a.core.proxier.apply_service(service);
    for s in &slices {
        a.core.proxier.apply_slice(s.clone());
        b.core.proxier.apply_slice(s.clone());
    }
    a.core.proxier.apply_node(&node("b", b.core.tunnel_addr));
    a.core.proxier.sync();
    b.core.proxier.sync();

    for _ in 0..3 {
        assert_eq!(fetch(SocketAddr::new(vip, 80)).await.unwrap(), "on-b");
    }
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (reply, from) = udp_ask(&client, SocketAddr::new(vip, 53), "ping").await;
    assert_eq!(reply, format!("udp-on-b:ping from {vip}"));
    assert_eq!(from, SocketAddr::new(vip, 53));
    // A datagram near the largest there is, then a small one again, in the same session.
    let big = "x".repeat(60_000);
    let (reply, _) = udp_ask(&client, SocketAddr::new(vip, 53), &big).await;
    assert_eq!(reply, format!("udp-on-b:{big} from {vip}"));
    let (reply, _) = udp_ask(&client, SocketAddr::new(vip, 53), "pong").await;
    assert_eq!(reply, format!("udp-on-b:pong from {vip}"));
    let text = b.core.proxier.shared().metrics.render();
    assert!(
        text.contains("wasmkube_proxy_tunnel_streams_total{direction=\"in\"} 4"),
        "{text}"
    );
    // Four streams, fewer connections: they are kept and reused.
    assert!(
        metric(&text, "wasmkube_proxy_tunnels_total{direction=\"in\"}") < 4.0,
        "{text}"
    );
}

#[tokio::test]
async fn the_tunnel_passes_half_close_and_large_transfers() {
    let pki = Pki::new();
    let mut a = instance("a", pki.node("a"), Duration::from_secs(30)).await;
    let mut b = instance("b", pki.node("b"), Duration::from_secs(30)).await;
    let backend_ip = cluster_ip();
    let l = TcpListener::bind((backend_ip, 0)).await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            s.write_all(&got).await.unwrap();
        }
    });
    let vip = across_nodes(&mut a, &mut b, SocketAddr::new(backend_ip, port));

    let mut c = TcpStream::connect((vip, 7)).await.unwrap();
    let big: Vec<u8> = (0..(4 << 20)).map(|i| (i % 251) as u8).collect();
    let (mut rd, mut wr) = c.split();
    let send = async {
        wr.write_all(&big).await.unwrap();
        wr.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let recv = async {
        tokio::time::timeout(PATIENCE, rd.read_to_end(&mut back))
            .await
            .unwrap()
            .unwrap();
    };
    tokio::join!(send, recv);
    assert!(back == big, "the echo differs ({} bytes back)", back.len());
}

/// A TCP backend on a fresh address that echoes every connection until it ends.
async fn echo_backend() -> SocketAddr {
    let l = TcpListener::bind((cluster_ip(), 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut rd, mut wr) = s.split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
            });
        }
    });
    addr
}

/// A TCP backend on a fresh address that answers each connection with the address it
/// came from, and closes it.
async fn peer_backend() -> SocketAddr {
    let l = TcpListener::bind((cluster_ip(), 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, peer)) = l.accept().await {
            let _ = s.write_all(peer.ip().to_string().as_bytes()).await;
        }
    });
    addr
}

/// What the backend behind `to` (a [`peer_backend`]) says of a connection made from
/// `from` (a loopback address, as a pod's socket is bound to its pod IP).
async fn seen_from(from: IpAddr, to: SocketAddr) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let mut s = socket.connect(to).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(PATIENCE, s.read_to_string(&mut out))
        .await
        .expect("the backend's answer")
        .unwrap();
    out
}

#[tokio::test]
async fn backends_see_the_clients_address_here_and_across_the_tunnel() {
    let pki = Pki::new();
    let mut a = instance("a", pki.node("a"), Duration::from_secs(30)).await;
    let mut b = instance("b", pki.node("b"), Duration::from_secs(30)).await;
    let here = peer_backend().await;
    let vip_here = cluster_ip();
    a.serve(
        "here",
        vip_here,
        json!({"ports": [{"port": 80}]}),
        here.port(),
        &[(here.ip(), true, "a")],
    );
    let vip_far = across_nodes(&mut a, &mut b, peer_backend().await);

    // `across_nodes` serves on port 7.
    for to in [SocketAddr::new(vip_here, 80), SocketAddr::new(vip_far, 7)] {
        // Clients on two addresses (two pods): each is seen as itself, not as the proxy.
        for client in [cluster_ip(), cluster_ip()] {
            assert_eq!(seen_from(client, to).await, client.to_string(), "via {to}");
        }
        assert_eq!(
            seen_from(IpAddr::from([127, 0, 0, 1]), to).await,
            "127.0.0.1",
            "via {to}"
        );
    }
}

/// An address in [`PODS`], as the runtime gives a pod.
fn pod_ip() -> IpAddr {
    loopback_in(128, 64)
}

/// The pod range the proxies of [`udp_backends_see_a_client_pod_as_itself`] are given.
const PODS: &str = "127.128.0.0/10";

#[tokio::test]
async fn udp_backends_see_a_client_pod_as_itself() {
    let pki = Pki::new();
    let pods = Some(PODS.parse().unwrap());
    let mut a = instance_with("a", pki.node("a"), |o| o.cluster_cidr = pods).await;
    let mut b = instance_with("b", pki.node("b"), |o| o.cluster_cidr = pods).await;
    a.core.proxier.apply_node(&node("b", b.core.tunnel_addr));
    let mut services = Vec::new();
    for (name, on) in [("here", "a"), ("far", "b")] {
        let backend = udp_backend("pod").await;
        let vip = cluster_ip();
        a.core.proxier.apply_service(svc(
            name,
            vip,
            json!({"ports": [{"port": 53, "protocol": "UDP"}]}),
        ));
        let s = eps(name, "", "UDP", backend.port(), &[(backend.ip(), true, on)]);
        a.core.proxier.apply_slice(s.clone());
        b.core.proxier.apply_slice(s);
        services.push(SocketAddr::new(vip, 53));
    }
    a.core.proxier.sync();
    b.core.proxier.sync();

    for service in services {
        let vip = service.ip();
        // A pod is seen as itself; a process on the node (127.0.0.1) or any loopback
        // address outside the pod range is seen as the ClusterIP.
        for (client, seen) in [
            (pod_ip(), None),
            (pod_ip(), None),
            (IpAddr::from([127, 0, 0, 1]), Some(vip)),
            (cluster_ip(), Some(vip)),
        ] {
            let socket = UdpSocket::bind((client, 0)).await.unwrap();
            let (reply, from) = udp_ask(&socket, service, "hi").await;
            let seen = seen.unwrap_or(client);
            assert_eq!(
                reply,
                format!("pod:hi from {seen}"),
                "{client} via {service}"
            );
            // Whoever the backend saw, the answer comes from the service address.
            assert_eq!(from, service, "{client} via {service}");
        }
    }
}

/// A Service on node `a` whose only endpoint, `backend`, runs on node `b`: its address.
fn across_nodes(a: &mut Instance, b: &mut Instance, backend: SocketAddr) -> IpAddr {
    across_nodes_as("far", a, (b, "b"), backend)
}

/// [`across_nodes`] for Service `name`, with `backend` on node `b.1`.
fn across_nodes_as(
    name: &str,
    a: &mut Instance,
    b: (&mut Instance, &str),
    backend: SocketAddr,
) -> IpAddr {
    let (b, b_name) = b;
    let vip = cluster_ip();
    a.core
        .proxier
        .apply_service(svc(name, vip, json!({"ports": [{"port": 7}]})));
    let s = eps(
        name,
        "",
        "TCP",
        backend.port(),
        &[(backend.ip(), true, b_name)],
    );
    a.core.proxier.apply_slice(s.clone());
    b.core.proxier.apply_slice(s);
    a.core.proxier.apply_node(&node(b_name, b.core.tunnel_addr));
    a.core.proxier.sync();
    b.core.proxier.sync();
    vip
}

async fn echo_round(c: &mut TcpStream, msg: &str) {
    c.write_all(msg.as_bytes()).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(PATIENCE, c.read_exact(&mut back))
        .await
        .expect("no echo in time")
        .unwrap();
    assert_eq!(String::from_utf8(back).unwrap(), msg);
}

#[tokio::test]
async fn concurrent_connections_share_a_tunnel_connection_per_thread() {
    let pki = Pki::new();
    let mut a = instance("a", pki.node("a"), Duration::from_secs(30)).await;
    let mut b = instance("b", pki.node("b"), Duration::from_secs(30)).await;
    let vip = across_nodes(&mut a, &mut b, echo_backend().await);

    let mut conns = Vec::new();
    for i in 0..50 {
        let mut c = TcpStream::connect((vip, 7)).await.unwrap();
        echo_round(&mut c, &format!("hello {i}")).await;
        conns.push(c);
    }
    // All held open at once, each still its own byte stream.
    for (i, c) in conns.iter_mut().enumerate() {
        echo_round(c, &format!("again {i}")).await;
    }
    let text = a.core.proxier.shared().metrics.render();
    assert_eq!(
        metric(
            &text,
            "wasmkube_proxy_tunnel_streams_total{direction=\"out\"}"
        ),
        50.0
    );
    let dialled = metric(&text, "wasmkube_proxy_tunnels_total{direction=\"out\"}");
    assert!(
        (1.0..=THREADS as f64).contains(&dialled),
        "{dialled} tunnel connections for 50 streams on {THREADS} threads"
    );
}

#[tokio::test]
async fn a_reset_crosses_the_tunnel() {
    let pki = Pki::new();
    let mut a = instance("a", pki.node("a"), Duration::from_secs(30)).await;
    let mut b = instance("b", pki.node("b"), Duration::from_secs(30)).await;
    // A backend that takes one byte and then aborts the connection.
    let l = TcpListener::bind((cluster_ip(), 0)).await.unwrap();
    let backend = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut one = [0u8; 1];
            let _ = s.read_exact(&mut one).await;
            crate::tcp::reset(&s);
        }
    });
    let vip = across_nodes(&mut a, &mut b, backend);

    let mut c = TcpStream::connect((vip, 7)).await.unwrap();
    c.write_all(b"x").await.unwrap();
    let mut rest = Vec::new();
    let err = tokio::time::timeout(PATIENCE, c.read_to_end(&mut rest))
        .await
        .expect("the reset did not arrive")
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
}

#[tokio::test]
async fn a_tunnel_connection_that_ended_is_dialled_again() {
    let pki = Pki::new();
    let mut a = instance("a", pki.node("a"), Duration::from_secs(30)).await;
    let mut b = instance("b", pki.node("b"), Duration::from_secs(30)).await;
    let backend = echo_backend().await;
    let vip = across_nodes(&mut a, &mut b, backend);
    let mut c = TcpStream::connect((vip, 7)).await.unwrap();
    echo_round(&mut c, "before").await;
    drop(c);

    // Node b's proxy restarts on the same tunnel port: a's kept connection is gone.
    let tunnel_port = b.core.tunnel_addr.port();
    drop(b);
    let mut b = eventually("b's proxy listening again", async || {
        let mut options =
            ProxyOptions::new("b".into(), IpAddr::from([127, 0, 0, 1]), pki.node("b"));
        options.threads = THREADS;
        options.tunnel_port = tunnel_port;
        let stop = CancellationToken::new();
        let core = Core::start(&options, stop.clone()).await.ok()?;
        Some(Instance { core, stop })
    })
    .await;
    b.core.proxier.apply_slice(eps(
        "far",
        "",
        "TCP",
        backend.port(),
        &[(backend.ip(), true, "b")],
    ));
    b.core.proxier.sync();

    eventually("a connection through the new tunnel", async || {
        let mut c = TcpStream::connect((vip, 7)).await.ok()?;
        c.write_all(b"after").await.ok()?;
        let mut back = [0u8; 5];
        tokio::time::timeout(PATIENCE, c.read_exact(&mut back))
            .await
            .ok()?
            .ok()?;
        (&back == b"after").then_some(())
    })
    .await;
    let text = a.core.proxier.shared().metrics.render();
    assert!(metric(&text, "wasmkube_proxy_tunnels_total{direction=\"out\"}") >= 2.0);
}

#[tokio::test]
async fn a_tunnel_connection_closes_when_idle_and_not_while_it_carries_a_stream() {
    let pki = Pki::new();
    let idle = Duration::from_millis(200);
    // One forwarding thread: every connection to a peer is meant to share one tunnel
    // connection.
    let mut a = instance_with("a", pki.node("a"), |o| {
        o.tunnel_idle_timeout = idle;
        o.threads = 1;
    })
    .await;
    let mut b = instance("b", pki.node("b"), Duration::from_secs(30)).await;
    let mut c = instance("c", pki.node("c"), Duration::from_secs(30)).await;
    let to_b = across_nodes_as("to-b", &mut a, (&mut b, "b"), echo_backend().await);
    let to_c = across_nodes_as("to-c", &mut a, (&mut c, "c"), echo_backend().await);
    let series =
        |p: &Instance, series: &str| metric(&p.core.proxier.shared().metrics.render(), series);
    let open = |p: &Instance, direction: &str| {
        series(
            p,
            &format!("wasmkube_proxy_tunnel_connections{{direction=\"{direction}\"}}"),
        )
    };
    let dialled = |p: &Instance| series(p, "wasmkube_proxy_tunnels_total{direction=\"out\"}");

    // A connection to b held open but quiet; one to c that ends at once.
    let mut held = TcpStream::connect((to_b, 7)).await.unwrap();
    echo_round(&mut held, "held").await;
    let mut brief = TcpStream::connect((to_c, 7)).await.unwrap();
    echo_round(&mut brief, "brief").await;
    drop(brief);
    // The tunnel connection to c closes on both sides once idle; the one to b, dialled
    // earlier, has been checked as often by then, but it carries a stream: it stays and
    // takes the next connection to b too.
    eventually("the idle tunnel connection to c closed", async || {
        (open(&c, "in") == 0.0 && open(&a, "out") == 1.0).then_some(())
    })
    .await;
    assert_eq!(open(&b, "in"), 1.0);
    echo_round(&mut held, "still here").await;
    let mut next = TcpStream::connect((to_b, 7)).await.unwrap();
    echo_round(&mut next, "next").await;
    assert_eq!(dialled(&a), 2.0, "one tunnel connection to b, one to c");

    // Without streams the one to b closes too…
    drop((held, next));
    eventually("the idle tunnel connection to b closed", async || {
        (open(&a, "out") == 0.0 && open(&b, "in") == 0.0).then_some(())
    })
    .await;
    // …and the next connection dials a new one.
    let mut again = TcpStream::connect((to_b, 7)).await.unwrap();
    echo_round(&mut again, "again").await;
    assert_eq!(dialled(&a), 3.0);
    assert_eq!(open(&a, "out"), 1.0);
}

#[tokio::test]
async fn the_tunnel_refuses_strangers_and_addresses_that_are_not_local_endpoints() {
    let pki = Pki::new();
    let mut b = instance("b", pki.node("b"), Duration::from_secs(30)).await;
    let (port, ips) = tagged_backends(&["secret"]).await;
    let target = SocketAddr::new(ips[0], port);
    let metrics = crate::metrics::Metrics::default();
    let via = b.core.tunnel_addr;
    // A stream to `target` through b, opened with `creds` by a dialler of its own.
    let open = async |creds: &TunnelCredentials| {
        crate::tunnel::Dialer::new(
            crate::tunnel::Tls::new(creds).unwrap().client,
            Duration::from_secs(90),
            CancellationToken::new(),
        )
        .connect(
            via,
            Protocol::Tcp,
            target,
            None,
            Duration::from_secs(5),
            &metrics,
        )
        .await
    };

    // A node of the cluster, but the address is no endpoint of b's.
    let err = open(&pki.node("a")).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");

    // Make it an endpoint of b's: now a node gets through…
    b.core
        .proxier
        .apply_slice(eps("s", "", "TCP", port, &[(ips[0], true, "b")]));
    b.core.proxier.sync();
    let mut ok = open(&pki.node("a")).await.unwrap();
    let mut got = String::new();
    ok.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, "secret");

    // …but not a certificate of the same CA that is not a node's,
    assert!(open(&pki.identity("admin", &["system:masters"]))
        .await
        .is_err());
    // nor a node of another cluster.
    assert!(open(&Pki::new().node("a")).await.is_err());
}

#[tokio::test]
async fn healthz_and_metrics_are_served() {
    let p = plain_instance("a").await;
    let addr = p.core.metrics_addr.unwrap();
    let get = async |path: &str| {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    assert!(get("/healthz").await.contains(" 503 "));
    p.core.proxier.mark_synced();
    let ok = get("/healthz").await;
    assert!(ok.contains(" 200 "), "{ok}");
    let m = get("/metrics").await;
    assert!(m.contains("wasmkube_proxy_listeners 0"), "{m}");
}
