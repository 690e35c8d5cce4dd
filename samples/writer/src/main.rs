//! writer: appends a line with a counter, a timestamp and the pod's name to
//! `$DATA_DIR/$DATA_FILE` (default `/data/shared.txt`) every `INTERVAL_MS` (default
//! 1000), `COUNT` times (default 0: forever), echoing each line to stdout. With the
//! reader sample in the same pod on a shared emptyDir, it proves both containers see one
//! volume. WASI preview 1.

#![forbid(unsafe_code)]

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

fn main() {
    toolbox::run_tool_if_invoked();

    let dir = toolbox::env_or("DATA_DIR", "/data");
    let file = toolbox::env_or("DATA_FILE", "shared.txt");
    let interval = Duration::from_millis(toolbox::env_u64("INTERVAL_MS", 1000));
    let count = toolbox::env_u64("COUNT", 0);
    let path = Path::new(&dir).join(&file);
    let pod = toolbox::pod_name();
    println!(
        "writer pod={pod} writing to {} every {}ms, {}",
        path.display(),
        interval.as_millis(),
        if count == 0 {
            "forever".to_string()
        } else {
            format!("{count} times")
        }
    );

    let mut n: u64 = 0;
    loop {
        n += 1;
        let line = format!("{n} {} {pod}\n", toolbox::timestamp());
        // Open, append and close each time: the reader (another instance) sees every line
        // as soon as it is written, and a deleted file is simply created again.
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            eprintln!("writer: {}: {e}", path.display());
            toolbox::exit(1);
        }
        print!("wrote: {line}");
        if count != 0 && n >= count {
            println!("writer done after {n} lines");
            return;
        }
        std::thread::sleep(interval);
    }
}
