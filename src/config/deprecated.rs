//! Keys that moved, read for one more release: each old key is moved to
//! its new place before the settings are read, with one warning naming the
//! replacement. Delete this file (and its one call) to drop them.

use std::path::Path;

use config::{Map, Value, ValueKind};

use crate::store::url::{Engine, StoreUrl};

/// Keys that only changed place: old `section.key` → new `section.key`.
const MOVED: [(&str, &str); 4] = [
    ("broker.retry_after_secs", "http.retry_after_secs"),
    ("broker.dlq_max_replays", "dlq.max_replays"),
    ("broker.partitions", "migrate.partitions"),
    ("broker.replication", "migrate.replication"),
];

/// Moves every old key found in `merged` (all layers merged) to its new
/// place; returns one warning per key.
pub(super) fn fold(merged: &mut Map<String, Value>) -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    for (old, new) in MOVED {
        if let Some(value) = take(merged, old) {
            put(merged, new, value);
            warnings.push(warning(old, new));
        }
    }
    fold_flat_store_keys(merged, &mut warnings)?;
    Ok(warnings)
}

fn warning(old: &str, new: &str) -> String {
    format!("{old} is deprecated and will be removed in the next release: use {new}")
}

/// The flat `[store]` keys of oms 0.1: `engine`, `path` and `postgres_url`
/// make `store.url`; the others moved into the engines' sections.
fn fold_flat_store_keys(
    merged: &mut Map<String, Value>,
    warnings: &mut Vec<String>,
) -> Result<(), String> {
    let named = take(merged, "store.engine");
    let path = take(merged, "store.path");
    let postgres_url = take(merged, "store.postgres_url");
    if named.is_some() || path.is_some() || postgres_url.is_some() {
        let current: StoreUrl = text(merged_get(merged, "store.url"))
            .map_or_else(|| Ok(Engine::Redb.default_url()), |u| u.parse())?;
        let engine = match text(named.as_ref()) {
            Some(name) => name.parse::<Engine>()?,
            None => current.engine(),
        };
        let url = if engine.is_embedded() {
            let folder = text(path.as_ref())
                .map(|p| Path::new(&p).to_owned())
                .or_else(|| current.path().map(Path::to_owned))
                .or_else(|| engine.default_url().path().map(Path::to_owned))
                .unwrap_or_default();
            StoreUrl::embedded(engine, &folder)?
        } else {
            match text(postgres_url.as_ref()) {
                Some(url) => url.parse()?,
                None if current.engine() == engine => current,
                None => engine.default_url(),
            }
        };
        let to = format!("store.url = {:?}", url.as_str());
        for (key, set) in [
            ("store.engine", named.is_some()),
            ("store.path", path.is_some()),
            ("store.postgres_url", postgres_url.is_some()),
        ] {
            if set {
                warnings.push(warning(key, &to));
            }
        }
        put(merged, "store.url", Value::from(url.as_str()));
    }
    for (old, news) in [
        ("store.postgres_pool", &["store.postgres.pool"][..]),
        (
            "store.postgres_timeout_ms",
            &["store.postgres.timeout_ms"][..],
        ),
        (
            "store.cache_mib",
            &["store.redb.cache_mib", "store.sled.cache_mib"][..],
        ),
    ] {
        if let Some(value) = take(merged, old) {
            for new in news {
                put(merged, new, value.clone());
            }
            warnings.push(warning(old, &news.join(" and ")));
        }
    }
    Ok(())
}

fn text(value: Option<&Value>) -> Option<String> {
    value.and_then(|v| v.clone().into_string().ok())
}

fn merged_get<'a>(merged: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    let (section, rest) = key.split_once('.')?;
    match &merged.get(section)?.kind {
        ValueKind::Table(table) => table.get(rest),
        _ => None,
    }
}

/// Removes `section.key` (one level deep) and returns its value.
fn take(merged: &mut Map<String, Value>, key: &str) -> Option<Value> {
    let (section, rest) = key.split_once('.')?;
    match &mut merged.get_mut(section)?.kind {
        ValueKind::Table(table) => table.remove(rest),
        _ => None,
    }
}

/// Sets `section.key` or `section.engine.key`, making the tables it needs.
fn put(merged: &mut Map<String, Value>, key: &str, value: Value) {
    let mut parts = key.split('.').peekable();
    let mut table = merged;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            table.insert(part.to_owned(), value);
            return;
        }
        let entry = table
            .entry(part.to_owned())
            .or_insert_with(|| Value::from(Map::<String, Value>::new()));
        if !matches!(entry.kind, ValueKind::Table(_)) {
            *entry = Value::from(Map::<String, Value>::new());
        }
        let ValueKind::Table(next) = &mut entry.kind else {
            return;
        };
        table = next;
    }
}
