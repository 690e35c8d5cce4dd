//! Waiting on several sockets at once with `poll(2)`.
//!
//! Rust's std has no readiness API, and a WASI preview 2 guest has no threads, so a
//! server that must not let one slow or idle keep-alive client stall every other client
//! (the agent's probes included) needs `poll`. On wasm32-wasip2 std's sockets are
//! wasi-libc's, and wasi-libc implements `poll` over `wasi:io/poll` pollables; natively
//! it is the libc call. Both are linked already, so declaring the one function is enough.

use std::io;
use std::os::fd::RawFd;

/// `struct pollfd`: the same layout in wasi-libc and glibc.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PollFd {
    fd: RawFd,
    events: i16,
    revents: i16,
}

// wasi-libc's flag values (its own header), not Linux's.
#[cfg(target_os = "wasi")]
mod flags {
    pub const IN: i16 = 0x1;
    pub const OUT: i16 = 0x2;
    pub const ERR: i16 = 0x1000;
    pub const HUP: i16 = 0x2000;
    pub const NVAL: i16 = 0x4000;
}
#[cfg(not(target_os = "wasi"))]
mod flags {
    pub const IN: i16 = 0x1;
    pub const OUT: i16 = 0x4;
    pub const ERR: i16 = 0x8;
    pub const HUP: i16 = 0x10;
    pub const NVAL: i16 = 0x20;
}

extern "C" {
    fn poll(fds: *mut PollFd, nfds: usize, timeout: i32) -> i32;
}

impl PollFd {
    /// Interest in `fd` becoming readable and, if `write`, writable.
    pub fn new(fd: RawFd, write: bool) -> Self {
        let events = if write {
            flags::IN | flags::OUT
        } else {
            flags::IN
        };
        PollFd {
            fd,
            events,
            revents: 0,
        }
    }

    /// Data (or a connection, or end of stream) is waiting to be read.
    pub fn readable(&self) -> bool {
        self.revents & flags::IN != 0
    }

    /// The socket can take more output.
    pub fn writable(&self) -> bool {
        self.revents & flags::OUT != 0
    }

    /// The socket failed or the peer hung up; reading will tell which.
    pub fn broken(&self) -> bool {
        self.revents & (flags::ERR | flags::HUP | flags::NVAL) != 0
    }
}

/// Waits until one of `fds` is ready or `timeout_ms` passes (-1 waits forever); returns
/// how many are ready. An interrupted wait reports 0 ready.
pub fn wait(fds: &mut [PollFd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: `fds` is a valid, exclusively borrowed slice of `#[repr(C)] struct pollfd`
    // values for the whole call, and `poll` reads and writes only its `len()` elements.
    let n = unsafe { poll(fds.as_mut_ptr(), fds.len(), timeout_ms) };
    if n >= 0 {
        return Ok(n as usize);
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::Interrupted {
        Ok(0)
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn reports_readable_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut fds = [PollFd::new(listener.as_raw_fd(), false)];
        assert_eq!(wait(&mut fds, 0).unwrap(), 0);
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.write_all(b"x").unwrap();
        assert_eq!(wait(&mut fds, 5000).unwrap(), 1);
        assert!(fds[0].readable());
    }
}
