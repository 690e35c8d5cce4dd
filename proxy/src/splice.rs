//! Zero-copy forwarding for bulk TCP: splice(2) moves a socket's received data into a
//! pipe and from the pipe into the other socket as page references, so bulk bytes are
//! never copied through the proxy's memory (a plain read and write copies each byte
//! twice — most of the proxy's CPU in a bulk transfer).
//!
//! Pipes are kept per worker thread and only lent for one step: a connection holds one
//! only while data it moved in cannot be written out yet, so idle connections hold no
//! pipe (10,000 idle connections still cost only their sockets).

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// What one pipe holds at most (F_SETPIPE_SZ; the kernel's default is 64 KiB). Larger
/// pipes move a bulk stream in fewer system calls.
pub(crate) const PIPE_SIZE: usize = 256 * 1024;
/// Idle pipes a worker thread keeps for reuse (each is two file descriptors; more are
/// made when connections stall holding theirs, and closed when they come back).
const POOL_SIZE: usize = 2;

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// A pipe and how many bytes are in it.
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    len: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds: [libc::c_int; 2] = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A smaller pipe (over the user's pipe quota) still works, so failure is ignored.
        // SAFETY: F_SETPIPE_SZ on a pipe descriptor we own.
        unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_SIZE as libc::c_int,
            )
        };
        Ok(Pipe {
            read,
            write,
            len: 0,
        })
    }

    /// A pipe from this thread's pool, or a new one.
    pub(crate) fn take() -> io::Result<Pipe> {
        match POOL.with_borrow_mut(|p| p.pop()) {
            Some(p) => Ok(p),
            None => Pipe::new(),
        }
    }

    /// Returns an empty pipe to this thread's pool (a pipe with data in it is closed:
    /// its bytes belong to a connection that is going away).
    pub(crate) fn give_back(self) {
        if self.len == 0 {
            POOL.with_borrow_mut(|p| {
                if p.len() < POOL_SIZE {
                    p.push(self);
                }
            });
        }
    }

    /// Bytes in the pipe.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Moves up to `max` bytes from the socket `from` into the pipe; 0 at end of stream.
    pub(crate) fn fill(&mut self, from: RawFd, max: usize) -> io::Result<usize> {
        let n = splice(from, self.write.as_raw_fd(), max)?;
        self.len += n;
        Ok(n)
    }

    /// Moves what the pipe holds into the socket `to`, as much as it takes.
    pub(crate) fn drain(&mut self, to: RawFd) -> io::Result<usize> {
        let n = splice(self.read.as_raw_fd(), to, self.len)?;
        self.len -= n;
        Ok(n)
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both are open descriptors (a socket and a pipe); null offsets are what
    // splice takes for them.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn moves_bytes_between_sockets_and_reports_the_end() {
        let (mut client, proxy_in) = pair();
        let (proxy_out, mut server) = pair();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let data = data.clone();
            std::thread::spawn(move || {
                client.write_all(&data).unwrap();
                client.shutdown(std::net::Shutdown::Write).unwrap();
            })
        };
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            server.read_to_end(&mut got).unwrap();
            got
        });
        let mut pipe = Pipe::take().unwrap();
        loop {
            // WouldBlock: nothing has arrived yet (SPLICE_F_NONBLOCK); try again.
            let n = match pipe.fill(proxy_in.as_raw_fd(), PIPE_SIZE) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("fill: {e}"),
            };
            if n == 0 {
                break;
            }
            while pipe.len() > 0 {
                match pipe.drain(proxy_out.as_raw_fd()) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                    Err(e) => panic!("drain: {e}"),
                }
            }
        }
        assert_eq!(pipe.len(), 0);
        pipe.give_back();
        proxy_out.shutdown(std::net::Shutdown::Write).unwrap();
        writer.join().unwrap();
        assert_eq!(reader.join().unwrap(), data);
        // The empty pipe went back to the pool and is lent again.
        assert_eq!(POOL.with_borrow(|p| p.len()), 1);
        let _again = Pipe::take().unwrap();
        assert_eq!(POOL.with_borrow(|p| p.len()), 0);
    }
}
