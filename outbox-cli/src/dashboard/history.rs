//! The dashboard's chart series: sampled every `--sample-interval`, an
//! hour of samples kept in memory (a ring buffer; lost on restart).
//!
//! - pending: per table, from [`outbox::Outbox::gauges`] (the database's
//!   count at that moment);
//! - published per second: the increase of the sum of the
//!   `outbox_published_total` counters on the relays' `/metrics` pages
//!   (`--relay-metrics URL`) between two samples, over the time between
//!   them. A counter that went down (its relay restarted) counts from zero,
//!   as Prometheus' `rate()` does. A sample where a relay did not answer
//!   has no rate (a gap in the chart), never a guess; without
//!   `--relay-metrics` the dashboard has no source for it and says so.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::db::{Db, redact_url};
use crate::error::Failure;

/// How much history is kept.
const SPAN: Duration = Duration::from_hours(1);

/// The counter whose rate the chart shows.
const PUBLISHED: &str = "outbox_published_total";

/// One sample.
#[derive(Debug, Clone)]
struct Point {
    /// Milliseconds since the Unix epoch.
    at_ms: u64,
    /// Pending entries per table (in the order of `History::tables`);
    /// `None` where the database did not answer.
    pending: Vec<Option<u64>>,
    /// Entries published per second since the previous sample.
    published_per_second: Option<f64>,
}

/// The series and what is needed to extend them.
pub(super) struct History {
    interval: Duration,
    capacity: usize,
    tables: Vec<String>,
    relays: Vec<String>,
    client: reqwest::Client,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    points: VecDeque<Point>,
    /// The last counter value read from each relay, and when.
    last: Option<(Vec<f64>, std::time::Instant)>,
}

impl History {
    pub(super) fn new(
        interval: Duration,
        tables: Vec<String>,
        relays: Vec<String>,
    ) -> Result<Self, Failure> {
        let capacity = usize::try_from(SPAN.as_millis() / interval.as_millis().max(1))
            .unwrap_or(usize::MAX)
            .max(2);
        let client = reqwest::Client::builder()
            .timeout(interval.min(Duration::from_secs(5)))
            .build()
            .map_err(|err| Failure::new(format!("cannot build an HTTP client: {err}")))?;
        Ok(Self {
            interval,
            capacity,
            tables,
            relays,
            client,
            state: Mutex::new(State::default()),
        })
    }

    pub(super) fn interval(&self) -> Duration {
        self.interval
    }

    /// Where the published rate comes from, for the page and the API.
    pub(super) fn published_source(&self) -> Value {
        if self.relays.is_empty() {
            Value::Null
        } else {
            json!({
                "counter": PUBLISHED,
                "relays": self.relays.iter().map(|u| redact_url(u, true)).collect::<Vec<_>>(),
            })
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The series as `GET /api/history` returns them.
    pub(super) fn to_json(&self) -> Value {
        let state = self.lock();
        let points: Vec<Value> = state
            .points
            .iter()
            .map(|p| {
                let pending: serde_json::Map<String, Value> = self
                    .tables
                    .iter()
                    .zip(&p.pending)
                    .map(|(t, n)| (t.clone(), json!(n)))
                    .collect();
                json!({
                    "at_ms": p.at_ms,
                    "pending": pending,
                    "published_per_second": p.published_per_second,
                })
            })
            .collect();
        json!({
            "interval_seconds": self.interval.as_secs_f64(),
            "span_seconds": SPAN.as_secs(),
            "tables": self.tables,
            "published_source": self.published_source(),
            "points": points,
        })
    }

    /// The relays' counters, or `None` if one of them did not answer.
    async fn published_counters(&self) -> Option<Vec<f64>> {
        let mut values = Vec::with_capacity(self.relays.len());
        for url in &self.relays {
            let text = async {
                self.client
                    .get(url)
                    .send()
                    .await?
                    .error_for_status()?
                    .text()
                    .await
            };
            match text.await {
                Ok(text) => values.push(counter_sum(&text, PUBLISHED)),
                Err(err) => {
                    tracing::warn!(target: "outbox_cli", relay = %redact_url(url, true), error = %err, "relay metrics not read");
                    return None;
                }
            }
        }
        Some(values)
    }

    fn push(&self, pending: Vec<Option<u64>>, counters: Option<Vec<f64>>) {
        let now = std::time::Instant::now();
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut state = self.lock();
        let published_per_second = match (&counters, &state.last) {
            (Some(now_values), Some((before, then))) if now_values.len() == before.len() => {
                let increase: f64 = now_values
                    .iter()
                    .zip(before)
                    .map(|(n, b)| if n >= b { n - b } else { *n })
                    .sum();
                let elapsed = now.duration_since(*then).as_secs_f64();
                (elapsed > 0.0).then(|| increase / elapsed)
            }
            _ => None,
        };
        state.last = counters.map(|c| (c, now));
        state.points.push_back(Point {
            at_ms,
            pending,
            published_per_second,
        });
        while state.points.len() > self.capacity {
            state.points.pop_front();
        }
    }
}

/// The sum of every sample of the counter `name` in a Prometheus text
/// page (all its label sets); 0 when it has none yet (a counter appears
/// with its first increment).
fn counter_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            // `name{labels} value` or `name value`, not `name_other ...`.
            let rest = match rest.chars().next()? {
                '{' => &rest[rest.rfind('}')? + 1..],
                ' ' | '\t' => rest,
                _ => return None,
            };
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// Samples forever (the dashboard aborts the task when it stops).
pub(super) async fn sample<DB: Db>(
    history: std::sync::Arc<History>,
    tables: Vec<outbox::Outbox<DB>>,
) {
    let mut ticks = tokio::time::interval(history.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let mut pending = Vec::with_capacity(tables.len());
        for outbox in &tables {
            pending.push(match outbox.gauges().await {
                Ok(gauges) => Some(gauges.pending),
                Err(err) => {
                    tracing::warn!(target: "outbox_cli", table = %outbox.table(), error = %err, "dashboard sample failed");
                    None
                }
            });
        }
        let counters = if history.relays.is_empty() {
            None
        } else {
            history.published_counters().await
        };
        history.push(pending, counters);
    }
}

#[cfg(test)]
mod tests {
    use super::counter_sum;

    #[test]
    fn sums_every_label_set_of_one_counter_only() {
        let text = "# TYPE outbox_published_total counter\n\
                    outbox_published_total{event=\"a\"} 3\n\
                    outbox_published_total{event=\"b,}\"} 4.5\n\
                    outbox_published_total_other 100\n\
                    outbox_failed_total{event=\"a\"} 7\n";
        assert!((counter_sum(text, "outbox_published_total") - 7.5).abs() < 1e-9);
        assert!(counter_sum("", "outbox_published_total").abs() < 1e-9);
    }
}
