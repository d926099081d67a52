//! `outbox tail`: follows the table live through the library's
//! [`outbox::Follow`] cursor.
//!
//! Each tick hands over the entries that arrived since the previous one and
//! the pending count, from one snapshot (on PostgreSQL an entry arrives
//! when its transaction commits, whatever its position; see `Follow` for
//! what holds on each database). What left the pending set since the last
//! tick is then `pending before + entries arrived since - pending now`:
//! published entries, and dead ones, net of requeued ones.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use outbox::Followed;
use serde_json::json;

use crate::Ctx;
use crate::db::Db;
use crate::error::{Failure, describe, describe_outbox};
use crate::out;

/// Completes on Ctrl-C or SIGTERM. The handlers are installed when this is
/// called, so a signal that arrives before the future is polled still counts.
pub(crate) fn stop_signal() -> Result<impl Future<Output = ()>, Failure> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())
            .map_err(|err| Failure::new(format!("cannot handle Ctrl-C: {err}")))?;
        let mut terminate = signal(SignalKind::terminate())
            .map_err(|err| Failure::new(format!("cannot handle SIGTERM: {err}")))?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

/// `outbox tail [--interval D]`.
pub(crate) async fn tail<DB: Db>(ctx: &Ctx<DB>, interval: Duration) -> Result<(), Failure> {
    let mut stop = pin!(stop_signal()?);
    let outbox = ctx.outbox().await?;
    let (pool, table) = (&ctx.pool, &ctx.table);
    let mut wakeups = match DB::wakeups(pool, table).await {
        Ok(wakeups) => wakeups,
        Err(err) => {
            tracing::warn!(target: "outbox_cli", error = %describe(&err), "LISTEN failed; polling only");
            None
        }
    };
    let mut follow = outbox.follow().await?;
    let (after, mut before) = (follow.started_after(), follow.pending_at_start());
    if ctx.json {
        out::json(
            &json!({ "type": "start", "table": table.name, "after": after, "pending": before }),
            false,
        )?;
    } else {
        out::line(format!(
            "following \"{}\" after position {after} ({before} pending); Ctrl-C to stop",
            table.name
        ))?;
    }
    let mut failing = false;
    loop {
        // An entry is printed as soon as it is read; a closed stdout stops.
        let mut shown: Result<(), Failure> = Ok(());
        let read = follow
            .next(|entry| {
                if shown.is_ok() {
                    shown = show_entry(ctx.json, &entry);
                }
            })
            .await;
        shown?;
        match read {
            Ok(tick) => {
                if failing {
                    tracing::warn!(target: "outbox_cli", "database reachable again");
                    failing = false;
                }
                let (arrived, pending) = (signed(tick.arrived), signed(tick.pending));
                show_left(ctx.json, signed(before) + arrived - pending, pending)?;
                before = tick.pending;
            }
            Err(err) => {
                if !failing {
                    tracing::warn!(target: "outbox_cli", error = %describe_outbox(&err), "reading the outbox failed; retrying");
                    failing = true;
                }
            }
        }
        let woken = async {
            match wakeups.as_mut() {
                Some(w) => w.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut stop => return Ok(()),
            () = tokio::time::sleep(interval) => {}
            ok = woken => if !ok { wakeups = None; },
        }
    }
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn show_entry(json: bool, e: &Followed) -> Result<(), Failure> {
    if json {
        return out::json(
            &json!({
                "type": "entry",
                "position": e.position,
                "name": e.name,
                "event_id": e.event_id,
                "stream_key": e.stream_key,
            }),
            false,
        );
    }
    let stream = e
        .stream_key
        .as_deref()
        .map_or_else(String::new, |key| format!("  stream={key}"));
    out::line(format!(
        "new   #{}  {}  {}{stream}",
        e.position, e.name, e.event_id
    ))
}

fn show_left(json: bool, left: i64, pending: i64) -> Result<(), Failure> {
    match left.cmp(&0) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Greater if json => out::json(
            &json!({ "type": "done", "count": left, "pending": pending }),
            false,
        ),
        std::cmp::Ordering::Greater => out::line(format!(
            "done  {left} left the pending set (published or dead); {pending} pending"
        )),
        std::cmp::Ordering::Less if json => out::json(
            &json!({ "type": "requeued", "count": -left, "pending": pending }),
            false,
        ),
        std::cmp::Ordering::Less => out::line(format!(
            "back  {} returned to the pending set (requeued); {pending} pending",
            -left
        )),
    }
}
