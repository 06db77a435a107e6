//! Giving freed heap back to the system.
//!
//! glibc's malloc keeps what a thread frees in that thread's arena for the
//! next allocation, and returns it to the system only from the top of an
//! arena. oms' long-lived data (the books, redb's cache) grows interleaved
//! with every batch's short-lived allocations on the same arenas, so the
//! holes those leave stay resident: draining 1,000,000 orders into redb with
//! matching on peaked at 134–181 MiB over 15 runs for ~50 MiB of books, and
//! the spread was the allocator's, not oms' data. `malloc_trim` also
//! releases the free pages inside the arenas; called once a second it took
//! the same drain to 134–142 MiB over 7 runs, at no cost measurable under
//! wrk (µs of CPU per order within the run-to-run spread;
//! `bench/analysis.md`).

use std::time::Duration;

/// Starts a thread that returns freed heap pages to the system every
/// `every` (none when `every` is zero, or where the C library is not glibc).
/// It runs until the process exits: it holds nothing to clean up.
pub fn trim_every(every: Duration) -> std::io::Result<()> {
    if every.is_zero() || !SUPPORTED {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("oms-trim".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                trim();
            }
        })
        .map(drop)
}

const SUPPORTED: bool = cfg!(all(target_os = "linux", target_env = "gnu"));

/// Returns the free pages of every malloc arena to the system; `true` if
/// any were.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks malloc's own arenas under their
        // locks; it is safe to call from any thread at any time.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::trim;

    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .expect("status")
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS")
    }

    /// The pattern that kept memory resident in oms: a thread allocates a
    /// lot in small pieces, keeps a few (long-lived data) and frees the
    /// rest. The free pages between the kept pieces stay resident until a
    /// trim gives them back.
    #[test]
    fn a_trim_returns_the_pages_freed_between_live_allocations() {
        let kept = std::thread::spawn(|| {
            let mut all: Vec<Box<[u8; 1024]>> =
                (0..96 * 1024).map(|i| Box::new([i as u8; 1024])).collect();
            // Keep one in 64 (one per 64 KiB): the arena's top stays in use.
            let kept: Vec<_> = all.drain(..).step_by(64).collect();
            kept
        })
        .join()
        .expect("allocating thread");
        let before = rss_kib();
        assert!(trim(), "there were free pages to return");
        let after = rss_kib();
        assert!(
            after + 48 * 1024 < before,
            "RSS {before} KiB before the trim, {after} KiB after: less than 48 MiB returned"
        );
        assert_eq!(kept.len(), 96 * 1024 / 64);
        assert!(kept.iter().enumerate().all(|(i, b)| b[0] == (i * 64) as u8));
    }
}
