//! What a publisher receives: [`Entry`] (raw) and [`Recorded<E>`] (typed).

use std::collections::BTreeMap;
use std::ops::Deref;

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Header map stored with each entry (sorted, so it serializes the same way every time).
pub type Headers = BTreeMap<String, String>;

/// One outbox entry as the relay hands it out: the stored payload as JSON
/// text and every piece of metadata. Catch-all publishers receive this;
/// typed publishers receive a [`Recorded<E>`], which dereferences to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub(crate) position: i64,
    pub(crate) event_id: Uuid,
    pub(crate) name: String,
    pub(crate) version: u32,
    pub(crate) payload: String,
    pub(crate) stream_key: Option<String>,
    pub(crate) headers: Headers,
    pub(crate) correlation_id: Option<Uuid>,
    pub(crate) causation_id: Option<Uuid>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) attempt: u32,
}

impl Entry {
    /// The entry's place in record order (the table's primary key).
    #[must_use]
    pub fn position(&self) -> i64 {
        self.position
    }

    /// The unique id given when the event was recorded (UUID v7). It travels
    /// with the message: consumers deduplicate on it.
    #[must_use]
    pub fn event_id(&self) -> Uuid {
        self.event_id
    }

    /// The event name (`Event::NAME` of the recording type).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version of the event type that wrote the payload
    /// ([`Event::VERSION`](crate::Event::VERSION) of the recording type).
    /// A typed publisher receives the event upcast to its own version, with
    /// this and [`payload_json`](Self::payload_json) as stored, unless
    /// [`PublishersBuilder::publish_upcast`](crate::PublishersBuilder::publish_upcast)
    /// is on.
    #[must_use]
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The payload exactly as stored: JSON text written by `serde_json`.
    #[must_use]
    pub fn payload_json(&self) -> &str {
        &self.payload
    }

    /// The stream (aggregate) key given at record time, if any.
    #[must_use]
    pub fn stream_key(&self) -> Option<&str> {
        self.stream_key.as_deref()
    }

    /// The headers given at record time.
    #[must_use]
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The correlation id given at record time, if any.
    #[must_use]
    pub fn correlation_id(&self) -> Option<Uuid> {
        self.correlation_id
    }

    /// The causation id given at record time, if any.
    #[must_use]
    pub fn causation_id(&self) -> Option<Uuid> {
        self.causation_id
    }

    /// When the entry was recorded (the database's clock).
    #[must_use]
    pub fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }

    /// Which attempt this delivery is: 1 the first time, 2 after one failure, ...
    #[must_use]
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// A decoded event with its metadata, as a typed publisher receives it.
///
/// Dereferences to [`Entry`] for the metadata (`event_id()`, `name()`,
/// `position()`, `stream_key()`, `headers()`, `created_at()`, `attempt()`).
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded<E> {
    event: E,
    entry: Entry,
}

impl<E> Recorded<E> {
    pub(crate) fn new(event: E, entry: Entry) -> Self {
        Self { event, entry }
    }

    /// The decoded event.
    #[must_use]
    pub fn event(&self) -> &E {
        &self.event
    }

    /// The raw entry: payload text and metadata.
    #[must_use]
    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// Takes the event and the entry apart.
    #[must_use]
    pub fn into_parts(self) -> (E, Entry) {
        (self.event, self.entry)
    }
}

impl<E> Deref for Recorded<E> {
    type Target = Entry;

    fn deref(&self) -> &Entry {
        &self.entry
    }
}

/// Metadata given with an event at record time.
///
/// ```
/// let meta = outbox::Metadata::new()
///     .stream_key("invoice-42")
///     .header("tenant", "acme");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    pub(crate) stream_key: Option<String>,
    pub(crate) headers: Headers,
    pub(crate) correlation_id: Option<Uuid>,
    pub(crate) causation_id: Option<Uuid>,
}

impl Metadata {
    /// Empty metadata.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The stream (aggregate) key: per-stream ordering and broker partitioning use it.
    #[must_use]
    pub fn stream_key(mut self, key: impl Into<String>) -> Self {
        self.stream_key = Some(key.into());
        self
    }

    /// Adds one header (a later value for the same name replaces the earlier one).
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// The correlation id (the conversation this event belongs to).
    #[must_use]
    pub fn correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// The causation id (the message that caused this event).
    #[must_use]
    pub fn causation_id(mut self, id: Uuid) -> Self {
        self.causation_id = Some(id);
        self
    }
}
