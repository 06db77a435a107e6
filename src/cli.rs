//! What the `oms dlq` commands print. The work itself is in
//! [`crate::broker::dlq`]; this module only renders it for a terminal.

use crate::broker::dlq::{self, DlqEntry, DlqPosition, ReplayOutcome, ReplaySummary, Selection};
use crate::config::{BrokerSettings, DlqSettings};

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
