//! Helpers shared by the samples, and a tiny busybox every sample answers to.
//!
//! `kubectl exec POD -- CMD ARGS` and exec probes run the container's own module again
//! with `CMD ARGS` as argv (there is no shell or coreutils inside a WebAssembly pod). So
//! each sample starts with [`run_tool_if_invoked`]: when argv[0] names one of the commands
//! below (`cat`, `ls`, `sh -c …`, `exit 3`, `test -f …`, `get http://…`), that command runs
//! instead of the sample, and its status is the exit code. Anything else falls through to
//! the sample itself.
//!
//! Layout: `common` (pod name, env parsing, timestamps), `tools` (the commands), `shell`
//! (`sh -c` with quoting, `$VAR`, `;`, `&&`, `||` and `>`/`>>`), `http` (a minimal HTTP
//! client for `get`).

#![forbid(unsafe_code)]

mod http;
mod shell;
mod tools;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use tools::{run_tool, TOOLS};

/// Runs the busybox command named by argv[0] and exits with its status, or returns when
/// argv[0] is not one of [`TOOLS`] (the sample then does its own work).
pub fn run_tool_if_invoked() {
    let args: Vec<String> = std::env::args().collect();
    let Some(first) = args.first() else { return };
    let name = tool_name(first);
    if !TOOLS.contains(&name) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let code = run_tool(name, &args[1..], &mut out);
    drop(out);
    exit(code);
}

/// The command name argv[0] stands for: its last path component without a `.wasm`
/// suffix, so `/bin/sh`, `sh` and `sh.wasm` all mean `sh`.
pub fn tool_name(argv0: &str) -> &str {
    let base = argv0.rsplit('/').next().unwrap_or(argv0);
    base.strip_suffix(".wasm").unwrap_or(base)
}

/// Flushes stdout and exits. On WASI preview 2 Rust's std reports every non-zero code as
/// 1; preview 1 keeps the exact code.
pub fn exit(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(code)
}

/// The pod's name as the agent tells it: `POD_NAME` (a fieldRef in the manifests), else
/// `HOSTNAME`, else "unknown".
pub fn pod_name() -> String {
    ["POD_NAME", "HOSTNAME"]
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .find(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// An environment variable parsed as a number, or `default` when unset or empty. A value
/// that does not parse is a configuration mistake: say so and exit 2 rather than guess.
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => match v.trim().parse() {
            Ok(n) => n,
            Err(_) => {
                eprintln!("{name}={v:?} is not a non-negative integer");
                exit(2)
            }
        },
        _ => default,
    }
}

/// An environment variable, or `default` when unset or empty.
pub fn env_or(name: &str, default: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => default.to_string(),
    }
}

/// Sleeps in slices of an hour forever: what a long-running pod that has nothing to do
/// does. The guest stays blocked in the host's clock wait, costing no CPU.
pub fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The current time as RFC 3339 UTC with milliseconds, e.g. `2025-01-31T12:00:00.123Z`.
pub fn timestamp() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    format_unix(since)
}

/// Formats a time since the Unix epoch as RFC 3339 UTC with milliseconds.
pub fn format_unix(since: Duration) -> String {
    let secs = since.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Converts days since 1970-01-01 to a proleptic Gregorian (year, month, day), counting
/// in 400-year eras of 146 097 days whose years start in March, so the leap day falls at
/// the end of a year.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_unix(Duration::ZERO), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_unix(Duration::from_millis(951_782_400_250)),
            "2000-02-29T00:00:00.250Z"
        );
        assert_eq!(
            format_unix(Duration::from_secs(1_735_689_599)),
            "2024-12-31T23:59:59.000Z"
        );
    }

    #[test]
    fn tool_names_ignore_paths_and_suffix() {
        assert_eq!(tool_name("/bin/sh"), "sh");
        assert_eq!(tool_name("cat.wasm"), "cat");
        assert_eq!(tool_name("http-echo"), "http-echo");
    }
}
