//! udp-echo: echoes UDP datagrams on `0.0.0.0:$PORT` (default 9090), for WASI preview 2
//! (wasm32-wasip2, `std::net::UdpSocket`).
//!
//! Each datagram goes back to its sender unchanged — or, when `ECHO_PREFIX` is set,
//! prefixed with `<pod name>: ` so a test can tell which pod behind a Service answered
//! (`ECHO_PREFIX` may be any non-empty value; `0`/`false` turn it off). One line per
//! datagram goes to stdout.

#![forbid(unsafe_code)]

use std::net::{SocketAddr, UdpSocket};

/// The largest datagram accepted; longer ones are truncated by the receive.
const MAX_DATAGRAM: usize = 65_507;

fn main() {
    toolbox::run_tool_if_invoked();

    let port = toolbox::env_u64("PORT", 9090);
    let Ok(port) = u16::try_from(port) else {
        eprintln!("PORT={port} is not a port number");
        toolbox::exit(2);
    };
    let pod = toolbox::pod_name();
    let prefix = match std::env::var("ECHO_PREFIX").unwrap_or_default().as_str() {
        "" | "0" | "false" | "no" => None,
        _ => Some(format!("{pod}: ")),
    };
    let addr = SocketAddr::from(([0, 0, 0, 0], port));
    let socket = match UdpSocket::bind(addr) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("udp-echo: bind {addr}: {e}");
            toolbox::exit(1);
        }
    };
    let local = socket
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| addr.to_string());
    println!(
        "{} udp-echo pod={pod} listening on {local}",
        toolbox::timestamp()
    );

    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) => {
                // An ICMP error from an earlier reply can surface here; it concerns that
                // peer only, so keep serving.
                eprintln!("udp-echo: receive: {e}");
                continue;
            }
        };
        let reply = reply(prefix.as_deref(), &buf[..n]);
        let outcome = match socket.send_to(&reply, peer) {
            Ok(_) => "echoed".to_string(),
            Err(e) => format!("reply failed: {e}"),
        };
        println!("{} {peer} {n} bytes {outcome}", toolbox::timestamp());
    }
}

/// The datagram to send back.
fn reply(prefix: Option<&str>, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + prefix.map_or(0, str::len));
    if let Some(p) = prefix {
        out.extend_from_slice(p.as_bytes());
    }
    out.extend_from_slice(payload);
    out.truncate(MAX_DATAGRAM);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_when_asked() {
        assert_eq!(reply(None, b"hi"), b"hi");
        assert_eq!(reply(Some("pod-a: "), b"hi"), b"pod-a: hi");
    }
}
