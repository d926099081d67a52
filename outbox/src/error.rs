//! The crate's one error type.

/// Everything that can go wrong in `outbox`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Two Rust types derive `Event` with the same name and version, or an
    /// alias of one is the name or an alias of a type of another name.
    #[error("event name `{name}` is used by two types: `{first}` and `{second}`")]
    DuplicateEventName {
        /// The shared event name.
        name: String,
        /// One of the two Rust types.
        first: String,
        /// The other Rust type.
        second: String,
    },

    /// One event type (or the catch-all) was given two publishers.
    #[error("a second publisher was registered for {what}")]
    DuplicatePublisher {
        /// The event name, or "the catch-all".
        what: String,
    },

    /// One event type (or the catch-all) was given two inbox consumers.
    #[error("a second consumer was registered for {what}")]
    DuplicateConsumer {
        /// The event name, or "the catch-all".
        what: String,
    },

    /// The table name is not a plain identifier (or `schema.table`).
    #[error("invalid outbox table name {name:?}: {reason}")]
    InvalidTableName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The event could not be serialized to JSON.
    #[error("event `{name}` does not serialize to JSON")]
    Encode {
        /// The event name.
        name: &'static str,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },

    /// The serialized event is larger than the configured maximum.
    #[error("event `{name}` is {size} bytes of JSON, over the maximum of {max}")]
    PayloadTooLarge {
        /// The event name.
        name: &'static str,
        /// Its size as JSON.
        size: usize,
        /// The configured maximum.
        max: usize,
    },

    /// A ready publisher was configured wrongly (a URL that does not parse,
    /// a header that is not valid HTTP, ...). Messages never contain
    /// credentials: URLs in them are redacted.
    #[error("invalid {publisher} publisher configuration: {reason}")]
    PublisherConfig {
        /// Which publisher (`"redis"`, `"webhook"`, ...).
        publisher: &'static str,
        /// What is wrong.
        reason: String,
    },

    /// An inbox source could not start: a setting is wrong (a URL that does
    /// not parse), the broker cannot be reached or refuses the login, or
    /// what it should read (a queue, a stream) does not exist. Messages
    /// never contain credentials: URLs in them are redacted.
    #[error("{broker} inbox source: {reason}")]
    InboxSource {
        /// Which broker (`"amqp"`, ...).
        broker: &'static str,
        /// What is wrong, and what to fix.
        reason: String,
    },

    /// The table is missing, is not an outbox table, or has an older
    /// schema than this build needs.
    #[error(
        "table {table} is not an outbox table this version can use: {reason}; \
         run `outbox migrate --table {table}` (or `outbox::migrate`, or build with `.migrate(true)`)"
    )]
    NotAnOutboxTable {
        /// The table as configured.
        table: String,
        /// What was found instead.
        reason: String,
    },

    /// The database reported an error (connection lost, constraint, ...).
    #[error("outbox database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
