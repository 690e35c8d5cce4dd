//! The per-instance memory limiter.
//!
//! A container's `limits.memory` caps the sum of all linear memories of its instance (a
//! component may hold several). A refused `memory.grow` returns -1 to the guest, as the
//! WebAssembly spec wants; the guest usually aborts right after. The limiter remembers
//! the refusal so that the trap (or failing exit) that follows is reported as an
//! out-of-memory death rather than an ordinary crash.

use wasmtime::ResourceLimiter;

/// Tables may not grow past this many elements (8 bytes each), so a guest cannot use
/// table growth to escape its memory limit. Generous: real programs use thousands.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// A memory request the limiter turned down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The limit in force, in bytes.
    pub limit: u64,
    /// The total the instance would have had, in bytes.
    pub requested: u64,
}

/// Tracks an instance's linear memory against its limit.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    /// The cap on the sum of all memories, in bytes; `None` means only the engine's
    /// per-memory maximum applies.
    limit: Option<u64>,
    /// Bytes of linear memory granted so far (memories never shrink).
    used: u64,
    /// The growth granted last, taken back if the growth then fails anyway.
    last_grant: u64,
    /// The first refusal, kept for the exit report.
    refused: Option<Refusal>,
}

impl MemoryLimiter {
    pub(crate) fn new(limit: Option<u64>) -> Self {
        Self {
            limit,
            used: 0,
            last_grant: 0,
            refused: None,
        }
    }

    /// The first refused growth, if any.
    pub(crate) fn refused(&self) -> Option<Refusal> {
        self.refused
    }

    fn refuse(&mut self, requested: u64) {
        if self.refused.is_none() {
            self.refused = Some(Refusal {
                limit: self.limit.unwrap_or(u64::MAX),
                requested,
            });
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let delta = desired.saturating_sub(current) as u64;
        let total = self.used.saturating_add(delta);
        if let Some(limit) = self.limit {
            if total > limit {
                tracing::debug!(
                    limit,
                    requested = total,
                    "refused memory growth over the limit"
                );
                self.refuse(total);
                return Ok(false);
            }
        }
        if maximum.is_some_and(|max| desired > max) {
            // Past the memory's own (or the engine's per-memory) maximum: wasmtime fails
            // the growth itself. Only a node limit counts as running out of memory, and
            // that is the one we checked above.
            return Ok(false);
        }
        self.used = total;
        self.last_grant = delta;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        // The host could not provide memory it granted (an mmap failure, or the engine's
        // per-memory maximum): for the guest that is running out of memory too.
        tracing::debug!(error = %format!("{error:#}"), "memory growth failed");
        self.used = self.used.saturating_sub(self.last_grant);
        let requested = self.used.saturating_add(self.last_grant);
        self.last_grant = 0;
        self.refuse(requested);
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS && maximum.is_none_or(|max| desired <= max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 64 * 1024;

    #[test]
    fn counts_all_memories_against_one_limit() {
        let mut limiter = MemoryLimiter::new(Some(3 * PAGE as u64));
        assert!(limiter.memory_growing(0, 2 * PAGE, None).unwrap());
        assert!(limiter.memory_growing(0, PAGE, None).unwrap());
        assert_eq!(limiter.refused(), None);
        assert!(!limiter.memory_growing(PAGE, 2 * PAGE, None).unwrap());
        assert_eq!(
            limiter.refused(),
            Some(Refusal {
                limit: 3 * PAGE as u64,
                requested: 4 * PAGE as u64
            })
        );
    }

    #[test]
    fn a_modules_own_maximum_is_not_out_of_memory() {
        let mut limiter = MemoryLimiter::new(None);
        assert!(!limiter
            .memory_growing(PAGE, 3 * PAGE, Some(2 * PAGE))
            .unwrap());
        assert_eq!(limiter.refused(), None);
    }

    #[test]
    fn a_failed_grant_is_taken_back_and_recorded() {
        let mut limiter = MemoryLimiter::new(Some(10 * PAGE as u64));
        assert!(limiter.memory_growing(0, PAGE, None).unwrap());
        assert!(limiter.memory_growing(PAGE, 3 * PAGE, None).unwrap());
        limiter
            .memory_grow_failed(wasmtime::format_err!("mmap failed"))
            .unwrap();
        assert_eq!(limiter.used, PAGE as u64);
        assert_eq!(
            limiter.refused().map(|r| r.requested),
            Some(3 * PAGE as u64)
        );
    }

    #[test]
    fn tables_stay_bounded() {
        let mut limiter = MemoryLimiter::new(None);
        assert!(limiter.table_growing(0, 100, None).unwrap());
        assert!(!limiter
            .table_growing(0, MAX_TABLE_ELEMENTS + 1, None)
            .unwrap());
        assert!(!limiter.table_growing(0, 100, Some(10)).unwrap());
    }
}
