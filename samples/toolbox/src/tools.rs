//! The busybox commands. Each takes its arguments (without the command name) and a
//! stdout to write to (a file when `sh` redirects), reports errors on stderr prefixed
//! with its name, and returns its exit status.

use std::fs;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

/// The command names argv[0] can take to run a tool instead of the sample.
pub const TOOLS: &[&str] = &[
    "cat", "connect", "echo", "env", "exit", "false", "get", "hostname", "ls", "mkdir", "printenv",
    "rm", "sh", "sleep", "test", "[", "touch", "true", "udp", "write",
];

/// Runs the tool `name` with `args`, writing its output to `out`; returns the exit status
/// (127 for an unknown name, as shells do).
pub fn run_tool(name: &str, args: &[String], out: &mut dyn Write) -> i32 {
    let status = match name {
        "cat" => cat(args, out),
        "connect" => connect(args, out),
        "echo" => echo(args, out),
        "env" => env(out),
        "exit" => return exit_code(args),
        "false" => return 1,
        "get" => crate::http::get_cmd(args, out),
        "hostname" => writeln!(out, "{}", crate::pod_name()).map(|_| 0),
        "ls" => ls(args, out),
        "mkdir" => mkdir(args),
        "printenv" => printenv(args, out),
        "rm" => rm(args),
        "sh" => return crate::shell::sh(args, out),
        "sleep" => sleep(args),
        "test" | "[" => return test(name, args),
        "touch" => touch(args),
        "true" => return 0,
        "udp" => udp(args, out),
        "write" => write(args),
        _ => {
            eprintln!("{name}: command not found");
            return 127;
        }
    };
    match status {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{name}: {e}");
            1
        }
    }
}

fn usage(text: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("usage: {text}"))
}

/// Wraps an error with the path it concerns, as coreutils print it.
fn at(path: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{path}: {e}"))
}

fn cat(args: &[String], out: &mut dyn Write) -> io::Result<i32> {
    let stdin = ["-".to_string()];
    let files = if args.is_empty() { &stdin[..] } else { args };
    let mut status = 0;
    for f in files {
        let copied = if f == "-" {
            io::copy(&mut io::stdin().lock(), out)
        } else {
            fs::File::open(f).and_then(|mut file| io::copy(&mut file, out))
        };
        if let Err(e) = copied {
            eprintln!("cat: {f}: {e}");
            status = 1;
        }
    }
    out.flush()?;
    Ok(status)
}

fn echo(args: &[String], out: &mut dyn Write) -> io::Result<i32> {
    let (newline, words) = match args.first() {
        Some(a) if a == "-n" => (false, &args[1..]),
        _ => (true, args),
    };
    let mut line = words.join(" ");
    if newline {
        line.push('\n');
    }
    out.write_all(line.as_bytes())?;
    out.flush()?;
    Ok(0)
}

fn env(out: &mut dyn Write) -> io::Result<i32> {
    let mut vars: Vec<(String, String)> = std::env::vars().collect();
    vars.sort();
    for (k, v) in vars {
        writeln!(out, "{k}={v}")?;
    }
    Ok(0)
}

fn printenv(args: &[String], out: &mut dyn Write) -> io::Result<i32> {
    if args.is_empty() {
        return env(out);
    }
    let mut status = 0;
    for name in args {
        match std::env::var(name) {
            Ok(v) => writeln!(out, "{v}")?,
            Err(_) => status = 1,
        }
    }
    Ok(status)
}

fn exit_code(args: &[String]) -> i32 {
    match args.first().map(|a| a.parse::<i32>()) {
        None => 0,
        Some(Ok(code)) => code,
        Some(Err(_)) => {
            eprintln!("exit: {}: numeric argument required", args[0]);
            2
        }
    }
}

/// Lists directories (entries sorted, directories marked with a trailing `/`) and names
/// files given directly, like `ls -p`.
fn ls(args: &[String], out: &mut dyn Write) -> io::Result<i32> {
    let here = [".".to_string()];
    let paths: Vec<&String> = if args.is_empty() {
        here.iter().collect()
    } else {
        args.iter().filter(|a| !a.starts_with('-')).collect()
    };
    let mut status = 0;
    for (i, p) in paths.iter().enumerate() {
        let meta = match fs::metadata(p) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("ls: {p}: {e}");
                status = 1;
                continue;
            }
        };
        if !meta.is_dir() {
            writeln!(out, "{p}")?;
            continue;
        }
        if paths.len() > 1 {
            if i > 0 {
                writeln!(out)?;
            }
            writeln!(out, "{p}:")?;
        }
        let mut names = Vec::new();
        for entry in fs::read_dir(p).map_err(|e| at(p, e))? {
            let entry = entry?;
            let mut name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                name.push('/');
            }
            names.push(name);
        }
        names.sort();
        for n in names {
            writeln!(out, "{n}")?;
        }
    }
    Ok(status)
}

fn mkdir(args: &[String]) -> io::Result<i32> {
    let parents = args.iter().any(|a| a == "-p");
    let dirs: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if dirs.is_empty() {
        return Err(usage("mkdir [-p] DIR..."));
    }
    for d in dirs {
        let made = if parents {
            fs::create_dir_all(d)
        } else {
            fs::create_dir(d)
        };
        made.map_err(|e| at(d, e))?;
    }
    Ok(0)
}

fn rm(args: &[String]) -> io::Result<i32> {
    let flags: String = args
        .iter()
        .filter(|a| a.starts_with('-'))
        .flat_map(|a| a.chars().skip(1))
        .collect();
    let force = flags.contains('f');
    let recursive = flags.contains('r') || flags.contains('R');
    let mut status = 0;
    for p in args.iter().filter(|a| !a.starts_with('-')) {
        let removed = match fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() && recursive => fs::remove_dir_all(p),
            Ok(m) if m.is_dir() => Err(io::Error::other("is a directory")),
            Ok(_) => fs::remove_file(p),
            Err(e) => Err(e),
        };
        match removed {
            Err(e) if !(force && e.kind() == io::ErrorKind::NotFound) => {
                eprintln!("rm: {p}: {e}");
                status = 1;
            }
            _ => {}
        }
    }
    Ok(status)
}

/// `sleep SECONDS` with a fraction allowed, or `sleep inf`.
fn sleep(args: &[String]) -> io::Result<i32> {
    let arg = args.first().ok_or_else(|| usage("sleep SECONDS|inf"))?;
    if arg == "inf" || arg == "infinity" {
        crate::sleep_forever();
    }
    let secs: f64 = arg.parse().map_err(|_| usage("sleep SECONDS|inf"))?;
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(usage("sleep SECONDS|inf"));
    }
    std::thread::sleep(Duration::from_secs_f64(secs));
    Ok(0)
}

/// `test` / `[`: the unary file tests `-e -f -d -s`, `-n`/`-z` on strings, `=` and `!=`,
/// each optionally negated with a leading `!`. Status 0 true, 1 false, 2 on misuse.
fn test(name: &str, args: &[String]) -> i32 {
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    if name == "[" {
        if args.last() != Some(&"]") {
            eprintln!("[: missing ]");
            return 2;
        }
        args.pop();
    }
    let negate = args.first() == Some(&"!");
    if negate {
        args.remove(0);
    }
    let truth = match args.as_slice() {
        [] => false,
        [s] => !s.is_empty(),
        ["-e", p] => Path::new(p).exists(),
        ["-f", p] => Path::new(p).is_file(),
        ["-d", p] => Path::new(p).is_dir(),
        ["-s", p] => fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false),
        ["-n", s] => !s.is_empty(),
        ["-z", s] => s.is_empty(),
        [a, "=", b] | [a, "==", b] => a == b,
        [a, "!=", b] => a != b,
        other => {
            eprintln!("{name}: unsupported expression {other:?}");
            return 2;
        }
    };
    i32::from(truth == negate)
}

/// Creates each file if missing and sets its modification time to now.
fn touch(args: &[String]) -> io::Result<i32> {
    if args.is_empty() {
        return Err(usage("touch FILE..."));
    }
    for p in args {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| at(p, e))?;
        // Some hosts refuse setting times; the file exists either way, which is what a
        // readiness toggle needs.
        let _ = file.set_modified(std::time::SystemTime::now());
    }
    Ok(0)
}

/// `write FILE TEXT...`: replaces FILE's content with TEXT and a newline; `-a` appends.
fn write(args: &[String]) -> io::Result<i32> {
    let (append, rest) = match args.first() {
        Some(a) if a == "-a" => (true, &args[1..]),
        _ => (false, args),
    };
    let (path, words) = rest
        .split_first()
        .ok_or_else(|| usage("write [-a] FILE TEXT..."))?;
    let mut line = words.join(" ");
    line.push('\n');
    let mut file = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(path)
        .map_err(|e| at(path, e))?;
    file.write_all(line.as_bytes())?;
    Ok(0)
}

/// A timeout argument in seconds (5 when absent).
fn seconds(arg: Option<&String>, usage_text: &str) -> io::Result<Duration> {
    match arg {
        Some(t) => Ok(Duration::from_secs(
            t.parse().map_err(|_| usage(usage_text))?,
        )),
        None => Ok(Duration::from_secs(5)),
    }
}

/// The first address of `target` (HOST:PORT), through the pod's name lookup.
fn resolve(target: &str) -> io::Result<SocketAddr> {
    target
        .to_socket_addrs()
        .map_err(|e| at(target, e))?
        .next()
        .ok_or_else(|| at(target, io::Error::other("no address")))
}

/// `connect HOST:PORT [TIMEOUT_SECS]`: opens a TCP connection, reports the outcome, and
/// exits 0 only if it connected — how a test shows that the agent denies an address.
fn connect(args: &[String], out: &mut dyn Write) -> io::Result<i32> {
    let target = args
        .first()
        .ok_or_else(|| usage("connect HOST:PORT [TIMEOUT_SECS]"))?;
    let timeout = seconds(args.get(1), "connect HOST:PORT [TIMEOUT_SECS]")?;
    let addr = resolve(target)?;
    match TcpStream::connect_timeout(&addr, timeout) {
        Ok(stream) => {
            let local = stream
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".to_string());
            writeln!(out, "connected to {addr} from {local}")?;
            Ok(0)
        }
        Err(e) => {
            eprintln!("connect: {addr}: {e} ({:?})", e.kind());
            Ok(1)
        }
    }
}

/// How often `udp` sends its datagram again while no answer came: a first datagram may
/// be lost while a Service proxy sets up the session.
const UDP_RESEND: Duration = Duration::from_millis(500);
/// How often `udp` looks for the answer.
const UDP_POLL: Duration = Duration::from_millis(5);

/// `udp HOST:PORT MESSAGE [TIMEOUT_SECS]`: sends MESSAGE as one datagram (again every
/// [`UDP_RESEND`]) until an answer comes, and prints the answer.
fn udp(args: &[String], out: &mut dyn Write) -> io::Result<i32> {
    const USAGE: &str = "udp HOST:PORT MESSAGE [TIMEOUT_SECS]";
    let (Some(target), Some(message)) = (args.first(), args.get(1)) else {
        return Err(usage(USAGE));
    };
    let timeout = seconds(args.get(2), USAGE)?;
    let addr = resolve(target)?;
    let any: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(any)?;
    // Polled: WASI preview 2 sockets take no receive timeout (ENOPROTOOPT).
    socket.set_nonblocking(true)?;
    let started = Instant::now();
    let mut buf = vec![0u8; 65_536];
    let mut next_send = started;
    while started.elapsed() < timeout {
        if Instant::now() >= next_send {
            socket.send_to(message.as_bytes(), addr)?;
            next_send += UDP_RESEND;
        }
        match socket.recv_from(&mut buf) {
            Ok((n, _)) => {
                out.write_all(&buf[..n])?;
                writeln!(out)?;
                return Ok(0);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(UDP_POLL);
            }
            Err(e) => {
                eprintln!("udp: {addr}: {e} ({:?})", e.kind());
                return Ok(1);
            }
        }
    }
    eprintln!("udp: {addr}: no answer in {}s", timeout.as_secs());
    Ok(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, args: &[&str]) -> (i32, String) {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut out = Vec::new();
        let code = run_tool(name, &args, &mut out);
        (code, String::from_utf8_lossy(&out).into_owned())
    }

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("toolbox-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn exit_and_truth() {
        assert_eq!(run("exit", &["7"]).0, 7);
        assert_eq!(run("exit", &[]).0, 0);
        assert_eq!(run("true", &[]).0, 0);
        assert_eq!(run("false", &[]).0, 1);
        assert_eq!(run("nope", &[]).0, 127);
    }

    #[test]
    fn files_round_trip() {
        let dir = temp_dir("files");
        let f = dir.join("a.txt");
        let f = f.to_str().expect("utf-8 path");
        let d = dir.to_str().expect("utf-8 path");
        assert_eq!(run("test", &["-e", f]).0, 1);
        assert_eq!(run("write", &[f, "one", "two"]).0, 0);
        assert_eq!(run("write", &["-a", f, "three"]).0, 0);
        assert_eq!(run("cat", &[f]), (0, "one two\nthree\n".to_string()));
        assert_eq!(run("test", &["-f", f]).0, 0);
        assert_eq!(run("[", &["-s", f, "]"]).0, 0);
        assert_eq!(run("test", &["!", "-d", f]).0, 0);
        assert_eq!(run("mkdir", &["-p", &format!("{d}/sub/deeper")]).0, 0);
        assert_eq!(run("ls", &[d]), (0, "a.txt\nsub/\n".to_string()));
        assert_eq!(run("rm", &[f]).0, 0);
        assert_eq!(run("rm", &[f]).0, 1);
        assert_eq!(run("rm", &["-f", f]).0, 0);
        assert_eq!(run("touch", &[f]).0, 0);
        assert_eq!(run("cat", &[f]), (0, String::new()));
        assert_eq!(run("cat", &["/no/such/file"]).0, 1);
        assert_eq!(run("rm", &["-rf", d]).0, 0);
    }

    #[test]
    fn echo_and_test_strings() {
        assert_eq!(run("echo", &["a", "b"]), (0, "a b\n".to_string()));
        assert_eq!(run("echo", &["-n", "a"]), (0, "a".to_string()));
        assert_eq!(run("test", &["x", "=", "x"]).0, 0);
        assert_eq!(run("test", &["x", "!=", "x"]).0, 1);
        assert_eq!(run("test", &["-z", ""]).0, 0);
        assert_eq!(run("test", &["-q", "a", "b", "c"]).0, 2);
    }

    #[test]
    fn udp_prints_the_answer_or_fails_after_its_timeout() {
        let server = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = server.local_addr().expect("addr").to_string();
        let echo = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let (n, from) = server.recv_from(&mut buf).expect("a datagram");
            server.send_to(&buf[..n], from).expect("the answer");
        });
        assert_eq!(run("udp", &[&addr, "ping"]), (0, "ping\n".to_string()));
        echo.join().unwrap();
        // Nothing answers any more.
        assert_eq!(run("udp", &[&addr, "ping", "1"]).0, 1);
    }

    #[test]
    fn connect_reports_refusal() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (code, out) = run("connect", &[&addr]);
        assert_eq!(code, 0);
        assert!(out.starts_with("connected to "), "{out}");
        drop(listener);
        assert_eq!(run("connect", &[&addr, "2"]).0, 1);
    }
}
