//! A transactional outbox for typed domain events.
//!
//! A service that changes its database and then tells a broker about it has
//! two writes that can fail apart: the commit succeeds and the publish is
//! lost, or the publish goes out for a change that was rolled back. The
//! outbox makes them one write: the event is inserted into an outbox table
//! *in the same transaction* as the business change, and a relay delivers
//! every committed row to the broker afterwards, at least once. Nothing
//! committed is lost; nothing rolled back is sent.
//!
//! # Tour
//!
//! ```no_run
//! use outbox::{Backend, Outbox, Publishers, Recorded};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize, outbox::Event)]
//! #[outbox(name = "billing.invoice_paid")]
//! struct InvoicePaid {
//!     invoice_id: i64,
//!     amount_cents: i64,
//! }
//!
//! async fn tour<DB: Backend>(pool: sqlx::Pool<DB>) -> Result<(), outbox::Error> {
//!     // Creates the table (migrations run on build) and checks event names.
//!     let outbox = Outbox::builder(pool.clone())
//!         .filter(|name| name.starts_with("billing."))
//!         .build()
//!         .await?;
//!
//!     // Record inside the business transaction.
//!     let mut tx = pool.begin().await?;
//!     // ... the business change, through `&mut *tx` ...
//!     let recording = outbox
//!         .record(&mut *tx, &InvoicePaid { invoice_id: 7, amount_cents: 1250 })
//!         .await?;
//!     tx.commit().await?;
//!     println!("recorded {:?}", recording.event_id());
//!
//!     // Relay: typed publishers receive `Recorded<E>`.
//!     let publishers = Publishers::builder()
//!         .on(|paid: Recorded<InvoicePaid>| async move {
//!             println!("{} {} -> broker", paid.event_id(), paid.event().invoice_id);
//!             Ok(())
//!         })
//!         .build()?;
//!     let report = outbox.run(&publishers, 100).await?;
//!     println!("published {}", report.published);
//!
//!     // In production: a loop that stops gracefully.
//!     outbox.relay(publishers).run(async { /* ctrl-c */ }).await;
//!     Ok(())
//! }
//! ```
//!
//! # The receiving side
//!
//! [`inbox`] is the other half: a consumer service decodes the same event
//! types, and each message's database effects commit exactly once, together
//! with its event id, before the broker is acknowledged (RabbitMQ, NATS
//! JetStream, Redis Streams and HTTP sources, each behind its broker
//! feature).
//!
//! # Features
//!
//! | feature | enables |
//! |---|---|
//! | `derive` (default) | `#[derive(Event)]` |
//! | `sqlite` | the SQLite store (embedded; one relay at a time) |
//! | `postgres` | the PostgreSQL store (`FOR UPDATE SKIP LOCKED`, many relays) |
//! | `mysql` | the MySQL/MariaDB store (`FOR UPDATE SKIP LOCKED`, many relays) |
//! | `all-databases` | all three stores |
//! | `broker-amqp` | `publisher::amqp`: RabbitMQ (lapin, publisher confirms, `amqps://` over rustls) |
//! | `broker-nats` | `publisher::nats`: NATS JetStream (async-nats, `Nats-Msg-Id` dedup, `tls://`) |
//! | `broker-redis` | `publisher::redis`: Redis Streams (`XADD`, pipelined per batch, `rediss://`) |
//! | `broker-http` | `publisher::http`: HTTP webhooks (reqwest + rustls, optional HMAC-SHA256 signature) |
//! | `opentelemetry` | trace context end to end: `record` stores the current span's W3C `traceparent`/`tracestate` in the entry's headers; the relay continues it in an `outbox.publish` span whose context the message carries (README, "Tracing") |
//!
//! # Guarantees
//!
//! - **Atomic recording**: [`Outbox::record`] writes through the caller's
//!   transaction; the row commits if and only if the transaction commits.
//! - **At least once**: a relay that crashes between publishing and recording
//!   the outcome leaves its claim to expire (the lease, default 30 s); the
//!   entries are then published again. Every entry carries a unique
//!   [`Entry::event_id`] (UUID v7): consumers deduplicate on it.
//! - **Order**: entries are claimed and dispatched in record order (the
//!   table's id). A failed entry does not hold back the others: it is tried
//!   again after its backoff, among the entries due then.
//! - **Attempts and dead letters**: a failure has a scope (see
//!   [`publisher`], "Failure scopes"). A [`PublishError::rejected`] costs an
//!   attempt; after the last one (default 3) the entry is a dead letter,
//!   kept with its reason until [`Outbox::requeue`] or [`Outbox::purge`]. A
//!   [`PublishError::transient`] backs the entry off on its own and costs an
//!   attempt only while its destination answers other entries. A
//!   [`PublishError::unavailable`] costs none and makes no dead letter: that
//!   publisher is blocked and paused while the others go on, and resumes by
//!   itself. A payload that no longer decodes is dead at once. An entry
//!   whose name has no publisher stays pending (reported as unroutable) and
//!   costs no attempt. A panicking publisher is a failed attempt of the
//!   entry it was publishing.
//! - **Leases**: a claim is renewed while its batch is in flight; an outcome
//!   that lost its claim anyway is reported ([`Report::lost`]), never
//!   counted as done.
//! - **Commit order** (PostgreSQL): a claim never passes an entry whose
//!   transaction may still commit.
//! - **Short transactions**: claiming a batch and recording its outcomes are
//!   two short transactions; no transaction (and on SQLite no write lock) is
//!   held while a publisher runs.
//!
//! # The `#[outbox(..)]` attribute
//!
//! ## `name = "..."`
//!
//! The stored event name, used for routing and filtering. A non-empty
//! string without whitespace. Default: the type's name.
//!
//! ## `publish_if = path`
//!
//! A path to a `fn(&Self) -> bool`, asked when the event is recorded: `false`
//! writes no row and [`Outbox::record`] returns
//! [`Recording::Filtered`]`(`[`FilterReason::PublishIf`]`)`.
//!
//! ## `skip`
//!
//! The type never enters the outbox (decided at compile time);
//! [`Outbox::record`] returns [`FilterReason::Skipped`]. Cannot be combined
//! with `publish_if`, `version`, `aliases`, `upcast_from` or `upcast`.
//!
//! ## `crate = path`
//!
//! Where the `outbox` crate is, for crates that re-export it. Default `::outbox`.
//!
//! ## `version = N`
//!
//! The version stored with every entry this type records ([`Event::VERSION`],
//! [`Entry::version`], the `outbox-event-version` broker header). An integer
//! from 1 (no suffix, or `u32`); default 1. Raise it when the payload's shape changes, and say
//! how older payloads become this one with one of the two keys below (or
//! neither, when old payloads still decode as the new type, e.g. the change
//! only added `#[serde(default)]` fields). See "Changing events" in the README.
//!
//! ## `upcast_from = OldType`
//!
//! A typed upcaster: `OldType` is the previous version of this event, kept
//! in the code with `#[derive(Event)]`, the same `name` and `version = N - 1`,
//! and `impl From<OldType> for Self`. A payload older than `N` decodes as
//! `OldType` (through its own upcasters) and converts with `From`. These
//! are compile errors: `OldType` is not an `Event`, has another name, has
//! a version other than `N - 1`, or lacks the `From` conversion.
//!
//! ## `upcast(1 => path, 2 => path, ..)`
//!
//! Upcasters on JSON: each path is an [`Upcaster`], a
//! `fn(serde_json::Value) -> Result<serde_json::Value, String>` that turns
//! the payload of the version on its left into the next one. The steps
//! must cover every version from 1 to `N - 1`, once each (a gap is a
//! compile error). Cannot be combined with `upcast_from`.
//!
//! ## `aliases = ["old.name", ..]`
//!
//! Former names of this event: entries stored (or messages received) under
//! one of them go to this type's publisher or consumer. Each alias follows
//! the rules of `name`; the list is not empty, repeats no alias and does not
//! hold the type's own name.
//!
//! Two types with the same name and version, or an alias that is another
//! type's name or alias, make [`OutboxBuilder::build`] fail with
//! [`Error::DuplicateEventName`], naming both types. Types with one name
//! and different versions (a type and the old versions it upcasts from)
//! are one event.
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod entry;
mod error;
mod event;
mod follow;
mod handle;
pub mod inbox;
pub mod publisher;
mod registry;
mod relay;
mod store;
mod trace;

pub use entry::{Entry, Headers, Metadata, Recorded};
pub use error::{Error, Result};
pub use event::{Event, Upcaster};
pub use follow::{Follow, FollowTick};
pub use handle::{Batch, FilterReason, Outbox, OutboxBuilder, Recording, migrate};
pub use publisher::{
    Blocked, ErrorKind, PublishError, PublishResult, Publisher, Publishers, PublishersBuilder,
    RawPublisher,
};
pub use relay::{Backoff, Relay, Report};
pub use store::{Backend, DeadLetter, Followed, Gauges, NameStats, Stats, TableName};

/// The sqlx this crate is built with (0.9): name its types through this
/// path (`outbox::sqlx::PgPool`) to be sure they are the ones the outbox
/// takes.
pub use sqlx;

/// `#[derive(Event)]`: see the attribute reference in the crate docs.
#[cfg(feature = "derive")]
pub use outbox_derive::Event;

// Not public API: used by the code `#[derive(Event)]` generates and changes
// in lockstep with the exact-pinned `outbox-derive`.
#[doc(hidden)]
pub mod __private {
    pub use crate::event::{Upcaster, decode_from, decode_json, same_name};
    pub use crate::registry::Registration;
    pub use core::convert::From;
    pub use core::{concat, module_path, panic};
    pub use inventory;
    // The fallback impl for a generic type states `Event`'s supertraits as a
    // where clause: `Self: Serialize + DeserializeOwned + Send + Sync + 'static`.
    pub use core::marker::{Send, Sync};
    pub use serde::Serialize;
    pub use serde::de::DeserializeOwned;
    pub type Bool = bool;
    pub type Str = &'static str;
    pub type U32 = u32;
    pub type Text = str;
    pub type Aliases = &'static [&'static str];
    pub type DecodeResult<T> = Result<T, serde_json::Error>;
}
