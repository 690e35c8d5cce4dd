//! Guest stdout and stderr delivered to an [`OutputSink`], for preview 1 and 2 alike.
//!
//! wasmtime-wasi asks a [`StdoutStream`] for two views of one stream: a WASIp2
//! [`OutputStream`] (which preview 1's `fd_write` also goes through) and a tokio
//! [`AsyncWrite`]. Both hand the bytes straight to the sink: a sink never applies
//! back-pressure, so every write is accepted whole and readiness is immediate.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::OutputSink;

/// The most a guest is told it may write in one call; large writes arrive in pieces of
/// at most this size.
const WRITE_BUDGET: usize = 1 << 20;

/// A guest output stream writing to a sink.
#[derive(Clone)]
pub(crate) struct SinkStream(pub(crate) Arc<dyn OutputSink>);

impl IsTerminal for SinkStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for SinkStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl Pollable for SinkStream {
    // Written out by hand (it is an `async_trait` method) so that this crate needs no
    // `async-trait` dependency of its own.
    fn ready<'a, 'b>(&'a mut self) -> Pin<Box<dyn Future<Output = ()> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(std::future::ready(()))
    }
}

impl OutputStream for SinkStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if !bytes.is_empty() {
            self.0.write(&bytes);
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_BUDGET)
    }
}

impl AsyncWrite for SinkStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if !buf.is_empty() {
            self.0.write(buf);
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
