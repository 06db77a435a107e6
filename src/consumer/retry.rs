//! The retry policy: how the consumer waits out a transient failure (the
//! store down, the broker not acknowledging). One value, built from the
//! settings once, taken by every step that waits — never a sleep of its own.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

use super::status::{ConsumerState, ConsumerStatus};
use crate::error::Chain;

/// Shutdown was requested while waiting: nothing more is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped;

/// Capped exponential backoff with jitter; while it waits, `/readyz` says why.
#[derive(Debug, Clone)]
pub struct Retry {
    min: Duration,
    max: Duration,
    status: ConsumerStatus,
    shutdown: CancellationToken,
}

impl Retry {
    pub fn new(
        min: Duration,
        max: Duration,
        status: ConsumerStatus,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            min,
            max,
            status,
            shutdown,
        }
    }

    fn delays(&self) -> impl Iterator<Item = Duration> + use<> {
        ExponentialBuilder::default()
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// Runs `op` until it succeeds, waiting longer after each failure (and
    /// reporting it as the consumer's state), or until shutdown.
    pub async fn run<T, E, F>(&self, what: &str, mut op: impl FnMut() -> F) -> Result<T, Stopped>
    where
        E: std::error::Error + 'static,
        F: Future<Output = Result<T, E>>,
    {
        let mut delays = self.delays();
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                Err(err) => {
                    let reason = format!("{what}: {}", Chain(&err));
                    tracing::warn!(%reason, "retrying");
                    self.status.set(ConsumerState::Waiting { reason });
                    self.status.beat();
                    self.sleep(delays.next().unwrap_or(self.max)).await?;
                }
            }
        }
    }

    /// Waits the shortest delay (after a failure that is not worth a
    /// backoff of its own, so the loop does not spin on it).
    pub async fn pause(&self) -> Result<(), Stopped> {
        self.sleep(self.min).await
    }

    async fn sleep(&self, delay: Duration) -> Result<(), Stopped> {
        tokio::select! {
            () = self.shutdown.cancelled() => Err(Stopped),
            () = tokio::time::sleep(delay) => Ok(()),
        }
    }

    /// Whether shutdown was requested.
    pub fn stopping(&self) -> bool {
        self.shutdown.is_cancelled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failure_is_retried_and_reported_until_it_passes() {
        let status = ConsumerStatus::default();
        let retry = Retry::new(
            Duration::from_millis(1),
            Duration::from_millis(2),
            status.clone(),
            CancellationToken::new(),
        );
        let mut attempts = 0;
        let got = retry
            .run("reading", || {
                attempts += 1;
                let ok = attempts >= 3;
                async move {
                    if ok {
                        Ok(7)
                    } else {
                        Err(std::io::Error::other("down"))
                    }
                }
            })
            .await;
        assert_eq!(got, Ok(7));
        assert_eq!(attempts, 3);
        assert_eq!(
            status.get(),
            ConsumerState::Waiting {
                reason: "reading: down".into()
            }
        );
    }

    #[tokio::test]
    async fn shutdown_ends_the_wait() {
        let stop = CancellationToken::new();
        stop.cancel();
        let retry = Retry::new(
            Duration::from_secs(60),
            Duration::from_secs(60),
            ConsumerStatus::default(),
            stop,
        );
        let got: Result<(), Stopped> = retry
            .run("reading", || async { Err(std::io::Error::other("down")) })
            .await;
        assert_eq!(got, Err(Stopped));
    }
}
