//! `get URL`: a minimal HTTP/1.1 client (plain http, one request, `Connection: close`),
//! so a pod can call a Service or another pod from inside and print what it got.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A response as `get` sees it.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code from the status line.
    pub status: u16,
    /// The body, de-chunked when the server chunked it.
    pub body: Vec<u8>,
}

/// `get [-i] URL`: prints the body (with `-i`, the status line and headers first); exits
/// 0 for a 2xx or 3xx status, 1 otherwise (like `curl -f`), and 1 on a network error.
pub fn get_cmd(args: &[String], out: &mut dyn Write) -> io::Result<i32> {
    let include_head = args.iter().any(|a| a == "-i");
    let url = args
        .iter()
        .find(|a| !a.starts_with('-'))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "usage: get [-i] URL"))?;
    let (raw, resp) = match fetch(url, Duration::from_secs(10)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("get: {url}: {e} ({:?})", e.kind());
            return Ok(1);
        }
    };
    if include_head {
        out.write_all(&raw)?;
    }
    out.write_all(&resp.body)?;
    out.flush()?;
    Ok(i32::from(!(200..400).contains(&resp.status)))
}

/// Fetches `url` (`http://HOST[:PORT][/PATH]`); returns the raw head and the response.
pub fn fetch(url: &str, timeout: Duration) -> io::Result<(Vec<u8>, Response)> {
    let invalid = |m: &str| io::Error::new(io::ErrorKind::InvalidInput, m.to_string());
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| invalid("only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let target = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addr = target
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| invalid("host has no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: wasmkube-toolbox\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(raw)
}

/// Splits a complete response into its head and body, de-chunking if needed.
fn parse_response(raw: Vec<u8>) -> io::Result<(Vec<u8>, Response)> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let head_end = find(&raw, b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))? + 4;
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(&raw[head_end..]).ok_or_else(|| bad("bad chunked body"))?
    } else {
        raw[head_end..].to_vec()
    };
    Ok((raw[..head_end].to_vec(), Response { status, body }))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = find(data, b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked() {
        let (_, r) =
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi".to_vec()).unwrap();
        assert_eq!(
            r,
            Response {
                status: 200,
                body: b"hi".to_vec()
            }
        );
        let raw = b"HTTP/1.1 503 No\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let (_, r) = parse_response(raw.to_vec()).unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.body, b"abcde");
        assert!(parse_response(b"garbage".to_vec()).is_err());
    }

    #[test]
    fn fetches_from_a_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"GET /x HTTP/1.1\r\n"));
            s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope")
                .unwrap();
        });
        let mut out = Vec::new();
        let code = get_cmd(&[format!("http://{addr}/x")], &mut out).unwrap();
        server.join().unwrap();
        assert_eq!((code, out), (1, b"nope".to_vec()));
    }
}
