//! One error type for the command: a message printed as one line on stderr,
//! and the exit code.

use std::fmt;
use std::process::ExitCode;

/// Exit code of every failure except the health check.
pub(crate) const FAILURE: u8 = 1;
/// Exit code of `status --max-age` when the oldest pending entry is too old.
pub(crate) const UNHEALTHY: u8 = 2;

/// A failure of the command: what to tell the user, and the exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    /// A failure with exit code 1.
    pub(crate) fn new(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            code: FAILURE,
        }
    }

    /// A failed health check (exit code 2).
    pub(crate) fn unhealthy(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            code: UNHEALTHY,
        }
    }

    /// Stdout was closed (`outbox dead list | head`): stop quietly.
    pub(crate) fn closed_output() -> Self {
        Self {
            message: String::new(),
            code: 0,
        }
    }

    /// Replaces every occurrence of `secret` in the message (a password
    /// that a driver might echo back).
    pub(crate) fn scrub(mut self, secret: Option<&str>) -> Self {
        if let Some(secret) = secret.filter(|s| !s.is_empty()) {
            self.message = self.message.replace(secret, "***");
        }
        self
    }

    /// Prints the message as one line on stderr and returns the exit code.
    pub(crate) fn report(self) -> ExitCode {
        if !self.message.is_empty() {
            let line = one_line(&self.message);
            eprintln!("error: {line}");
        }
        ExitCode::from(self.code)
    }
}

/// Folds a multi-line message into one line.
pub(crate) fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<std::io::Error> for Failure {
    fn from(err: std::io::Error) -> Self {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            Self::closed_output()
        } else {
            Self::new(err)
        }
    }
}

impl From<outbox::Error> for Failure {
    fn from(err: outbox::Error) -> Self {
        match err {
            outbox::Error::Database(err) => Self::from(err),
            other => Self::new(other),
        }
    }
}

impl From<sqlx::Error> for Failure {
    fn from(err: sqlx::Error) -> Self {
        Self::new(describe(&err))
    }
}

/// A library error in a user's words (database errors as [`describe`] puts them).
pub(crate) fn describe_outbox(err: &outbox::Error) -> String {
    match err {
        outbox::Error::Database(err) => describe(err),
        other => other.to_string(),
    }
}

/// A database error in a user's words.
pub(crate) fn describe(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => format!("database error: {}", db.message()),
        sqlx::Error::Io(io) => format!("database connection failed: {io}"),
        sqlx::Error::PoolTimedOut => "timed out waiting for a database connection".to_owned(),
        sqlx::Error::Tls(tls) => format!("database TLS error: {tls}"),
        other => format!("database error: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_fold_into_one_line() {
        assert_eq!(one_line("a\n\n  b  \nc"), "a; b; c");
    }

    #[test]
    fn secrets_are_scrubbed() {
        let f = Failure::new("password hunter2 rejected").scrub(Some("hunter2"));
        assert_eq!(f.message, "password *** rejected");
    }
}
