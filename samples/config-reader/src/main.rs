//! config-reader: shows what configuration reached the pod. Prints its environment
//! variables sorted (the agent passes no host environment, so these are exactly the
//! manifest's env, envFrom and fieldRefs), then every file under `$CONFIG_DIR` (default
//! `/config`) and `$SECRET_DIR` (default `/secret`), then exits 0. WASI preview 1.
//!
//! With `--watch` it keeps going: every `INTERVAL_MS` (default 1000) it reads the files
//! again and prints each file that was added, changed or removed — how a test sees a
//! configMap update reach the mounted file.
//!
//! Kubernetes' atomic-writer internals (`..data`, `..2025_…` timestamped directories)
//! are skipped; the key files are followed through their symlinks.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::Duration;

/// Path → content of every file found.
type Snapshot = BTreeMap<String, Vec<u8>>;

fn main() {
    toolbox::run_tool_if_invoked();

    let watch = std::env::args().skip(1).any(|a| a == "--watch");
    let dirs = [
        toolbox::env_or("CONFIG_DIR", "/config"),
        toolbox::env_or("SECRET_DIR", "/secret"),
    ];
    let interval = Duration::from_millis(toolbox::env_u64("INTERVAL_MS", 1000));

    let mut vars: Vec<(String, String)> = std::env::vars().collect();
    vars.sort();
    let mut text = format!(
        "config-reader pod={}\nenv ({} variables):\n",
        toolbox::pod_name(),
        vars.len()
    );
    for (k, v) in &vars {
        let _ = writeln!(text, "  {k}={v}");
    }
    let mut snapshot = Snapshot::new();
    for dir in &dirs {
        match scan(Path::new(dir), &mut snapshot) {
            Ok(()) => {}
            Err(e) => {
                let _ = writeln!(text, "{dir}: {e}");
            }
        }
    }
    for (path, content) in &snapshot {
        show(&mut text, "file", path, content);
    }
    if !watch {
        text.push_str("config-reader done\n");
        print!("{text}");
        return;
    }
    let _ = writeln!(text, "watching every {}ms", interval.as_millis());
    print!("{text}");

    loop {
        std::thread::sleep(interval);
        let mut next = Snapshot::new();
        for dir in &dirs {
            // A directory that vanishes for a moment reads as every file removed; the
            // next scan adds them back, which is what the log should show.
            let _ = scan(Path::new(dir), &mut next);
        }
        let mut report = String::new();
        for (path, content) in &next {
            match snapshot.get(path) {
                None => show(&mut report, "added", path, content),
                Some(old) if old != content => show(&mut report, "changed", path, content),
                Some(_) => {}
            }
        }
        for path in snapshot.keys().filter(|p| !next.contains_key(*p)) {
            let _ = writeln!(report, "removed {path}");
        }
        if !report.is_empty() {
            print!("{report}");
        }
        snapshot = next;
    }
}

/// Appends a file's path, size and content (with a final newline) to `out`.
fn show(out: &mut String, what: &str, path: &str, content: &[u8]) {
    let _ = writeln!(out, "{what} {path} ({} bytes):", content.len());
    out.push_str(&String::from_utf8_lossy(content));
    if !content.is_empty() && !content.ends_with(b"\n") {
        out.push('\n');
    }
}

/// Reads every file under `dir` (recursively) into `found`.
fn scan(dir: &Path, found: &mut Snapshot) -> std::io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("..") {
            continue;
        }
        let path = entry.path();
        // metadata() follows symlinks: a key is a link into ..data.
        match fs::metadata(&path) {
            Ok(m) if m.is_dir() => scan(&path, found)?,
            Ok(_) => {
                if let Ok(content) = fs::read(&path) {
                    found.insert(path.to_string_lossy().into_owned(), content);
                }
            }
            Err(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_nested_files_and_skips_atomic_writer_dirs() {
        let dir = std::env::temp_dir().join(format!("config-reader-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::create_dir_all(dir.join("..data")).unwrap();
        fs::write(dir.join("..data/key"), "hidden").unwrap();
        fs::write(dir.join("b"), "two").unwrap();
        fs::write(dir.join("sub/a"), "one\n").unwrap();
        let mut found = Snapshot::new();
        scan(&dir, &mut found).unwrap();
        let keys: Vec<String> = found.keys().cloned().collect();
        let base = dir.to_string_lossy();
        assert_eq!(keys, vec![format!("{base}/b"), format!("{base}/sub/a")]);
        let mut out = String::new();
        show(&mut out, "file", "/config/b", b"two");
        assert_eq!(out, "file /config/b (3 bytes):\ntwo\n");
        fs::remove_dir_all(&dir).unwrap();
    }
}
