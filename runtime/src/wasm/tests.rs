//! Tests of the wasm layer through its public API: real modules (WebAssembly text, and
//! small Rust programs built for wasm32-wasip1/wasip2 by `rustc`) loaded and run by a
//! real engine.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::*;

/// A sink that keeps what was written, and when the first byte came.
#[derive(Default)]
struct Capture {
    bytes: Mutex<Vec<u8>>,
    first: OnceLock<Instant>,
}

impl OutputSink for Capture {
    fn write(&self, bytes: &[u8]) {
        let _ = self.first.set(Instant::now());
        self.bytes.lock().unwrap().extend_from_slice(bytes);
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().unwrap()).into_owned()
    }
}

struct Run {
    spec: RunSpec,
    stdout: Arc<Capture>,
    stderr: Arc<Capture>,
}

fn run_spec(argv: &[&str]) -> Run {
    let stdout = Arc::new(Capture::default());
    let stderr = Arc::new(Capture::default());
    let spec = RunSpec::new(
        argv.iter().map(|a| a.to_string()).collect(),
        stdout.clone(),
        stderr.clone(),
    );
    Run {
        spec,
        stdout,
        stderr,
    }
}

fn engine_in(dir: &Path) -> WasmEngine {
    WasmEngine::new(EngineOptions::new(dir.join("compiled"), 8)).unwrap()
}

/// Writes `source` to a file in `dir` and loads it under digest `sha256:<name>`.
async fn load_source(
    engine: &WasmEngine,
    dir: &Path,
    name: &str,
    source: &[u8],
) -> Result<Program, WasmError> {
    let path = dir.join(name);
    std::fs::write(&path, source).unwrap();
    engine.load(&format!("sha256:{name}"), &path).await
}

/// A preview 1 command: `imports` (more WASI functions), then `$print(fd, ptr, len)`,
/// `$proc_exit`, one page of memory (bytes 0..64 are scratch), then `body`.
fn p1(imports: &str, body: &str) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  {imports}
  (memory (export "memory") 1)
  (func $print (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  {body})"#
    )
}

const HELLO: &str = r#"
  (data (i32.const 100) "hello\n")
  (data (i32.const 110) "oops\n")
  (func (export "_start")
    (call $print (i32.const 1) (i32.const 100) (i32.const 6))
    (call $print (i32.const 2) (i32.const 110) (i32.const 5)))"#;

const SPIN: &str = r#"
  (data (i32.const 100) "spinning\n")
  (func (export "_start")
    (call $print (i32.const 1) (i32.const 100) (i32.const 9))
    (loop $forever (br $forever)))"#;

/// Grows memory 16 pages at a time; on refusal traps (`trap`) or exits 1.
fn hog(on_refusal: &str) -> String {
    p1(
        "",
        &format!(
            r#"(func (export "_start")
    (loop $more
      (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1))
        (then {on_refusal}))
      (br $more)))"#
        ),
    )
}

async fn wait_for(what: &str, deadline: Duration, mut check: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !check() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn hello_writes_stdout_and_stderr_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_in(dir.path());
    let program = load_source(&engine, dir.path(), "hello", p1("", HELLO).as_bytes())
        .await
        .unwrap();
    assert_eq!(program.kind(), ProgramKind::Core);
    assert_eq!(program.digest(), "sha256:hello");
    let run = run_spec(&["hello"]);
    let exit = program.run(run.spec, CancellationToken::new()).await;
    assert_eq!(exit, Exit::Exited(0));
    assert_eq!(exit.reason(), "Completed");
    assert_eq!(run.stdout.text(), "hello\n");
    assert_eq!(run.stderr.text(), "oops\n");
}

#[tokio::test]
async fn proc_exit_code_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_in(dir.path());
    let wat = p1(
        "",
        r#"(func (export "_start") (call $proc_exit (i32.const 3)))"#,
    );
    let program = load_source(&engine, dir.path(), "exit3", wat.as_bytes())
        .await
        .unwrap();
    let exit = program
        .run(run_spec(&["exit3"]).spec, CancellationToken::new())
        .await;
    assert_eq!(exit, Exit::Exited(3));
    assert_eq!((exit.exit_code(), exit.reason()), (3, "Error"));
}

#[tokio::test]
async fn unreachable_is_a_trap_with_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_in(dir.path());
    let wat = p1(
        "",
        r#"(func $explode unreachable)
  (func (export "_start") (call $explode))"#,
    );
    let program = load_source(&engine, dir.path(), "trap", wat.as_bytes())
        .await
        .unwrap();
    let exit = program
        .run(run_spec(&["trap"]).spec, CancellationToken::new())
        .await;
    let Exit::Trapped(message) = &exit else {
        panic!("expected a trap, got {exit:?}");
    };
    assert!(message.contains("unreachable"), "{message}");
    assert!(message.contains("explode"), "{message}");
    assert_eq!(exit.reason(), "Error");
}

#[tokio::test]
async fn memory_limit_ends_in_out_of_memory() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_in(dir.path());
    for (name, on_refusal) in [
        ("hog-trap", "unreachable"),
        ("hog-exit", "(call $proc_exit (i32.const 1))"),
    ] {
        let program = load_source(&engine, dir.path(), name, hog(on_refusal).as_bytes())
            .await
            .unwrap();
        let mut run = run_spec(&[name]);
        run.spec.memory_limit = Some(4 << 20);
        let exit = program.run(run.spec, CancellationToken::new()).await;
        let Exit::OutOfMemory(message) = &exit else {
            panic!("{name}: expected out of memory, got {exit:?}");
        };
        assert!(message.contains(&(4u64 << 20).to_string()), "{message}");
        assert_eq!((exit.exit_code(), exit.reason()), (137, "OOMKilled"));
    }
}

#[tokio::test]
async fn initial_memory_over_the_limit_is_out_of_memory() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_in(dir.path());
    let wat = r#"(module (memory 32) (func (export "_start")))"#;
    let program = load_source(&engine, dir.path(), "big", wat.as_bytes())
        .await
        .unwrap();
    let mut run = run_spec(&["big"]);
    run.spec.memory_limit = Some(1 << 20);
    let exit = program.run(run.spec, CancellationToken::new()).await;
    assert!(matches!(exit, Exit::OutOfMemory(_)), "{exit:?}");
    // Under the limit the same module runs.
    let mut run = run_spec(&["big"]);
    run.spec.memory_limit = Some(4 << 20);
    assert_eq!(
        program.run(run.spec, CancellationToken::new()).await,
        Exit::Exited(0)
    );
}

#[tokio::test]
async fn a_modules_own_memory_maximum_is_not_out_of_memory() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_in(dir.path());
    // The module caps its own memory at 2 pages and handles the refusal by exiting 5.
    let wat = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1 2)
  (func (export "_start")
    (drop (memory.grow (i32.const 1)))
    (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1))
      (then (call $proc_exit (i32.const 5))))))"#;
    let program = load_source(&engine, dir.path(), "capped", wat.as_bytes())
        .await
        .unwrap();
    let exit = program
        .run(run_spec(&["capped"]).spec, CancellationToken::new())
        .await;
    assert_eq!(exit, Exit::Exited(5));
}

/// On a single-threaded runtime: if the spinning guest held the thread, neither the
/// timer below nor the cancellation could ever run.
#[tokio::test(flavor = "current_thread")]
async fn a_spinning_guest_yields_and_is_cancelled_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_in(dir.path());
    let program = load_source(&engine, dir.path(), "spin", p1("", SPIN).as_bytes())
        .await
        .unwrap();
    let run = run_spec(&["spin"]);
    let stdout = run.stdout.clone();
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let cancel = cancel.clone();
        async move { program.run(run.spec, cancel).await }
    });
    wait_for("the guest to start", Duration::from_secs(10), || {
        stdout.text() == "spinning\n"
    })
    .await;

    let asked = Instant::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let slept = asked.elapsed();
    assert!(
        slept < Duration::from_millis(500),
        "a 5 ms timer took {slept:?} next to a spinning guest"
    );

    let cancelled_at = Instant::now();
    cancel.cancel();
    let exit = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the spinning guest was not stopped")
        .unwrap();
    let took = cancelled_at.elapsed();
    assert_eq!(exit, Exit::Cancelled);
    assert!(took < Duration::from_secs(1), "cancellation took {took:?}");
    eprintln!("timer next to a spinner: {slept:?}; cancellation: {took:?}");
}

#[tokio::test]
async fn a_cancelled_token_stops_before_the_guest_runs() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_in(dir.path());
    let program = load_source(&engine, dir.path(), "spin", p1("", SPIN).as_bytes())
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let exit = tokio::time::timeout(
        Duration::from_secs(5),
        program.run(run_spec(&["spin"]).spec, cancel),
    )
    .await
    .expect("a cancelled run did not return");
    assert_eq!(exit, Exit::Cancelled);
}

/// Prints the NUL-separated argument buffer, then the environment buffer.
const ARGS_AND_ENV: &str = r#"
  (func (export "_start")
    (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
    (drop (call $args_get (i32.const 1024) (i32.const 2048)))
    (call $print (i32.const 1) (i32.const 2048) (i32.load (i32.const 20)))
    (drop (call $environ_sizes_get (i32.const 16) (i32.const 20)))
    (drop (call $environ_get (i32.const 1024) (i32.const 4096)))
    (call $print (i32.const 1) (i32.const 4096) (i32.load (i32.const 20))))"#;

const ARGS_IMPORTS: &str = r#"
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))"#;

#[tokio::test]
async fn argv_and_env_are_exactly_what_the_spec_gives() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_in(dir.path());
    let wat = p1(ARGS_IMPORTS, ARGS_AND_ENV);
    let program = load_source(&engine, dir.path(), "args", wat.as_bytes())
        .await
        .unwrap();

    let mut run = run_spec(&["prog", "one", "two words"]);
    run.spec.env = vec![("A".into(), "1".into()), ("B".into(), "x y".into())];
    assert_eq!(
        program.run(run.spec, CancellationToken::new()).await,
        Exit::Exited(0)
    );
    assert_eq!(run.stdout.text(), "prog\0one\0two words\0A=1\0B=x y\0");

    // No environment given: the host's (PATH, HOME, …) does not leak in.
    assert!(std::env::vars().next().is_some());
    let run = run_spec(&["prog"]);
    assert_eq!(
        program.run(run.spec, CancellationToken::new()).await,
        Exit::Exited(0)
    );
    assert_eq!(run.stdout.text(), "prog\0");
}

/// Reads `in.txt` from the first preopen and prints it; writes `out.txt` (exit 10 if
/// refused); tries to create `../escaped.txt` (exit 31 if that works).
const FILES_IMPORTS: &str = r#"
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))"#;

const FILES: &str = r#"
  (data (i32.const 100) "out.txt")
  (data (i32.const 120) "in.txt")
  (data (i32.const 140) "written by the guest")
  (data (i32.const 170) "../escaped.txt")
  (func (export "_start")
    ;; read in.txt (FD_READ) and print it
    (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 120) (i32.const 6)
          (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 200))
      (then (call $proc_exit (i32.const 20))))
    (i32.store (i32.const 32) (i32.const 1024))
    (i32.store (i32.const 36) (i32.const 512))
    (drop (call $fd_read (i32.load (i32.const 200)) (i32.const 32) (i32.const 1) (i32.const 48)))
    (call $print (i32.const 1) (i32.const 1024) (i32.load (i32.const 48)))
    ;; create out.txt (CREAT|TRUNC, FD_WRITE) and write to it
    (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 7)
          (i32.const 9) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 200))
      (then (call $proc_exit (i32.const 10))))
    (call $print (i32.load (i32.const 200)) (i32.const 140) (i32.const 20))
    ;; a path out of the preopen must fail
    (if (i32.eqz (call $path_open (i32.const 3) (i32.const 0) (i32.const 170) (i32.const 14)
          (i32.const 9) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 200)))
      (then (call $proc_exit (i32.const 31)))))"#;

#[tokio::test]
async fn preopens_read_write_and_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_in(dir.path());
    let wat = p1(FILES_IMPORTS, FILES);
    let program = load_source(&engine, dir.path(), "files", wat.as_bytes())
        .await
        .unwrap();
    let volume = dir.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    std::fs::write(volume.join("in.txt"), "from the host").unwrap();

    let mut run = run_spec(&["files"]);
    run.spec.preopens = vec![Preopen {
        host: volume.clone(),
        guest: "/data".into(),
        read_only: false,
    }];
    let exit = program.run(run.spec, CancellationToken::new()).await;
    assert_eq!(exit, Exit::Exited(0), "stderr: {}", run.stderr.text());
    assert_eq!(run.stdout.text(), "from the host");
    assert_eq!(
        std::fs::read_to_string(volume.join("out.txt")).unwrap(),
        "written by the guest"
    );
    assert!(!dir.path().join("escaped.txt").exists());

    std::fs::remove_file(volume.join("out.txt")).unwrap();
    let mut run = run_spec(&["files"]);
    run.spec.preopens = vec![Preopen {
        host: volume.clone(),
        guest: "/data".into(),
        read_only: true,
    }];
    let exit = program.run(run.spec, CancellationToken::new()).await;
    assert_eq!(exit, Exit::Exited(10), "the write was not refused");
    assert_eq!(run.stdout.text(), "from the host");
    assert!(!volume.join("out.txt").exists());
}

#[tokio::test]
async fn a_missing_volume_directory_fails_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_in(dir.path());
    let program = load_source(&engine, dir.path(), "hello", p1("", HELLO).as_bytes())
        .await
        .unwrap();
    let mut run = run_spec(&["hello"]);
    run.spec.preopens = vec![Preopen {
        host: dir.path().join("absent"),
        guest: "/data".into(),
        read_only: false,
    }];
    let exit = program.run(run.spec, CancellationToken::new()).await;
    let Exit::Failed(message) = &exit else {
        panic!("expected a failed start, got {exit:?}");
    };
    assert!(
        message.contains("absent") && message.contains("/data"),
        "{message}"
    );
    assert_eq!(run.stdout.text(), "");
}

#[tokio::test]
async fn stdin_reaches_the_guest() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_in(dir.path());
    // Echoes stdin to stdout until end of input.
    let wat = p1(
        r#"(import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))"#,
        r#"(func (export "_start")
    (i32.store (i32.const 32) (i32.const 1024))
    (i32.store (i32.const 36) (i32.const 512))
    (loop $more
      (drop (call $fd_read (i32.const 0) (i32.const 32) (i32.const 1) (i32.const 48)))
      (if (i32.load (i32.const 48))
        (then
          (call $print (i32.const 1) (i32.const 1024) (i32.load (i32.const 48)))
          (br $more)))))"#,
    );
    let program = load_source(&engine, dir.path(), "cat", wat.as_bytes())
        .await
        .unwrap();
    let mut run = run_spec(&["cat"]);
    run.spec.stdin = Some(Box::new(&b"piped input\n"[..]));
    assert_eq!(
        program.run(run.spec, CancellationToken::new()).await,
        Exit::Exited(0)
    );
    assert_eq!(run.stdout.text(), "piped input\n");
    // No stdin: end of input at once.
    let run = run_spec(&["cat"]);
    assert_eq!(
        program.run(run.spec, CancellationToken::new()).await,
        Exit::Exited(0)
    );
    assert_eq!(run.stdout.text(), "");
}

/// A sink with a budget whose reader the test drives: `backlog` is what was written
/// and not yet refunded, `most` the largest backlog seen.
struct Throttled {
    budget: OutputBudget,
    bytes: Mutex<Vec<u8>>,
    backlog: Mutex<(usize, usize)>,
}

impl OutputSink for Throttled {
    fn write(&self, bytes: &[u8]) {
        self.bytes.lock().unwrap().extend_from_slice(bytes);
        let mut b = self.backlog.lock().unwrap();
        b.0 += bytes.len();
        b.1 = b.1.max(b.0);
    }

    fn budget(&self) -> Option<&OutputBudget> {
        Some(&self.budget)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_writing_faster_than_its_reader_waits_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_in(dir.path());
    // Writes the 4 KiB at 4096, 1024 times: 4 MiB.
    let wat = p1(
        "",
        r#"(func (export "_start")
    (local $n i32)
    (memory.fill (i32.const 4096) (i32.const 120) (i32.const 4096))
    (loop $more
      (call $print (i32.const 1) (i32.const 4096) (i32.const 4096))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br_if $more (i32.lt_u (local.get $n) (i32.const 1024)))))"#,
    );
    let program = load_source(&engine, dir.path(), "chatty", wat.as_bytes())
        .await
        .unwrap();
    const BUDGET: usize = 64 * 1024;
    let sink = Arc::new(Throttled {
        budget: OutputBudget::new(BUDGET),
        bytes: Mutex::new(Vec::new()),
        backlog: Mutex::new((0, 0)),
    });
    let mut run = run_spec(&["chatty"]);
    run.spec.stdout = sink.clone();
    // A reader slower than the guest: 16 KiB a millisecond.
    let reader = {
        let sink = sink.clone();
        tokio::spawn(async move {
            let mut refunded = 0;
            while refunded < 4 << 20 {
                tokio::time::sleep(Duration::from_millis(1)).await;
                let n = {
                    let mut b = sink.backlog.lock().unwrap();
                    let n = b.0.min(16 * 1024);
                    b.0 -= n;
                    n
                };
                sink.budget.refund(n);
                refunded += n;
            }
        })
    };
    let exit = program.run(run.spec, CancellationToken::new()).await;
    assert_eq!(exit, Exit::Exited(0));
    tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the reader got every byte")
        .unwrap();
    let bytes = sink.bytes.lock().unwrap();
    assert_eq!(bytes.len(), 4 << 20);
    assert!(bytes.iter().all(|&b| b == b'x'));
    let most = sink.backlog.lock().unwrap().1;
    assert!(
        most <= BUDGET,
        "the backlog reached {most} bytes, over the {BUDGET}-byte budget"
    );
}

#[tokio::test]
async fn bad_modules_get_errors_that_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_in(dir.path());

    let err = load_source(&engine, dir.path(), "elf", b"\x7fELF\x02\x01\x01\0rest")
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, WasmError::NotWasm { .. }), "{err:?}");
    assert!(message.starts_with("not a WebAssembly module"), "{message}");
    assert!(message.contains("7f 45 4c 46"), "{message}");

    let err = load_source(&engine, dir.path(), "html", b"<html>404</html>")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("<html>"), "{err}");

    let err = load_source(&engine, dir.path(), "empty", b"")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is empty"), "{err}");

    let err = load_source(
        &engine,
        dir.path(),
        "garbage",
        b"\0asm\x01\0\0\0\xff\xff\xff",
    )
    .await
    .unwrap_err();
    assert!(matches!(err, WasmError::Compile { .. }), "{err:?}");

    let wat = r#"(module (import "env" "mystery" (func)) (func (export "_start")))"#;
    let err = load_source(&engine, dir.path(), "import", wat.as_bytes())
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, WasmError::Link { .. }), "{err:?}");
    assert!(message.contains("env::mystery"), "{message}");

    let wat = r#"(module (func (export "main")))"#;
    let err = load_source(&engine, dir.path(), "nostart", wat.as_bytes())
        .await
        .unwrap_err();
    assert!(matches!(err, WasmError::NotCommand { .. }), "{err:?}");

    let err = engine
        .load("sha256:../../etc", &dir.path().join("x"))
        .await
        .unwrap_err();
    assert!(matches!(err, WasmError::InvalidDigest(_)), "{err:?}");

    let err = engine
        .load("sha256:absent", &dir.path().join("absent.wasm"))
        .await
        .unwrap_err();
    assert!(matches!(err, WasmError::Read { .. }), "{err:?}");

    // A failed load is not remembered: once the file is fixed, the digest loads.
    std::fs::write(dir.path().join("absent.wasm"), p1("", HELLO)).unwrap();
    engine
        .load("sha256:absent", &dir.path().join("absent.wasm"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_digest_compiles_once_per_engine_and_once_per_engine_config() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_in(dir.path());
    let hello = p1("", HELLO);

    // Concurrent loads of a new digest share one compile.
    let path = dir.path().join("hello.wat");
    std::fs::write(&path, &hello).unwrap();
    let loads: Vec<_> = (0..4)
        .map(|_| {
            let engine = engine.clone();
            let path = path.clone();
            tokio::spawn(async move { engine.load("sha256:hello", &path).await })
        })
        .collect();
    for load in loads {
        load.await.unwrap().unwrap();
    }
    let stats = engine.stats();
    assert_eq!(
        (stats.compiled, stats.from_disk, stats.from_memory),
        (1, 0, 3)
    );

    // Again later: from memory.
    engine.load("sha256:hello", &path).await.unwrap();
    assert_eq!(engine.stats().compiled, 1);
    assert_eq!(engine.stats().from_memory, 4);

    // A new engine with the same configuration (an agent restart): from disk, and it
    // runs.
    let restarted = engine_in(dir.path());
    assert_eq!(restarted.artifact_dir(), engine.artifact_dir());
    let program = restarted.load("sha256:hello", &path).await.unwrap();
    assert_eq!(
        restarted.stats(),
        LoadStats {
            compiled: 0,
            from_disk: 1,
            from_memory: 0
        }
    );
    let run = run_spec(&["hello"]);
    assert_eq!(
        program.run(run.spec, CancellationToken::new()).await,
        Exit::Exited(0)
    );
    assert_eq!(run.stdout.text(), "hello\n");

    // An engine configured differently never uses those artifacts.
    let mut options = EngineOptions::new(dir.path().join("compiled"), 8);
    options.max_memory_per_instance = 1 << 30;
    let other = WasmEngine::new(options).unwrap();
    assert_ne!(other.artifact_dir(), engine.artifact_dir());
    other.load("sha256:hello", &path).await.unwrap();
    assert_eq!(other.stats().compiled, 1);

    // Eviction forgets the program in memory; the disk artifact serves the next load.
    engine.evict("sha256:hello");
    engine.load("sha256:hello", &path).await.unwrap();
    assert_eq!(engine.stats().from_disk, 1);
}

#[tokio::test]
async fn a_damaged_artifact_is_replaced_by_a_compile() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hello.wat");
    std::fs::write(&path, p1("", HELLO)).unwrap();
    let engine = engine_in(dir.path());
    engine.load("sha256:hello", &path).await.unwrap();
    let artifact = engine.artifact_dir().join("sha256-hello.cwasm");
    assert!(artifact.is_file());

    for damage in [
        &b"not an artifact"[..],
        &std::fs::read(&artifact).unwrap()[..100],
    ] {
        std::fs::write(&artifact, damage).unwrap();
        let fresh = engine_in(dir.path());
        let program = fresh.load("sha256:hello", &path).await.unwrap();
        assert_eq!(fresh.stats().compiled, 1);
        let run = run_spec(&["hello"]);
        assert_eq!(
            program.run(run.spec, CancellationToken::new()).await,
            Exit::Exited(0)
        );
    }
    // The replacement is good.
    let fresh = engine_in(dir.path());
    fresh.load("sha256:hello", &path).await.unwrap();
    assert_eq!(fresh.stats().from_disk, 1);
}

#[tokio::test]
async fn the_pool_bounds_concurrent_instances() {
    let dir = tempfile::tempdir().unwrap();
    let engine = WasmEngine::new(EngineOptions::new(dir.path().join("compiled"), 1)).unwrap();
    assert!(engine.pooling());
    let program = load_source(&engine, dir.path(), "spin", p1("", SPIN).as_bytes())
        .await
        .unwrap();
    let first = run_spec(&["spin"]);
    let stdout = first.stdout.clone();
    let cancel = CancellationToken::new();
    let spinner = tokio::spawn({
        let program = program.clone();
        let cancel = cancel.clone();
        async move { program.run(first.spec, cancel).await }
    });
    wait_for("the first instance", Duration::from_secs(10), || {
        !stdout.text().is_empty()
    })
    .await;
    let exit = program
        .run(run_spec(&["spin"]).spec, CancellationToken::new())
        .await;
    assert!(matches!(exit, Exit::Failed(_)), "{exit:?}");
    cancel.cancel();
    assert_eq!(spinner.await.unwrap(), Exit::Cancelled);
    // The slot is free again.
    let hello = load_source(&engine, dir.path(), "hello", p1("", HELLO).as_bytes())
        .await
        .unwrap();
    assert_eq!(
        hello
            .run(run_spec(&["hello"]).spec, CancellationToken::new())
            .await,
        Exit::Exited(0)
    );
}

#[test]
fn an_oversized_pool_falls_back_to_on_demand_allocation() {
    let dir = tempfile::tempdir().unwrap();
    // Two million memory slots would not fit even at the smallest slot size.
    let engine = WasmEngine::new(EngineOptions::new(dir.path(), 1_000_000)).unwrap();
    assert!(!engine.pooling());
}

/// A preview 2 command in component text: prints a greeting through `wasi:cli/stdout`,
/// then runs `ending` (core code leaving the `run` result: 0 ok, 1 error).
fn component(ending: &str) -> String {
    format!(
        r#"(component $C
  (import "wasi:io/error@0.2.0" (instance $error (export "error" (type (sub resource)))))
  (alias export $error "error" (type $error-type))
  (import "wasi:io/streams@0.2.0" (instance $streams
    (alias outer $C $error-type (type $e))
    (export "error" (type $error (eq $e)))
    (export "output-stream" (type $os (sub resource)))
    (type $se (variant (case "last-operation-failed" (own $error)) (case "closed")))
    (export "stream-error" (type $stream-error (eq $se)))
    (export "[method]output-stream.blocking-write-and-flush"
      (func (param "self" (borrow $os)) (param "contents" (list u8))
        (result (result (error $stream-error)))))))
  (alias export $streams "output-stream" (type $output-stream))
  (import "wasi:cli/stdout@0.2.0" (instance $stdout
    (alias outer $C $output-stream (type $o))
    (export "output-stream" (type $os (eq $o)))
    (export "get-stdout" (func (result (own $os))))))
  (import "wasi:cli/exit@0.2.12" (instance $exit
    (export "exit-with-code" (func (param "status-code" u8)))))

  (core module $Memory (memory (export "memory") 1))
  (core instance $memory (instantiate $Memory))
  (alias core export $memory "memory" (core memory $mem))
  (alias export $stdout "get-stdout" (func $get-stdout))
  (core func $get-stdout-core (canon lower (func $get-stdout)))
  (alias export $streams "[method]output-stream.blocking-write-and-flush" (func $write))
  (core func $write-core (canon lower (func $write) (memory $mem)))
  (core func $drop-core (canon resource.drop $output-stream))
  (alias export $exit "exit-with-code" (func $exit-with-code))
  (core func $exit-core (canon lower (func $exit-with-code)))

  (core module $Main
    (import "host" "memory" (memory 1))
    (import "host" "get-stdout" (func $get-stdout (result i32)))
    (import "host" "write" (func $write (param i32 i32 i32 i32)))
    (import "host" "drop" (func $drop (param i32)))
    (import "host" "exit" (func $exit (param i32)))
    (data (i32.const 16) "hello from a component\n")
    (func (export "run") (result i32)
      (local $out i32)
      (local.set $out (call $get-stdout))
      (call $write (local.get $out) (i32.const 16) (i32.const 23) (i32.const 256))
      (call $drop (local.get $out))
      {ending}))
  (core instance $main (instantiate $Main
    (with "host" (instance
      (export "memory" (memory $mem))
      (export "get-stdout" (func $get-stdout-core))
      (export "write" (func $write-core))
      (export "drop" (func $drop-core))
      (export "exit" (func $exit-core))))))
  (func $run (result (result)) (canon lift (core func $main "run")))
  (instance $run-instance (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $run-instance)))"#
    )
}

#[tokio::test]
async fn preview2_components_run_with_output_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_in(dir.path());
    for (name, ending, expected) in [
        ("ok", "(i32.const 0)", Exit::Exited(0)),
        ("err", "(i32.const 1)", Exit::Exited(1)),
        (
            "code",
            "(call $exit (i32.const 7)) (i32.const 0)",
            Exit::Exited(7),
        ),
        ("trap", "unreachable", Exit::Trapped(String::new())),
    ] {
        let program = load_source(&engine, dir.path(), name, component(ending).as_bytes())
            .await
            .unwrap();
        assert_eq!(program.kind(), ProgramKind::Component);
        let run = run_spec(&[name]);
        let exit = program.run(run.spec, CancellationToken::new()).await;
        match (&exit, &expected) {
            (Exit::Trapped(message), Exit::Trapped(_)) => {
                assert!(message.contains("unreachable"), "{message}")
            }
            _ => assert_eq!(exit, expected, "{name}"),
        }
        assert_eq!(run.stdout.text(), "hello from a component\n", "{name}");
    }
}

/// Small Rust guests built once per test run with the installed wasm targets.
struct RustGuests {
    p1: PathBuf,
    p2: PathBuf,
    _dir: tempfile::TempDir,
}

const RUST_GUEST: &str = r#"
use std::io::Write;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    println!("args={:?}", &args[1..]);
    let mut env: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
    env.sort();
    println!("env={env:?}");
    match args.get(1).map(String::as_str) {
        Some("panic") => panic!("guest panicked on purpose"),
        Some("hog") => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop { hoard.push(vec![1u8; 1 << 20]); }
        }
        Some("exit") => std::process::exit(7),
        Some("file") => {
            let mut f = std::fs::File::create("/data/out.txt").expect("create");
            f.write_all(b"from rust").expect("write");
            println!("read={}", std::fs::read_to_string("/data/in.txt").expect("read"));
        }
        Some("net") => match std::net::TcpListener::bind("127.0.0.1:0") {
            Ok(_) => println!("bind ok"),
            Err(e) => println!("bind failed: {:?}", e.kind()),
        },
        Some("serve") => {
            let listener = std::net::TcpListener::bind(args[2].as_str()).expect("bind");
            println!("listening on {}", listener.local_addr().expect("local_addr"));
            let (mut conn, peer) = listener.accept().expect("accept");
            write!(conn, "served on {} to {peer}", listener.local_addr().unwrap()).expect("write");
        }
        Some("connect") => match std::net::TcpStream::connect(args[2].as_str()) {
            Ok(s) => println!("connected from {}", s.local_addr().expect("local_addr")),
            Err(e) => println!("connect failed: {:?}", e.kind()),
        },
        Some("resolve") => {
            use std::net::ToSocketAddrs;
            match (args[2].as_str(), 80).to_socket_addrs() {
                Ok(addrs) => {
                    let mut ips: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
                    ips.sort();
                    println!("resolved {}", ips.join(","));
                }
                Err(_) => println!("resolve failed"),
            }
        }
        _ => {}
    }
}
"#;

fn rust_guests() -> &'static RustGuests {
    static GUESTS: OnceLock<RustGuests> = OnceLock::new();
    GUESTS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("guest.rs");
        std::fs::write(&source, RUST_GUEST).unwrap();
        let build = |target: &str| {
            let out = dir.path().join(format!("{target}.wasm"));
            let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
            let status = std::process::Command::new(rustc)
                .args([
                    "--edition=2021",
                    "-O",
                    "-C",
                    "debuginfo=0",
                    "--target",
                    target,
                ])
                .arg(&source)
                .arg("-o")
                .arg(&out)
                .status()
                .expect("cannot run rustc");
            assert!(
                status.success(),
                "rustc --target {target} failed (is the target installed? `rustup target add \
                 {target}`)"
            );
            out
        };
        RustGuests {
            p1: build("wasm32-wasip1"),
            p2: build("wasm32-wasip2"),
            _dir: dir,
        }
    })
}

#[tokio::test]
async fn rust_guests_for_preview1_and_preview2() {
    let guests = rust_guests();
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_in(dir.path());
    for (name, path, kind) in [
        ("rust-p1", &guests.p1, ProgramKind::Core),
        ("rust-p2", &guests.p2, ProgramKind::Component),
    ] {
        let started = Instant::now();
        let program = engine.load(&format!("sha256:{name}"), path).await.unwrap();
        eprintln!("{name}: compiled in {:?}", started.elapsed());
        assert_eq!(program.kind(), kind);

        let mut run = run_spec(&[name, "hello"]);
        run.spec.env = vec![("GREETING".into(), "hi".into())];
        let exit = program.run(run.spec, CancellationToken::new()).await;
        assert_eq!(
            exit,
            Exit::Exited(0),
            "{name}: stdout {:?} stderr {:?}",
            run.stdout.text(),
            run.stderr.text()
        );
        assert_eq!(
            run.stdout.text(),
            "args=[\"hello\"]\nenv=[\"GREETING=hi\"]\n",
            "{name}"
        );

        let run = run_spec(&[name, "panic"]);
        let exit = program.run(run.spec, CancellationToken::new()).await;
        let Exit::Trapped(message) = &exit else {
            panic!("{name}: expected a trap, got {exit:?}");
        };
        assert!(message.contains("unreachable"), "{name}: {message}");
        assert!(
            run.stderr.text().contains("guest panicked on purpose"),
            "{name}: {}",
            run.stderr.text()
        );
        eprintln!("{name}: panic reported as: {message}");

        let mut run = run_spec(&[name, "hog"]);
        run.spec.memory_limit = Some(32 << 20);
        let exit = program.run(run.spec, CancellationToken::new()).await;
        assert!(
            matches!(exit, Exit::OutOfMemory(_)),
            "{name}: {exit:?} {}",
            run.stderr.text()
        );
        eprintln!("{name}: hog reported as: {exit:?}");

        let run = run_spec(&[name, "exit"]);
        let exit = program.run(run.spec, CancellationToken::new()).await;
        eprintln!("{name}: std::process::exit(7) reported as {exit:?}");
        // Rust's std for wasip2 exits through `wasi:cli/exit.exit(err)`, which carries
        // no code: every failing exit is 1 there.
        let code = if kind == ProgramKind::Core { 7 } else { 1 };
        assert_eq!(exit, Exit::Exited(code), "{name}");

        let volume = dir.path().join(name);
        std::fs::create_dir(&volume).unwrap();
        std::fs::write(volume.join("in.txt"), "from the host").unwrap();
        let mut run = run_spec(&[name, "file"]);
        run.spec.preopens = vec![Preopen {
            host: volume.clone(),
            guest: "/data".into(),
            read_only: false,
        }];
        let exit = program.run(run.spec, CancellationToken::new()).await;
        assert_eq!(exit, Exit::Exited(0), "{name}: {}", run.stderr.text());
        assert!(
            run.stdout.text().ends_with("read=from the host\n"),
            "{name}"
        );
        assert_eq!(
            std::fs::read_to_string(volume.join("out.txt")).unwrap(),
            "from rust"
        );
    }
}

#[tokio::test]
async fn network_is_denied_unless_granted() {
    let guests = rust_guests();
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_in(dir.path());
    let program = engine.load("sha256:rust-p2", &guests.p2).await.unwrap();

    let run = run_spec(&["net", "net"]);
    assert_eq!(
        program.run(run.spec, CancellationToken::new()).await,
        Exit::Exited(0)
    );
    let denied = run.stdout.text();
    assert!(denied.contains("bind failed"), "{denied}");

    let mut run = run_spec(&["net", "net"]);
    run.spec.network = true;
    assert_eq!(
        program.run(run.spec, CancellationToken::new()).await,
        Exit::Exited(0)
    );
    assert!(
        run.stdout.text().contains("bind ok"),
        "{}",
        run.stdout.text()
    );
}

/// Instance start from a loaded program: from `run` being called to the guest's first
/// write (its first instruction). Prints the figures; run with `--nocapture` to see them.
#[tokio::test]
async fn instance_start_time_from_the_compiled_cache() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_in(dir.path());
    let core = load_source(&engine, dir.path(), "hello", p1("", HELLO).as_bytes())
        .await
        .unwrap();
    let component = load_source(
        &engine,
        dir.path(),
        "component",
        component("(i32.const 0)").as_bytes(),
    )
    .await
    .unwrap();
    for (name, program) in [("core module", core), ("component", component)] {
        let mut samples = Vec::new();
        for _ in 0..200 {
            let run = run_spec(&["hello"]);
            let stdout = run.stdout.clone();
            let called = Instant::now();
            assert_eq!(
                program.run(run.spec, CancellationToken::new()).await,
                Exit::Exited(0)
            );
            let first = *stdout.first.get().unwrap();
            samples.push(first.duration_since(called));
        }
        samples.sort();
        let p50 = samples[samples.len() / 2];
        let p99 = samples[samples.len() * 99 / 100];
        eprintln!(
            "instance start ({name}, pooling: {}, debug build): p50 {p50:?}, p99 {p99:?}",
            engine.pooling()
        );
        assert!(p50 < Duration::from_millis(20), "{name}: p50 {p50:?}");
    }
}

/// The project's sample modules (`samples/`, built by `scripts/build-samples.sh`, which
/// this runs if they are missing).
fn sample(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = root.join("samples/target/modules");
        let wanted = ["hello", "hello-p2", "crasher", "memory-hog", "spinner"];
        if wanted
            .iter()
            .any(|n| !dir.join(format!("{n}.wasm")).is_file())
        {
            let status = std::process::Command::new("bash")
                .arg(root.join("scripts/build-samples.sh"))
                .env("WASMKUBE_SAMPLES_INSTALL", "")
                .status()
                .expect("cannot run scripts/build-samples.sh");
            assert!(status.success(), "scripts/build-samples.sh failed");
        }
        dir
    });
    dir.join(format!("{name}.wasm"))
}

/// Median and 99th percentile of instance start for `program`: from `run` to the
/// guest's first write.
async fn start_times(program: &Program, argv: &[&str], runs: usize) -> (Duration, Duration) {
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let run = run_spec(argv);
        let stdout = run.stdout.clone();
        let called = Instant::now();
        assert_eq!(
            program.run(run.spec, CancellationToken::new()).await,
            Exit::Exited(0)
        );
        samples.push(stdout.first.get().unwrap().duration_since(called));
    }
    samples.sort();
    (samples[runs / 2], samples[runs * 99 / 100])
}

#[tokio::test]
async fn the_sample_modules_behave_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_in(dir.path());
    let load = |name: &'static str| {
        let engine = engine.clone();
        async move {
            engine
                .load(&format!("sha256:sample-{name}"), &sample(name))
                .await
                .unwrap()
        }
    };

    for (name, kind) in [
        ("hello", ProgramKind::Core),
        ("hello-p2", ProgramKind::Component),
    ] {
        let program = load(name).await;
        assert_eq!(program.kind(), kind);
        let mut run = run_spec(&[name, "--flag"]);
        run.spec.env = vec![
            ("POD_NAME".into(), "hello-pod".into()),
            ("HELLO_X".into(), "1".into()),
        ];
        let exit = program.run(run.spec, CancellationToken::new()).await;
        assert_eq!(exit, Exit::Exited(0), "{name}: {}", run.stderr.text());
        let out = run.stdout.text();
        assert!(
            out.starts_with("hello from wasmkube\npod: hello-pod\n"),
            "{out}"
        );
        assert!(
            out.contains("--flag") && out.contains("env HELLO_X=1"),
            "{out}"
        );

        // `kubectl exec` runs the module again with the command as argv.
        let volume = dir.path().join(format!("{name}-volume"));
        std::fs::create_dir(&volume).unwrap();
        std::fs::write(volume.join("note.txt"), "in the volume\n").unwrap();
        let mut run = run_spec(&["cat", "/data/note.txt"]);
        run.spec.preopens = vec![Preopen {
            host: volume,
            guest: "/data".into(),
            read_only: true,
        }];
        let exit = program.run(run.spec, CancellationToken::new()).await;
        assert_eq!(exit, Exit::Exited(0), "{name}: {}", run.stderr.text());
        assert_eq!(run.stdout.text(), "in the volume\n");

        let (p50, p99) = start_times(&program, &[name], 100).await;
        eprintln!("instance start of sample {name} (debug build): p50 {p50:?}, p99 {p99:?}");
    }

    let crasher = load("crasher").await;
    let mut run = run_spec(&["crasher"]);
    run.spec.env = vec![("EXIT_CODE".into(), "3".into())];
    assert_eq!(
        crasher.run(run.spec, CancellationToken::new()).await,
        Exit::Exited(3)
    );
    let mut run = run_spec(&["crasher"]);
    run.spec.env = vec![("CRASH_MODE".into(), "panic".into())];
    let exit = crasher.run(run.spec, CancellationToken::new()).await;
    assert!(matches!(exit, Exit::Trapped(_)), "{exit:?}");
    eprintln!("crasher --panic: {exit:?}");

    let hog = load("memory-hog").await;
    let mut run = run_spec(&["memory-hog"]);
    run.spec.memory_limit = Some(64 << 20);
    let exit = hog.run(run.spec, CancellationToken::new()).await;
    assert!(matches!(exit, Exit::OutOfMemory(_)), "{exit:?}");
    assert!(run.stdout.text().contains("allocated 16 MiB"));
    eprintln!("memory-hog at 64 MiB: {exit:?}");

    let spinner = load("spinner").await;
    let mut run = run_spec(&["spinner"]);
    run.spec.env = vec![("HEARTBEAT_ITERATIONS".into(), "1000000".into())];
    let stdout = run.stdout.clone();
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let cancel = cancel.clone();
        async move { spinner.run(run.spec, cancel).await }
    });
    wait_for("spinner heartbeats", Duration::from_secs(30), || {
        stdout.text().contains("heartbeat 2 ")
    })
    .await;
    let cancelled_at = Instant::now();
    cancel.cancel();
    assert_eq!(task.await.unwrap(), Exit::Cancelled);
    assert!(cancelled_at.elapsed() < Duration::from_secs(1));
}

/// A pod IP: the guest's bind to 0.0.0.0 lands on it, binds elsewhere and connects
/// outside loopback are refused inside the guest, and outgoing connections come from it.
#[tokio::test]
async fn binds_land_on_the_pod_ip() {
    use std::io::Read as _;
    let guests = rust_guests();
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_in(dir.path());
    let program = engine.load("sha256:rust-p2", &guests.p2).await.unwrap();
    let pod_ip: std::net::IpAddr = "127.131.7.9".parse().unwrap();
    // A free port on the pod IP.
    let port = std::net::TcpListener::bind((pod_ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    let mut run = run_spec(&["net", "serve", &format!("0.0.0.0:{port}")]);
    run.spec.network = true;
    run.spec.pod_ip = Some(pod_ip);
    let stdout = run.stdout.clone();
    let stderr = run.stderr.clone();
    let server = tokio::spawn({
        let program = program.clone();
        async move { program.run(run.spec, CancellationToken::new()).await }
    });
    wait_for("the guest to listen", Duration::from_secs(20), || {
        stdout.text().contains("listening")
    })
    .await;
    assert!(
        stdout
            .text()
            .contains(&format!("listening on {pod_ip}:{port}")),
        "{} {}",
        stdout.text(),
        stderr.text()
    );
    let reply = tokio::task::spawn_blocking(move || {
        let mut conn = std::net::TcpStream::connect((pod_ip, port)).unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).unwrap();
        reply
    })
    .await
    .unwrap();
    assert!(
        reply.starts_with(&format!("served on {pod_ip}:{port}")),
        "{reply}"
    );
    assert_eq!(server.await.unwrap(), Exit::Exited(0));

    // Elsewhere than the pod IP: refused, as a permission error inside the guest.
    let mut run = run_spec(&["net", "serve", "127.0.0.2:0"]);
    run.spec.network = true;
    run.spec.pod_ip = Some(pod_ip);
    let exit = program.run(run.spec, CancellationToken::new()).await;
    assert_ne!(exit, Exit::Exited(0));
    assert!(
        run.stderr.text().contains("PermissionDenied") || run.stderr.text().contains("ermission"),
        "{}",
        run.stderr.text()
    );

    // Connects: from the pod IP to loopback (the default egress); nowhere else. The
    // pod's localhost is its own address: a connect to 127.0.0.1 reaches the pod IP.
    let connect = async |target: String| {
        let mut run = run_spec(&["net", "connect", &target]);
        run.spec.network = true;
        run.spec.pod_ip = Some(pod_ip);
        let exit = program.run(run.spec, CancellationToken::new()).await;
        assert_eq!(exit, Exit::Exited(0), "connect {target}");
        run.stdout.text()
    };
    let target = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
    let own = std::net::TcpListener::bind((pod_ip, 0)).unwrap();
    let own_port = own.local_addr().unwrap().port();
    for target in [
        target.local_addr().unwrap().to_string(),
        format!("127.0.0.1:{own_port}"),
    ] {
        let out = connect(target.clone()).await;
        assert!(
            out.contains(&format!("connected from {pod_ip}:")),
            "{target}: {out}"
        );
    }
    let out = connect("192.0.2.1:80".to_string()).await;
    assert!(out.contains("connect failed: PermissionDenied"), "{out}");
}

/// Names a test pod knows: `web` is a Service, `gone` a cluster name with no address,
/// `alias` stands for the host's `localhost`; the rest is the host's.
#[derive(Debug)]
struct FakeNames;

impl crate::wasm::Names for FakeNames {
    fn lookup(&self, name: &str) -> crate::wasm::Lookup {
        use crate::wasm::Lookup;
        match name {
            "web" => Lookup::Addresses(vec!["127.96.0.7".parse().unwrap()]),
            "gone" => Lookup::Addresses(Vec::new()),
            "alias" => Lookup::Host("localhost".into()),
            other => Lookup::Host(other.into()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_lookups_ask_the_pods_names_then_the_host() {
    let guests = rust_guests();
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_in(dir.path());
    let program = engine.load("sha256:rust-p2", &guests.p2).await.unwrap();
    let resolve = async |name: &str, names: Option<Arc<dyn crate::wasm::Names>>, network| {
        let mut run = run_spec(&["net", "resolve", name]);
        run.spec.network = network;
        run.spec.names = names;
        let exit = program.run(run.spec, CancellationToken::new()).await;
        assert_eq!(exit, Exit::Exited(0), "{name}: {}", run.stderr.text());
        run.stdout
            .text()
            .lines()
            .last()
            .unwrap_or_default()
            .to_string()
    };
    let names = || Some(Arc::new(FakeNames) as Arc<dyn crate::wasm::Names>);
    assert_eq!(resolve("web", names(), true).await, "resolved 127.96.0.7");
    assert_eq!(resolve("gone", names(), true).await, "resolve failed");
    assert_eq!(
        resolve("10.1.2.3", names(), true).await,
        "resolved 10.1.2.3"
    );
    // The host's resolver, through a name the pod's names hand over, or directly.
    let localhost = resolve("alias", names(), true).await;
    assert!(localhost.contains("127.0.0.1"), "{localhost}");
    assert_eq!(resolve("localhost", None, true).await, localhost);
    assert_eq!(resolve("web", None, true).await, "resolve failed");
    // No network, no lookups.
    assert_eq!(resolve("web", names(), false).await, "resolve failed");
}

/// `limits.cpu`: a spinner limited to 100m gets a small fraction of what an unlimited
/// spinner next to it gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_limit_throttles_a_spinning_guest() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_in(dir.path());
    let spinner = engine
        .load("sha256:sample-spinner", &sample("spinner"))
        .await
        .unwrap();
    let start = |limit: Option<u64>| {
        let mut run = run_spec(&["spinner"]);
        run.spec.env = vec![("HEARTBEAT_ITERATIONS".into(), "1000000".into())];
        run.spec.cpu_limit_millis = limit;
        let stdout = run.stdout.clone();
        let cancel = CancellationToken::new();
        let spinner = spinner.clone();
        let task = tokio::spawn({
            let cancel = cancel.clone();
            async move { spinner.run(run.spec, cancel).await }
        });
        (stdout, cancel, task)
    };
    let beats = |out: &Capture| {
        out.text()
            .lines()
            .filter(|l| l.starts_with("heartbeat "))
            .count()
    };
    let (free_out, free_cancel, free_task) = start(None);
    let (limited_out, limited_cancel, limited_task) = start(Some(100));
    wait_for(
        "the unlimited spinner's heartbeats",
        Duration::from_secs(60),
        || beats(&free_out) >= 40,
    )
    .await;
    limited_cancel.cancel();
    free_cancel.cancel();
    assert_eq!(limited_task.await.unwrap(), Exit::Cancelled);
    assert_eq!(free_task.await.unwrap(), Exit::Cancelled);
    let (free, limited) = (beats(&free_out), beats(&limited_out));
    eprintln!("heartbeats: unlimited {free}, limited to 100m {limited}");
    assert!(
        (limited as f64) < free as f64 * 0.4,
        "the limited spinner ran {limited} heartbeats against {free}"
    );
}
