//! Per-publisher health: which failures belong to the destination, and the
//! pause of a blocked publisher.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

/// Distinct entries failing transiently in a row, with nothing delivered in
/// between, after which the destination is presumed down.
pub(crate) const STREAK: usize = 3;

/// How often a blocked publisher is logged (and its row refreshed) again.
const REMIND_EVERY: Duration = Duration::from_secs(10);

/// The first pause of a blocked publisher; it doubles up to the maximum.
const FIRST_PAUSE: Duration = Duration::from_millis(100);

/// A publisher that is blocked: its destination is down, unreachable or
/// misconfigured. Listed by [`Publishers::blocked`](crate::Publishers::blocked)
/// in the relay's process and by [`Outbox::stats`](crate::Outbox::stats)
/// (from the table `<table>_blocked`) everywhere else.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Blocked {
    /// Which publisher: the event name it serves, or `*` for the catch-all.
    pub publisher: String,
    /// Since when it is blocked.
    pub since: DateTime<Utc>,
    /// The destination's last error.
    pub reason: String,
    /// When a relay last confirmed it (refreshed about every 10 s while the
    /// relay keeps failing; a relay that stopped leaves it to grow old).
    pub seen_at: DateTime<Utc>,
}

/// What the relay does with one group's failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Judgement {
    /// Transient failures belong to the destination: no attempt.
    pub(crate) destination: bool,
    /// Entries given back wait this long (the publisher's pause).
    pub(crate) pause: Duration,
}

#[derive(Debug, Default)]
struct State {
    /// Positions that failed transiently in a row, nothing delivered since.
    streak: Vec<i64>,
    blocked: Option<Block>,
    /// The blocked row must be written (`Some`) or deleted (`None`).
    dirty: bool,
}

#[derive(Debug)]
struct Block {
    info: Blocked,
    pause: Duration,
    until: Instant,
    reminded: Instant,
}

/// The health of one publisher (one event name, or the catch-all).
#[derive(Debug)]
pub(crate) struct Health {
    label: String,
    state: Mutex<State>,
}

impl Health {
    pub(crate) fn new(label: String) -> Self {
        Self {
            label,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain data behind: go on.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How much longer the publisher is paused, if it is.
    pub(crate) fn paused_for(&self, now: Instant) -> Option<Duration> {
        let state = self.lock();
        let block = state.blocked.as_ref()?;
        (block.until > now).then(|| block.until - now)
    }

    /// Judges one dispatch: `answered` entries the destination answered
    /// (delivered or refused), the positions that failed transiently, and the
    /// first destination-scope error, if any.
    pub(crate) fn judge(
        &self,
        answered: usize,
        transient: &[(i64, &str)],
        unavailable: Option<&str>,
        max_pause: Duration,
    ) -> Judgement {
        let now = Instant::now();
        let mut state = self.lock();
        if answered > 0 {
            state.streak.clear();
        }
        // An answer unblocks, unless the same dispatch also found the
        // destination failing (one bad route of several): then the block
        // stays, with its first `since`, instead of flapping.
        if answered > 0
            && unavailable.is_none()
            && let Some(block) = state.blocked.take()
        {
            tracing::info!(
                publisher = %self.label,
                blocked_since = %block.info.since,
                "publisher resumed: its destination answers again"
            );
            metrics::gauge!("outbox_publisher_blocked", "publisher" => self.label.clone()).set(0.0);
            state.dirty = true;
        }
        let reason = match (unavailable, transient.first()) {
            (Some(reason), _) => reason,
            // The destination answered: a transient failure is this event's.
            (None, _) if answered > 0 => {
                return Judgement {
                    destination: false,
                    pause: Duration::ZERO,
                };
            }
            (None, Some((_, reason))) => {
                for (position, _) in transient {
                    if !state.streak.contains(position) {
                        state.streak.push(*position);
                    }
                }
                if state.blocked.is_none() && state.streak.len() < STREAK {
                    return Judgement {
                        destination: false,
                        pause: Duration::ZERO,
                    };
                }
                reason
            }
            (None, None) => {
                return Judgement {
                    destination: false,
                    pause: state.blocked.as_ref().map_or(Duration::ZERO, |b| b.pause),
                };
            }
        };
        let pause = self.block(&mut state, reason, now, max_pause);
        Judgement {
            destination: true,
            pause,
        }
    }

    /// Marks the publisher blocked (or still blocked) and doubles its pause.
    fn block(
        &self,
        state: &mut State,
        reason: &str,
        now: Instant,
        max_pause: Duration,
    ) -> Duration {
        if let Some(block) = &mut state.blocked {
            block.pause = block.pause.saturating_mul(2).min(max_pause);
            block.until = now + block.pause;
            reason.clone_into(&mut block.info.reason);
            if now >= block.reminded + REMIND_EVERY {
                block.reminded = now;
                block.info.seen_at = Utc::now();
                state.dirty = true;
                tracing::error!(
                    publisher = %self.label,
                    blocked_since = %block.info.since,
                    retry_in = ?block.pause,
                    reason = %reason,
                    "publisher still blocked: its destination is down or misconfigured; no attempts are counted"
                );
            }
            return block.pause;
        }
        let pause = FIRST_PAUSE.min(max_pause);
        let at = Utc::now();
        tracing::error!(
            publisher = %self.label,
            retry_in = ?pause,
            reason = %reason,
            "publisher blocked: its destination is down or misconfigured; entries wait, no attempts are counted"
        );
        metrics::gauge!("outbox_publisher_blocked", "publisher" => self.label.clone()).set(1.0);
        state.blocked = Some(Block {
            info: Blocked {
                publisher: self.label.clone(),
                since: at,
                reason: reason.to_owned(),
                seen_at: at,
            },
            pause,
            until: now + pause,
            reminded: now,
        });
        state.dirty = true;
        pause
    }

    /// This publisher's block, if it is blocked.
    pub(crate) fn blocked(&self) -> Option<Blocked> {
        self.lock().blocked.as_ref().map(|b| b.info.clone())
    }

    /// The change to persist since the last call: `Some(Ok(row))` to write,
    /// `Some(Err(label))` to delete, `None` if nothing changed.
    pub(crate) fn take_change(&self) -> Option<Result<Blocked, String>> {
        let mut state = self.lock();
        if !std::mem::take(&mut state.dirty) {
            return None;
        }
        Some(
            state
                .blocked
                .as_ref()
                .map(|b| b.info.clone())
                .ok_or_else(|| self.label.clone()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(30);

    #[test]
    fn one_entry_failing_alone_is_the_events() {
        let health = Health::new("e".into());
        for _ in 0..10 {
            let j = health.judge(0, &[(7, "500")], None, MAX);
            assert!(!j.destination);
        }
        assert!(health.blocked().is_none());
    }

    #[test]
    fn three_distinct_entries_in_a_row_block_until_a_delivery() {
        let health = Health::new("e".into());
        assert!(!health.judge(0, &[(1, "500")], None, MAX).destination);
        assert!(!health.judge(0, &[(2, "500")], None, MAX).destination);
        let j = health.judge(0, &[(3, "500")], None, MAX);
        assert!(j.destination);
        assert_eq!(j.pause, FIRST_PAUSE);
        assert!(health.paused_for(Instant::now()).is_some());
        // Blocked: even one entry failing alone is the destination's now.
        let j = health.judge(0, &[(1, "500")], None, MAX);
        assert!(j.destination);
        assert_eq!(j.pause, FIRST_PAUSE * 2);
        assert!(matches!(health.take_change(), Some(Ok(b)) if b.reason == "500"));
        assert!(health.take_change().is_none());
        // A delivery unblocks; a failure next to it is the event's.
        let j = health.judge(2, &[(1, "500")], None, MAX);
        assert!(!j.destination);
        assert!(health.blocked().is_none());
        assert_eq!(health.take_change(), Some(Err("e".into())));
    }

    #[test]
    fn unavailable_blocks_at_once_and_the_pause_doubles_to_the_max() {
        let health = Health::new("*".into());
        let mut pauses = Vec::new();
        for _ in 0..12 {
            let j = health.judge(0, &[], Some("connection refused"), MAX);
            assert!(j.destination);
            pauses.push(j.pause.as_millis());
        }
        assert_eq!(&pauses[..4], &[100, 200, 400, 800]);
        assert_eq!(*pauses.last().unwrap(), 30_000);
        assert_eq!(health.blocked().unwrap().publisher, "*");
    }

    /// The error log and the `<table>_blocked` row of a blocked publisher
    /// are renewed every 10 s, not at every failed probe.
    #[tokio::test(start_paused = true)]
    async fn a_blocked_publisher_is_reported_again_every_ten_seconds() {
        let health = Health::new("e".into());
        health.judge(0, &[], Some("down"), MAX);
        assert!(
            matches!(health.take_change(), Some(Ok(_))),
            "reported when it blocks"
        );
        tokio::time::advance(Duration::from_secs(9)).await;
        health.judge(0, &[], Some("down"), MAX);
        assert!(health.take_change().is_none(), "not again within 10 s");
        tokio::time::advance(Duration::from_secs(2)).await;
        health.judge(0, &[], Some("down"), MAX);
        assert!(
            matches!(health.take_change(), Some(Ok(_))),
            "again after 10 s"
        );
    }

    #[test]
    fn answers_next_to_an_outage_keep_the_block_and_its_since() {
        let health = Health::new("e".into());
        health.judge(0, &[], Some("WRONGTYPE on key b"), MAX);
        let since = health.blocked().unwrap().since;
        for _ in 0..3 {
            let j = health.judge(5, &[], Some("WRONGTYPE on key b"), MAX);
            assert!(j.destination);
        }
        assert_eq!(health.blocked().unwrap().since, since, "no flapping");
        health.judge(5, &[], None, MAX);
        assert!(health.blocked().is_none());
    }

    #[test]
    fn an_answer_from_the_destination_makes_transient_failures_the_events() {
        let health = Health::new("e".into());
        for p in 0..10 {
            // One rejection answered in the same dispatch: the destination works.
            assert!(!health.judge(1, &[(p, "500")], None, MAX).destination);
        }
    }
}
