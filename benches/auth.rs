//! What the key check costs a request, in process: `Keyring::check` (parse
//! the bearer key, look up its id, SHA-256 of the secret, constant-time
//! compare, role, rate limiter, in-flight slot) over a key file of
//! `OMS_BENCH_KEYS` keys (default 1,000) — `cargo bench --bench auth`
//! (prints one JSON line: ns per check, with and without a rate limit).

use std::time::Instant;

use oms::auth::{KeyFile, Keyring, Role};
use oms::config::AuthSettings;

#[global_allocator]
static ALLOCATOR: oms::memory::Allocator = oms::memory::Allocator;

fn main() {
    let keys: usize = std::env::var("OMS_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let checks: u32 = 1_000_000;
    let dir = tempfile::tempdir().expect("a temp dir");
    let settings = AuthSettings {
        keys_file: dir.path().join("keys.toml"),
        ..AuthSettings::default()
    };
    let file = KeyFile::new(&settings.keys_file);
    for n in 1..keys {
        file.create(
            format!("account-{n}").parse().expect("account"),
            Role::Trader,
            None,
            None,
        )
        .expect("a key");
    }
    let unlimited = file
        .create(
            "bench".parse().expect("account"),
            Role::Trader,
            Some(0),
            Some(0),
        )
        .expect("a key")
        .key
        .expose();
    let limited = file
        .create(
            "bench-limited".parse().expect("account"),
            Role::Trader,
            Some(u32::MAX),
            Some(1_000_000),
        )
        .expect("a key")
        .key
        .expose();
    let ring = Keyring::open(&settings).expect("the ring");
    let per_check = |key: &str| {
        let started = Instant::now();
        for _ in 0..checks {
            let caller = ring.check(Some(key), true).expect("a valid key");
            std::hint::black_box(&caller);
        }
        started.elapsed().as_nanos() as f64 / f64::from(checks)
    };
    let without = per_check(&unlimited);
    let with = per_check(&limited);
    println!(
        "{}",
        serde_json::json!({
            "keys": keys,
            "checks": checks,
            "ns_per_check_no_limits": (without * 10.0).round() / 10.0,
            "ns_per_check_rate_and_in_flight": (with * 10.0).round() / 10.0,
        })
    );
}
