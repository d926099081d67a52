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

use crate::commands::{dead_json, done, parse_id, print_dead, print_dead_list};
use crate::db::Db;
use crate::error::Failure;
use crate::out::{self, confirm, plural, table};
use crate::{Ctx, PurgeArgs, RequeueArgs};

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
    List {
        /// Only dead letters with this event name.
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// At most this many.
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: usize,
    },
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
    match command {
        InboxCommand::Migrate => migrate(ctx).await,
        InboxCommand::Status => status(ctx).await,
        InboxCommand::Dead(InboxDeadCommand::List { name, limit }) => {
            let inbox = open(ctx).await?;
            let dead = match name.as_deref() {
                Some(name) => inbox.dead_letters_named(name, limit).await?,
                None => inbox.dead_letters(limit).await?,
            };
            print_dead_list(ctx, &dead, name.as_deref(), limit, inbox_json)
        }
        InboxCommand::Dead(InboxDeadCommand::Show { id }) => {
            let id = parse_id(&id)?;
            let inbox = open(ctx).await?;
            let d = find(&inbox, ctx, id).await?;
            if ctx.json {
                return out::json(&inbox_json(&d), true);
            }
            print_dead(&d, "received at")
        }
        InboxCommand::Dead(InboxDeadCommand::Requeue(args)) => {
            let which = match (args.which.id, args.which.name) {
                (Some(id), _) => Which::One(id),
                (None, Some(name)) => Which::Name(name),
                (None, None) => Which::All,
            };
            requeue(ctx, which, args.yes).await
        }
        InboxCommand::Dead(InboxDeadCommand::Purge(args)) => {
            purge(ctx, args.which.id, args.which.older_than, args.yes).await
        }
    }
}

/// The library's handle on the inbox table, which must exist (never migrates).
async fn open<DB: Db>(ctx: &Ctx<DB>) -> Result<Inbox<DB>, Failure> {
    if !DB::table_exists(&ctx.pool, &ctx.table).await? {
        return Err(Failure::new(format!(
            "inbox table \"{}\" does not exist (run \"outbox inbox migrate\")",
            ctx.table.name
        )));
    }
    Ok(Inbox::builder(ctx.pool.clone())
        .table(&ctx.table.name)
        .migrate(false)
        .build()
        .await?)
}

/// `outbox inbox migrate`: creates or upgrades the inbox table.
async fn migrate<DB: Db>(ctx: &Ctx<DB>) -> Result<(), Failure> {
    let existed = DB::table_exists(&ctx.pool, &ctx.table).await?;
    let before = DB::schema_version(&ctx.pool, &ctx.table).await?;
    outbox::inbox::migrate(&ctx.pool, &ctx.table.name).await?;
    let after = DB::schema_version(&ctx.pool, &ctx.table).await?;
    let version = after.unwrap_or_default();
    if ctx.json {
        return out::json(
            &json!({
                "table": ctx.table.name,
                "database": DB::LABEL,
                "created": !existed,
                "upgraded": existed && before != after,
                "schema_version": version,
            }),
            true,
        );
    }
    let what = if !existed {
        "created"
    } else if before == after {
        "already up to date"
    } else {
        "upgraded"
    };
    out::line(format!(
        "inbox table \"{}\" {what} (schema version {version}) in {}",
        ctx.table.name, ctx.url.shown
    ))
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

async fn find<DB: Db>(
    inbox: &Inbox<DB>,
    ctx: &Ctx<DB>,
    id: uuid::Uuid,
) -> Result<DeadLetter, Failure> {
    inbox.dead_letter(id).await?.ok_or_else(|| {
        Failure::new(format!(
            "no dead letter with event id {id} in inbox \"{}\"",
            ctx.table.name
        ))
    })
}

/// Which dead letters `requeue` acts on.
enum Which {
    One(String),
    All,
    Name(String),
}

/// `outbox inbox dead requeue (ID | --all | --name NAME) [--yes]`.
async fn requeue<DB: Db>(ctx: &Ctx<DB>, which: Which, yes: bool) -> Result<(), Failure> {
    let t = &ctx.table.name;
    let n = match which {
        Which::One(id) => {
            let id = parse_id(&id)?;
            let inbox = open(ctx).await?;
            if !inbox.requeue(id).await? {
                return Err(Failure::new(format!(
                    "no dead letter with event id {id} in inbox \"{t}\""
                )));
            }
            1
        }
        Which::All => {
            let inbox = open(ctx).await?;
            let dead = inbox.stats().await?.dead;
            if dead == 0 {
                let text = format!("no dead letters in inbox \"{t}\"");
                return done(ctx.json, "requeued", 0, text);
            }
            let what = plural(dead, "dead letter", "dead letters");
            confirm(&format!("requeue {what} of inbox \"{t}\""), yes)?;
            inbox.requeue_all().await?
        }
        Which::Name(name) => {
            let inbox = open(ctx).await?;
            let dead = inbox
                .stats()
                .await?
                .by_name
                .iter()
                .find(|n| n.name == name)
                .map_or(0, |n| n.dead);
            if dead == 0 {
                let text = format!("no dead letters named \"{name}\" in inbox \"{t}\"");
                return done(ctx.json, "requeued", 0, text);
            }
            let what = plural(dead, "dead letter", "dead letters");
            confirm(
                &format!("requeue {what} named \"{name}\" of inbox \"{t}\""),
                yes,
            )?;
            inbox.requeue_named(&name).await?
        }
    };
    done(
        ctx.json,
        "requeued",
        n,
        format!(
            "requeued {} (attempts reset; a running consumer loop processes them from the table)",
            plural(n, "dead letter", "dead letters")
        ),
    )
}

/// `outbox inbox dead purge (ID | --older-than D) [--yes]`.
async fn purge<DB: Db>(
    ctx: &Ctx<DB>,
    id: Option<String>,
    older_than: Option<std::time::Duration>,
    yes: bool,
) -> Result<(), Failure> {
    let t = &ctx.table.name;
    let n = if let Some(id) = id {
        let id = parse_id(&id)?;
        let inbox = open(ctx).await?;
        let d = find(&inbox, ctx, id).await?;
        confirm(
            &format!(
                "drop dead letter {id} ({}) of inbox \"{t}\" (its payload is deleted)",
                d.name
            ),
            yes,
        )?;
        if !inbox.purge(id).await? {
            return Err(Failure::new(format!(
                "no dead letter with event id {id} in inbox \"{t}\""
            )));
        }
        1
    } else {
        let age = older_than.unwrap_or_default();
        let inbox = open(ctx).await?;
        let what = if age.is_zero() {
            format!("drop every dead letter of inbox \"{t}\" (their payloads are deleted)")
        } else {
            format!(
                "drop the dead letters of inbox \"{t}\" that died more than {} ago \
                 (their payloads are deleted)",
                crate::duration::human(age)
            )
        };
        confirm(&what, yes)?;
        inbox.purge_dead_for(age).await?
    };
    done(
        ctx.json,
        "purged",
        n,
        format!(
            "purged {} (ids kept as processed for the dedupe window)",
            plural(n, "dead letter", "dead letters")
        ),
    )
}
