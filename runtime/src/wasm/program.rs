//! Programs (compiled, pre-linked modules) and running one instance of them.
//!
//! Each [`Program::run`] builds a fresh WASI context from its [`RunSpec`] — only the
//! arguments, environment, directories and network it grants, nothing of the host's —
//! and a fresh store, instantiates from the pre-linked program (microseconds with the
//! pool), and runs the command to its end, to a trap, or until cancelled.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncRead;
use tokio_util::sync::CancellationToken;
use wasmtime::{InstancePre, Store, Trap, UpdateDeadline, WasmBacktrace};
use wasmtime_wasi::cli::AsyncStdinStream;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{
    FsPerms, I32Exit, ResourceTable, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
};

use super::engine::EngineShared;
use super::limits::{MemoryLimiter, Refusal};
use super::names::Names;
use super::net::Egress;
use super::stdio::SinkStream;
use super::{OutputSink, Preopen};

/// Backtrace frames kept in a trap report.
const MAX_TRAP_FRAMES: usize = 8;

/// What kind of WebAssembly a program is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProgramKind {
    /// A core module for WASI preview 1 (`wasi_snapshot_preview1`), run through `_start`.
    Core,
    /// A component for WASI preview 2, run through `wasi:cli/run`.
    Component,
}

/// A compiled, pre-linked module: instantiating it does no compiling and no import
/// resolution. Cheap to clone; clones share the compiled code.
#[derive(Clone)]
pub struct Program {
    inner: Arc<ProgramInner>,
}

struct ProgramInner {
    digest: String,
    engine: Arc<EngineShared>,
    pre: Pre,
}

/// The pre-linked form of each kind.
pub(crate) enum Pre {
    Core(InstancePre<P1State>),
    Component(CommandPre<P2State>),
}

impl fmt::Debug for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Program")
            .field("digest", &self.inner.digest)
            .field("kind", &self.kind())
            .finish()
    }
}

/// How to run one instance: what the guest gets to see.
pub struct RunSpec {
    /// The arguments; `argv[0]` is the program name.
    pub argv: Vec<String>,
    /// The environment, in order (the host's own environment never leaks in).
    pub env: Vec<(String, String)>,
    /// Host directories the guest sees (volume mounts); nothing else of the filesystem.
    pub preopens: Vec<Preopen>,
    pub stdout: Arc<dyn OutputSink>,
    pub stderr: Arc<dyn OutputSink>,
    /// The guest's stdin; `None` is an empty, closed stdin.
    pub stdin: Option<Box<dyn AsyncRead + Send + Sync + Unpin>>,
    /// The most linear memory (all memories together) the instance may have, in bytes.
    /// `None` leaves the engine's per-instance maximum.
    pub memory_limit: Option<u64>,
    /// The CPU the instance may use, in millicores (1000 = one core); `None` is no
    /// limit of its own (a fair share with the other instances).
    pub cpu_limit_millis: Option<u64>,
    /// Allow TCP, UDP and name lookup to any address (finer policy comes with the pod
    /// network); `false` denies all sockets.
    pub network: bool,
    /// The pod's own address. With it (and `network`), a preview 2 guest's binds to
    /// `0.0.0.0` or `127.0.0.1` land on this address (and connects to them reach it),
    /// binds elsewhere are refused, and connects go only where `egress` allows; `None`
    /// leaves the network as `network` says.
    pub pod_ip: Option<IpAddr>,
    /// Where the guest may connect and send (with a `pod_ip`; without one, any
    /// loopback address).
    pub egress: Egress,
    /// Counts the guest's TCP listens (with a `pod_ip`): readiness probes waiting for
    /// the guest's server to come up retry at once instead of polling.
    pub listens: Option<Arc<tokio::sync::watch::Sender<u64>>>,
    /// The cluster names a preview 2 guest's lookups try before the host's resolver
    /// (with `network`); `None`: the host's resolver only.
    pub names: Option<Arc<dyn Names>>,
}

impl RunSpec {
    /// A spec with the given arguments and outputs, and an empty environment, no
    /// directories, empty stdin, no memory limit of its own and no network.
    pub fn new(
        argv: Vec<String>,
        stdout: Arc<dyn OutputSink>,
        stderr: Arc<dyn OutputSink>,
    ) -> Self {
        Self {
            argv,
            env: Vec::new(),
            preopens: Vec::new(),
            stdout,
            stderr,
            stdin: None,
            memory_limit: None,
            cpu_limit_millis: None,
            network: false,
            pod_ip: None,
            egress: Egress::Loopback,
            listens: None,
            names: None,
        }
    }
}

impl fmt::Debug for RunSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The environment is left out: it may hold secrets.
        f.debug_struct("RunSpec")
            .field("argv", &self.argv)
            .field("env_vars", &self.env.len())
            .field("preopens", &self.preopens)
            .field("stdin", &self.stdin.is_some())
            .field("memory_limit", &self.memory_limit)
            .field("cpu_limit_millis", &self.cpu_limit_millis)
            .field("network", &self.network)
            .field("pod_ip", &self.pod_ip)
            .field("egress", &self.egress)
            .field("listens", &self.listens.is_some())
            .field("names", &self.names.is_some())
            .finish()
    }
}

/// How an instance ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The program exited with this code: `proc_exit`/`wasi:cli/exit`, or 0 when
    /// `_start` returns (a preview 2 `run` returning an error is 1).
    Exited(i32),
    /// The program trapped (`unreachable`, a Rust panic, an out-of-bounds access…): the
    /// trap and a short wasm backtrace.
    Trapped(String),
    /// The program was refused memory beyond its limit and then trapped or exited with
    /// a non-zero code (or could not even get its initial memory).
    OutOfMemory(String),
    /// Stopped by the cancellation token.
    Cancelled,
    /// The instance could not be created or started: a volume directory missing, the
    /// instance pool full, a bad start function…
    Failed(String),
}

impl Exit {
    /// The exit code Kubernetes would show: the program's own code, else what a
    /// container runtime reports for the equivalent signal (trap: 134 as for SIGABRT,
    /// OOM and cancellation: 137 as for SIGKILL, failure to start: 128).
    pub fn exit_code(&self) -> i32 {
        match self {
            Exit::Exited(code) => *code,
            Exit::Trapped(_) => 134,
            Exit::OutOfMemory(_) | Exit::Cancelled => 137,
            Exit::Failed(_) => 128,
        }
    }

    /// The `terminated.reason` Kubernetes would show.
    pub fn reason(&self) -> &'static str {
        match self {
            Exit::Exited(0) => "Completed",
            Exit::Exited(_) | Exit::Trapped(_) | Exit::Cancelled => "Error",
            Exit::OutOfMemory(_) => "OOMKilled",
            Exit::Failed(_) => "StartError",
        }
    }

    /// The `terminated.message`: what went wrong, if anything did.
    pub fn message(&self) -> Option<&str> {
        match self {
            Exit::Trapped(m) | Exit::OutOfMemory(m) | Exit::Failed(m) => Some(m),
            Exit::Exited(_) | Exit::Cancelled => None,
        }
    }
}

/// Store state of a preview 1 instance.
pub(crate) struct P1State {
    pub(crate) wasi: WasiP1Ctx,
    limiter: MemoryLimiter,
}

/// A preview 2 instance's network beyond its WASI context.
struct GuestNetwork {
    pod_ip: Option<IpAddr>,
    /// Whether the guest may look names up at all (it has the network).
    name_lookups: bool,
    names: Option<Arc<dyn Names>>,
}

/// Store state of a preview 2 instance.
pub(crate) struct P2State {
    ctx: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    /// Where this instance's binds land (see `net.rs`).
    pub(crate) pod_ip: Option<IpAddr>,
    /// Whether the guest may look names up at all (it has the network).
    pub(crate) name_lookups: bool,
    /// The cluster names the guest's lookups try first (see `names.rs`).
    pub(crate) names: Option<Arc<dyn Names>>,
}

impl P2State {
    pub(crate) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl WasiView for P2State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// Store states that carry a memory limiter.
trait Limited: Send + 'static {
    fn limiter(&mut self) -> &mut MemoryLimiter;
}

impl Limited for P1State {
    fn limiter(&mut self) -> &mut MemoryLimiter {
        &mut self.limiter
    }
}

impl Limited for P2State {
    fn limiter(&mut self) -> &mut MemoryLimiter {
        &mut self.limiter
    }
}

impl Program {
    pub(crate) fn new(digest: String, engine: Arc<EngineShared>, pre: Pre) -> Self {
        Self {
            inner: Arc::new(ProgramInner {
                digest,
                engine,
                pre,
            }),
        }
    }

    /// Preview 1 core module or preview 2 component.
    pub fn kind(&self) -> ProgramKind {
        match self.inner.pre {
            Pre::Core(_) => ProgramKind::Core,
            Pre::Component(_) => ProgramKind::Component,
        }
    }

    /// The digest the program was loaded under.
    pub fn digest(&self) -> &str {
        &self.inner.digest
    }

    /// Runs one instance to its end.
    ///
    /// Cancelling `cancel` stops the instance promptly — within an epoch tick for a
    /// guest spinning in a loop, at once for a guest waiting in a host call — and gives
    /// [`Exit::Cancelled`]. The guest yields to tokio at every epoch tick, so a busy
    /// guest shares its worker thread instead of holding it.
    pub async fn run(&self, spec: RunSpec, cancel: CancellationToken) -> Exit {
        let started = Instant::now();
        let digest = self.inner.digest.as_str();
        let limit = self.memory_limit(spec.memory_limit);
        let network = GuestNetwork {
            pod_ip: spec.pod_ip.filter(|_| spec.network),
            name_lookups: spec.network,
            names: spec.names.clone(),
        };
        let cpu_limit = spec.cpu_limit_millis;
        let builder = match wasi_builder(spec) {
            Ok(builder) => builder,
            Err(message) => {
                tracing::debug!(digest, %message, "instance not started");
                return Exit::Failed(message);
            }
        };
        let mut run = super::cpu::throttle(
            async {
                match &self.inner.pre {
                    Pre::Core(pre) => self.run_core(pre, builder, limit, &cancel, started).await,
                    Pre::Component(pre) => {
                        self.run_component(pre, builder, network, limit, &cancel, started)
                            .await
                    }
                }
            },
            cpu_limit,
        );
        // The run comes first so that an instance that finished as it was cancelled
        // reports its real exit.
        let exit = tokio::select! {
            biased;
            exit = &mut run => exit,
            () = cancel.cancelled() => Exit::Cancelled,
        };
        tracing::debug!(
            digest,
            ?exit,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            throttled_ms = run.throttled().as_secs_f64() * 1e3,
            "instance ended"
        );
        exit
    }

    async fn run_core(
        &self,
        pre: &InstancePre<P1State>,
        mut builder: WasiCtxBuilder,
        limit: u64,
        cancel: &CancellationToken,
        started: Instant,
    ) -> Exit {
        let state = P1State {
            wasi: builder.build_p1(),
            limiter: MemoryLimiter::new(Some(limit)),
        };
        let mut store = self.store(state, cancel);
        let result = async {
            let instance = pre.instantiate_async(&mut store).await?;
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
            self.trace_start(started);
            start.call_async(&mut store, ()).await
        }
        .await;
        let refused = store.data().limiter.refused();
        match result {
            Ok(()) => exited(0, refused),
            Err(error) => classify(error, refused),
        }
    }

    async fn run_component(
        &self,
        pre: &CommandPre<P2State>,
        mut builder: WasiCtxBuilder,
        network: GuestNetwork,
        limit: u64,
        cancel: &CancellationToken,
        started: Instant,
    ) -> Exit {
        let state = P2State {
            ctx: builder.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(Some(limit)),
            pod_ip: network.pod_ip,
            name_lookups: network.name_lookups,
            names: network.names,
        };
        let mut store = self.store(state, cancel);
        let result = async {
            let command = pre.instantiate_async(&mut store).await?;
            self.trace_start(started);
            command.wasi_cli_run().call_run(&mut store).await
        }
        .await;
        let refused = store.data().limiter.refused();
        match result {
            Ok(Ok(())) => exited(0, refused),
            Ok(Err(())) => exited(1, refused),
            Err(error) => classify(error, refused),
        }
    }

    /// A store with the memory limiter and the epoch policy: yield to tokio at every
    /// tick, trap with `Interrupt` once cancelled.
    fn store<T: Limited>(&self, state: T, cancel: &CancellationToken) -> Store<T> {
        let mut store = Store::new(&self.inner.engine.engine, state);
        store.limiter(|state| state.limiter());
        store.set_epoch_deadline(1);
        let cancel = cancel.clone();
        // CPU limits plug in here: instead of `Yield`, a throttled guest returns
        // `YieldCustom` with a sleep that pays back the time it ran over its share.
        store.epoch_deadline_callback(move |_| {
            Ok(if cancel.is_cancelled() {
                UpdateDeadline::Interrupt
            } else {
                // tokio's own yield, not a bare wake: it lets the runtime poll its
                // timers and sockets before the guest runs again, so a spinning guest
                // cannot delay them.
                UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))
            })
        });
        store
    }

    fn memory_limit(&self, requested: Option<u64>) -> u64 {
        let max = self.inner.engine.max_memory_per_instance;
        requested.map_or(max, |limit| limit.min(max))
    }

    fn trace_start(&self, started: Instant) {
        tracing::trace!(
            digest = %self.inner.digest,
            instantiate_us = started.elapsed().as_secs_f64() * 1e6,
            "instance started"
        );
    }
}

/// The WASI context a spec grants, or why it cannot be built.
fn wasi_builder(spec: RunSpec) -> Result<WasiCtxBuilder, String> {
    let RunSpec {
        argv,
        env,
        preopens,
        stdout,
        stderr,
        stdin,
        memory_limit: _,
        cpu_limit_millis: _,
        network,
        pod_ip,
        egress,
        listens,
        names: _,
    } = spec;
    let mut builder = WasiCtxBuilder::new();
    builder
        .args(&argv)
        .envs(&env)
        .stdout(SinkStream::new(stdout))
        .stderr(SinkStream::new(stderr));
    if let Some(stdin) = stdin {
        builder.stdin(AsyncStdinStream::new(stdin));
    }
    for preopen in &preopens {
        let perms = if preopen.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        builder
            .preopened_dir(&preopen.host, &preopen.guest, perms)
            .map_err(|e| {
                format!(
                    "cannot open directory {} for {}: {e:#}",
                    preopen.host.display(),
                    preopen.guest
                )
            })?;
    }
    if network {
        builder
            .allow_tcp(true)
            .allow_udp(true)
            .allow_ip_name_lookup(true)
            .inherit_network();
        if let Some(pod_ip) = pod_ip {
            builder.socket_addr_check(move |addr, use_| {
                let listen = matches!(use_, SocketAddrUse::TcpListen);
                let ok = super::net::allowed(pod_ip, &egress, addr, use_);
                if !ok {
                    tracing::debug!(%pod_ip, %addr, ?use_, "socket operation denied");
                } else if let (true, Some(listens)) = (listen, &listens) {
                    listens.send_modify(|n| *n += 1);
                }
                Box::pin(std::future::ready(ok))
            });
        }
    } else {
        builder
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
    }
    Ok(builder)
}

/// An exit with `code`; a failing exit after a refused growth counts as out of memory.
fn exited(code: i32, refused: Option<Refusal>) -> Exit {
    match refused {
        Some(refusal) if code != 0 => Exit::OutOfMemory(format!(
            "{}; the program then exited with code {code}",
            describe_refusal(refusal)
        )),
        _ => Exit::Exited(code),
    }
}

/// The exit an error from instantiating or running stands for.
fn classify(error: wasmtime::Error, refused: Option<Refusal>) -> Exit {
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return exited(exit.0, refused);
    }
    if let Some(trap) = error.downcast_ref::<Trap>() {
        if *trap == Trap::Interrupt {
            return Exit::Cancelled;
        }
        return match refused {
            // The backtrace would only show the allocator giving up.
            Some(refusal) => Exit::OutOfMemory(format!(
                "{}; the program then trapped: {trap}",
                describe_refusal(refusal)
            )),
            None => Exit::Trapped(describe_trap(&error, trap)),
        };
    }
    match refused {
        Some(refusal) => Exit::OutOfMemory(format!("{}: {error:#}", describe_refusal(refusal))),
        None => Exit::Failed(format!("{error:#}")),
    }
}

fn describe_refusal(refusal: Refusal) -> String {
    format!(
        "memory limit of {} bytes reached (the program asked for {} bytes)",
        refusal.limit, refusal.requested
    )
}

/// "wasm trap: wasm `unreachable` instruction executed, in guest::main <- _start": the
/// trap and the innermost frames of the program itself (the language runtime's panic and
/// abort machinery is left out).
fn describe_trap(error: &wasmtime::Error, trap: &Trap) -> String {
    let mut report = trap.to_string();
    let Some(backtrace) = error.downcast_ref::<WasmBacktrace>() else {
        return report;
    };
    let names = frame_names(backtrace);
    let own: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|name| !is_runtime_frame(name))
        .collect();
    let shown = if own.is_empty() {
        names.iter().map(String::as_str).collect()
    } else {
        own
    };
    if !shown.is_empty() && shown.iter().all(|name| name.starts_with("<wasm function ")) {
        // A stripped module: a list of numbers says little; the innermost will do.
        report.push_str(&format!(
            ", at {} (the module carries no function names)",
            shown[0]
        ));
    } else if !shown.is_empty() {
        report.push_str(", in ");
        report.push_str(&shown[..shown.len().min(MAX_TRAP_FRAMES)].join(" <- "));
        if shown.len() > MAX_TRAP_FRAMES {
            report.push_str(" <- …");
        }
    }
    report
}

/// The function names of a backtrace, innermost first. Taken from wasmtime's rendering,
/// which demangles Rust and C++ names when its `demangle` feature is on; the raw names
/// otherwise.
fn frame_names(backtrace: &WasmBacktrace) -> Vec<String> {
    // Frame lines look like "  3:   0x1a2b - module!function".
    let rendered: Vec<String> = backtrace
        .to_string()
        .lines()
        .filter_map(|line| {
            let (index, rest) = line.trim_start().split_once(": ")?;
            index.parse::<usize>().ok()?;
            let name = rest.split_once('!').map_or(rest, |(_, name)| name);
            Some(name.trim().to_owned())
        })
        .collect();
    let names = if rendered.len() == backtrace.frames().len() {
        rendered
    } else {
        backtrace
            .frames()
            .iter()
            .map(|frame| match frame.func_name() {
                Some(name) => name.to_owned(),
                None => format!("<wasm function {}>", frame.func_index()),
            })
            .collect()
    };
    names
        .into_iter()
        .map(|name| demangle_legacy(&name).unwrap_or(name))
        .collect()
}

/// `_ZN5guest4main17h0123456789abcdefE` → `guest::main`: Rust's legacy mangling (still
/// what rustc uses for a program's own functions), without the hash.
fn demangle_legacy(name: &str) -> Option<String> {
    let mut rest = name.strip_prefix("_ZN")?;
    let mut parts = Vec::new();
    loop {
        if let Some(after) = rest.strip_prefix('E') {
            if !after.is_empty() {
                return None;
            }
            break;
        }
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let len: usize = rest[..digits].parse().ok()?;
        let part = rest.get(digits..digits + len)?;
        // A part starting with an escape gets a `_` in front.
        parts.push(part.strip_prefix("_$").map_or(part, |_| &part[1..]));
        rest = &rest[digits + len..];
    }
    let hash = |part: &&str| {
        part.len() == 17
            && part.starts_with('h')
            && part[1..].bytes().all(|b| b.is_ascii_hexdigit())
    };
    if parts.last().is_some_and(hash) {
        parts.pop();
    }
    if parts.is_empty() {
        return None;
    }
    Some(unescape_legacy(&parts.join("::")))
}

/// Undoes legacy mangling's escapes: `$LT$` → `<`, `$u20$` → ` `, `..` → `::`, ….
fn unescape_legacy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start + 1..].find('$') else {
            break;
        };
        let code = &rest[start + 1..start + 1 + len];
        let decoded = match code {
            "LT" => Some('<'),
            "GT" => Some('>'),
            "RF" => Some('&'),
            "BP" => Some('*'),
            "C" => Some(','),
            "SP" => Some('@'),
            _ => code
                .strip_prefix('u')
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => out.push(c),
            None => out.push_str(&rest[start..start + len + 2]),
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out.replace("..", "::")
}

/// Frames of the guest language's runtime (Rust's std/core/alloc, libc's abort), in
/// demangled or mangled (legacy `_ZN…`, v0 `_R…`) form.
fn is_runtime_frame(name: &str) -> bool {
    const DEMANGLED: [&str; 8] = [
        "std::",
        "core::",
        "alloc::",
        "__rustc::",
        "<std::",
        "<core::",
        "<alloc::",
        "__rust_",
    ];
    const MANGLED: [&str; 7] = [
        "_ZN3std",
        "_ZN4core",
        "_ZN5alloc",
        "_3std",
        "_4core",
        "_5alloc",
        "___rustc",
    ];
    matches!(name, "abort" | "rust_panic")
        || DEMANGLED.iter().any(|prefix| name.starts_with(prefix))
        || ((name.starts_with("_ZN") || name.starts_with("_R"))
            && MANGLED.iter().any(|part| name.contains(part)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_frames_are_recognised_in_every_spelling() {
        for name in [
            "abort",
            "std::process::abort",
            "core::panicking::panic_fmt",
            "<alloc::vec::Vec<T> as core::ops::Drop>::drop",
            "__rustc::rust_panic",
            "_ZN3std7process5abort17h0123456789abcdefE",
            "_RNvNtCset5xJoy1xWQ_3std7process5abort",
            "_RNvCsfLfy6EI15iL_7___rustc12___rust_abort",
        ] {
            assert!(is_runtime_frame(name), "{name}");
        }
        for name in [
            "guest::main",
            "_start",
            "main",
            "__main_void",
            "<wasm function 3>",
        ] {
            assert!(!is_runtime_frame(name), "{name}");
        }
    }

    #[test]
    fn legacy_rust_names_are_demangled() {
        assert_eq!(
            demangle_legacy("_ZN5guest4main17h6e29b88cb92bf75dE").as_deref(),
            Some("guest::main")
        );
        assert_eq!(
            demangle_legacy("_ZN60_$LT$alloc..string..String$u20$as$u20$core..fmt..Display$GT$3fmt17h0123456789abcdefE")
                .as_deref(),
            Some("<alloc::string::String as core::fmt::Display>::fmt")
        );
        for not_legacy in [
            "main",
            "_ZN",
            "_ZN5guest",
            "_ZN5guest4mainEx",
            "_ZN99aE",
            "_RNvCs1_5guest4main",
        ] {
            assert_eq!(demangle_legacy(not_legacy), None, "{not_legacy}");
        }
    }

    #[test]
    fn exits_map_to_kubernetes_terms() {
        let cases = [
            (Exit::Exited(0), 0, "Completed"),
            (Exit::Exited(2), 2, "Error"),
            (Exit::Trapped("t".into()), 134, "Error"),
            (Exit::OutOfMemory("m".into()), 137, "OOMKilled"),
            (Exit::Cancelled, 137, "Error"),
            (Exit::Failed("f".into()), 128, "StartError"),
        ];
        for (exit, code, reason) in cases {
            assert_eq!(
                (exit.exit_code(), exit.reason()),
                (code, reason),
                "{exit:?}"
            );
        }
        assert_eq!(Exit::Trapped("t".into()).message(), Some("t"));
        assert_eq!(Exit::Exited(1).message(), None);
    }
}
