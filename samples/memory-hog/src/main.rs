//! memory-hog: allocates memory in chunks of `CHUNK_MB` (default 16) MiB, touching every
//! page so it is really used, and prints the running total — until an allocation fails,
//! then says so and exits 1. With `limits.memory` set the agent caps the instance's
//! linear memory, so the failure comes at the limit (the agent may instead end the
//! container as OOMKilled). `MAX_MB` (default 0: no cap) stops it early with exit 0, and
//! `HOLD` keeps it alive, holding the memory, once it stops. WASI preview 1.

#![forbid(unsafe_code)]

use std::time::Duration;

const MIB: usize = 1024 * 1024;

fn main() {
    toolbox::run_tool_if_invoked();

    let chunk_mb = toolbox::env_u64("CHUNK_MB", 16).max(1);
    let max_mb = toolbox::env_u64("MAX_MB", 0);
    let pause = Duration::from_millis(toolbox::env_u64("INTERVAL_MS", 0));
    let hold = std::env::var("HOLD").is_ok_and(|v| !v.is_empty() && v != "0");
    let Ok(chunk) = usize::try_from(chunk_mb).map(|c| c.saturating_mul(MIB)) else {
        eprintln!("CHUNK_MB={chunk_mb} is too large");
        toolbox::exit(2);
    };
    println!(
        "memory-hog pod={} allocating {chunk_mb} MiB at a time",
        toolbox::pod_name()
    );

    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut total_mb: u64 = 0;
    let code = loop {
        if max_mb != 0 && total_mb + chunk_mb > max_mb {
            println!("memory-hog reached MAX_MB={max_mb} holding {total_mb} MiB");
            break 0;
        }
        // try_reserve_exact reports a failed allocation instead of aborting, so the
        // guest gets to say how far it got.
        let mut block: Vec<u8> = Vec::new();
        if let Err(e) = block.try_reserve_exact(chunk) {
            eprintln!(
                "memory-hog: allocating chunk {} failed after {total_mb} MiB: {e}",
                held.len() + 1
            );
            println!("memory-hog stopped at {total_mb} MiB");
            break 1;
        }
        // Writing every byte commits the pages (resize writes them all).
        block.resize(chunk, 0xA5);
        held.push(block);
        total_mb += chunk_mb;
        println!("allocated {total_mb} MiB");
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    };
    if hold {
        println!("holding {total_mb} MiB");
        toolbox::sleep_forever();
    }
    drop(held);
    toolbox::exit(code);
}
