//! `outbox inbox migrate|status|dead ...`: the inbox table (the consuming
//! side) through `outbox::inbox::Inbox`; the same output, `--json` and exit
//! codes as the outbox's commands. The table defaults to `inbox`.
//!
//! Every command but `migrate` builds the inbox with `.migrate(false)` and
//! first checks that the table exists: a missing one is one error line,
//! `inbox table "NAME" does not exist (run "outbox inbox migrate")`, exit
//! code 1, and nothing is created.

use clap::Subcommand;
use outbox::DeadLetter;
use outbox::inbox::{Inbox, InboxStats};
use serde_json::{Value, json};

use crate::commands::{
    DeadWords, dead_json, list_dead, migrate_table, purge_dead, requeue_dead, show_dead,
};
use crate::db::{self, Db};
use crate::error::Failure;
use crate::out::{self, table};
use crate::{Ctx, ListArgs, PurgeArgs, RequeueArgs};

/// `outbox inbox ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum InboxCommand {
    /// Create the inbox table, or upgrade it to the current schema.
    Migrate,
    /// Processed, retrying, dead and requeued messages, in total and per event name.
    Status,
    /// List, show, requeue or purge the inbox's dead letters.
    #[command(subcommand)]
    Dead(InboxDeadCommand),
}

/// `outbox inbox dead ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum InboxDeadCommand {
    /// Dead letters, oldest first.
    List(ListArgs),
    /// One dead letter with its metadata, payload and reason.
    Show {
        /// The event id (a UUID).
        id: String,
    },
    /// Give dead letters back, attempts reset: a running consumer loop
    /// processes them again from the table.
    Requeue(RequeueArgs),
    /// Drop dead letters: the payload is deleted, the event id is kept as
    /// processed for the dedupe window (a redelivery is skipped).
    Purge(PurgeArgs),
}

/// Runs one `outbox inbox` command on `ctx.table`.
pub(crate) async fn run<DB: Db>(ctx: &Ctx<DB>, command: InboxCommand) -> Result<(), Failure> {
    let words = words(ctx);
    match command {
        InboxCommand::Migrate => {
            let migration = outbox::inbox::migrate(&ctx.pool, &ctx.table.name);
            migrate_table(ctx, "inbox table", migration).await
        }
        InboxCommand::Status => status(ctx).await,
        InboxCommand::Dead(InboxDeadCommand::List(args)) => {
            let name = args.name.as_deref();
            list_dead(ctx, open(ctx), &words, name, args.limit).await
        }
        InboxCommand::Dead(InboxDeadCommand::Show { id }) => {
            show_dead(ctx, open(ctx), &words, &id).await
        }
        InboxCommand::Dead(InboxDeadCommand::Requeue(args)) => {
            requeue_dead(ctx, open(ctx), &words, args.which.into(), args.yes).await
        }
        InboxCommand::Dead(InboxDeadCommand::Purge(args)) => {
            purge_dead(ctx, open(ctx), &words, args.which.into(), args.yes).await
        }
    }
}

/// What the inbox's `dead` commands say where the outbox's say otherwise.
fn words<DB: Db>(ctx: &Ctx<DB>) -> DeadWords {
    DeadWords {
        place: format!("inbox \"{}\"", ctx.table.name),
        created: "received at",
        to_json: inbox_json,
        requeued: " (attempts reset; a running consumer loop processes them from the table)",
        purged: " (ids kept as processed for the dedupe window)",
        purge_verb: "drop",
        purge_one: " (its payload is deleted)",
        purge_all: " (their payloads are deleted)",
        purge_older: " (their payloads are deleted)",
    }
}

/// The library's handle on the inbox table, which must exist (never migrates).
async fn open<DB: Db>(ctx: &Ctx<DB>) -> Result<Inbox<DB>, Failure> {
    db::require(&ctx.pool, &ctx.table, "inbox table", "outbox inbox migrate").await?;
    Ok(Inbox::builder(ctx.pool.clone())
        .table(&ctx.table.name)
        .migrate(false)
        .build()
        .await?)
}

/// `outbox inbox status`.
async fn status<DB: Db>(ctx: &Ctx<DB>) -> Result<(), Failure> {
    let stats = open(ctx).await?.stats().await?;
    if ctx.json {
        return out::json(&status_json(ctx, &stats), true);
    }
    let mut text = vec![
        format!("inbox \"{}\" at {}", ctx.table.name, ctx.url.shown),
        format!(
            "  processed  {} (ids kept for deduplication)",
            stats.processed
        ),
        format!("  retrying   {}", stats.retrying),
        format!("  dead       {}", stats.dead),
        format!(
            "  requeued   {} (waiting for a consumer loop)",
            stats.requeued
        ),
    ];
    if !stats.by_name.is_empty() {
        let rows: Vec<Vec<String>> = stats
            .by_name
            .iter()
            .map(|n| {
                vec![
                    n.name.clone(),
                    n.processed.to_string(),
                    n.retrying.to_string(),
                    n.dead.to_string(),
                    n.requeued.to_string(),
                ]
            })
            .collect();
        text.push(String::new());
        text.push(table(
            &["NAME", "PROCESSED", "RETRYING", "DEAD", "REQUEUED"],
            &rows,
            &[1, 2, 3, 4],
        ));
    }
    out::line(text.join("\n"))
}

fn status_json<DB: Db>(ctx: &Ctx<DB>, stats: &InboxStats) -> Value {
    let by_name: Vec<Value> = stats
        .by_name
        .iter()
        .map(|n| {
            json!({
                "name": n.name,
                "processed": n.processed,
                "retrying": n.retrying,
                "dead": n.dead,
                "requeued": n.requeued,
            })
        })
        .collect();
    json!({
        "table": ctx.table.name,
        "processed": stats.processed,
        "retrying": stats.retrying,
        "dead": stats.dead,
        "requeued": stats.requeued,
        "by_name": by_name,
    })
}

/// A dead letter as `outbox dead` prints it, with `received_at` (when the
/// inbox first stored the message) for `created_at`.
fn inbox_json(d: &DeadLetter) -> Value {
    let mut value = dead_json(d);
    if let Value::Object(map) = &mut value
        && let Some(received) = map.remove("created_at")
    {
        map.insert("received_at".to_owned(), received);
    }
    value
}
