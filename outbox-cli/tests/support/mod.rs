//! What the `outbox` binary's test suites (`cli`, `inbox`, `serve`,
//! `dashboard`) share: the local service URLs, a table or SQLite file of its
//! own per test, and running the binary as a process with no terminal. The
//! long-running processes and HTTP requests (`service`), a NATS server of
//! the test's own (`nats`) and a TCP proxy (`proxy`) are modules of their own.

#![allow(dead_code)] // Reason: each test binary uses a different subset of the helpers.
#![allow(unreachable_pub)] // Reason: shared by several test crates through `mod support`.

pub mod nats;
pub mod proxy;
pub mod service;

use std::process::{Command, Stdio};

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_outbox");

pub fn pg_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into())
}

pub fn mysql_url() -> String {
    std::env::var("MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// A table name of its own for each test.
pub fn table(prefix: &str) -> String {
    format!(
        "cli_{prefix}_{}",
        &Uuid::new_v4().simple().to_string()[..12]
    )
}

/// The schema version a fresh table reaches: one per migration the library
/// ships in `outbox/migrations/<dir>` (`postgres`, `mysql`, `sqlite`, or
/// `<db>/inbox` for inbox tables), counted from its `NNNN_*.up.sql` files.
pub fn schema_version(dir: &str) -> usize {
    let dir = format!("{}/../outbox/migrations/{dir}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|entry| {
            let name = entry.as_ref().unwrap().file_name();
            name.to_string_lossy().ends_with(".up.sql")
        })
        .count()
}

/// A fresh SQLite file URL (the file does not exist yet).
pub fn sqlite_url() -> (String, std::path::PathBuf) {
    let dir = std::env::temp_dir().join("outbox-cli-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{}.db", Uuid::new_v4()));
    (format!("sqlite:{}", file.display()), file)
}

/// Removes a test's SQLite file and its WAL files.
pub fn remove_sqlite(file: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut name = file.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(name);
    }
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|err| panic!("stdout is not JSON ({err}): {self:?}"))
    }

    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "{self:?}");
        self
    }

    /// Exit code `code`, one `error:` line on stderr, no panic.
    pub fn fails(self, code: i32, needle: &str) -> Self {
        assert_eq!(self.code, code, "{self:?}");
        one_error_line(&self.stderr, needle);
        self
    }

    /// [`Run::fails`], and nothing on stdout.
    pub fn fails_quietly(self, code: i32, needle: &str) -> Self {
        assert!(self.stdout.is_empty(), "{self:?}");
        self.fails(code, needle)
    }
}

/// `stderr` is one `error:` line that contains `needle`, and no panic.
pub fn one_error_line(stderr: &str, needle: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "not one line on stderr: {stderr:?}");
    assert!(lines[0].starts_with("error: "), "{stderr:?}");
    assert!(lines[0].contains(needle), "{needle:?} not in {stderr:?}");
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE", "internal error"] {
        assert!(!stderr.contains(bad), "{bad:?} in {stderr:?}");
    }
}

/// `outbox --database-url URL [--table TABLE] ARGS...` with no terminal.
pub fn command(url: &str, table: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--database-url").arg(url);
    if let Some(table) = table {
        cmd.arg("--table").arg(table);
    }
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    cmd
}

/// Runs [`command`] to its end.
pub fn exec(url: &str, table: Option<&str>, args: &[&str]) -> Run {
    let output = command(url, table, args)
        .output()
        .expect("the outbox binary runs");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

pub async fn pg() -> PgPool {
    PgPool::connect(&pg_url())
        .await
        .expect("PostgreSQL at DATABASE_URL")
}

/// Drops `table` and the tables that go with it.
pub async fn pg_drop(pool: &PgPool, table: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS {table}, {table}_schema, {table}_blocked"
    )))
    .execute(pool)
    .await
    .unwrap();
}
