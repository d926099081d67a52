//! Redis Streams source: a consumer group read with `XREADGROUP`,
//! acknowledged with `XACK`, the pending entries of dead consumers
//! reclaimed with `XAUTOCLAIM`.
//!
//! [`RedisSource`] reads one stream key as one consumer of a consumer group
//! and hands the entries to a [`Consume`](super::Consume) loop; each is
//! acknowledged only after the inbox transaction committed. What
//! [`publisher::redis`](crate::publisher::redis) writes round-trips without
//! configuration.
//!
//! ```no_run
//! use outbox::inbox::redis::RedisSource;
//! use outbox::inbox::{Consumers, Inbox};
//! # async fn run(inbox: Inbox<outbox::sqlx::Postgres>, consumers: Consumers<outbox::sqlx::Postgres>) -> outbox::Result<()> {
//! // One consumer name per process (a host name, a pod name); the group
//! // `billing` is created on first start.
//! let source = RedisSource::builder("redis://127.0.0.1:6379", "events", "billing", "billing-1")
//!     .count(32)
//!     .build()
//!     .await?;
//! inbox
//!     .consume(consumers)
//!     .max_in_flight(32)
//!     .run(source, async { /* shutdown signal */ })
//!     .await;
//! # Ok(())
//! # }
//! ```
//!
//! # The stream entry
//!
//! The fields [`publisher::redis`](crate::publisher::redis) writes:
//!
//! | field | [`Message`] |
//! |---|---|
//! | `event_id` | the event id (the dedupe key; an entry without it is a dead letter) |
//! | `name` | the event name |
//! | `version` | the event version ([`Entry::version`](crate::Entry::version)): the consumer decodes the payload by it, upcasting an older one. Without it, version 1 (a sender from before versions); a value that is not an integer from 1 makes a dead letter |
//! | `payload` | the payload, byte for byte (an entry without it, or with bytes that are not UTF-8, is a dead letter) |
//! | `headers` | the entry's headers (a JSON object of strings; anything else makes a dead letter that keeps the payload) |
//! | `stream_key` | the stream key |
//! | `correlation_id`, `causation_id` | the correlation and causation ids |
//! | `traceparent`, `tracestate` | headers of these names, when `headers` lacks them |
//!
//! Other fields are ignored. An entry of the pending list whose data is
//! gone (trimmed by `MAXLEN`, deleted) is acknowledged with a warning.
//!
//! A message of a version newer than its consumer's event type knows (the
//! sender deployed first) is a dead letter whose reason says so: requeue
//! it (`outbox inbox dead requeue`) once a consumer that knows the version
//! runs. An older version is upcast to the consumer's (see
//! [`Event::decode`](crate::Event::decode)).
//!
//! # Reading
//!
//! [`build`](RedisSourceBuilder::build) creates the group with
//! `XGROUP CREATE <key> <group> 0 MKSTREAM` unless it exists: a new group
//! starts at the **beginning** of the stream, so events the relay published
//! before the consumer first started are not missed (`$` would skip them).
//! An existing group keeps its position.
//!
//! Then [`Source::next`] reads, in this order:
//!
//! 1. this consumer's own pending entries (`XREADGROUP .. STREAMS <key> 0`,
//!    page by page): what a previous run under the same consumer name
//!    received and never acknowledged;
//! 2. every [`claim_idle`](RedisSourceBuilder::claim_idle)` / 2`,
//!    `XAUTOCLAIM <key> <group> <consumer> <claim_idle>`: entries another
//!    consumer received and left unacknowledged for longer than
//!    `claim_idle` (it died, or hangs) become this consumer's;
//! 3. new entries, `XREADGROUP .. COUNT <count> BLOCK <block> STREAMS <key> >`.
//!
//! Entries the loop works on are not handed out twice. The loop tells the
//! source every 10 s that it still holds an entry (a retry backoff, a
//! database outage): the entry's idle time is reset (`XCLAIM .. JUSTID`) so
//! that no other consumer claims it; keep `claim_idle` well above 10 s.
//!
//! # Cancellation and crashes
//!
//! `XREADGROUP` and `XAUTOCLAIM` move entries into this consumer's pending
//! list on the server, whether or not the reply arrives. [`Source::next`] is
//! cancel-safe all the same: a read whose reply was lost (a cancelled call,
//! a dropped connection) makes the source read its own pending list again
//! from `0` before anything new. Entries of a consumer that is gone for
//! good are claimed by another one after `claim_idle`; a restarted process
//! with the same consumer name reads them back at once.
//!
//! # Acknowledgements
//!
//! | the loop | Redis |
//! |---|---|
//! | settled the entry (processed, duplicate, dead letter) after the commit | `XACK`; a failed `XACK` leaves the entry pending: it is read again and skipped by the inbox as a duplicate |
//! | still works on it, every 10 s | `XCLAIM <key> <group> <consumer> 0 <id> JUSTID` (resets its idle time) |
//! | stops without settling it | nothing: the entry stays in this consumer's pending list |
//!
//! # Connections, errors and TLS
//!
//! Two connections (a `redis` `ConnectionManager` each, reconnecting by
//! themselves): one for the blocking reads, one for acks and claims, so an
//! ack never waits behind a `BLOCK`. A failed command is returned as an
//! error: the loop logs it and pauses. A group that disappeared (the key
//! was deleted: `NOGROUP`) is created again. `rediss://` URLs connect with
//! TLS exactly as the publisher does (rustls on ring, verified against the
//! system roots or [`tls_ca_pem`](RedisSourceBuilder::tls_ca_pem); never
//! unverified). URLs in errors and `Debug` output never show credentials.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Value};
use tokio::time::Instant;

use super::{Acker, Delivery, Message, Source, SourceError};
use crate::entry::Headers;
use crate::error::{Error, Result};
use crate::publisher::redact::redact_url;
use crate::publisher::redis::client;
use crate::trace::{TRACEPARENT, TRACESTATE};

/// A consumer of a Redis Streams consumer group as an inbox [`Source`]; see
/// the [module docs](self).
pub struct RedisSource {
    /// The URL without credentials.
    url: String,
    names: Arc<Names>,
    count: usize,
    block: Duration,
    claim_idle: Duration,
    reader: ConnectionManager,
    writer: ConnectionManager,
    /// Entries read and not handed out yet.
    buffer: VecDeque<Delivery>,
    /// Where the next read of this consumer's own pending list starts;
    /// `None` once it is read through.
    pending: Option<String>,
    claim_from: String,
    next_claim: Instant,
    shared: Arc<Shared>,
}

/// The stream, group and consumer names.
struct Names {
    key: String,
    group: String,
    consumer: String,
}

/// What the source and its ackers share.
#[derive(Default)]
struct Shared {
    /// Ids handed out and not settled: never handed out twice.
    in_flight: Mutex<HashSet<String>>,
    /// An entry came back unsettled: read the pending list again.
    reread: AtomicBool,
}

impl Shared {
    fn settle(&self, id: &str, acked: bool) {
        if let Ok(mut in_flight) = self.in_flight.lock() {
            in_flight.remove(id);
        }
        if !acked {
            self.reread.store(true, Ordering::SeqCst);
        }
    }
}

impl fmt::Debug for RedisSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSource")
            .field("url", &self.url)
            .field("stream_key", &self.names.key)
            .field("group", &self.names.group)
            .field("consumer", &self.names.consumer)
            .field("count", &self.count)
            .field("block", &self.block)
            .field("claim_idle", &self.claim_idle)
            .finish_non_exhaustive()
    }
}

/// Configures a [`RedisSource`]; start with [`RedisSource::builder`].
#[must_use]
pub struct RedisSourceBuilder {
    url: String,
    key: String,
    group: String,
    consumer: String,
    count: usize,
    block: Duration,
    claim_idle: Duration,
    tls_ca: Option<Vec<u8>>,
}

impl fmt::Debug for RedisSourceBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSourceBuilder")
            .field("url", &redact_url(&self.url))
            .field("stream_key", &self.key)
            .field("group", &self.group)
            .field("consumer", &self.consumer)
            .field("count", &self.count)
            .field("block", &self.block)
            .field("claim_idle", &self.claim_idle)
            .field("tls_ca", &self.tls_ca.is_some())
            .finish()
    }
}

impl RedisSource {
    /// Starts configuring a source that reads the stream `stream_key` as
    /// consumer `consumer` of the group `group`, from the server at `url`
    /// (`redis://[[user]:password@]host[:port][/db]`, or `rediss://` for
    /// TLS). Give each process its own consumer name, stable across
    /// restarts if it can be (a restarted process then reads its own
    /// pending entries back at once).
    pub fn builder(
        url: impl Into<String>,
        stream_key: &str,
        group: &str,
        consumer: &str,
    ) -> RedisSourceBuilder {
        RedisSourceBuilder {
            url: url.into(),
            key: stream_key.to_owned(),
            group: group.to_owned(),
            consumer: consumer.to_owned(),
            count: 32,
            block: Duration::from_secs(5),
            claim_idle: Duration::from_mins(1),
            tls_ca: None,
        }
    }
}

impl RedisSourceBuilder {
    /// Entries asked for per read (at least 1). Default 32; the loop's
    /// [`max_in_flight`](super::Consume::max_in_flight) is a good value.
    pub fn count(mut self, count: usize) -> Self {
        self.count = count.max(1);
        self
    }

    /// How long one read waits for new entries (at least 1 ms). Default
    /// 5 s. Shutdown does not wait for it.
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block.max(Duration::from_millis(1));
        self
    }

    /// How long an entry stays unacknowledged with another consumer before
    /// this one claims it (`XAUTOCLAIM`); claims are tried every half of
    /// it. Default 60 s. Keep it well above 10 s (the loop's keep-alive
    /// period) and above the time a message normally takes.
    pub fn claim_idle(mut self, idle: Duration) -> Self {
        self.claim_idle = idle.max(Duration::from_millis(1));
        self
    }

    /// Verifies a `rediss://` server against the CA certificate(s) in `pem`
    /// instead of the system's roots. Needs a `rediss://` URL.
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_ca = Some(pem.into());
        self
    }

    /// Connects and creates the group (from the start of the stream, and
    /// the stream with it) unless it exists.
    pub async fn build(self) -> Result<RedisSource> {
        let url = redact_url(&self.url);
        let fail = |reason: String| Error::InboxSource {
            broker: "redis",
            reason,
        };
        for (what, name) in [
            ("stream key", &self.key),
            ("group", &self.group),
            ("consumer", &self.consumer),
        ] {
            if name.is_empty() {
                return Err(fail(format!("the {what} name is empty")));
            }
        }
        let client = client(&self.url, self.tls_ca.as_deref()).map_err(fail)?;
        let config = |response: Duration| {
            ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(5)))
                .set_response_timeout(Some(response))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500))
        };
        let connect = |response: Duration| {
            let client = client.clone();
            let url = url.clone();
            async move {
                ConnectionManager::new_with_config(client, config(response))
                    .await
                    .map_err(|err| format!("cannot connect to redis {url}: {err}"))
            }
        };
        let reader = connect(self.block + Duration::from_secs(10))
            .await
            .map_err(fail)?;
        let mut writer = connect(Duration::from_secs(10)).await.map_err(fail)?;
        let names = Arc::new(Names {
            key: self.key,
            group: self.group,
            consumer: self.consumer,
        });
        create_group(&mut writer, &names)
            .await
            .map_err(|err| fail(format!("redis {url}: {err}")))?;
        Ok(RedisSource {
            url,
            names,
            count: self.count,
            block: self.block,
            claim_idle: self.claim_idle,
            reader,
            writer,
            buffer: VecDeque::new(),
            pending: Some("0".to_owned()),
            claim_from: "0-0".to_owned(),
            next_claim: Instant::now(),
            shared: Arc::default(),
        })
    }
}

/// `XGROUP CREATE <key> <group> 0 MKSTREAM`; an existing group is fine.
async fn create_group(conn: &mut ConnectionManager, names: &Names) -> Result<(), String> {
    let created: Result<Value, RedisError> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&names.key)
        .arg(&names.group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Ok(_) => Ok(()),
        Err(err) if err.code() == Some("BUSYGROUP") => Ok(()),
        Err(err) => Err(format!(
            "cannot create consumer group `{}` on stream `{}`: {err}",
            names.group, names.key
        )),
    }
}

/// One entry as read: its id and its fields (`None` when its data is gone).
type RawEntry = (String, Option<Vec<(Vec<u8>, Vec<u8>)>>);

impl RedisSource {
    /// `XREADGROUP` from `id` (`0`-based for the own pending list, `>` for
    /// new entries), blocking only when `block` is given.
    async fn read(
        &mut self,
        id: &str,
        block: Option<Duration>,
    ) -> Result<Vec<RawEntry>, SourceError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.names.group)
            .arg(&self.names.consumer)
            .arg("COUNT")
            .arg(self.count);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(millis(block));
        }
        cmd.arg("STREAMS").arg(&self.names.key).arg(id);
        let reply: Value = match cmd.query_async(&mut self.reader).await {
            Ok(reply) => reply,
            Err(err) => return Err(self.failed("XREADGROUP", &err).await),
        };
        read_reply(reply)
    }

    /// One page of `XAUTOCLAIM`: the cursor to go on from and the entries.
    async fn claim(&mut self) -> Result<(String, Vec<RawEntry>), SourceError> {
        let reply: Value = match redis::cmd("XAUTOCLAIM")
            .arg(&self.names.key)
            .arg(&self.names.group)
            .arg(&self.names.consumer)
            .arg(millis(self.claim_idle))
            .arg(&self.claim_from)
            .arg("COUNT")
            .arg(self.count)
            .query_async(&mut self.writer)
            .await
        {
            Ok(reply) => reply,
            Err(err) => return Err(self.failed("XAUTOCLAIM", &err).await),
        };
        let mut parts = items(reply)
            .ok_or("XAUTOCLAIM: unexpected reply")?
            .into_iter();
        let next = parts
            .next()
            .as_ref()
            .and_then(text)
            .ok_or("XAUTOCLAIM: no cursor")?;
        let entries = match parts.next() {
            Some(entries) => entries_of(entries)?,
            None => Vec::new(),
        };
        Ok((next, entries))
    }

    /// The error of a failed command; a missing group is created again.
    async fn failed(&mut self, command: &str, err: &RedisError) -> SourceError {
        if err.code() == Some("NOGROUP") {
            let created = create_group(&mut self.writer, &self.names).await;
            let what = match created {
                Ok(()) => "created again".to_owned(),
                Err(why) => why,
            };
            return format!(
                "redis {}: {command} on `{}`: the group `{}` was gone (was the key deleted?): {what}",
                self.url, self.names.key, self.names.group
            )
            .into();
        }
        format!(
            "redis {}: {command} on `{}`: {err}",
            self.url, self.names.key
        )
        .into()
    }

    /// Reads the next entries into the buffer (maybe none).
    async fn fill(&mut self) -> Result<(), SourceError> {
        if self.shared.reread.swap(false, Ordering::SeqCst) {
            self.pending = Some("0".to_owned());
        }
        if let Some(cursor) = self.pending.clone() {
            let entries = self.read(&cursor, None).await?;
            self.pending = entries.last().map(|(id, _)| id.clone());
            return self.take(entries).await;
        }
        let now = Instant::now();
        if now >= self.next_claim {
            // Claimed entries are ours even if the reply is lost: a call
            // that fails or is cancelled makes the next one read them back.
            self.pending = Some("0".to_owned());
            let (next, entries) = self.claim().await?;
            self.pending = None;
            if next == "0-0" {
                self.next_claim = now + (self.claim_idle / 2).max(Duration::from_millis(100));
            }
            self.claim_from = next;
            return self.take(entries).await;
        }
        let block = (self.next_claim - now)
            .min(self.block)
            .max(Duration::from_millis(1));
        // The same for entries a lost `>` read delivered.
        self.pending = Some("0".to_owned());
        let entries = self.read(">", Some(block)).await?;
        self.pending = None;
        self.take(entries).await
    }

    /// Buffers the entries not handed out already; acknowledges the ones
    /// whose data is gone.
    async fn take(&mut self, entries: Vec<RawEntry>) -> Result<(), SourceError> {
        for (id, fields) in entries {
            let Some(fields) = fields else {
                tracing::warn!(stream = %self.names.key, id = %id, "a pending redis stream entry has no data any more (trimmed or deleted); acknowledged");
                let _: i64 = redis::cmd("XACK")
                    .arg(&self.names.key)
                    .arg(&self.names.group)
                    .arg(&id)
                    .query_async(&mut self.writer)
                    .await
                    .map_err(|err| format!("redis {}: XACK: {err}", self.url))?;
                continue;
            };
            let fresh = match self.shared.in_flight.lock() {
                Ok(mut in_flight) => in_flight.insert(id.clone()),
                Err(_) => false,
            };
            if !fresh {
                continue;
            }
            let acker = RedisAcker {
                conn: self.writer.clone(),
                names: Arc::clone(&self.names),
                shared: Arc::clone(&self.shared),
                id,
                acked: false,
            };
            self.buffer
                .push_back(Delivery::new(message_of(&fields), acker));
        }
        Ok(())
    }
}

#[async_trait]
impl Source for RedisSource {
    async fn next(&mut self) -> Result<Option<Delivery>, SourceError> {
        loop {
            if let Some(delivery) = self.buffer.pop_front() {
                return Ok(Some(delivery));
            }
            self.fill().await?;
        }
    }
}

/// Settles one stream entry; see the [module docs](self).
struct RedisAcker {
    conn: ConnectionManager,
    names: Arc<Names>,
    shared: Arc<Shared>,
    id: String,
    acked: bool,
}

impl Drop for RedisAcker {
    fn drop(&mut self) {
        self.shared.settle(&self.id, self.acked);
    }
}

#[async_trait]
impl Acker for RedisAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), SourceError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("XACK")
            .arg(&self.names.key)
            .arg(&self.names.group)
            .arg(&self.id)
            .query_async(&mut conn)
            .await
            .map_err(|err| format!("redis XACK of {} on `{}`: {err}", self.id, self.names.key))?;
        self.acked = true;
        Ok(())
    }

    async fn keep_alive(&self) {
        let mut conn = self.conn.clone();
        let claimed: Result<Value, RedisError> = redis::cmd("XCLAIM")
            .arg(&self.names.key)
            .arg(&self.names.group)
            .arg(&self.names.consumer)
            .arg(0)
            .arg(&self.id)
            .arg("JUSTID")
            .query_async(&mut conn)
            .await;
        if let Err(err) = claimed {
            tracing::debug!(id = %self.id, error = %err, "redis XCLAIM (keep-alive) failed");
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The text of a string reply.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) | Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) | Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

fn items(value: Value) -> Option<Vec<Value>> {
    match value {
        Value::Array(items) | Value::Set(items) => Some(items),
        _ => None,
    }
}

/// The reply of `XREADGROUP` for one stream: nil, or
/// `[[key, entries]]` (RESP2), or `{key: entries}` (RESP3).
fn read_reply(reply: Value) -> Result<Vec<RawEntry>, SourceError> {
    let streams: Vec<Value> = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(pairs) => pairs.into_iter().map(|(_, entries)| entries).collect(),
        other => items(other)
            .ok_or("XREADGROUP: unexpected reply")?
            .into_iter()
            .filter_map(|stream| items(stream)?.into_iter().nth(1))
            .collect(),
    };
    let mut all = Vec::new();
    for entries in streams {
        all.extend(entries_of(entries)?);
    }
    Ok(all)
}

/// `[[id, [field, value, ..] | nil], ..]`.
fn entries_of(entries: Value) -> Result<Vec<RawEntry>, SourceError> {
    let mut out = Vec::new();
    for entry in items(entries).ok_or("stream entries: unexpected reply")? {
        let mut parts = items(entry)
            .ok_or("stream entry: unexpected reply")?
            .into_iter();
        let id = parts
            .next()
            .as_ref()
            .and_then(text)
            .ok_or("stream entry without an id")?;
        let fields = match parts.next() {
            None | Some(Value::Nil) => None,
            Some(Value::Map(pairs)) => Some(
                pairs
                    .into_iter()
                    .filter_map(|(k, v)| Some((bytes(k)?, bytes(v)?)))
                    .collect(),
            ),
            Some(flat) => {
                let mut flat = items(flat)
                    .ok_or("stream entry fields: unexpected reply")?
                    .into_iter();
                let mut fields = Vec::new();
                while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                    if let (Some(k), Some(v)) = (bytes(k), bytes(v)) {
                        fields.push((k, v));
                    }
                }
                Some(fields)
            }
        };
        out.push((id, fields));
    }
    Ok(out)
}

/// The inbox message of a stream entry: the table in the module docs.
fn message_of(fields: &[(Vec<u8>, Vec<u8>)]) -> Message {
    let get = |name: &str| {
        fields
            .iter()
            .rev()
            .find(|(k, _)| k.as_slice() == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    };
    let lossy = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    let mut message = Message::new(get("payload").unwrap_or_default().to_vec());
    if get("payload").is_none() {
        message.payload = Err("the stream entry has no `payload` field".to_owned());
    }
    if let Some(id) = get("event_id") {
        message = message.event_id(lossy(id));
    }
    if let Some(name) = get("name") {
        message = message.name(lossy(name));
    }
    if let Some(version) = get("version") {
        message = message.version(lossy(version));
    }
    if let Some(key) = get("stream_key") {
        message = message.stream_key(lossy(key));
    }
    if let Some(id) = get("correlation_id") {
        message = message.correlation_id(lossy(id));
    }
    if let Some(id) = get("causation_id") {
        message = message.causation_id(lossy(id));
    }
    if let Some(raw) = get("headers") {
        match serde_json::from_slice::<Headers>(raw) {
            Ok(headers) => message.headers = headers,
            Err(err) => {
                let kept = match &message.payload {
                    Ok(payload) | Err(payload) => payload.clone(),
                };
                message.payload = Err(format!(
                    "the `headers` field is not a JSON object of strings ({err}): {}; payload kept as {kept}",
                    lossy(raw)
                ));
            }
        }
    }
    for name in [TRACEPARENT, TRACESTATE] {
        if let Some(value) = get(name)
            && !message.headers.contains_key(name)
        {
            message = message.header(name, lossy(value));
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn fields_map_to_the_message() {
        let fields: Vec<(Vec<u8>, Vec<u8>)> = [
            ("event_id", "0190a0a0-0000-7000-8000-000000000001"),
            ("name", "billing.invoice_paid"),
            ("version", "3"),
            ("payload", "{\"invoice_id\":7}"),
            ("headers", "{\"tenant\":\"acme\",\"traceparent\":\"t1\"}"),
            ("stream_key", "invoice-7"),
            ("correlation_id", "0190a0a0-0000-7000-8000-000000000002"),
            ("causation_id", "0190a0a0-0000-7000-8000-000000000003"),
            ("traceparent", "t1"),
            ("tracestate", "s1"),
            ("other", "ignored"),
        ]
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
        let want = Message::new(b"{\"invoice_id\":7}".to_vec())
            .event_id("0190a0a0-0000-7000-8000-000000000001")
            .name("billing.invoice_paid")
            .version("3")
            .stream_key("invoice-7")
            .correlation_id("0190a0a0-0000-7000-8000-000000000002")
            .causation_id("0190a0a0-0000-7000-8000-000000000003")
            .header("tenant", "acme")
            .header("traceparent", "t1")
            .header("tracestate", "s1");
        assert_eq!(message_of(&fields), want);
    }

    #[test]
    fn bad_headers_or_no_payload_make_a_dead_letter() {
        let fields = vec![
            (b"payload".to_vec(), b"{}".to_vec()),
            (b"headers".to_vec(), b"[1]".to_vec()),
        ];
        let err = message_of(&fields).payload.unwrap_err();
        assert!(
            err.contains("`headers` field") && err.ends_with("kept as {}"),
            "{err}"
        );
        let err = message_of(&[]).payload.unwrap_err();
        assert!(err.contains("no `payload`"), "{err}");
    }

    #[test]
    fn replies_parse() {
        let entry = |id: &str| {
            Value::Array(vec![
                bulk(id),
                Value::Array(vec![bulk("name"), bulk("a"), bulk("payload"), bulk("{}")]),
            ])
        };
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk("key"),
            Value::Array(vec![
                entry("1-0"),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let got = read_reply(resp2).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, "1-0");
        assert_eq!(
            got[0].1.as_deref().unwrap()[0],
            (b"name".to_vec(), b"a".to_vec())
        );
        assert_eq!(got[1], ("2-0".to_owned(), None));
        let resp3 = Value::Map(vec![(bulk("key"), Value::Array(vec![entry("3-0")]))]);
        assert_eq!(read_reply(resp3).unwrap()[0].0, "3-0");
        assert!(read_reply(Value::Nil).unwrap().is_empty());
    }

    #[tokio::test]
    async fn build_errors_hide_credentials() {
        let err = RedisSource::builder("redis://:hunter2@127.0.0.1:6379", "k", "g", "c")
            .tls_ca_pem("x")
            .build()
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a rediss:// URL"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let debug = format!(
            "{:?}",
            RedisSource::builder("redis://:hunter2@h:6379", "k", "g", "c")
        );
        assert!(!debug.contains("hunter2"), "{debug}");
    }
}
