//! What the `oms dlq` commands print. The work itself is in
//! [`crate::broker::dlq`]; this module only renders it for a terminal.

use crate::broker::dlq::{self, DlqEntry, ReplayOutcome, Selection};
use crate::config::BrokerSettings;

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

/// `oms dlq list`: a table, or one JSON object per line with `--json`.
pub async fn dlq_list(settings: &BrokerSettings, limit: usize, json: bool) -> anyhow::Result<()> {
    let settings = settings.clone();
    let entries = tokio::task::spawn_blocking(move || dlq::list(&settings, limit)).await??;
    if json {
        for e in &entries {
            println!("{}", serde_json::to_string(e)?);
        }
        return Ok(());
    }
    if entries.is_empty() {
        println!("the dead-letter topic is empty");
        return Ok(());
    }
    println!(
        "{:<7} {:<20} {:<9} {:<24} {:<7} ERROR",
        "OFFSET", "FAILED AT", "KIND", "ORIGIN", "REPLAYS"
    );
    for e in &entries {
        let failed_at = e
            .failed_at
            .as_deref()
            .map(|t| t.chars().take(19).collect::<String>());
        println!(
            "{:<7} {:<20} {:<9} {:<24} {:<7} {}",
            e.dlq_offset,
            failed_at.unwrap_or_else(|| "?".into()),
            e.kind.as_deref().unwrap_or("?"),
            origin(e),
            e.replays,
            shorten(e.error.as_deref().unwrap_or(""), 100),
        );
    }
    println!("{} record(s)", entries.len());
    Ok(())
}

/// `oms dlq replay`: re-drives records, with a progress line per record
/// (or per 1,000 records for large replays) and a summary.
pub async fn dlq_replay(
    settings: &BrokerSettings,
    selection: Selection,
    dry_run: bool,
) -> anyhow::Result<()> {
    let max = settings.dlq_max_replays;
    let results = dlq::replay(
        settings,
        selection,
        max,
        dry_run,
        |entry, outcome, done, total| {
            let verbose = total <= 50;
            if verbose {
                match outcome {
                    ReplayOutcome::Replayed {
                        to_partition,
                        to_offset,
                    } => println!(
                        "replayed  dlq@{} → {}/{to_partition}@{to_offset} (replay {})",
                        entry.dlq_offset,
                        settings.topic,
                        entry.replays + 1
                    ),
                    ReplayOutcome::WouldReplay => {
                        println!(
                            "would replay dlq@{} ({}: {})",
                            entry.dlq_offset,
                            entry.kind.as_deref().unwrap_or("?"),
                            shorten(entry.error.as_deref().unwrap_or(""), 80)
                        )
                    }
                    ReplayOutcome::OverLimit { max } => println!(
                        "skipped   dlq@{}: already replayed {} time(s), the limit is {max}",
                        entry.dlq_offset, entry.replays
                    ),
                }
            } else if done % 1_000 == 0 || done == total {
                println!("{done}/{total} processed");
            }
        },
    )
    .await?;
    let replayed = results
        .iter()
        .filter(|(_, o)| matches!(o, ReplayOutcome::Replayed { .. }))
        .count();
    let would = results
        .iter()
        .filter(|(_, o)| *o == ReplayOutcome::WouldReplay)
        .count();
    let skipped = results
        .iter()
        .filter(|(_, o)| matches!(o, ReplayOutcome::OverLimit { .. }))
        .count();
    if dry_run {
        println!("dry run: {would} would be replayed, {skipped} over the replay limit ({max})");
    } else {
        println!(
            "{replayed} replayed to {}, {skipped} over the replay limit ({max})",
            settings.topic
        );
    }
    Ok(())
}
