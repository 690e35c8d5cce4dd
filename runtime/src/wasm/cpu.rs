//! CPU limits for instances: a bandwidth throttle in the manner of the Linux CFS quota.
//!
//! A guest runs only while its future is being polled (wasmtime runs it on a fiber
//! inside `poll`), and epoch interruption makes it yield at every tick, so one poll is at
//! most about one tick of guest time. The throttle adds up how long the polls take; once
//! an instance has used its quota of a period (`limit × PERIOD`), it is not polled again
//! until the period ends. Time the thread spends preempted during a poll counts as used,
//! so under contention a throttled guest gets less, never more, than its limit.
//!
//! Instances without a limit are not throttled: they yield at every tick and so share
//! the runtime's threads round-robin with each other and with the agent's own tasks.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The accounting period, as the CFS default (`cpu.cfs_period_us` = 100 ms).
pub const PERIOD: Duration = Duration::from_millis(100);

/// How much of `PERIOD` an instance limited to `millicores` may run.
pub fn quota(millicores: u64) -> Duration {
    PERIOD.mul_f64(millicores as f64 / 1000.0)
}

/// Wraps `inner` so that it runs at most `millicores` thousandths of a core; `None` (or
/// a limit of a whole core or more, which one instance cannot exceed) leaves it as is.
pub fn throttle<F: Future>(inner: F, millicores: Option<u64>) -> Throttled<F> {
    Throttled {
        inner: Box::pin(inner),
        quota: millicores.filter(|m| *m < 1000).map(quota),
        period_start: Instant::now(),
        used: Duration::ZERO,
        sleep: None,
        throttled: Duration::ZERO,
    }
}

/// A future that is polled no more than its CPU quota allows.
pub struct Throttled<F> {
    inner: Pin<Box<F>>,
    quota: Option<Duration>,
    period_start: Instant,
    /// Poll time used in the current period; overuse carries into the next one.
    used: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Total time spent held back.
    throttled: Duration,
}

impl<F> Throttled<F> {
    /// How long the instance has been held back so far.
    pub fn throttled(&self) -> Duration {
        self.throttled
    }
}

impl<F: Future> Future for Throttled<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let Some(quota) = this.quota else {
            return this.inner.as_mut().poll(cx);
        };
        if let Some(sleep) = this.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        let now = Instant::now();
        let since = now.duration_since(this.period_start);
        if since >= PERIOD {
            // New period(s): each one that passed paid back a quota of the debt.
            let periods = (since.as_nanos() / PERIOD.as_nanos()) as u32;
            this.used = this.used.saturating_sub(quota * periods);
            this.period_start += PERIOD * periods;
        }
        if this.used >= quota {
            // Out of quota: wait for as many periods as the debt needs.
            let periods = (this.used.as_nanos() / quota.as_nanos().max(1)) as u32;
            let until = this.period_start + PERIOD * periods.max(1);
            this.throttled += until.saturating_duration_since(now);
            let mut sleep = Box::pin(tokio::time::sleep_until(until.into()));
            if sleep.as_mut().poll(cx).is_pending() {
                this.sleep = Some(sleep);
                return Poll::Pending;
            }
        }
        let started = Instant::now();
        let result = this.inner.as_mut().poll(cx);
        this.used += started.elapsed();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// Spins for about `slice` per poll until `total` wall time has passed, recording
    /// the time it spent in its own polls.
    struct Busy {
        slice: Duration,
        until: Instant,
        busy_ns: Arc<AtomicU64>,
    }

    impl Future for Busy {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let started = Instant::now();
            if started >= self.until {
                return Poll::Ready(());
            }
            while started.elapsed() < self.slice {
                std::hint::spin_loop();
            }
            self.busy_ns
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    async fn busy_share(limit: Option<u64>, wall: Duration) -> (f64, Duration) {
        let busy_ns = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let throttled = {
            let mut fut = throttle(
                Busy {
                    slice: Duration::from_millis(2),
                    until: started + wall,
                    busy_ns: busy_ns.clone(),
                },
                limit,
            );
            (&mut fut).await;
            fut.throttled()
        };
        let elapsed = started.elapsed();
        (
            busy_ns.load(Ordering::Relaxed) as f64 / elapsed.as_nanos() as f64,
            throttled,
        )
    }

    #[tokio::test]
    async fn a_limited_future_runs_no_more_than_its_share() {
        let (share, throttled) = busy_share(Some(200), Duration::from_millis(600)).await;
        // The accounting counts whole polls, so the share may exceed the limit by at
        // most one slice per period (2 ms of 100 ms).
        assert!(share <= 0.23, "ran {:.0}% of the time", share * 100.0);
        assert!(share > 0.0);
        assert!(
            throttled > Duration::from_millis(300),
            "held back {throttled:?}"
        );
    }

    #[tokio::test]
    async fn no_limit_or_a_whole_core_is_not_throttled() {
        let (_, throttled) = busy_share(None, Duration::from_millis(100)).await;
        assert_eq!(throttled, Duration::ZERO);
        let (_, throttled) = busy_share(Some(1000), Duration::from_millis(100)).await;
        assert_eq!(throttled, Duration::ZERO);
    }

    #[test]
    fn quotas_scale_with_millicores() {
        assert_eq!(quota(500), Duration::from_millis(50));
        assert_eq!(quota(100), Duration::from_millis(10));
    }
}
