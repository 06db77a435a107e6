//! What the `oms dlq` and `oms keys` commands print. The work itself is in
//! [`crate::broker::dlq`] and [`crate::auth`]; this module only renders it
//! for a terminal.

use crate::auth::{KeyFile, Role};
use crate::broker::dlq::{self, DlqEntry, DlqPosition, ReplayOutcome, ReplaySummary, Selection};
use crate::config::{AuthSettings, BrokerSettings, DlqSettings};
use crate::domain::Account;

fn origin(e: &DlqEntry) -> String {
    match (&e.origin_topic, e.origin_partition, e.origin_offset) {
        (Some(t), Some(p), Some(o)) => format!("{t}/{p}@{o}"),
        _ => "?".into(),
    }
}

fn shorten(text: &str, max: usize) -> String {
    let one_line = text.replace('\n', " ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        format!("{}…", one_line.chars().take(max - 1).collect::<String>())
    }
}

/// `oms dlq list`: a table, or one JSON object per line with `--json`; at
/// most `limit` records after `after`, and how to ask for the next page.
pub async fn dlq_list(
    settings: &BrokerSettings,
    limit: usize,
    after: Option<DlqPosition>,
    json: bool,
) -> anyhow::Result<()> {
    let settings = settings.clone();
    let page = tokio::task::spawn_blocking(move || dlq::list(&settings, limit, after)).await??;
    if json {
        for e in &page.entries {
            println!("{}", serde_json::to_string(e)?);
        }
        return Ok(());
    }
    if page.entries.is_empty() {
        println!(
            "the dead-letter topic holds nothing{}",
            match after {
                Some(a) => format!(" after {a}"),
                None => String::new(),
            }
        );
        return Ok(());
    }
    println!(
        "{:<9} {:<20} {:<9} {:<24} {:<7} ERROR",
        "AT", "FAILED AT", "KIND", "ORIGIN", "REPLAYS"
    );
    for e in &page.entries {
        let failed_at = e
            .failed_at
            .as_deref()
            .map(|t| t.chars().take(19).collect::<String>());
        println!(
            "{:<9} {:<20} {:<9} {:<24} {:<7} {}",
            e.at.to_string(),
            failed_at.unwrap_or_else(|| "?".into()),
            e.kind.as_deref().unwrap_or("?"),
            origin(e),
            e.replays,
            shorten(e.error.as_deref().unwrap_or(""), 100),
        );
    }
    match page.next_after {
        Some(next) => println!(
            "{} record(s); more: oms dlq list --after {next} --limit {limit}",
            page.entries.len()
        ),
        None => println!("{} record(s)", page.entries.len()),
    }
    Ok(())
}

/// `oms dlq replay`: re-drives records, with a progress line per record
/// (or per 1,000 records for large replays) and a summary.
pub async fn dlq_replay(
    settings: &BrokerSettings,
    policy: &DlqSettings,
    selection: Selection,
    dry_run: bool,
) -> anyhow::Result<()> {
    let max = policy.max_replays;
    let topic = settings.topic.clone();
    let summary = dlq::replay(
        settings,
        selection,
        max,
        dry_run,
        move |entry, outcome, done, total| {
            if total <= 50 {
                match outcome {
                    ReplayOutcome::Replayed {
                        to_partition,
                        to_offset,
                    } => println!(
                        "replayed  dlq@{} → {topic}/{to_partition}@{to_offset} (replay {})",
                        entry.at,
                        entry.replays + 1
                    ),
                    ReplayOutcome::WouldReplay => println!(
                        "would replay dlq@{} ({}: {})",
                        entry.at,
                        entry.kind.as_deref().unwrap_or("?"),
                        shorten(entry.error.as_deref().unwrap_or(""), 80)
                    ),
                    ReplayOutcome::OverLimit { max } => println!(
                        "skipped   dlq@{}: already replayed {} time(s), the limit is {max}",
                        entry.at, entry.replays
                    ),
                }
            } else if done % 1_000 == 0 || done == total {
                println!("{done}/{total} processed");
            }
        },
    )
    .await?;
    let ReplaySummary {
        replayed,
        would_replay,
        over_limit,
    } = summary;
    if dry_run {
        println!(
            "dry run: {would_replay} would be replayed, {over_limit} over the replay limit ({max})"
        );
    } else {
        println!(
            "{replayed} replayed to {}, {over_limit} over the replay limit ({max})",
            settings.topic
        );
    }
    Ok(())
}

/// A limit as `oms keys list` shows it: the key's own, or the default.
fn limit(own: Option<u32>, default: u32) -> String {
    match own.unwrap_or(default) {
        0 => "none".into(),
        n => n.to_string(),
    }
}

/// `oms keys create`: the key, shown once; the last line is `ID KEY`.
pub fn keys_create(
    file: &KeyFile,
    account: Account,
    role: Role,
    rate: Option<u32>,
    in_flight: Option<u32>,
) -> anyhow::Result<()> {
    let made = file.create(account, role, rate, in_flight)?;
    eprintln!(
        "made {} key {} for account {} in {}; the key is shown once, here — oms keeps only its hash",
        made.record.role.as_str(),
        made.record.id,
        made.record.account,
        file.path().display()
    );
    println!("{} {}", made.record.id, made.key.expose());
    Ok(())
}

/// `oms keys list`: every key, revoked ones too.
pub fn keys_list(file: &KeyFile, defaults: &AuthSettings, json: bool) -> anyhow::Result<()> {
    let set = file.load()?;
    if json {
        for k in &set.keys {
            let mut shown = serde_json::to_value(k)?;
            if let Some(map) = shown.as_object_mut() {
                map.remove("hash");
            }
            println!("{shown}");
        }
        return Ok(());
    }
    if set.keys.is_empty() {
        println!("no keys in {}", file.path().display());
        return Ok(());
    }
    println!(
        "{:<17} {:<24} {:<7} {:>6} {:>9} {:<21} REVOKED",
        "ID", "ACCOUNT", "ROLE", "RATE/S", "IN FLIGHT", "CREATED"
    );
    for k in &set.keys {
        println!(
            "{:<17} {:<24} {:<7} {:>6} {:>9} {:<21} {}",
            k.id,
            k.account.as_str(),
            k.role.as_str(),
            limit(k.rate_per_sec, defaults.rate_per_sec),
            limit(k.max_in_flight, defaults.max_in_flight),
            k.created_at.format("%Y-%m-%dT%H:%M:%SZ"),
            k.revoked_at.map_or_else(
                || "-".into(),
                |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
            ),
        );
    }
    Ok(())
}

/// `oms keys revoke`: in force on every instance within `auth.reload_ms`.
pub fn keys_revoke(file: &KeyFile, id: &str, settings: &AuthSettings) -> anyhow::Result<()> {
    let revoked = file.revoke(id)?;
    println!(
        "revoked key {} of account {}: every oms reading {} refuses it within {} ms",
        revoked.id,
        revoked.account,
        file.path().display(),
        settings.reload_ms
    );
    Ok(())
}
