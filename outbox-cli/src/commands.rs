//! `migrate`, `status`, `dead ...` and `discard`: one-shot commands over the
//! library's administrative calls.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use outbox::{DeadLetter, Stats};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::Ctx;
use crate::db::{self, Db};
use crate::duration::human;
use crate::error::Failure;
use crate::out::{self, clip, confirm, plural, table};

/// `outbox migrate`: creates or upgrades the table.
pub(crate) async fn migrate<DB: Db>(ctx: &Ctx<DB>) -> Result<(), Failure> {
    migrate_table(ctx, "table", outbox::migrate(&ctx.pool, &ctx.table.name)).await
}

/// Runs `migration` (not started yet) on `ctx.table` and says what it did
/// to the `label` (`table`, `inbox table`): created, upgraded or nothing.
pub(crate) async fn migrate_table<DB: Db>(
    ctx: &Ctx<DB>,
    label: &str,
    migration: impl Future<Output = outbox::Result<()>>,
) -> Result<(), Failure> {
    let existed = DB::table_exists(&ctx.pool, &ctx.table).await?;
    let before = DB::schema_version(&ctx.pool, &ctx.table).await?;
    migration.await?;
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
        "{label} \"{}\" {what} (schema version {version}) in {}",
        ctx.table.name, ctx.url.shown
    ))
}

pub(crate) fn secs(d: Option<Duration>) -> Value {
    d.map_or(Value::Null, |d| json!(d.as_secs_f64()))
}

/// A blocked row whose relay has not confirmed it for this long may be
/// left over from a relay that stopped: shown as stale, not unhealthy. (A
/// relay refreshes the row about every 10 s while the destination keeps
/// failing.)
const BLOCKED_STALE_AFTER: Duration = Duration::from_mins(1);

/// How long ago `t` was (zero if it is in the future).
fn age_of(t: DateTime<Utc>) -> Duration {
    (Utc::now() - t).to_std().unwrap_or_default()
}

/// Whether no relay has confirmed `blocked` for over a minute.
fn is_stale(blocked: &outbox::publisher::Blocked) -> bool {
    age_of(blocked.seen_at) > BLOCKED_STALE_AFTER
}

/// `outbox status [--max-age D]`.
pub(crate) async fn status<DB: Db>(
    ctx: &Ctx<DB>,
    max_age: Option<Duration>,
) -> Result<(), Failure> {
    let outbox = ctx.outbox().await?;
    let stats = outbox.stats().await?;
    let oldest = stats.oldest_pending_age;
    let too_old = match (max_age, oldest) {
        (Some(max), Some(age)) => (age > max).then_some((age, max)),
        _ => None,
    };
    let blocked: Vec<&outbox::publisher::Blocked> =
        stats.blocked.iter().filter(|b| !is_stale(b)).collect();
    let healthy = too_old.is_none() && blocked.is_empty();
    if ctx.json {
        status_json(ctx, &stats, max_age, healthy)?;
    } else {
        status_human(ctx, &stats, max_age, too_old.is_none())?;
    }
    let mut problems = Vec::new();
    if let Some((age, max)) = too_old {
        problems.push(format!(
            "the oldest pending entry of \"{}\" is {} old, over --max-age {}",
            ctx.table.name,
            human(age),
            human(max)
        ));
    }
    for b in blocked {
        problems.push(format!(
            "publisher \"{}\" of \"{}\" is blocked since {} ago: {}",
            b.publisher,
            ctx.table.name,
            human(age_of(b.since)),
            clip(&b.reason, 200)
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failure::unhealthy(format!(
            "unhealthy: {}",
            problems.join("; ")
        )))
    }
}

fn status_json<DB: Db>(
    ctx: &Ctx<DB>,
    stats: &Stats,
    max_age: Option<Duration>,
    healthy: bool,
) -> Result<(), Failure> {
    out::json(
        &json!({
            "table": ctx.table.name,
            "pending": stats.pending,
            "retrying": stats.retrying,
            "dead": stats.dead,
            "published": stats.published,
            "oldest_pending_age_seconds": secs(stats.oldest_pending_age),
            "max_age_seconds": secs(max_age),
            "healthy": healthy,
            "blocked": blocked_json(stats),
            "by_name": by_name_json(stats),
        }),
        true,
    )
}

/// The per-name rows of `stats` as `status --json` and the dashboard's
/// API show them.
pub(crate) fn by_name_json(stats: &Stats) -> Vec<Value> {
    stats
        .by_name
        .iter()
        .map(|n| {
            json!({
                "name": n.name,
                "pending": n.pending,
                "retrying": n.retrying,
                "dead": n.dead,
                "published": n.published,
                "oldest_pending_age_seconds": secs(n.oldest_pending_age),
                "versions": versions_json(&n.versions),
            })
        })
        .collect()
}

/// A name's versions and their entry counts, ascending:
/// `[{"version": 1, "entries": 3}, ..]`.
fn versions_json(versions: &[(u32, u64)]) -> Vec<Value> {
    versions
        .iter()
        .map(|(version, entries)| json!({ "version": version, "entries": entries }))
        .collect()
}

/// A name's versions and their entry counts as `status` prints them:
/// `v1:3 v2:9`, `-` for none.
fn versions_text(versions: &[(u32, u64)]) -> String {
    if versions.is_empty() {
        return "-".to_owned();
    }
    versions
        .iter()
        .map(|(version, entries)| format!("v{version}:{entries}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The blocked publishers of `stats` as `status --json` and the
/// dashboard's API show them.
pub(crate) fn blocked_json(stats: &Stats) -> Vec<Value> {
    stats
        .blocked
        .iter()
        .map(|b| {
            json!({
                "publisher": b.publisher,
                "since": time(b.since),
                "blocked_for_seconds": age_of(b.since).as_secs_f64(),
                "reason": b.reason,
                "seen_at": time(b.seen_at),
                "stale": is_stale(b),
            })
        })
        .collect()
}

/// One line per blocked publisher: `blocked since <time> (<age> ago): <reason>`.
fn blocked_line(b: &outbox::publisher::Blocked) -> String {
    let stale = if is_stale(b) {
        format!(
            " [stale: no relay has confirmed it for {}]",
            human(age_of(b.seen_at))
        )
    } else {
        String::new()
    };
    format!(
        "  blocked    {}: blocked since {} ({} ago): {}{stale}",
        b.publisher,
        time(b.since),
        human(age_of(b.since)),
        crate::error::one_line(&b.reason)
    )
}

fn status_human<DB: Db>(
    ctx: &Ctx<DB>,
    stats: &Stats,
    max_age: Option<Duration>,
    young_enough: bool,
) -> Result<(), Failure> {
    let oldest = stats.oldest_pending_age;
    let mut text = vec![format!(
        "outbox \"{}\" at {}",
        ctx.table.name, ctx.url.shown
    )];
    let oldest_text = oldest.map_or_else(String::new, |age| format!(", oldest {}", human(age)));
    text.push(format!(
        "  pending    {} ({} retrying){oldest_text}",
        stats.pending, stats.retrying
    ));
    text.push(format!("  dead       {}", stats.dead));
    if stats.published > 0 {
        text.push(format!("  published  {} (kept)", stats.published));
    }
    text.extend(stats.blocked.iter().map(blocked_line));
    if let Some(max) = max_age {
        let verdict = match (young_enough, oldest) {
            (_, None) => "ok: nothing pending".to_owned(),
            (true, Some(age)) => format!("ok: oldest pending {} <= {}", human(age), human(max)),
            (false, Some(age)) => {
                format!("FAILING: oldest pending {} > {}", human(age), human(max))
            }
        };
        text.push(format!("  health     {verdict}"));
    }
    if !stats.by_name.is_empty() {
        let kept = stats.published > 0;
        let mut headers = vec!["NAME", "PENDING", "RETRYING", "DEAD"];
        if kept {
            headers.push("PUBLISHED");
        }
        headers.extend(["OLDEST PENDING", "VERSIONS"]);
        let rows: Vec<Vec<String>> = stats
            .by_name
            .iter()
            .map(|n| {
                let mut row = vec![
                    n.name.clone(),
                    n.pending.to_string(),
                    n.retrying.to_string(),
                    n.dead.to_string(),
                ];
                if kept {
                    row.push(n.published.to_string());
                }
                row.push(n.oldest_pending_age.map_or_else(|| "-".to_owned(), human));
                row.push(versions_text(&n.versions));
                row
            })
            .collect();
        // The counts and the age right-aligned; the versions as written.
        let right: Vec<usize> = (1..headers.len() - 1).collect();
        text.push(String::new());
        text.push(table(&headers, &rows, &right));
    }
    out::line(text.join("\n"))
}

pub(crate) fn parse_id(id: &str) -> Result<Uuid, Failure> {
    Uuid::parse_str(id.trim()).map_err(|_| {
        Failure::new(format!(
            "invalid event id {id:?}: not a UUID (e.g. 0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d)"
        ))
    })
}

pub(crate) fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub(crate) fn ago(t: DateTime<Utc>) -> String {
    (Utc::now() - t)
        .to_std()
        .map_or_else(|_| "just now".to_owned(), human)
}

fn payload_value(payload: &str) -> Value {
    serde_json::from_str(payload).unwrap_or_else(|_| Value::String(payload.to_owned()))
}

pub(crate) fn dead_json(d: &DeadLetter) -> Value {
    json!({
        "position": d.position,
        "event_id": d.event_id.to_string(),
        "name": d.name,
        "version": d.version,
        "stream_key": d.stream_key,
        "headers": d.headers,
        "headers_error": d.headers_error,
        "correlation_id": d.correlation_id.map(|id| id.to_string()),
        "causation_id": d.causation_id.map(|id| id.to_string()),
        "attempts": d.attempts,
        "reason": d.reason,
        "created_at": time(d.created_at),
        "dead_since": time(d.dead_since),
        "payload": payload_value(&d.payload),
    })
}

/// The dead-letter calls of the library's handles on a table, the
/// outbox's and the inbox's alike, for the `dead` commands both have.
pub(crate) trait DeadLetters {
    /// The oldest `limit` dead letters, all or those named `name`.
    async fn list(&self, name: Option<&str>, limit: usize) -> outbox::Result<Vec<DeadLetter>>;
    /// The dead letter with event id `id`.
    async fn one(&self, id: Uuid) -> outbox::Result<Option<DeadLetter>>;
    /// How many dead letters there are, all or those named `name`.
    async fn count(&self, name: Option<&str>) -> outbox::Result<u64>;
    /// Requeues the dead letter `id`; false if there is none.
    async fn requeue_one(&self, id: Uuid) -> outbox::Result<bool>;
    /// Requeues the dead letters, all or those named `name`.
    async fn requeue_many(&self, name: Option<&str>) -> outbox::Result<u64>;
    /// Purges the dead letter `id`; false if there is none.
    async fn purge_one(&self, id: Uuid) -> outbox::Result<bool>;
    /// Purges the dead letters that died more than `age` ago.
    async fn purge_older(&self, age: Duration) -> outbox::Result<u64>;
}

/// [`DeadLetters`] for a handle with the library's dead-letter methods.
macro_rules! dead_letters {
    ($handle:ty) => {
        impl<DB: Db> DeadLetters for $handle {
            async fn list(
                &self,
                name: Option<&str>,
                limit: usize,
            ) -> outbox::Result<Vec<DeadLetter>> {
                match name {
                    Some(name) => self.dead_letters_named(name, limit).await,
                    None => self.dead_letters(limit).await,
                }
            }

            async fn one(&self, id: Uuid) -> outbox::Result<Option<DeadLetter>> {
                self.dead_letter(id).await
            }

            async fn count(&self, name: Option<&str>) -> outbox::Result<u64> {
                let stats = self.stats().await?;
                Ok(match name {
                    Some(name) => stats
                        .by_name
                        .iter()
                        .find(|n| n.name == name)
                        .map_or(0, |n| n.dead),
                    None => stats.dead,
                })
            }

            async fn requeue_one(&self, id: Uuid) -> outbox::Result<bool> {
                self.requeue(id).await
            }

            async fn requeue_many(&self, name: Option<&str>) -> outbox::Result<u64> {
                match name {
                    Some(name) => self.requeue_named(name).await,
                    None => self.requeue_all().await,
                }
            }

            async fn purge_one(&self, id: Uuid) -> outbox::Result<bool> {
                self.purge(id).await
            }

            async fn purge_older(&self, age: Duration) -> outbox::Result<u64> {
                self.purge_dead_for(age).await
            }
        }
    };
}

dead_letters!(outbox::Outbox<DB>);
dead_letters!(outbox::inbox::Inbox<DB>);

/// What the `dead` commands of the outbox and of the inbox say differently.
pub(crate) struct DeadWords {
    /// How a message names the table: `"orders"`, `inbox "orders"`.
    pub(crate) place: String,
    /// The label of `created_at` in `dead show`.
    pub(crate) created: &'static str,
    /// A dead letter as `--json` prints it.
    pub(crate) to_json: fn(&DeadLetter) -> Value,
    /// After `requeued N dead letters`.
    pub(crate) requeued: &'static str,
    /// After `purged N dead letters`.
    pub(crate) purged: &'static str,
    /// The verb of a purge question (`delete`, `drop`).
    pub(crate) purge_verb: &'static str,
    /// The end of the purge question for one dead letter, for all of them,
    /// and for those older than an age.
    pub(crate) purge_one: &'static str,
    pub(crate) purge_all: &'static str,
    pub(crate) purge_older: &'static str,
}

/// The outbox's words.
fn outbox_words<DB: Db>(ctx: &Ctx<DB>) -> DeadWords {
    DeadWords {
        place: format!("\"{}\"", ctx.table.name),
        created: "created at",
        to_json: dead_json,
        requeued: " (pending again, attempts reset)",
        purged: "",
        purge_verb: "delete",
        purge_one: " for good",
        purge_all: " for good",
        purge_older: ", for good",
    }
}

/// `outbox dead list [--name N] [--limit N]`.
pub(crate) async fn dead_list<DB: Db>(
    ctx: &Ctx<DB>,
    name: Option<&str>,
    limit: usize,
) -> Result<(), Failure> {
    list_dead(ctx, ctx.outbox(), &outbox_words(ctx), name, limit).await
}

/// `dead list` on the handle `open` makes.
pub(crate) async fn list_dead<DB: Db, H: DeadLetters>(
    ctx: &Ctx<DB>,
    open: impl Future<Output = Result<H, Failure>>,
    words: &DeadWords,
    name: Option<&str>,
    limit: usize,
) -> Result<(), Failure> {
    let dead = open.await?.list(name, limit).await?;
    print_dead_list(ctx, &dead, name, limit, words.to_json)
}

/// Prints dead letters as `dead list` does (a table, or a JSON array of
/// `to_json`).
pub(crate) fn print_dead_list<DB: Db>(
    ctx: &Ctx<DB>,
    dead: &[DeadLetter],
    name: Option<&str>,
    limit: usize,
    to_json: fn(&DeadLetter) -> Value,
) -> Result<(), Failure> {
    if ctx.json {
        return out::json(&Value::Array(dead.iter().map(to_json).collect()), true);
    }
    let named = name.map_or_else(String::new, |n| format!(" named \"{n}\""));
    if dead.is_empty() {
        return out::line(format!("no dead letters{named} in \"{}\"", ctx.table.name));
    }
    let rows: Vec<Vec<String>> = dead
        .iter()
        .map(|d| {
            vec![
                d.position.to_string(),
                d.event_id.to_string(),
                d.name.clone(),
                d.version.to_string(),
                d.attempts.to_string(),
                ago(d.dead_since),
                clip(&d.reason, 60),
            ]
        })
        .collect();
    let text = table(
        &[
            "POSITION", "EVENT ID", "NAME", "VERSION", "ATTEMPTS", "DEAD FOR", "REASON",
        ],
        &rows,
        &[0, 3, 4],
    );
    let count = plural(dead.len() as u64, "dead letter", "dead letters");
    let more = if dead.len() >= limit {
        format!(" (the first {limit}: --limit N for more)")
    } else {
        String::new()
    };
    out::line(format!("{text}\n{count}{named}{more}"))
}

async fn find<H: DeadLetters>(
    handle: &H,
    words: &DeadWords,
    id: Uuid,
) -> Result<DeadLetter, Failure> {
    handle
        .one(id)
        .await?
        .ok_or_else(|| no_dead_letter(words, id))
}

fn no_dead_letter(words: &DeadWords, id: Uuid) -> Failure {
    Failure::new(format!(
        "no dead letter with event id {id} in {}",
        words.place
    ))
}

/// `outbox dead show ID`.
pub(crate) async fn dead_show<DB: Db>(ctx: &Ctx<DB>, id: &str) -> Result<(), Failure> {
    show_dead(ctx, ctx.outbox(), &outbox_words(ctx), id).await
}

/// `dead show ID` on the handle `open` makes.
pub(crate) async fn show_dead<DB: Db, H: DeadLetters>(
    ctx: &Ctx<DB>,
    open: impl Future<Output = Result<H, Failure>>,
    words: &DeadWords,
    id: &str,
) -> Result<(), Failure> {
    let id = parse_id(id)?;
    let d = find(&open.await?, words, id).await?;
    if ctx.json {
        return out::json(&(words.to_json)(&d), true);
    }
    print_dead(&d, words.created)
}

/// Prints one dead letter as `dead show` does; `created` labels its
/// `created_at` (`created at`, `received at`).
pub(crate) fn print_dead(d: &DeadLetter, created: &str) -> Result<(), Failure> {
    let payload = serde_json::from_str::<Value>(&d.payload)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| d.payload.clone());
    let id_or_dash = |id: Option<Uuid>| id.map_or_else(|| "-".to_owned(), |id| id.to_string());
    let mut text = vec![
        format!("event id    {}", d.event_id),
        format!("position    {}", d.position),
        format!("name        {}", d.name),
        format!("version     {}", d.version),
        format!("stream key  {}", d.stream_key.as_deref().unwrap_or("-")),
        format!("correlation {}", id_or_dash(d.correlation_id)),
        format!("causation   {}", id_or_dash(d.causation_id)),
    ];
    text.extend(headers_lines(d));
    text.extend([
        format!("attempts    {}", d.attempts),
        format!(
            "{created:<11} {} ({} ago)",
            time(d.created_at),
            ago(d.created_at)
        ),
        format!(
            "dead since  {} ({} ago)",
            time(d.dead_since),
            ago(d.dead_since)
        ),
        format!("reason      {}", d.reason),
        "payload".to_owned(),
        payload,
    ]);
    out::line(text.join("\n"))
}

/// `headers     key: value`, one line per header (aligned under the first),
/// `-` for none; a note when the stored headers do not decode.
fn headers_lines(d: &DeadLetter) -> Vec<String> {
    let mut lines: Vec<String> = d
        .headers
        .iter()
        .enumerate()
        .map(|(i, (key, value))| {
            let label = if i == 0 { "headers" } else { "" };
            format!("{label:<11} {key}: {}", crate::error::one_line(value))
        })
        .collect();
    if let Some(error) = &d.headers_error {
        lines.push(format!(
            "headers     - (the stored headers are shown empty: {})",
            crate::error::one_line(error)
        ));
    } else if lines.is_empty() {
        lines.push("headers     -".to_owned());
    }
    lines
}

/// Which dead letters `requeue` acts on.
pub(crate) enum Which {
    One(String),
    All,
    Name(String),
}

/// Which dead letters `purge` deletes.
pub(crate) enum Purge {
    One(String),
    OlderThan(Duration),
}

pub(crate) fn done(ctx_json: bool, key: &str, n: u64, text: String) -> Result<(), Failure> {
    if ctx_json {
        out::json(&json!({ key: n }), true)
    } else {
        out::line(text)
    }
}

/// `outbox dead requeue (ID | --all | --name NAME) [--yes]`.
pub(crate) async fn dead_requeue<DB: Db>(
    ctx: &Ctx<DB>,
    which: Which,
    yes: bool,
) -> Result<(), Failure> {
    requeue_dead(ctx, ctx.outbox(), &outbox_words(ctx), which, yes).await
}

/// `dead requeue` on the handle `open` makes.
pub(crate) async fn requeue_dead<DB: Db, H: DeadLetters>(
    ctx: &Ctx<DB>,
    open: impl Future<Output = Result<H, Failure>>,
    words: &DeadWords,
    which: Which,
    yes: bool,
) -> Result<(), Failure> {
    let place = &words.place;
    let name = match which {
        Which::One(id) => {
            let id = parse_id(&id)?;
            if !open.await?.requeue_one(id).await? {
                return Err(no_dead_letter(words, id));
            }
            return done_requeued(ctx, words, 1);
        }
        Which::All => None,
        Which::Name(name) => Some(name),
    };
    let handle = open.await?;
    let dead = handle.count(name.as_deref()).await?;
    let named = name
        .as_ref()
        .map_or_else(String::new, |n| format!(" named \"{n}\""));
    if dead == 0 {
        let text = format!("no dead letters{named} in {place}");
        return done(ctx.json, "requeued", 0, text);
    }
    let what = plural(dead, "dead letter", "dead letters");
    confirm(&format!("requeue {what}{named} of {place}"), yes)?;
    let n = handle.requeue_many(name.as_deref()).await?;
    done_requeued(ctx, words, n)
}

fn done_requeued<DB: Db>(ctx: &Ctx<DB>, words: &DeadWords, n: u64) -> Result<(), Failure> {
    let text = format!(
        "requeued {}{}",
        plural(n, "dead letter", "dead letters"),
        words.requeued
    );
    done(ctx.json, "requeued", n, text)
}

/// `outbox dead purge (ID | --older-than D) [--yes]`.
pub(crate) async fn dead_purge<DB: Db>(
    ctx: &Ctx<DB>,
    which: Purge,
    yes: bool,
) -> Result<(), Failure> {
    purge_dead(ctx, ctx.outbox(), &outbox_words(ctx), which, yes).await
}

/// `dead purge` on the handle `open` makes.
pub(crate) async fn purge_dead<DB: Db, H: DeadLetters>(
    ctx: &Ctx<DB>,
    open: impl Future<Output = Result<H, Failure>>,
    words: &DeadWords,
    which: Purge,
    yes: bool,
) -> Result<(), Failure> {
    let (place, verb) = (&words.place, words.purge_verb);
    let n = match which {
        Purge::One(id) => {
            let id = parse_id(&id)?;
            let handle = open.await?;
            let d = find(&handle, words, id).await?;
            confirm(
                &format!(
                    "{verb} dead letter {id} ({}) of {place}{}",
                    d.name, words.purge_one
                ),
                yes,
            )?;
            if !handle.purge_one(id).await? {
                return Err(no_dead_letter(words, id));
            }
            1
        }
        Purge::OlderThan(age) => {
            let handle = open.await?;
            let what = if age.is_zero() {
                format!("{verb} every dead letter of {place}{}", words.purge_all)
            } else {
                format!(
                    "{verb} the dead letters of {place} that died more than {} ago{}",
                    human(age),
                    words.purge_older
                )
            };
            confirm(&what, yes)?;
            handle.purge_older(age).await?
        }
    };
    let text = format!(
        "purged {}{}",
        plural(n, "dead letter", "dead letters"),
        words.purged
    );
    done(ctx.json, "purged", n, text)
}

/// Which pending entries `discard` deletes.
pub(crate) enum Discard {
    One(String),
    Name(String),
}

/// `outbox discard (ID | --name NAME) [--yes]`: pending entries deleted for
/// good; the library leaves entries under a live claim to their relay.
pub(crate) async fn discard<DB: Db>(
    ctx: &Ctx<DB>,
    which: Discard,
    yes: bool,
) -> Result<(), Failure> {
    let t = &ctx.table.name;
    let n = match which {
        Discard::One(id) => {
            let id = parse_id(&id)?;
            let outbox = ctx.outbox().await?;
            confirm(
                &format!("delete pending entry {id} of \"{t}\" for good"),
                yes,
            )?;
            if !outbox.discard(id).await? {
                return Err(Failure::new(format!(
                    "no pending entry with event id {id} in \"{t}\" \
                     (or a relay is publishing it right now)"
                )));
            }
            1
        }
        Discard::Name(name) => {
            let outbox = ctx.outbox().await?;
            let pending = outbox
                .stats()
                .await?
                .by_name
                .iter()
                .find(|n| n.name == name)
                .map_or(0, |n| n.pending);
            if pending == 0 {
                return done(
                    ctx.json,
                    "discarded",
                    0,
                    format!("no pending entries named \"{name}\" in \"{t}\""),
                );
            }
            let what = plural(pending, "pending entry", "pending entries");
            confirm(
                &format!("delete {what} named \"{name}\" of \"{t}\" for good"),
                yes,
            )?;
            outbox.discard_named(&name).await?
        }
    };
    done(
        ctx.json,
        "discarded",
        n,
        format!(
            "discarded {}",
            plural(n, "pending entry", "pending entries")
        ),
    )
}

/// Shared by `tail` and `relay`: the table must exist first.
pub(crate) async fn require<DB: Db>(ctx: &Ctx<DB>) -> Result<(), Failure> {
    db::require_table(&ctx.pool, &ctx.table).await
}
