//! Pod IPs for preview 2 guests: binds land on the pod's own address.
//!
//! Every server binds `0.0.0.0:PORT`; on one node many pods serve the same port, so each
//! pod's binds must end up on its own loopback address (Linux routes all of 127/8 to
//! `lo`, so any 127.x address can be bound without configuring anything). wasmtime-wasi's
//! `socket_addr_check` can only allow or deny an address, not change it, so the few
//! socket functions that take a local address are shadowed in the component linker by
//! wrappers that rewrite the address and then delegate to wasmtime-wasi's own
//! implementation:
//!
//! - `tcp-socket.start-bind` and `udp-socket.start-bind`: `0.0.0.0` and `127.0.0.1`
//!   become the pod IP (so a pod's "localhost" is its own);
//! - `tcp-socket.start-connect`: `0.0.0.0` and `127.0.0.1` become the pod IP too (a
//!   pod's containers reach each other on localhost), and an unbound socket is first
//!   bound to `(pod IP, 0)`, so the peer sees the pod's address as the source.
//!
//! The pod IP comes from the store's data, so one linker serves every pod. Policy stays
//! in `socket_addr_check` (see [`allowed`]), which sees the rewritten address: a pod
//! binds only its own address and connects only where its [`Egress`] lets it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::bindings::sockets::network::{
    ErrorCode, Host as _, IpSocketAddress, Network,
};
use wasmtime_wasi::p2::bindings::sockets::tcp::HostTcpSocket;
use wasmtime_wasi::p2::bindings::sockets::udp::HostUdpSocket;
use wasmtime_wasi::p2::{SocketResult, TcpSocket, UdpSocket};
use wasmtime_wasi::sockets::{SocketAddrUse, WasiSocketsCtxView, WasiSocketsView as _};

use super::program::P2State;

/// The interfaces wasmtime-wasi 48 registers; guests importing earlier 0.2.x versions
/// resolve to them.
const TCP: &str = "wasi:sockets/tcp@0.2.12";
const UDP: &str = "wasi:sockets/udp@0.2.12";

/// The address a guest's bind to `addr` really uses: the unspecified and loopback IPv4
/// addresses become the pod IP; anything else is left for the policy to judge.
pub(crate) fn rewrite_bind(addr: SocketAddr, pod_ip: Option<IpAddr>) -> SocketAddr {
    match (addr.ip(), pod_ip) {
        (IpAddr::V4(ip), Some(pod @ IpAddr::V4(_)))
            if ip == Ipv4Addr::UNSPECIFIED || ip == Ipv4Addr::LOCALHOST =>
        {
            SocketAddr::new(pod, addr.port())
        }
        _ => addr,
    }
}

/// Where a pod's sockets may connect and send datagrams (besides its own address).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Egress {
    /// Any loopback address: for instances that are not pods (tests, tools).
    #[default]
    Loopback,
    /// Only these ranges — for a pod, the cluster's pod and service ranges, so it
    /// reaches other pods and ClusterIPs but not the host's daemons on 127.0.0.1.
    Only(Arc<[IpNet]>),
    /// Anywhere (a `hostNetwork` pod, or one whose annotation allows it).
    Any,
}

impl Egress {
    /// Whether a connect or send to `ip` is allowed.
    pub fn permits(&self, ip: IpAddr) -> bool {
        match self {
            Egress::Loopback => ip.is_loopback(),
            Egress::Only(nets) => nets.iter().any(|n| n.contains(&ip)),
            Egress::Any => true,
        }
    }
}

/// The socket policy of a pod whose address is `pod_ip`: binds only on the pod IP
/// (an unspecified address reaches the check only for the implicit bind of an unbound
/// UDP socket's first send, as explicit binds were rewritten); connects and sends to
/// its own address and where `egress` allows; accepts and receives from whoever
/// reached the pod's (loopback) address, which only this host can.
pub(crate) fn allowed(
    pod_ip: IpAddr,
    egress: &Egress,
    addr: SocketAddr,
    use_: SocketAddrUse,
) -> bool {
    match use_ {
        SocketAddrUse::TcpBind | SocketAddrUse::TcpListen | SocketAddrUse::UdpBind => {
            addr.ip() == pod_ip || addr.ip().is_unspecified()
        }
        SocketAddrUse::TcpConnect | SocketAddrUse::UdpSend => {
            addr.ip() == pod_ip || egress.permits(addr.ip())
        }
        SocketAddrUse::TcpAccept | SocketAddrUse::UdpReceive => addr.ip().is_loopback(),
    }
}

/// Replaces the socket functions named in the module docs with their pod-IP versions.
/// Fails if one of them was not defined before: shadowing a name wasmtime-wasi does not
/// use would silently add a function no guest calls.
pub(crate) fn shadow_socket_functions(linker: &mut Linker<P2State>) -> wasmtime::Result<()> {
    for (interface, function) in [
        (TCP, "[method]tcp-socket.start-bind"),
        (TCP, "[method]tcp-socket.start-connect"),
        (UDP, "[method]udp-socket.start-bind"),
    ] {
        // Without shadowing, defining an existing name fails: that proves it exists.
        linker.allow_shadowing(false);
        let probe = linker
            .instance(interface)?
            .func_wrap(function, |_, (): ()| Ok(()));
        if probe.is_ok() {
            return Err(wasmtime::format_err!(
                "{interface} has no {function} to shadow: wasmtime-wasi's sockets version \
                 changed"
            ));
        }
    }
    linker.allow_shadowing(true);

    let mut tcp = linker.instance(TCP)?;
    tcp.func_wrap_async(
        "[method]tcp-socket.start-bind",
        |mut store,
         (this, network, local): (Resource<TcpSocket>, Resource<Network>, IpSocketAddress)| {
            Box::new(async move {
                let state = store.data_mut();
                let local = rewrite_bind(local.into(), state.pod_ip).into();
                let mut view = state.sockets();
                let result = HostTcpSocket::start_bind(&mut view, this, network, local).await;
                Ok((lower(&mut view, result)?,))
            })
        },
    )?;
    tcp.func_wrap(
        "[method]tcp-socket.start-connect",
        |mut store,
         (this, network, remote): (Resource<TcpSocket>, Resource<Network>, IpSocketAddress)| {
            let state = store.data_mut();
            let pod_ip = state.pod_ip;
            let mut view = state.sockets();
            let remote_addr = rewrite_bind(remote.into(), pod_ip);
            if let Some(pod_ip) = pod_ip {
                bind_source(&mut view, &this, &network, pod_ip, remote_addr)?;
            }
            let result =
                HostTcpSocket::start_connect(&mut view, this, network, remote_addr.into());
            Ok((lower(&mut view, result)?,))
        },
    )?;
    let mut udp = linker.instance(UDP)?;
    udp.func_wrap_async(
        "[method]udp-socket.start-bind",
        |mut store,
         (this, network, local): (Resource<UdpSocket>, Resource<Network>, IpSocketAddress)| {
            Box::new(async move {
                let state = store.data_mut();
                let local = rewrite_bind(local.into(), state.pod_ip).into();
                let mut view = state.sockets();
                let result = HostUdpSocket::start_bind(&mut view, this, network, local).await;
                Ok((lower(&mut view, result)?,))
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Binds a still unbound TCP socket to `(pod_ip, 0)` before it connects to `remote`, so
/// the connection's source is the pod. Skipped when the families differ or the socket is
/// bound already; a failed bind is left for the connect to report.
fn bind_source(
    view: &mut WasiSocketsCtxView<'_>,
    this: &Resource<TcpSocket>,
    network: &Resource<Network>,
    pod_ip: IpAddr,
    remote: SocketAddr,
) -> wasmtime::Result<()> {
    if pod_ip.is_ipv4() != remote.is_ipv4()
        || HostTcpSocket::local_address(view, Resource::new_borrow(this.rep())).is_ok()
    {
        return Ok(());
    }
    let local: IpSocketAddress = SocketAddr::new(pod_ip, 0).into();
    // Binding a TCP socket never waits (wasmtime-wasi's bind is async only for the
    // permission check, which here is a plain closure): poll it once.
    let polled = {
        let bind = HostTcpSocket::start_bind(
            view,
            Resource::new_borrow(this.rep()),
            Resource::new_borrow(network.rep()),
            local,
        );
        let mut bind = std::pin::pin!(bind);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        std::future::Future::poll(bind.as_mut(), &mut cx)
    };
    match polled {
        std::task::Poll::Ready(Ok(())) => {
            let _ = HostTcpSocket::finish_bind(view, Resource::new_borrow(this.rep()));
        }
        std::task::Poll::Ready(Err(error)) => {
            // Trap-worthy errors (a bad handle) surface here; others are the connect's.
            let _ = view.convert_error_code(error)?;
        }
        std::task::Poll::Pending => {
            tracing::debug!("binding a connecting socket to the pod IP did not complete");
        }
    }
    Ok(())
}

/// wasmtime-wasi's error conversion: an error code for the guest, or a trap.
fn lower(
    view: &mut WasiSocketsCtxView<'_>,
    result: SocketResult<()>,
) -> wasmtime::Result<Result<(), ErrorCode>> {
    match result {
        Ok(()) => Ok(Ok(())),
        Err(error) => Ok(Err(view.convert_error_code(error)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn wildcard_and_loopback_binds_land_on_the_pod_ip() {
        let pod = Some(IpAddr::from([127, 130, 0, 5]));
        assert_eq!(
            rewrite_bind(addr("0.0.0.0:8080"), pod),
            addr("127.130.0.5:8080")
        );
        assert_eq!(
            rewrite_bind(addr("127.0.0.1:53"), pod),
            addr("127.130.0.5:53")
        );
        assert_eq!(
            rewrite_bind(addr("127.9.9.9:80"), pod),
            addr("127.9.9.9:80")
        );
        assert_eq!(rewrite_bind(addr("[::]:80"), pod), addr("[::]:80"));
        assert_eq!(rewrite_bind(addr("0.0.0.0:80"), None), addr("0.0.0.0:80"));
    }

    #[test]
    fn binds_only_on_the_pod_ip_and_connects_where_egress_allows() {
        let pod = IpAddr::from([127, 130, 0, 5]);
        let loopback = Egress::Loopback;
        assert!(allowed(
            pod,
            &loopback,
            addr("127.130.0.5:80"),
            SocketAddrUse::TcpBind
        ));
        assert!(!allowed(
            pod,
            &loopback,
            addr("127.130.0.6:80"),
            SocketAddrUse::TcpBind
        ));
        assert!(!allowed(
            pod,
            &loopback,
            addr("10.0.0.1:80"),
            SocketAddrUse::UdpBind
        ));
        assert!(allowed(
            pod,
            &loopback,
            addr("127.130.0.6:80"),
            SocketAddrUse::TcpConnect
        ));
        assert!(!allowed(
            pod,
            &loopback,
            addr("10.0.0.1:80"),
            SocketAddrUse::TcpConnect
        ));
        assert!(!allowed(
            pod,
            &loopback,
            addr("8.8.8.8:53"),
            SocketAddrUse::UdpSend
        ));

        let cluster = Egress::Only(Arc::from(vec![
            "127.128.0.0/10".parse::<IpNet>().unwrap(),
            "127.96.0.0/16".parse::<IpNet>().unwrap(),
        ]));
        // Other pods and ClusterIPs, and itself; not the host's 127.0.0.1 daemons.
        assert!(allowed(
            pod,
            &cluster,
            addr("127.128.3.4:8080"),
            SocketAddrUse::TcpConnect
        ));
        assert!(allowed(
            pod,
            &cluster,
            addr("127.96.0.10:53"),
            SocketAddrUse::UdpSend
        ));
        assert!(allowed(
            pod,
            &cluster,
            addr("127.130.0.5:9"),
            SocketAddrUse::TcpConnect
        ));
        assert!(!allowed(
            pod,
            &cluster,
            addr("127.0.0.1:6443"),
            SocketAddrUse::TcpConnect
        ));
        assert!(!allowed(
            pod,
            &cluster,
            addr("10.1.2.3:80"),
            SocketAddrUse::TcpConnect
        ));
        assert!(allowed(
            pod,
            &Egress::Any,
            addr("10.1.2.3:80"),
            SocketAddrUse::TcpConnect
        ));
        // Whoever reached the pod's address is on this host.
        assert!(allowed(
            pod,
            &cluster,
            addr("127.0.0.1:5555"),
            SocketAddrUse::TcpAccept
        ));
    }
}
