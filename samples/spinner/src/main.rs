//! spinner: a busy loop that never yields, to show that `limits.cpu` (epoch-based
//! yielding in the agent) keeps a spinning pod from starving its neighbours. Prints a
//! heartbeat with a counter every `HEARTBEAT_ITERATIONS` turns (default 500 000 000,
//! about a second at full speed) so progress — and its rate under a CPU limit — shows in
//! the logs. With `COUNT` set, exits 0 after that many heartbeats. WASI preview 1.

#![forbid(unsafe_code)]

use std::hint::black_box;
use std::time::Instant;

fn main() {
    toolbox::run_tool_if_invoked();

    let every = toolbox::env_u64("HEARTBEAT_ITERATIONS", 500_000_000).max(1);
    let count = toolbox::env_u64("COUNT", 0);
    println!(
        "spinner pod={} spinning, heartbeat every {every} iterations",
        toolbox::pod_name()
    );
    let start = Instant::now();
    let mut beats: u64 = 0;
    let mut acc: u64 = 0;
    loop {
        for i in 0..every {
            // black_box keeps the optimizer from folding the loop away: the guest must
            // really burn instructions.
            acc = black_box(acc.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
        }
        beats += 1;
        let secs = start.elapsed().as_secs_f64();
        println!(
            "heartbeat {beats} after {secs:.3}s ({:.1} M iterations/s) [{:x}]",
            (beats * every) as f64 / secs.max(1e-9) / 1e6,
            acc & 0xff
        );
        if count != 0 && beats >= count {
            return;
        }
    }
}
