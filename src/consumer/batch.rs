//! One batch, from records to the store: decoding (what cannot be decoded
//! goes to the dead-letter topic first), matching, and the fenced write —
//! retried while the store is down, refused as a whole when another writer
//! moved the store, written one record at a time when the store refuses
//! some of its rows for good.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::message::BorrowedMessage;
use tracing::Span;

use super::status::{ConsumerState, raise};
use super::{Halt, Loop};
use crate::broker::dlq::{DeadLetter, ErrorKind, replay_count};
use crate::domain::Positioned;
use crate::domain::{Event, Order, RecordError};
use crate::domain::{Offsets, StoredOrder};
use crate::error::Chain;
use crate::store::lease::Claim;
use crate::store::{Applied, Batch, StoreError};
use crate::telemetry::{self, TraceParent};

/// A batch read from the log, each record sorted: the orders to store (each
/// knows its partition and offset, so its message can be found again) and
/// the records to dead-letter.
struct Decoded {
    rows: Vec<StoredOrder>,
    /// Every decoded record (orders and cancels), in log order, to match.
    events: Vec<Positioned>,
    poison: Vec<DeadLetter>,
    /// The next offset of every partition the batch covers.
    offsets: Offsets,
    /// One span per traced record, open until its batch is stored: each
    /// order's trace shows its wait in the batch and the store write.
    spans: Vec<Span>,
}

/// How a write ended that did not have to be retried.
enum Written {
    Applied(Applied),
    /// The store refuses the batch's rows for good (a record it cannot hold).
    Refused(String),
}

impl Loop {
    /// Stores one batch: its poison records go to the dead-letter topic,
    /// its orders and offsets to the store in one transaction, under
    /// `claim` (group mode). Returns the offsets now in the store.
    pub(super) async fn process(
        &self,
        topic: &str,
        messages: &[BorrowedMessage<'_>],
        claim: Option<Claim>,
    ) -> Result<Offsets, Halt> {
        let Decoded {
            rows,
            events,
            poison,
            offsets,
            spans: _open_until_stored,
        } = self.decode(messages);
        // A poison record's offset may only advance once the DLQ holds it.
        for letter in &poison {
            let m = &letter.message;
            let trace_id = crate::broker::header_str(m, telemetry::TRACEPARENT)
                .and_then(|tp| tp.split('-').nth(1))
                .unwrap_or_default();
            tracing::warn!(partition = m.partition(), offset = m.offset(), kind = letter.kind.as_str(), reason = %letter.reason, trace_id, "dead-lettering a record");
            self.dead_letter(letter).await?;
        }
        let batch = Batch::new(topic, rows, offsets.clone())
            .expecting(self.expected(&offsets))
            .claiming(claim);
        let matched = self.match_events(&events, &batch).await?;
        let batch = Arc::new(batch.matched(matched.states, matched.trades));
        match self.write(&batch).await? {
            Written::Applied(applied) => {
                let engine = self.store.engine();
                metrics::counter!("orders_stored_total", "engine" => engine)
                    .increment(applied.inserted as u64);
                metrics::counter!("orders_duplicate_total", "engine" => engine)
                    .increment(applied.duplicates as u64);
            }
            Written::Refused(reason) => {
                tracing::error!(%reason, "store refused the batch; storing its rows one by one");
                self.apply_one_by_one(&batch, &events, messages).await?;
            }
        }
        Ok(offsets)
    }

    /// The store offsets this consumer believes current for `partitions`
    /// (absent: nothing stored yet): a batch is written only if they are.
    fn expected(&self, partitions: &Offsets) -> Offsets {
        let stored = self.status.stored();
        partitions
            .keys()
            .filter_map(|p| stored.get(p).map(|o| (*p, *o)))
            .collect()
    }

    /// Sorts each record of a batch into an order to store or a dead letter.
    fn decode(&self, messages: &[BorrowedMessage<'_>]) -> Decoded {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut decoded = Decoded {
            rows: Vec::with_capacity(messages.len()),
            events: Vec::with_capacity(messages.len()),
            poison: Vec::new(),
            offsets: Offsets::new(),
            spans: Vec::new(),
        };
        for m in messages {
            raise(&mut decoded.offsets, m.partition(), m.offset() + 1);
            if let Some(ts) = m.timestamp().to_millis() {
                metrics::histogram!("message_delay_seconds")
                    .record((now_ms - ts).max(0) as f64 / 1000.0);
            }
            let event = match Event::from_record(m.payload().unwrap_or_default()) {
                Ok(event) => event,
                Err(err) => {
                    decoded.poison.push(dead_letter(m, &err));
                    continue;
                }
            };
            if replay_count(m) > 0 {
                metrics::counter!("orders_replayed_total").increment(1);
            }
            if let Event::Order(order) = &event {
                decoded
                    .spans
                    .extend(record_span(m, order, self.store.engine()));
                decoded
                    .rows
                    .push(StoredOrder::new(order.clone(), m.partition(), m.offset()));
            }
            decoded.events.push(Positioned {
                partition: m.partition(),
                offset: m.offset(),
                event,
            });
        }
        metrics::histogram!("consumer_batch_size").record(messages.len() as f64);
        decoded
    }

    /// Writes a batch, waiting out transient failures (the partitions do not
    /// advance meanwhile). Another writer's move comes back as a halt: the
    /// offsets moved ([`Halt::Resync`]) or the lease is gone ([`Halt::Fenced`]).
    async fn write(&self, batch: &Arc<Batch>) -> Result<Written, Halt> {
        let engine = self.store.engine();
        let mut attempts = 0;
        let outcome = self
            .retry
            .run("store unavailable", || {
                // A failed attempt may have committed before its answer was
                // lost; only a retry may find the store at its own target.
                attempts += 1;
                let batch = if attempts == 1 {
                    batch.clone()
                } else {
                    Arc::new(batch.retry())
                };
                async move {
                    let started = Instant::now();
                    let outcome = self.store.apply(batch).await;
                    metrics::histogram!("store_write_seconds", "engine" => engine)
                        .record(started.elapsed().as_secs_f64());
                    match outcome {
                        Ok(applied) => Ok(Ok(Written::Applied(applied))),
                        Err(refused) if refused.is_permanent() => {
                            Ok(Ok(Written::Refused(Chain(&refused).to_string())))
                        }
                        Err(StoreError::Diverged { what }) => {
                            tracing::warn!(reason = %what, "the store refused the batch: its offsets moved");
                            Ok(Err(Halt::Resync))
                        }
                        Err(StoreError::Fenced { partition, what }) => {
                            tracing::warn!(reason = %what, "the store refused the batch: a lease is another member's");
                            Ok(Err(Halt::Fenced { partition }))
                        }
                        Err(transient) => Err(transient),
                    }
                }
            })
            .await?;
        self.status.set(ConsumerState::Running);
        outcome
    }

    /// Writes `letter` to the dead-letter topic, waiting as long as the
    /// broker needs (one copy) unless shutdown comes first.
    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), Halt> {
        let send = self
            .retry
            .run("writing to the dead-letter topic", || self.dlq.send(letter));
        tokio::pin!(send);
        let mut waiting = tokio::time::interval(Duration::from_secs(1));
        waiting.tick().await;
        loop {
            tokio::select! {
                sent = &mut send => return Ok(sent?),
                // Waiting for the broker's ack is life, not a stall: a new
                // consumer would only write the letter a second time.
                _ = waiting.tick() => {
                    self.status.beat();
                    self.status.set(ConsumerState::Waiting {
                        reason: "writing to the dead-letter topic: waiting for the broker's ack".into(),
                    });
                }
            }
        }
    }

    /// The slow path after a batch was refused: each record alone (matched
    /// alone, from books rebuilt to where the store is), the refused ones
    /// to the DLQ (and the books rebuilt again, undoing their matching),
    /// then the offsets. Every step is idempotent, so a crash in between
    /// only repeats work.
    async fn apply_one_by_one(
        &self,
        batch: &Batch,
        events: &[Positioned],
        messages: &[BorrowedMessage<'_>],
    ) -> Result<(), Halt> {
        let partitions: Vec<i32> = batch.offsets.keys().copied().collect();
        self.load_books(&partitions).await?;
        // Each record alone is fenced like the batch (its offsets "move" to
        // where they are): the books were just read from the store, and a
        // fill matched from them must not land after another writer's.
        let fence = batch.expected.clone().unwrap_or_default();
        let single = |rows| {
            Batch::new(&batch.topic, rows, fence.clone())
                .expecting(fence.clone())
                .claiming(batch.claim.clone())
        };
        for event in events {
            let rows = match &event.event {
                Event::Order(order) => vec![StoredOrder::new(
                    order.clone(),
                    event.partition,
                    event.offset,
                )],
                Event::Cancel(_) if self.settings.matching => Vec::new(),
                Event::Cancel(_) => continue,
            };
            let one = single(rows);
            let matched = self.match_events(std::slice::from_ref(event), &one).await?;
            let one = Arc::new(one.matched(matched.states, matched.trades));
            if let Written::Refused(reason) = self.write(&one).await? {
                self.dead_letter_refused(event, messages, reason).await?;
            }
        }
        let offsets_only = Batch {
            offsets: batch.offsets.clone(),
            ..single(Vec::new())
        };
        match self.write(&Arc::new(offsets_only)).await? {
            Written::Applied(_) => Ok(()),
            Written::Refused(reason) => {
                tracing::error!(%reason, "the store refused the batch's offsets; reading them again from the store");
                Err(Halt::Resync)
            }
        }
    }

    /// A record the store refused for good: to the dead-letter topic, and
    /// its partition's books rebuilt (undoing what matching it did).
    async fn dead_letter_refused(
        &self,
        event: &Positioned,
        messages: &[BorrowedMessage<'_>],
        reason: String,
    ) -> Result<(), Halt> {
        let Some(message) = messages
            .iter()
            .find(|m| (m.partition(), m.offset()) == (event.partition, event.offset))
        else {
            tracing::error!(
                partition = event.partition,
                offset = event.offset,
                "a refused record is not in its batch (a bug); reading the batch again"
            );
            return Err(Halt::Resync);
        };
        let letter = DeadLetter {
            message: message.detach(),
            kind: ErrorKind::Store,
            reason,
        };
        self.dead_letter(&letter).await?;
        self.load_books(&[event.partition]).await
    }
}

fn dead_letter(message: &BorrowedMessage<'_>, err: &RecordError) -> DeadLetter {
    DeadLetter {
        message: message.detach(),
        kind: ErrorKind::from(err),
        reason: Chain(err).to_string(),
    }
}

/// The consumer span of a record whose producer sampled its trace (no
/// span at all for the rest, which keeps an untraced consumer cheap).
fn record_span(message: &BorrowedMessage<'_>, order: &Order, engine: &str) -> Option<Span> {
    if !telemetry::spans_enabled() {
        return None;
    }
    let traceparent = crate::broker::header_str(message, telemetry::TRACEPARENT)?;
    if !telemetry::is_sampled(traceparent) {
        return None;
    }
    let span = tracing::info_span!(
        "store order",
        otel.name = %format_args!("{} process", message.topic()),
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.destination.partition.id = message.partition(),
        messaging.kafka.offset = message.offset(),
        order_id = %order.id,
        store.engine = engine,
        trace_id = tracing::field::Empty,
    );
    telemetry::continue_trace(&span, &TraceParent(Some(traceparent)));
    span.record("trace_id", telemetry::trace_id(&span));
    Some(span)
}
