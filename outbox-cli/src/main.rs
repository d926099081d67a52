//! `outbox`: operate a transactional outbox table from the command line.
//!
//! Create or upgrade the table, see its health, list, requeue and purge dead
//! letters, discard pending entries, follow it live, and relay it to
//! RabbitMQ, NATS, Redis or a webhook for writers that are not Rust
//! services. See the README's "Operating it" section.

mod commands;
mod dashboard;
mod db;
mod duration;
mod error;
mod inbox;
mod logging;
mod out;
mod relay;
mod serve;
mod tail;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use sqlx::{MySql, Pool, Postgres, Sqlite};

use crate::db::{Db, DbUrl, Kind, Table};
use crate::error::Failure;

/// Operate a transactional outbox table: migrate it, check its health,
/// repair dead letters, follow it live, relay it to a broker.
#[derive(Debug, Parser)]
#[command(name = "outbox", version, max_term_width = 100)]
pub(crate) struct Cli {
    /// The database: postgres://, postgresql://, mysql://, mariadb:// or sqlite:// (sqlite:FILE).
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        global = true,
        value_name = "URL"
    )]
    database_url: Option<String>,

    /// The table (`schema.table` on PostgreSQL) [default: outbox; inbox for `outbox inbox ...`].
    /// `outbox dashboard` takes it more than once (in `OUTBOX_TABLE`: comma-separated).
    #[arg(
        long,
        global = true,
        value_name = "NAME",
        env = "OUTBOX_TABLE",
        value_delimiter = ','
    )]
    table: Vec<String>,

    /// Machine-readable output: JSON on stdout (JSON lines for `tail`).
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the outbox table, or upgrade it to the current schema.
    Migrate,
    /// Pending, retrying and dead entries, and the oldest pending age, per event name.
    Status {
        /// Health check: exit with code 2 when the oldest pending entry is older than this (30s, 5m, 2h, 7d).
        #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
        max_age: Option<Duration>,
    },
    /// List, show, requeue or purge dead letters.
    #[command(subcommand)]
    Dead(DeadCommand),
    /// Delete pending entries for good (recorded by mistake, or unroutable),
    /// by event id or by name; entries a relay is publishing right now stay.
    Discard(DiscardArgs),
    /// Follow new entries and publications live (Ctrl-C stops).
    Tail {
        /// How often to poll (PostgreSQL also wakes up on NOTIFY at once).
        #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = duration::parse)]
        interval: Duration,
    },
    /// Relay the table to a broker as raw JSON, until Ctrl-C or SIGTERM.
    Relay(Box<relay::RelayArgs>),
    /// The inbox table (the consuming side): migrate, status, dead letters.
    #[command(subcommand)]
    Inbox(inbox::InboxCommand),
    /// A web page (and its JSON API) over one or more tables: counts, a live chart, dead letters;
    /// read-only unless --allow-actions and --token are given.
    Dashboard(dashboard::DashboardArgs),
}

#[derive(Debug, Subcommand)]
enum DeadCommand {
    /// Dead letters, oldest first.
    List(ListArgs),
    /// One dead letter with its payload and reason.
    Show {
        /// The event id (a UUID).
        id: String,
    },
    /// Make dead letters pending again, with their attempts reset.
    Requeue(RequeueArgs),
    /// Delete dead letters for good.
    Purge(PurgeArgs),
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Only dead letters with this event name.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// At most this many.
    #[arg(long, value_name = "N", default_value_t = 50)]
    limit: usize,
}

#[derive(Debug, Args)]
struct RequeueArgs {
    #[command(flatten)]
    which: RequeueWhich,
    /// Do not ask for confirmation.
    #[arg(long, short)]
    yes: bool,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct RequeueWhich {
    /// The event id of one dead letter.
    id: Option<String>,
    /// Every dead letter.
    #[arg(long)]
    all: bool,
    /// Every dead letter with this event name.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
}

#[derive(Debug, Args)]
struct PurgeArgs {
    #[command(flatten)]
    which: PurgeWhich,
    /// Do not ask for confirmation.
    #[arg(long, short)]
    yes: bool,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct PurgeWhich {
    /// The event id of one dead letter.
    id: Option<String>,
    /// Every dead letter that died more than this long ago (30s, 5m, 2h, 7d; 0s: all).
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    older_than: Option<Duration>,
}

impl From<RequeueWhich> for commands::Which {
    fn from(which: RequeueWhich) -> Self {
        match (which.id, which.name) {
            (Some(id), _) => Self::One(id),
            (None, Some(name)) => Self::Name(name),
            (None, None) => Self::All,
        }
    }
}

impl From<PurgeWhich> for commands::Purge {
    fn from(which: PurgeWhich) -> Self {
        match (which.id, which.older_than) {
            (Some(id), _) => Self::One(id),
            (None, age) => Self::OlderThan(age.unwrap_or_default()),
        }
    }
}

#[derive(Debug, Args)]
struct DiscardArgs {
    #[command(flatten)]
    which: DiscardWhich,
    /// Do not ask for confirmation.
    #[arg(long, short)]
    yes: bool,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct DiscardWhich {
    /// The event id of one pending entry.
    id: Option<String>,
    /// Every pending entry with this event name.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
}

/// What every command gets: the pool, the table, the URL for messages, and
/// the output mode.
pub(crate) struct Ctx<DB: Db> {
    pub(crate) pool: Pool<DB>,
    pub(crate) table: Table,
    pub(crate) url: DbUrl,
    pub(crate) json: bool,
}

impl<DB: Db> Ctx<DB> {
    /// The library's handle on the table, which must exist (never migrates).
    pub(crate) async fn outbox(&self) -> Result<outbox::Outbox<DB>, Failure> {
        db::require_table(&self.pool, &self.table).await?;
        Ok(outbox::Outbox::builder(self.pool.clone())
            .table(&self.table.name)
            .migrate(false)
            .build()
            .await?)
    }
}

fn main() -> ExitCode {
    logging::quiet_panics();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return clap_failure(&err),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return Failure::new(format!("cannot start the async runtime: {err}")).report(),
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

/// Help and version go to stdout with exit 0; a usage error is one line on
/// stderr with exit 1 (2 is the health check's).
fn clap_failure(err: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = err.print();
        return if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(error::FAILURE)
        } else {
            ExitCode::SUCCESS
        };
    }
    let rendered = err.render().to_string();
    // The message is the first paragraph ("error: ..." and, for missing
    // arguments, the lines naming them); usage and tips follow a blank line.
    let paragraph: Vec<&str> = rendered
        .lines()
        .skip_while(|line| line.trim().is_empty())
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect();
    let message = paragraph.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    Failure::new(format!("{message} (see \"outbox --help\")")).report()
}

async fn dispatch(cli: Cli) -> Result<(), Failure> {
    let service = matches!(cli.command, Command::Relay(_) | Command::Dashboard(_));
    logging::init(service);
    let Some(raw) = cli.database_url.as_deref() else {
        return Err(Failure::new(
            "no database: pass --database-url URL or set DATABASE_URL",
        ));
    };
    let url = DbUrl::parse(raw)?;
    match url.kind {
        Kind::Postgres => run::<Postgres>(cli, url).await,
        Kind::MySql => run::<MySql>(cli, url).await,
        Kind::Sqlite => run::<Sqlite>(cli, url).await,
    }
}

async fn run<DB: Db>(cli: Cli, url: DbUrl) -> Result<(), Failure> {
    let default_table = match cli.command {
        Command::Inbox(_) => "inbox",
        _ => "outbox",
    };
    let dashboard = matches!(cli.command, Command::Dashboard(_));
    if cli.table.len() > 1 && !dashboard {
        return Err(Failure::new(
            "--table is given once (only `outbox dashboard` takes several)",
        ));
    }
    let mut tables = cli
        .table
        .iter()
        .map(|name| Table::new::<DB>(name))
        .collect::<Result<Vec<_>, _>>()?;
    if tables.is_empty() {
        tables.push(Table::new::<DB>(default_table)?);
    }
    let table = tables[0].clone();
    let migrate = matches!(
        cli.command,
        Command::Migrate | Command::Inbox(inbox::InboxCommand::Migrate)
    );
    let pool = db::connect::<DB>(&url, migrate).await?;
    let ctx = Ctx {
        pool,
        table,
        url,
        json: cli.json,
    };
    let result = match cli.command {
        Command::Migrate => commands::migrate(&ctx).await,
        Command::Status { max_age } => commands::status(&ctx, max_age).await,
        Command::Dead(DeadCommand::List(args)) => {
            commands::dead_list(&ctx, args.name.as_deref(), args.limit).await
        }
        Command::Dead(DeadCommand::Show { id }) => commands::dead_show(&ctx, &id).await,
        Command::Dead(DeadCommand::Requeue(args)) => {
            commands::dead_requeue(&ctx, args.which.into(), args.yes).await
        }
        Command::Dead(DeadCommand::Purge(args)) => {
            commands::dead_purge(&ctx, args.which.into(), args.yes).await
        }
        Command::Discard(args) => {
            let which = match (args.which.id, args.which.name) {
                (Some(id), _) => commands::Discard::One(id),
                (None, name) => commands::Discard::Name(name.unwrap_or_default()),
            };
            commands::discard(&ctx, which, args.yes).await
        }
        Command::Tail { interval } => tail::tail(&ctx, interval).await,
        Command::Relay(args) => relay::relay(&ctx, &args).await,
        Command::Inbox(command) => inbox::run(&ctx, command).await,
        Command::Dashboard(args) => dashboard::run(&ctx.pool, &tables, &args).await,
    };
    ctx.pool.close().await;
    result.map_err(|failure| ctx.url.scrub(failure))
}
