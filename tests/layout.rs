//! The module graph docs/architecture.md states is the one the code has:
//! each top-level module of `src/` uses only the modules the map allows
//! (`crate::…` paths outside test code), so there is no import cycle, the
//! domain depends on nothing, and matching and the stores never on each
//! other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module → what it may use (the map in docs/architecture.md).
const ALLOWED: &[(&str, &[&str])] = &[
    ("domain", &[]),
    ("error", &[]),
    ("matching", &["domain"]),
    ("store", &["domain", "error"]),
    ("config", &["store"]),
    ("telemetry", &["config"]),
    ("memory", &[]),
    ("auth", &["config", "domain", "error"]),
    ("broker", &["config", "domain", "error", "telemetry"]),
    ("feed", &["broker", "config", "domain", "matching"]),
    (
        "consumer",
        &[
            "broker",
            "config",
            "domain",
            "error",
            "feed",
            "matching",
            "store",
            "telemetry",
        ],
    ),
    (
        "api",
        &[
            "auth",
            "broker",
            "consumer",
            "domain",
            "error",
            "feed",
            "matching",
            "store",
            "telemetry",
        ],
    ),
    ("cli", &["auth", "broker", "config", "domain", "error"]),
    (
        "app",
        &[
            "api",
            "auth",
            "broker",
            "config",
            "consumer",
            "feed",
            "memory",
            "store",
            "telemetry",
        ],
    ),
];

fn uses(dir: &Path, module: &str, found: &mut BTreeSet<String>) {
    let paths: Vec<_> = if dir.is_dir() {
        std::fs::read_dir(dir)
            .expect("src")
            .map(|e| e.expect("entry").path())
            .collect()
    } else {
        vec![dir.to_owned()]
    };
    for path in paths {
        if path.is_dir() {
            uses(&path, module, found);
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !name.ends_with(".rs") || matches!(name, "contract.rs" | "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("a source file");
        let code = text
            .split("#[cfg(test)]\nmod tests")
            .next()
            .unwrap_or_default();
        for (i, _) in code.match_indices("crate::") {
            let used: String = code[i + 7..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if used != module {
                found.insert(used);
            }
        }
    }
}

#[test]
fn every_module_uses_only_what_the_map_allows() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut wrong = Vec::new();
    for (module, may) in &allowed {
        let dir = src.join(module);
        let path = if dir.is_dir() {
            dir
        } else {
            src.join(format!("{module}.rs"))
        };
        let mut found = BTreeSet::new();
        uses(&path, module, &mut found);
        for used in found {
            if !may.contains(&used.as_str()) {
                wrong.push(format!("{module} uses {used}"));
            }
        }
    }
    assert!(wrong.is_empty(), "not in the module map: {wrong:?}");
    // Every module of the crate is on the map.
    for entry in std::fs::read_dir(&src).expect("src") {
        let path = entry.expect("entry").path();
        let name = path
            .file_stem()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !matches!(name, "lib" | "main") {
            assert!(
                allowed.contains_key(name),
                "{name} is not on the module map"
            );
        }
    }
}

#[test]
fn the_map_has_no_cycle() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    fn visit<'a>(m: &'a str, map: &BTreeMap<&'a str, &'a [&'a str]>, path: &mut Vec<&'a str>) {
        assert!(!path.contains(&m), "cycle: {path:?} -> {m}");
        path.push(m);
        for next in map.get(m).copied().unwrap_or_default() {
            visit(next, map, path);
        }
        path.pop();
    }
    for m in allowed.keys() {
        visit(m, &allowed, &mut Vec::new());
    }
}

/// A variable `NAME="value"` (or `NAME="${NAME:-value}"`) of scripts/lib.sh.
fn lib_sh(name: &str) -> String {
    let lib = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/lib.sh"))
        .expect("scripts/lib.sh");
    let line = lib
        .lines()
        .find(|l| l.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("{name} is not set in scripts/lib.sh"));
    let value = line[name.len() + 1..].trim_matches('"');
    match value.strip_prefix(&format!("${{{name}:-")) {
        Some(default) => default.trim_end_matches('}').to_owned(),
        None => value.to_owned(),
    }
}

/// The facts the shell scripts must share with oms: default ports and
/// URLs, which stores instances share, the Redis key prefix, and how long
/// a stop may take before the scripts kill.
#[test]
fn the_scripts_say_what_oms_says() {
    use oms::config::{Engine, Settings};
    let defaults = Settings::default();
    let port = |url: &str| {
        url.rsplit(':')
            .next()
            .unwrap_or_default()
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(lib_sh("OMS_BROKER_PORT"), port(&defaults.broker.bootstrap));
    assert_eq!(lib_sh("OMS_HTTP_PORT"), port(&defaults.http.addr));
    assert_eq!(
        lib_sh("OMS_PG_PORT"),
        port(Engine::Postgres.default_url().as_str())
    );
    assert_eq!(
        lib_sh("OMS_REDIS_PORT"),
        port(Engine::Redis.default_url().as_str())
    );
    let shared: Vec<&str> = Engine::ALL
        .iter()
        .filter(|e| !e.is_embedded())
        .map(|e| e.as_str())
        .collect();
    assert_eq!(lib_sh("SHARED_STORES"), shared.join(" "));
    assert_eq!(lib_sh("OMS_REDIS_PREFIX"), defaults.store.redis.key_prefix);
    let grace: u64 = lib_sh("OMS_STOP_GRACE").parse().expect("seconds");
    let longest = oms::app::longest_stop(&defaults);
    assert!(
        std::time::Duration::from_secs(grace) > longest,
        "OMS_STOP_GRACE ({grace} s) must outlast oms' longest graceful stop ({longest:?})"
    );
}
