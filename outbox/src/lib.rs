//! Transactional outbox (crate docs are written in full below).
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod entry;
mod error;
mod event;
mod handle;
mod publisher;
mod registry;
mod relay;
mod store;

pub use entry::{Entry, Headers, Metadata, Recorded};
pub use error::{Error, Result};
pub use event::Event;
pub use handle::{Batch, FilterReason, Outbox, OutboxBuilder, Recording, migrate};
pub use publisher::{
    ErrorKind, PublishError, PublishResult, Publisher, Publishers, PublishersBuilder, RawPublisher,
};
pub use relay::{Backoff, Relay, Report};
pub use store::{Backend, DeadLetter, TableName};

/// `#[derive(Event)]`: see the attribute reference in the crate docs.
#[cfg(feature = "derive")]
pub use outbox_derive::Event;

// Not public API: used by the code `#[derive(Event)]` generates and changes
// in lockstep with the exact-pinned `outbox-derive`.
#[doc(hidden)]
pub mod __private {
    pub use crate::registry::Registration;
    pub use core::{concat, module_path, stringify};
    pub use inventory;
    // The fallback impl for a generic type states `Event`'s supertraits as a
    // where clause: `Self: Serialize + DeserializeOwned + Send + Sync + 'static`.
    pub use core::marker::{Send, Sync};
    pub use serde::Serialize;
    pub use serde::de::DeserializeOwned;
    pub type Bool = bool;
    pub type Str = &'static str;
}
