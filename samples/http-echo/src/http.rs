//! HTTP/1.1 request parsing and the echo server's responses, free of any I/O so they are
//! unit-tested natively.

use std::path::Path;

/// The largest request head accepted; a bigger one gets 431 and the connection closes.
pub const MAX_HEAD: usize = 16 * 1024;
/// The largest request body accepted; a bigger one gets 413 and the connection closes.
pub const MAX_BODY: usize = 1024 * 1024;

/// A complete request.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub version: String,
    /// Header names as sent, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of a header, matched without regard to case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the client wants the connection kept open after this request: the
    /// default from HTTP/1.1 on, opt-in with `Connection: keep-alive` for HTTP/1.0.
    pub fn keep_alive(&self) -> bool {
        let connection = self.header("connection").unwrap_or("").to_ascii_lowercase();
        if self.version == "HTTP/1.0" {
            connection.contains("keep-alive")
        } else {
            !connection.contains("close")
        }
    }

    /// The path without its query string.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// What the buffered bytes amount to so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole request yet: read more.
    Partial,
    /// A request, and how many buffered bytes it used.
    Complete(Request, usize),
    /// Unanswerable: reply with this status and close.
    Invalid(u16, &'static str),
}

/// Parses the request at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    let Some(head_len) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) else {
        return if buf.len() > MAX_HEAD {
            Parsed::Invalid(431, "request head too large")
        } else {
            Parsed::Partial
        };
    };
    if head_len > MAX_HEAD {
        return Parsed::Invalid(431, "request head too large");
    }
    let Ok(head) = std::str::from_utf8(&buf[..head_len - 4]) else {
        return Parsed::Invalid(400, "request head is not UTF-8");
    };
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Parsed::Invalid(400, "malformed request line");
    };
    if method.is_empty() || !target.starts_with('/') && target != "*" {
        return Parsed::Invalid(400, "malformed request line");
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Parsed::Invalid(505, "only HTTP/1.0 and HTTP/1.1 are supported");
    }
    let mut headers = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Parsed::Invalid(400, "malformed header");
        };
        if name.is_empty() || name.ends_with(' ') {
            return Parsed::Invalid(400, "malformed header");
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    let mut request = Request {
        method: method.to_string(),
        target: target.to_string(),
        version: version.to_string(),
        headers,
        body: Vec::new(),
    };
    if request.header("transfer-encoding").is_some() {
        return Parsed::Invalid(501, "chunked request bodies are not supported");
    }
    let body_len = match request.header("content-length") {
        None => 0,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n <= MAX_BODY => n,
            Ok(_) => return Parsed::Invalid(413, "request body too large"),
            Err(_) => return Parsed::Invalid(400, "bad content-length"),
        },
    };
    if buf.len() < head_len + body_len {
        return Parsed::Partial;
    }
    request.body = buf[head_len..head_len + body_len].to_vec();
    Parsed::Complete(request, head_len + body_len)
}

/// What the server is configured with.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub pod: String,
    /// `READY_FILE`: /ready answers 200 only while this file exists.
    pub ready_file: Option<String>,
    /// `UNHEALTHY_FILE`: /healthz answers 500 while this file exists.
    pub unhealthy_file: Option<String>,
}

/// A response ready to be written.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// Answers a request: `/healthz`, `/ready`, `/status/NNN`, and an echo of the request
/// for every other path.
pub fn respond(req: &Request, peer: &str, settings: &Settings) -> Response {
    let exists = |f: &Option<String>| f.as_deref().map(|p| Path::new(p).exists());
    let path = req.path();
    let (status, body) = match path {
        "/healthz" | "/livez" => match exists(&settings.unhealthy_file) {
            Some(true) => (500, "unhealthy\n".to_string()),
            _ => (200, "ok\n".to_string()),
        },
        "/ready" | "/readyz" => match exists(&settings.ready_file) {
            Some(false) => (503, "not ready\n".to_string()),
            _ => (200, "ready\n".to_string()),
        },
        _ => match path.strip_prefix("/status/").map(str::parse::<u16>) {
            Some(Ok(code)) if (200..600).contains(&code) => (code, format!("status {code}\n")),
            _ => (200, echo(req, peer, &settings.pod)),
        },
    };
    Response { status, body }
}

fn echo(req: &Request, peer: &str, pod: &str) -> String {
    let mut text = format!(
        "pod: {pod}\nmethod: {}\npath: {}\nversion: {}\nfrom: {peer}\nheaders:\n",
        req.method, req.target, req.version
    );
    for (k, v) in &req.headers {
        text.push_str(&format!("  {k}: {v}\n"));
    }
    if !req.body.is_empty() {
        text.push_str(&format!("body ({} bytes):\n", req.body.len()));
        text.push_str(&String::from_utf8_lossy(&req.body));
        if !req.body.ends_with(b"\n") {
            text.push('\n');
        }
    }
    text
}

/// The reason phrase for the statuses this server sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
}

/// Serializes a response. HEAD gets the headers of the would-be body but no body;
/// `close` says whether the connection ends after it.
pub fn serialize(resp: &Response, pod: &str, head_only: bool, close: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nX-Pod-Name: {pod}\r\nServer: wasmkube-http-echo\r\nConnection: {}\r\n\r\n",
        resp.status,
        reason(resp.status),
        resp.body.len(),
        if close { "close" } else { "keep-alive" },
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(resp.body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(raw: &[u8]) -> (Request, usize) {
        match parse(raw) {
            Parsed::Complete(r, n) => (r, n),
            other => panic!("expected a request, got {other:?}"),
        }
    }

    #[test]
    fn parses_pipelined_requests_with_bodies() {
        let raw = b"POST /a?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.0\r\n\r\n";
        let (r, n) = complete(raw);
        assert_eq!(
            (r.method.as_str(), r.path(), r.body.as_slice()),
            ("POST", "/a", &b"abc"[..])
        );
        assert!(r.keep_alive());
        let (r2, n2) = complete(&raw[n..]);
        assert_eq!(r2.target, "/");
        assert!(!r2.keep_alive());
        assert_eq!(n + n2, raw.len());
    }

    #[test]
    fn waits_for_more_and_rejects_garbage() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost"), Parsed::Partial);
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab"),
            Parsed::Partial
        );
        assert!(matches!(
            parse(b"nonsense\r\n\r\n"),
            Parsed::Invalid(400, _)
        ));
        assert!(matches!(
            parse(b"GET / HTTP/2\r\n\r\n"),
            Parsed::Invalid(505, _)
        ));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"),
            Parsed::Invalid(413, _)
        ));
        assert!(matches!(
            parse(&[b'a'; MAX_HEAD + 1]),
            Parsed::Invalid(431, _)
        ));
    }

    #[test]
    fn routes() {
        let dir = std::env::temp_dir().join(format!("http-echo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ready = dir.join("ready").to_string_lossy().into_owned();
        let settings = Settings {
            pod: "p1".into(),
            ready_file: Some(ready.clone()),
            unhealthy_file: None,
        };
        let req =
            |path: &str| complete(format!("GET {path} HTTP/1.1\r\nX-A: b\r\n\r\n").as_bytes()).0;
        assert_eq!(respond(&req("/ready"), "c", &settings).status, 503);
        std::fs::write(&ready, "").unwrap();
        assert_eq!(respond(&req("/ready"), "c", &settings).status, 200);
        assert_eq!(respond(&req("/healthz"), "c", &settings).status, 200);
        assert_eq!(respond(&req("/status/418"), "c", &settings).status, 418);
        let echo = respond(&req("/x?y"), "1.2.3.4:5", &settings);
        assert_eq!(echo.status, 200);
        assert!(echo.body.contains("pod: p1\n"), "{}", echo.body);
        assert!(echo.body.contains("path: /x?y\n"));
        assert!(echo.body.contains("  X-A: b\n"));
        let bytes = serialize(&echo, "p1", true, false);
        assert!(bytes.ends_with(b"Connection: keep-alive\r\n\r\n"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
