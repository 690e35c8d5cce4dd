//! reader: follows `$DATA_DIR/$DATA_FILE` (default `/data/shared.txt`), checking every
//! `INTERVAL_MS` (default 1000), and prints each new line as `read: <line>` — the other
//! half of the writer sample, proving a shared emptyDir. Waits for the file to appear;
//! starts over if it shrinks. Exits 0 after `COUNT` lines (default 0: never). WASI
//! preview 1.

#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

fn main() {
    toolbox::run_tool_if_invoked();

    let dir = toolbox::env_or("DATA_DIR", "/data");
    let file = toolbox::env_or("DATA_FILE", "shared.txt");
    let interval = Duration::from_millis(toolbox::env_u64("INTERVAL_MS", 1000));
    let count = toolbox::env_u64("COUNT", 0);
    let path = Path::new(&dir).join(&file);
    println!(
        "reader pod={} following {}",
        toolbox::pod_name(),
        path.display()
    );

    let mut follower = Follower::default();
    let mut seen: u64 = 0;
    let mut waiting_reported = false;
    loop {
        match follower.poll(&path) {
            Ok(lines) => {
                waiting_reported = false;
                for line in lines {
                    println!("read: {line}");
                    seen += 1;
                    if count != 0 && seen >= count {
                        println!("reader done after {seen} lines");
                        return;
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if !waiting_reported {
                    println!("waiting for {}", path.display());
                    waiting_reported = true;
                }
            }
            Err(e) => {
                eprintln!("reader: {}: {e}", path.display());
                toolbox::exit(1);
            }
        }
        std::thread::sleep(interval);
    }
}

/// Where reading stopped, and the start of a line not yet finished by the writer.
#[derive(Default)]
struct Follower {
    offset: u64,
    partial: Vec<u8>,
}

impl Follower {
    /// Returns the complete lines added since the last call.
    fn poll(&mut self, path: &Path) -> std::io::Result<Vec<String>> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        if len < self.offset {
            println!("{} shrank: reading it from the start", path.display());
            self.offset = 0;
            self.partial.clear();
        }
        f.seek(SeekFrom::Start(self.offset))?;
        let mut fresh = Vec::new();
        f.read_to_end(&mut fresh)?;
        self.offset += fresh.len() as u64;
        self.partial.extend_from_slice(&fresh);
        let mut lines = Vec::new();
        while let Some(i) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            lines.push(String::from_utf8_lossy(&line[..i]).into_owned());
        }
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn follows_appends_and_truncation() {
        let path = std::env::temp_dir().join(format!("reader-test-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut f = Follower::default();
        assert_eq!(f.poll(&path).unwrap_err().kind(), ErrorKind::NotFound);
        std::fs::write(&path, "one\ntw").unwrap();
        assert_eq!(f.poll(&path).unwrap(), vec!["one"]);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"o\nthree\n").unwrap();
        assert_eq!(f.poll(&path).unwrap(), vec!["two", "three"]);
        assert!(f.poll(&path).unwrap().is_empty());
        std::fs::write(&path, "new\n").unwrap();
        assert_eq!(f.poll(&path).unwrap(), vec!["new"]);
        std::fs::remove_file(&path).unwrap();
    }
}
