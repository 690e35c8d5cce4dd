//! crasher: fails on purpose, to exercise restart policies and CrashLoopBackOff. Prints
//! a message to stderr and exits with `EXIT_CODE` (default 1) — after `CRASH_AFTER_MS`
//! (default 0) of running, if set. With `--panic` (or `CRASH_MODE=panic`) it panics
//! instead, which in a module built with `panic = "abort"` is a trap. WASI preview 1,
//! which keeps the exact exit code (preview 2 reports every failure as 1).

#![forbid(unsafe_code)]

use std::time::Duration;

fn main() {
    toolbox::run_tool_if_invoked();

    let code = toolbox::env_u64("EXIT_CODE", 1);
    let Ok(code) = i32::try_from(code) else {
        eprintln!("EXIT_CODE={code} is out of range");
        toolbox::exit(2);
    };
    let after = Duration::from_millis(toolbox::env_u64("CRASH_AFTER_MS", 0));
    let panic = std::env::args().skip(1).any(|a| a == "--panic")
        || std::env::var("CRASH_MODE").is_ok_and(|m| m == "panic");
    println!(
        "crasher pod={} will {} in {}ms",
        toolbox::pod_name(),
        if panic {
            "panic".to_string()
        } else {
            format!("exit with code {code}")
        },
        after.as_millis()
    );
    if !after.is_zero() {
        std::thread::sleep(after);
    }
    if panic {
        panic!("crasher: panicking on purpose");
    }
    eprintln!("crasher: exiting with code {code} on purpose");
    toolbox::exit(code);
}
