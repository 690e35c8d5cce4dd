//! One forwarded connection or UDP session inside a tunnel connection: an HTTP/2
//! stream, read and written as a byte stream.
//!
//! [`Tunnel`] is `AsyncRead + AsyncWrite` for the UDP framing and for tests; a TCP
//! connection is joined to its stream by [`Tunnel::relay_tcp`], which reads the socket
//! through the thread's shared buffer so that an idle connection holds no buffer.

use std::io;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::dial::StreamUse;
use super::h2_io;
use crate::metrics::add;
use crate::tcp;

/// The two halves of an HTTP/2 stream. Dropped before both directions ended, the stream
/// is reset (h2 sends RST_STREAM), which the far side passes on as a TCP reset.
#[derive(Debug)]
pub(crate) struct Tunnel {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received and not yet read.
    unread: Bytes,
    write_closed: bool,
    /// Keeps the dialler's connection from idling out while the stream is open.
    _in_use: Option<StreamUse>,
}

impl Tunnel {
    pub(super) fn new(send: SendStream<Bytes>, recv: RecvStream) -> Tunnel {
        Tunnel {
            send,
            recv,
            unread: Bytes::new(),
            write_closed: false,
            _in_use: None,
        }
    }

    pub(super) fn in_use(self, in_use: StreamUse) -> Tunnel {
        Tunnel {
            _in_use: Some(in_use),
            ..self
        }
    }

    /// Joins the TCP connection `sock` to this stream until both directions have ended,
    /// passing half-closes on; a reset on either side resets the other. `to_stream` and
    /// `from_stream` count the bytes each way.
    pub(crate) async fn relay_tcp(
        mut self,
        sock: &TcpStream,
        to_stream: &AtomicU64,
        from_stream: &AtomicU64,
    ) -> io::Result<()> {
        let unread = std::mem::take(&mut self.unread);
        let (send, recv) = (&mut self.send, &mut self.recv);
        let r = tokio::try_join!(
            socket_to_stream(sock, send, to_stream),
            stream_to_socket(recv, unread, sock, from_stream)
        );
        if r.is_err() {
            tcp::reset(sock);
            self.send.send_reset(Reason::CANCEL);
        }
        r.map(|_| ())
    }
}

/// Waits until the stream may send at least one more byte; the capacity then.
fn poll_send_capacity(
    send: &mut SendStream<Bytes>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    loop {
        let cap = send.capacity();
        if cap > 0 {
            return Poll::Ready(Ok(cap));
        }
        match ready!(send.poll_capacity(cx)) {
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
            None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }
}

/// Sends `data` as the flow-control window allows: never more than the window is handed
/// to h2, so nothing piles up in its send buffer.
async fn send_all(send: &mut SendStream<Bytes>, mut data: Bytes) -> io::Result<()> {
    send.reserve_capacity(data.len());
    while !data.is_empty() {
        let cap = std::future::poll_fn(|cx| poll_send_capacity(send, cx)).await?;
        let part = data.split_to(cap.min(data.len()));
        send.send_data(part, false).map_err(h2_io)?;
    }
    Ok(())
}

/// The socket's bytes into the stream; its FIN as END_STREAM.
async fn socket_to_stream(
    sock: &TcpStream,
    send: &mut SendStream<Bytes>,
    bytes: &AtomicU64,
) -> io::Result<()> {
    loop {
        // An idle socket with a far side that resets: the reset must end this wait.
        tokio::select! {
            r = sock.readable() => r?,
            r = std::future::poll_fn(|cx| send.poll_reset(cx)) => {
                let e = match r {
                    Ok(reason) => io::Error::new(io::ErrorKind::ConnectionReset, format!("stream reset: {reason}")),
                    Err(e) => h2_io(e),
                };
                return Err(e);
            }
        }
        let data = match tcp::read_owned(sock) {
            Ok(Some(data)) => data,
            Ok(None) => {
                send.send_data(Bytes::new(), true).map_err(h2_io)?;
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        add(bytes, data.len() as u64);
        send_all(send, data).await?;
    }
}

/// The stream's bytes onto the socket; END_STREAM as a shutdown of its write side.
async fn stream_to_socket(
    recv: &mut RecvStream,
    unread: Bytes,
    sock: &TcpStream,
    bytes: &AtomicU64,
) -> io::Result<()> {
    let mut next = Some(unread).filter(|b| !b.is_empty());
    loop {
        let mut data = match next.take() {
            Some(data) => data,
            None => match std::future::poll_fn(|cx| recv.poll_data(cx)).await {
                Some(Ok(data)) => data,
                Some(Err(e)) => return Err(h2_io(e)),
                None => return tcp::pass_half_close(sock),
            },
        };
        let n = data.len();
        while !data.is_empty() {
            match sock.try_write(&data) {
                Ok(w) => data.advance(w),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => sock.writable().await?,
                Err(e) => return Err(e),
            }
        }
        // Only now may the sender send more: the bytes have left the proxy.
        recv.flow_control().release_capacity(n).map_err(h2_io)?;
        add(bytes, n as u64);
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // An empty DATA frame is not the end: only `None` is.
        while this.unread.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => this.unread = data,
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = buf.remaining().min(this.unread.len());
        buf.put_slice(&this.unread[..n]);
        this.unread.advance(n);
        this.recv
            .flow_control()
            .release_capacity(n)
            .map_err(h2_io)?;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        this.send.reserve_capacity(buf.len());
        let cap = ready!(poll_send_capacity(&mut this.send, cx))?;
        let n = cap.min(buf.len());
        this.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(h2_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2's connection task writes what was sent as soon as it can.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            this.write_closed = true;
            this.send.send_data(Bytes::new(), true).map_err(h2_io)?;
        }
        Poll::Ready(Ok(()))
    }
}

/// Writes one datagram as a frame (`frame` is scratch space reused between calls, so
/// that a datagram is one write; it grows to the largest frame); flushes when `flush`.
pub(crate) async fn write_frame(
    w: &mut (impl AsyncWrite + Unpin),
    frame: &mut Vec<u8>,
    datagram: &[u8],
    flush: bool,
) -> io::Result<()> {
    let len = u16::try_from(datagram.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "datagram too large"))?;
    frame.clear();
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(datagram);
    w.write_all(frame).await?;
    if flush {
        w.flush().await?;
    }
    Ok(())
}

/// Reads one frame's datagram into `buf`, which grows to the largest datagram seen (so
/// a session of small datagrams keeps a small buffer).
pub(crate) async fn read_frame(
    r: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    use tokio::io::AsyncReadExt as _;
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await?;
    buf.resize(usize::from(u16::from_be_bytes(len)), 0);
    r.read_exact(buf).await?;
    Ok(())
}
