//! The [`Event`] trait that `#[derive(Event)]` implements.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A domain event that can be recorded in the outbox and relayed.
///
/// Implement it with `#[derive(outbox::Event)]`; see the crate docs for the
/// `#[outbox(..)]` attribute reference. A hand-written implementation works
/// too, but it is not registered by name, so the duplicate-name check at
/// build time cannot see it.
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The name stored with each entry and used to route it to its publisher.
    const NAME: &'static str;

    /// `true` for `#[outbox(skip)]` types: they never enter the outbox.
    const SKIP: bool = false;

    /// Whether this value is published at all (`#[outbox(publish_if = path)]`).
    ///
    /// Decided when the event is recorded: `false` means no row is written.
    fn publish_if(&self) -> bool {
        true
    }
}
