//! hello: the smallest pod. Prints a greeting, its argv, the pod it runs in and every
//! `HELLO_*` variable it was given (sorted), then exits 0 — so a test can check that
//! command/args and env reached the module.
//!
//! Long-running mode, for benchmarks that need pods that stay Running: `--serve-forever`
//! as an argument or `HELLO_SLEEP=inf` prints the same lines, then sleeps forever;
//! `HELLO_SLEEP=<seconds>` sleeps that long before exiting 0.
//!
//! Built twice from this one source: `hello` (wasm32-wasip1, a core module) and
//! `hello-p2` (wasm32-wasip2, a component).

#![forbid(unsafe_code)]

use std::io::Write;
use std::time::Duration;

fn main() {
    toolbox::run_tool_if_invoked();

    let args: Vec<String> = std::env::args().collect();
    let mut vars: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("HELLO_"))
        .collect();
    vars.sort();

    // One write, so the lines reach the log together.
    let mut text = String::from("hello from wasmkube\n");
    text.push_str(&format!("pod: {}\n", toolbox::pod_name()));
    text.push_str(&format!("args: {args:?}\n"));
    for (k, v) in &vars {
        text.push_str(&format!("env {k}={v}\n"));
    }

    let sleep = std::env::var("HELLO_SLEEP").unwrap_or_default();
    let forever = args.iter().skip(1).any(|a| a == "--serve-forever")
        || matches!(sleep.as_str(), "inf" | "infinity" | "forever");
    let pause = if forever || sleep.is_empty() {
        None
    } else {
        match sleep.parse::<f64>() {
            Ok(s) if s.is_finite() && s >= 0.0 => Some(Duration::from_secs_f64(s)),
            _ => {
                eprintln!("HELLO_SLEEP={sleep:?} is neither a number of seconds nor \"inf\"");
                toolbox::exit(2);
            }
        }
    };
    if forever {
        text.push_str("sleeping forever\n");
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
    drop(stdout);

    if forever {
        toolbox::sleep_forever();
    }
    if let Some(pause) = pause {
        std::thread::sleep(pause);
        println!("done after {}s", pause.as_secs_f64());
    }
}
