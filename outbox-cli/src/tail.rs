//! `outbox tail`: follows the table live with plain SQL on the table
//! contract.
//!
//! Each tick reads, from one consistent snapshot, the entries after the
//! last position seen (`id > last`, an index range) and the pending count
//! (a partial index on PostgreSQL and SQLite, `(status, id)` on MySQL); it
//! never scans the whole table. What left the pending set since the last
//! tick is then `pending before + entries new since - pending now`:
//! published entries, and dead ones, net of requeued ones.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use serde_json::json;

use crate::Ctx;
use crate::commands;
use crate::db::{Db, NewEntry, Snapshot};
use crate::error::{Failure, describe};
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
    commands::require(ctx).await?;
    let (pool, table) = (&ctx.pool, &ctx.table);
    let mut wakeups = match DB::wakeups(pool, table).await {
        Ok(wakeups) => wakeups,
        Err(err) => {
            tracing::warn!(target: "outbox_cli", error = %describe(&err), "LISTEN failed; polling only");
            None
        }
    };
    let mut last = DB::last_position(pool, table).await?;
    let mut snapshot = DB::snapshot(pool, table, last).await?;
    if ctx.json {
        out::json(
            &json!({ "type": "start", "table": table.name, "after": last, "pending": snapshot.pending }),
            false,
        )?;
    } else {
        out::line(format!(
            "following \"{}\" after position {last} ({} pending); Ctrl-C to stop",
            table.name, snapshot.pending
        ))?;
    }
    // Pending at the last complete snapshot, and entries seen since it.
    let mut baseline: Option<i64> = None;
    let mut entered: i64 = 0;
    let mut failing = false;
    loop {
        for entry in &snapshot.entries {
            show_entry(ctx.json, entry)?;
            last = entry.position;
        }
        entered += i64::try_from(snapshot.entries.len()).unwrap_or(i64::MAX);
        if snapshot.complete {
            if let Some(before) = baseline {
                show_left(
                    ctx.json,
                    before + entered - snapshot.pending,
                    snapshot.pending,
                )?;
            }
            baseline = Some(snapshot.pending);
            entered = 0;
        }
        // A cut snapshot (a burst of inserts) is followed at once by the rest.
        if snapshot.complete || failing {
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
        snapshot = match DB::snapshot(pool, table, last).await {
            Ok(snapshot) => {
                if failing {
                    tracing::warn!(target: "outbox_cli", "database reachable again");
                    failing = false;
                }
                snapshot
            }
            Err(err) => {
                if !failing {
                    tracing::warn!(target: "outbox_cli", error = %describe(&err), "reading the outbox failed; retrying");
                    failing = true;
                }
                Snapshot::default()
            }
        };
        if failing {
            // Nothing was read: keep the accounting as it was.
            snapshot.complete = false;
        }
    }
}

fn show_entry(json: bool, e: &NewEntry) -> Result<(), Failure> {
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
