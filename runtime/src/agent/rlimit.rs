//! The agent's open-files limit. Every pod holds a few descriptors in the agent's
//! process (its sockets, log file and volume directories: about five for an idle HTTP
//! server), so the common default of 1,024 — or even 20,000 — caps a node far below its
//! `--max-pods`. The agent raises its own limit at start, as Go programs and most
//! servers do: the soft limit to the hard one, and (when it may, as root) both to the
//! kernel's per-process maximum.

/// The open-files limit after the attempt: (soft, hard).
// `rlim_t` is 32 bits wide on some targets: the casts are not no-ops everywhere.
#[allow(clippy::unnecessary_cast)]
pub fn raise_open_files() -> std::io::Result<(u64, u64)> {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; no other memory is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let kernel_max = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(current.rlim_max as u64);
    let wanted = kernel_max.max(current.rlim_max as u64);
    for (soft, hard) in [
        (wanted, wanted),
        (current.rlim_max as u64, current.rlim_max as u64),
    ] {
        if soft <= current.rlim_cur as u64 && hard <= current.rlim_max as u64 {
            break;
        }
        let limit = libc::rlimit {
            rlim_cur: soft as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0 {
            return Ok((soft, hard));
        }
    }
    Ok((current.rlim_cur as u64, current.rlim_max as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::unnecessary_cast)]
    fn the_soft_limit_ends_at_least_at_the_hard_one() {
        let (soft, hard) = raise_open_files().unwrap();
        assert_eq!(soft, hard);
        let mut now = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) }, 0);
        assert_eq!(now.rlim_cur as u64, soft);
    }
}
