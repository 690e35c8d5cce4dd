//! Guest stdout and stderr delivered to an [`OutputSink`], for preview 1 and 2 alike.
//!
//! wasmtime-wasi asks a [`StdoutStream`] for two views of one stream: a WASIp2
//! [`OutputStream`] (which preview 1's `fd_write` also goes through) and a tokio
//! [`AsyncWrite`]. Both hand the bytes straight to the sink. A sink without an
//! [`OutputBudget`] takes every write whole and is always ready; one with a budget (an
//! exec session's websocket) is ready only while budget is left, so a guest that writes
//! faster than the reader drains waits in its write, as a process at a full pipe does.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use tokio::sync::Semaphore;
use tokio_util::sync::PollSemaphore;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::OutputSink;

/// The most a guest is told it may write in one call; large writes arrive in pieces of
/// at most this size.
const WRITE_BUDGET: usize = 1 << 20;

/// How many bytes a sink may hold for its reader. Writers spend it, the reader refunds
/// what it has passed on; clones share one budget.
#[derive(Clone, Debug)]
pub struct OutputBudget {
    free: Arc<Semaphore>,
    /// Bytes written beyond what was free — stdout and stderr may each have been told
    /// the same bytes were free — paid back from refunds before they are free again,
    /// so the bound holds over time.
    owed: Arc<Mutex<usize>>,
}

impl OutputBudget {
    pub fn new(bytes: usize) -> Self {
        OutputBudget {
            free: Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))),
            owed: Arc::new(Mutex::new(0)),
        }
    }

    /// The bytes that may be written now.
    pub fn available(&self) -> usize {
        self.free.available_permits()
    }

    /// Records `n` bytes written.
    pub fn spend(&self, n: usize) {
        let mut owed = self.owed.lock().unwrap_or_else(|e| e.into_inner());
        let take = n.min(self.available()).min(u32::MAX as usize);
        // Only refunds run concurrently with a spend (under the same lock), and they
        // add, so what was available still is.
        if let Ok(permit) = self.free.try_acquire_many(take as u32) {
            permit.forget();
            *owed += n - take;
        } else {
            *owed += n;
        }
    }

    /// Returns `n` bytes the reader has passed on.
    pub fn refund(&self, n: usize) {
        let mut owed = self.owed.lock().unwrap_or_else(|e| e.into_inner());
        let paid = n.min(*owed);
        *owed -= paid;
        self.free.add_permits(n - paid);
    }

    /// Resolves once some budget is free.
    async fn writable(free: Arc<Semaphore>) {
        // The permit goes straight back: this only waits for one to exist.
        let _ = free.acquire().await;
    }
}

/// A guest output stream writing to a sink.
#[derive(Clone)]
pub(crate) struct SinkStream {
    sink: Arc<dyn OutputSink>,
    /// Waits for budget in [`AsyncWrite::poll_write`]; made on first need.
    waiter: Option<PollSemaphore>,
}

impl SinkStream {
    pub(crate) fn new(sink: Arc<dyn OutputSink>) -> Self {
        SinkStream { sink, waiter: None }
    }
}

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
        match self.sink.budget() {
            Some(budget) if budget.available() == 0 => {
                Box::pin(OutputBudget::writable(budget.free.clone()))
            }
            _ => Box::pin(std::future::ready(())),
        }
    }
}

impl OutputStream for SinkStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if !bytes.is_empty() {
            self.sink.write(&bytes);
            if let Some(budget) = self.sink.budget() {
                budget.spend(bytes.len());
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(match self.sink.budget() {
            Some(budget) => budget.available().min(WRITE_BUDGET),
            None => WRITE_BUDGET,
        })
    }
}

impl AsyncWrite for SinkStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut n = buf.len();
        if let Some(budget) = this.sink.budget() {
            if budget.available() == 0 && !buf.is_empty() {
                let waiter = this
                    .waiter
                    .get_or_insert_with(|| PollSemaphore::new(budget.free.clone()));
                match waiter.poll_acquire(cx) {
                    Poll::Pending => return Poll::Pending,
                    // Handed straight back: the budget is counted in `spend`.
                    Poll::Ready(permit) => drop(permit),
                }
            }
            n = n.min(budget.available().max(1));
        }
        if n > 0 {
            this.sink.write(&buf[..n]);
            if let Some(budget) = this.sink.budget() {
                budget.spend(n);
            }
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_beyond_the_budget_are_paid_back_before_it_frees_again() {
        let budget = OutputBudget::new(10);
        budget.spend(4);
        assert_eq!(budget.available(), 6);
        // Two streams told the same 6 bytes were free both wrote them.
        budget.spend(6);
        budget.spend(6);
        assert_eq!(budget.available(), 0);
        budget.refund(4);
        assert_eq!(budget.available(), 0, "4 of the 6 owed paid back");
        budget.refund(12);
        assert_eq!(budget.available(), 10, "never more than the budget");
    }

    #[tokio::test]
    async fn readiness_waits_for_a_refund() {
        struct Bounded(OutputBudget);
        impl OutputSink for Bounded {
            fn write(&self, _: &[u8]) {}
            fn budget(&self) -> Option<&OutputBudget> {
                Some(&self.0)
            }
        }
        let budget = OutputBudget::new(8);
        let mut stream = SinkStream::new(Arc::new(Bounded(budget.clone())));
        assert_eq!(stream.check_write().unwrap(), 8);
        stream.write(Bytes::from_static(b"12345678")).unwrap();
        assert_eq!(stream.check_write().unwrap(), 0);
        let mut ready = stream.ready();
        assert!(futures::poll!(&mut ready).is_pending(), "no budget left");
        budget.refund(3);
        assert!(futures::poll!(&mut ready).is_ready());
        drop(ready);
        assert_eq!(stream.check_write().unwrap(), 3);
    }
}
