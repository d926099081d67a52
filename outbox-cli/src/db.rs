//! The database side: which backend a URL names, connecting with a timeout,
//! URLs without their secrets, and the two catalog queries the library has
//! no call for (table existence, the schema version). Everything that reads
//! the table itself (`status`, `tail`, the relay's progress) goes through
//! the library.

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use sqlx::pool::PoolOptions;
use sqlx::{ConnectOptions, Connection, MySql, Pool, Postgres, Sqlite};

use crate::error::{Failure, describe};

/// How long connecting to the database may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The backends a database URL can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Postgres,
    MySql,
    Sqlite,
}

/// A database URL, checked: its backend, the form sqlx parses, the form
/// that may be shown, and the password to keep out of messages. No `Debug`:
/// it holds the password.
pub(crate) struct DbUrl {
    pub(crate) kind: Kind,
    /// What sqlx parses (`mariadb://` becomes `mysql://`).
    url: String,
    /// Without credentials: for messages and logs.
    pub(crate) shown: String,
    /// The password, as written and percent-decoded, to scrub from driver messages.
    secrets: Vec<String>,
}

impl DbUrl {
    pub(crate) fn parse(url: &str) -> Result<Self, Failure> {
        let shown = redact_url(url, true);
        let lower = url.to_ascii_lowercase();
        let (kind, url) = if lower.starts_with("postgres://") || lower.starts_with("postgresql://")
        {
            (Kind::Postgres, url.to_owned())
        } else if lower.starts_with("mysql://") {
            (Kind::MySql, url.to_owned())
        } else if lower.starts_with("mariadb://") {
            (
                Kind::MySql,
                format!("mysql://{}", &url["mariadb://".len()..]),
            )
        } else if lower.starts_with("sqlite:") {
            (Kind::Sqlite, url.to_owned())
        } else {
            let scheme = url
                .split_once(':')
                .map(|(scheme, _)| scheme)
                .filter(|scheme| {
                    !scheme.is_empty()
                        && scheme
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                });
            let what = match scheme {
                Some(scheme) => format!("unsupported database URL scheme \"{scheme}:\""),
                None => format!("database URL {shown:?} has no scheme"),
            };
            return Err(Failure::new(format!(
                "{what} (use postgres://, postgresql://, mysql://, mariadb:// or sqlite://)"
            )));
        };
        Ok(Self {
            kind,
            secrets: password(&url),
            url,
            shown,
        })
    }

    /// Removes the password from a message, should a driver repeat it.
    pub(crate) fn scrub(&self, failure: Failure) -> Failure {
        self.secrets
            .iter()
            .fold(failure, |failure, secret| failure.scrub(Some(secret)))
    }
}

/// Renders `url` without credentials: the password becomes `***`, and so do
/// query values whose key looks secret. With `keep_path` false (webhooks,
/// where a path can be a token) the path becomes `/***`.
pub(crate) fn redact_url(url: &str, keep_path: bool) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // `sqlite:file.db` and other URLs without an authority hold no credentials.
        return match url.split_once('?') {
            Some((base, query)) => format!("{base}?{}", redact_query(query)),
            None => url.to_owned(),
        };
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            // `nats://token@host`: a lone userinfo may be a token.
            None if scheme.starts_with("nats") || scheme.starts_with("http") => {
                format!("***@{host}")
            }
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = tail.split('#').next().unwrap_or_default();
    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (tail, None),
    };
    let path = if keep_path || path.is_empty() || path == "/" {
        path.to_owned()
    } else {
        "/***".to_owned()
    };
    match query {
        Some(query) => format!("{scheme}://{authority}{path}?{}", redact_query(query)),
        None => format!("{scheme}://{authority}{path}"),
    }
}

fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if secret_key(key) => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["pass", "secret", "token", "key", "auth"]
        .iter()
        .any(|word| key.contains(word))
}

/// The password of `url`, as written and percent-decoded.
fn password(url: &str) -> Vec<String> {
    let Some((_, rest)) = url.split_once("://") else {
        return Vec::new();
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let Some((userinfo, _)) = authority.rsplit_once('@') else {
        return Vec::new();
    };
    let Some((_, password)) = userinfo.split_once(':') else {
        return Vec::new();
    };
    let mut secrets = vec![password.to_owned(), percent_decode(password)];
    secrets.retain(|s| !s.is_empty());
    secrets.dedup();
    secrets
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A validated outbox table name, quoted for one backend.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    /// As given (`outbox`, `app.outbox`).
    pub(crate) name: String,
    /// Quoted for SQL: `"app"."outbox"`, `` `outbox` ``.
    pub(crate) quoted: String,
    /// The schema-version table the library keeps beside it, quoted.
    pub(crate) versions: String,
    /// The table part alone (names the PostgreSQL NOTIFY channel).
    pub(crate) bare: String,
}

impl Table {
    pub(crate) fn new<DB: Db>(name: &str) -> Result<Self, Failure> {
        outbox::TableName::new(name)?;
        if name.contains('.') && !DB::QUALIFIED {
            return Err(Failure::new(format!(
                "invalid outbox table name {name:?}: {} takes no schema-qualified table names",
                DB::LABEL
            )));
        }
        let q = DB::QUOTE;
        let parts: Vec<&str> = name.split('.').collect();
        let bare = parts.last().copied().unwrap_or(name).to_owned();
        let quote = |parts: &[&str]| {
            parts
                .iter()
                .map(|p| format!("{q}{p}{q}"))
                .collect::<Vec<_>>()
                .join(".")
        };
        let schema_table = format!("{bare}_schema");
        let mut version_parts = parts.clone();
        if let Some(last) = version_parts.last_mut() {
            *last = &schema_table;
        }
        Ok(Self {
            name: name.to_owned(),
            quoted: quote(&parts),
            versions: quote(&version_parts),
            bare,
        })
    }
}

/// PostgreSQL LISTEN on the outbox's channel.
pub(crate) struct Wakeups(sqlx::postgres::PgListener);

impl Wakeups {
    /// Waits for a notification; `false` when the connection failed (the
    /// caller then polls).
    pub(crate) async fn next(&mut self) -> bool {
        match self.0.recv().await {
            Ok(_) => {
                while self.0.next_buffered().is_some() {}
                true
            }
            Err(err) => {
                tracing::warn!(target: "outbox_cli", error = %describe(&err), "LISTEN connection failed; polling");
                false
            }
        }
    }
}

/// A backend the command runs on: the library's [`outbox::Backend`] plus
/// the plain SQL of the table contract that the library does not offer.
pub(crate) trait Db: outbox::Backend {
    /// Shown in messages.
    const LABEL: &'static str;
    /// Identifier quote.
    const QUOTE: char;
    /// Whether `schema.table` names are allowed.
    const QUALIFIED: bool;

    /// Connect options from the URL; `create` makes a missing SQLite file.
    fn options(
        url: &str,
        create: bool,
    ) -> Result<<Self::Connection as Connection>::Options, sqlx::Error>;

    /// Whether the table exists.
    fn table_exists(
        pool: &Pool<Self>,
        table: &Table,
    ) -> impl Future<Output = sqlx::Result<bool>> + Send;

    /// The highest migration version applied, if the version table exists.
    fn schema_version(
        pool: &Pool<Self>,
        table: &Table,
    ) -> impl Future<Output = sqlx::Result<Option<i64>>> + Send;

    /// LISTEN for inserts where the database can (PostgreSQL).
    fn wakeups(
        _pool: &Pool<Self>,
        _table: &Table,
    ) -> impl Future<Output = sqlx::Result<Option<Wakeups>>> + Send {
        async { Ok(None) }
    }
}

/// Connects once (with a timeout, so an unreachable database fails fast
/// with the driver's reason), then hands out a lazily filled pool.
pub(crate) async fn connect<DB: Db>(url: &DbUrl, create: bool) -> Result<Pool<DB>, Failure> {
    let options = DB::options(&url.url, create).map_err(|err| {
        url.scrub(Failure::new(format!(
            "invalid database URL {}: {}",
            url.shown,
            config_reason(&err)
        )))
    })?;
    match tokio::time::timeout(CONNECT_TIMEOUT, DB::Connection::connect_with(&options)).await {
        Err(_) => {
            return Err(Failure::new(format!(
                "cannot connect to {}: no answer within {} s",
                url.shown,
                CONNECT_TIMEOUT.as_secs()
            )));
        }
        Ok(Err(err)) => {
            let reason = match &err {
                sqlx::Error::Io(io) => io.to_string(),
                other => describe(other),
            };
            // sqlx opens a missing SQLite file only when told to (`migrate` does).
            let hint = if url.kind == Kind::Sqlite && !create {
                " (a missing file is created by \"outbox migrate\")"
            } else {
                ""
            };
            return Err(url.scrub(Failure::new(format!(
                "cannot connect to {}: {reason}{hint}",
                url.shown
            ))));
        }
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
        }
    }
    Ok(PoolOptions::<DB>::new()
        .max_connections(4)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_lazy_with(options))
}

fn config_reason(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Configuration(reason) => reason.to_string(),
        other => describe(other),
    }
}

/// Fails with the `does not exist` message unless the table exists.
pub(crate) async fn require_table<DB: Db>(pool: &Pool<DB>, table: &Table) -> Result<(), Failure> {
    require(pool, table, "table", "outbox migrate").await
}

/// Fails unless `table` exists, saying `{label} "NAME" does not exist (run
/// "{migrate}")`.
pub(crate) async fn require<DB: Db>(
    pool: &Pool<DB>,
    table: &Table,
    label: &str,
    migrate: &str,
) -> Result<(), Failure> {
    if DB::table_exists(pool, table).await? {
        Ok(())
    } else {
        Err(Failure::new(format!(
            "{label} \"{}\" does not exist (run \"{migrate}\")",
            table.name
        )))
    }
}

impl Db for Postgres {
    const LABEL: &'static str = "PostgreSQL";
    const QUOTE: char = '"';
    const QUALIFIED: bool = true;

    fn options(url: &str, _create: bool) -> Result<sqlx::postgres::PgConnectOptions, sqlx::Error> {
        Ok(sqlx::postgres::PgConnectOptions::from_str(url)?
            .application_name("outbox-cli")
            .disable_statement_logging())
    }

    async fn table_exists(pool: &Pool<Self>, table: &Table) -> sqlx::Result<bool> {
        sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&table.quoted)
            .fetch_one(pool)
            .await
    }

    async fn schema_version(pool: &Pool<Self>, table: &Table) -> sqlx::Result<Option<i64>> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&table.versions)
            .fetch_one(pool)
            .await?;
        if !exists {
            return Ok(None);
        }
        let sql = format!("SELECT MAX(version)::int8 FROM {}", table.versions);
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_one(pool)
            .await
    }

    async fn wakeups(pool: &Pool<Self>, table: &Table) -> sqlx::Result<Option<Wakeups>> {
        let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
        listener.listen(&format!("outbox_{}", table.bare)).await?;
        Ok(Some(Wakeups(listener)))
    }
}

impl Db for MySql {
    const LABEL: &'static str = "MySQL/MariaDB";
    const QUOTE: char = '`';
    const QUALIFIED: bool = false;

    fn options(url: &str, _create: bool) -> Result<sqlx::mysql::MySqlConnectOptions, sqlx::Error> {
        Ok(sqlx::mysql::MySqlConnectOptions::from_str(url)?.disable_statement_logging())
    }

    async fn table_exists(pool: &Pool<Self>, table: &Table) -> sqlx::Result<bool> {
        mysql_exists(pool, &table.name).await
    }

    async fn schema_version(pool: &Pool<Self>, table: &Table) -> sqlx::Result<Option<i64>> {
        if !mysql_exists(pool, &format!("{}_schema", table.bare)).await? {
            return Ok(None);
        }
        let sql = format!(
            "SELECT CAST(MAX(version) AS SIGNED) FROM {}",
            table.versions
        );
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_one(pool)
            .await
    }
}

async fn mysql_exists(pool: &Pool<MySql>, name: &str) -> sqlx::Result<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?",
    )
    .bind(name)
    .fetch_one(pool)
    .await?;
    Ok(n > 0)
}

impl Db for Sqlite {
    const LABEL: &'static str = "SQLite";
    const QUOTE: char = '"';
    const QUALIFIED: bool = false;

    fn options(url: &str, create: bool) -> Result<sqlx::sqlite::SqliteConnectOptions, sqlx::Error> {
        Ok(sqlx::sqlite::SqliteConnectOptions::from_str(url)?
            .create_if_missing(create)
            .busy_timeout(CONNECT_TIMEOUT)
            .disable_statement_logging())
    }

    async fn table_exists(pool: &Pool<Self>, table: &Table) -> sqlx::Result<bool> {
        sqlite_exists(pool, &table.name).await
    }

    async fn schema_version(pool: &Pool<Self>, table: &Table) -> sqlx::Result<Option<i64>> {
        if !sqlite_exists(pool, &format!("{}_schema", table.bare)).await? {
            return Ok(None);
        }
        let sql = format!("SELECT MAX(version) FROM {}", table.versions);
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_one(pool)
            .await
    }
}

async fn sqlite_exists(pool: &Pool<Sqlite>, name: &str) -> sqlx::Result<bool> {
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1")
            .bind(name)
            .fetch_one(pool)
            .await?;
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_pick_the_backend() {
        for (url, kind) in [
            ("postgres://u@h/db", Kind::Postgres),
            ("postgresql://u@h/db", Kind::Postgres),
            ("PostgreS://u@h/db", Kind::Postgres),
            ("mysql://u@h/db", Kind::MySql),
            ("mariadb://u@h/db", Kind::MySql),
            ("sqlite://x.db", Kind::Sqlite),
            ("sqlite:x.db", Kind::Sqlite),
            ("sqlite::memory:", Kind::Sqlite),
        ] {
            assert_eq!(DbUrl::parse(url).unwrap().kind, kind, "{url}");
        }
        assert_eq!(
            DbUrl::parse("mariadb://u@h/db").unwrap().url,
            "mysql://u@h/db"
        );
        for bad in [
            "http://h/db",
            "redis://h",
            "just-a-path.db",
            "",
            "mongodb://u:hunter2@h/db",
        ] {
            assert!(DbUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_never_shown() {
        let cases = [
            (
                "postgres://root@127.0.0.1:5432/test",
                "postgres://root@127.0.0.1:5432/test",
            ),
            (
                "postgres://u:hunter2@h:5432/db",
                "postgres://u:***@h:5432/db",
            ),
            (
                "mysql://u:p%40ss@h/db?ssl-mode=required",
                "mysql://u:***@h/db?ssl-mode=required",
            ),
            (
                "postgres://u@h/db?password=hunter2&sslmode=require",
                "postgres://u@h/db?password=***&sslmode=require",
            ),
            ("sqlite:x.db", "sqlite:x.db"),
            ("sqlite://x.db?mode=rwc", "sqlite://x.db?mode=rwc"),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url, true), want);
        }
        assert_eq!(
            redact_url("https://u:p@hooks.example/T0/secret?x=1", false),
            "https://u:***@hooks.example/***?x=1"
        );
        assert_eq!(
            redact_url("nats://s3cret@127.0.0.1:4222", false),
            "nats://***@127.0.0.1:4222"
        );
        let err = DbUrl::parse("mongodb://u:hunter2@h/db").err().unwrap();
        assert!(!format!("{err:?}").contains("hunter2"));
    }

    #[test]
    fn passwords_are_known_for_scrubbing() {
        assert_eq!(password("mysql://u:p%40ss@h/db"), ["p%40ss", "p@ss"]);
        assert_eq!(password("postgres://u:plain@h/db"), ["plain"]);
        assert!(password("postgres://u@h/db").is_empty());
    }

    #[test]
    fn tables_are_validated_and_quoted() {
        let t = Table::new::<Postgres>("app.events").unwrap();
        assert_eq!(t.quoted, "\"app\".\"events\"");
        assert_eq!(t.versions, "\"app\".\"events_schema\"");
        assert_eq!(t.bare, "events");
        let t = Table::new::<MySql>("outbox").unwrap();
        assert_eq!(t.quoted, "`outbox`");
        assert!(Table::new::<MySql>("app.events").is_err());
        assert!(Table::new::<Sqlite>("out box").is_err());
        assert!(Table::new::<Postgres>("x; DROP TABLE y").is_err());
    }
}
