//! The process' heap: the allocator, and giving freed pages back.
//!
//! oms allocates with jemalloc, not glibc's malloc. glibc grows each
//! thread's heap by one `mprotect` per step and faults every page in anew:
//! loading a memory snapshot of 1 M orders on three threads spent a quarter
//! of its CPU there, and took 0.81 s with jemalloc against 1.76 s with
//! glibc (crossing: 1.25 against 2.46 s; `bench/analysis.md`, "The memory
//! engine, restart"). [`Allocator`] names it once; the daemon
//! (`src/main.rs`), this crate's unit tests and the store bench install it.
//! The relay (`examples/relay.rs`) stays on the system allocator: the floor
//! oms is measured against does not move with oms' choices.
//!
//! jemalloc keeps what is freed for reuse and returns it as it ages (its
//! decay, ~10 s). oms' long-lived data (the books, a store's cache, the
//! memory engine's maps) grows interleaved with every batch's short-lived
//! allocations, so oms also purges every arena once a second
//! (`memory.trim_every_ms`) rather than hold freed pages until they age (the
//! drain peaks measured with this trim were taken on glibc, with
//! `malloc_trim`; they have not been measured again on jemalloc).

use std::time::Duration;

/// The allocator oms runs on: `#[global_allocator] static A: Allocator = Allocator;`.
pub use tikv_jemallocator::Jemalloc as Allocator;

#[cfg(test)]
#[global_allocator]
static ALLOCATOR: Allocator = Allocator;

/// Starts a thread that returns freed heap pages to the system every
/// `every` (none when `every` is zero). It runs until the process exits: it
/// holds nothing to clean up.
pub fn trim_every(every: Duration) -> std::io::Result<()> {
    if every.is_zero() {
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

/// Returns the freed pages of every jemalloc arena to the system; `true`
/// if jemalloc did it.
pub fn trim() -> bool {
    // `arena.<MALLCTL_ARENAS_ALL>.purge`: every arena, every dirty page.
    const PURGE_ALL: &[u8] = b"arena.4096.purge\0";
    // SAFETY: a void mallctl (no old or new value), its name a C string;
    // jemalloc takes the arenas' locks itself, from any thread.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL.as_ptr().cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        ) == 0
    }
}

#[cfg(all(test, target_os = "linux"))]
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

    /// What jemalloc keeps until its decay returns it: pages of blocks
    /// freed a moment ago, held for reuse. A trim gives them back at once.
    #[test]
    fn a_trim_returns_the_pages_freed_a_moment_ago() {
        const MIB: usize = 1024 * 1024;
        let before = rss_kib();
        let mut blocks: Vec<Vec<u8>> = (0..96).map(|i| vec![i as u8; MIB]).collect();
        // Keep one in eight: live data between the freed blocks.
        let kept: Vec<_> = blocks.drain(..).step_by(8).collect();
        let freed = rss_kib();
        assert!(trim(), "jemalloc purged its arenas");
        let after = rss_kib();
        assert!(
            after + 48 * 1024 < freed,
            "RSS {before} KiB at first, {freed} KiB with 84 MiB freed, {after} KiB after the \
             trim: less than 48 MiB returned"
        );
        assert!(kept.iter().enumerate().all(|(i, b)| b[0] == (i * 8) as u8));
    }
}
