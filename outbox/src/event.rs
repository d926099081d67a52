//! The [`Event`] trait that `#[derive(Event)]` implements, and how a stored
//! payload of an older version becomes the current type (upcasting).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A domain event that can be recorded in the outbox and relayed.
///
/// Implement it with `#[derive(outbox::Event)]`; see the crate docs for the
/// `#[outbox(..)]` attribute reference. A hand-written implementation works
/// too, but it is not registered by name, so the duplicate-name check at
/// build time cannot see it.
///
/// # Versions
///
/// Each entry is stored with the [`VERSION`](Event::VERSION) of the type
/// that recorded it. A typed publisher or consumer decodes it with
/// [`decode`](Event::decode), which turns the JSON of an older version into
/// the current type through the upcasters the derive declares
/// (`#[outbox(upcast_from = OldType)]` or `#[outbox(upcast(1 => f, ..))]`).
/// An entry of a newer version than the type knows is not decoded: the
/// relay leaves it pending, without an attempt, for a relay that knows it.
/// See "Changing events" in the README.
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The name stored with each entry and used to route it to its publisher.
    const NAME: &'static str;

    /// The version stored with each entry this type records
    /// (`#[outbox(version = N)]`, default 1; from 1 to `i32::MAX`, the
    /// tables' integer column).
    const VERSION: u32 = 1;

    /// Former names (`#[outbox(aliases = ["billing.paid"])]`): entries
    /// stored under one of them are routed to this type's publisher or
    /// consumer as if they had its name.
    const ALIASES: &'static [&'static str] = &[];

    /// `true` for `#[outbox(skip)]` types: they never enter the outbox.
    const SKIP: bool = false;

    /// Whether this value is published at all (`#[outbox(publish_if = path)]`).
    ///
    /// Decided when the event is recorded: `false` means no row is written.
    fn publish_if(&self) -> bool {
        true
    }

    /// Decodes a payload that version `version` of this event wrote
    /// (`1 <= version <= VERSION`) into the current type, applying the
    /// declared upcasters in order. The default (no upcasters) decodes every
    /// version as the current type: right when the changes only added
    /// fields with `#[serde(default)]`.
    ///
    /// # Errors
    ///
    /// The payload does not decode, or an upcaster refused it.
    fn decode(version: u32, payload: &str) -> Result<Self, serde_json::Error> {
        let _ = version;
        serde_json::from_str(payload)
    }
}

/// An upcaster on JSON: turns the payload of version N of an event into
/// version N + 1 (`#[outbox(upcast(N => path::to_fn))]`). An `Err` makes the
/// entry a dead letter with that reason.
///
/// ```
/// fn paid_v1_to_v2(mut v1: serde_json::Value) -> Result<serde_json::Value, String> {
///     let cents = v1["amount"].as_f64().ok_or("no `amount`")? * 100.0;
///     v1["amount_cents"] = serde_json::json!(cents.round() as i64);
///     Ok(v1)
/// }
/// let _: outbox::Upcaster = paid_v1_to_v2;
/// ```
pub type Upcaster = fn(serde_json::Value) -> Result<serde_json::Value, String>;

/// What decoding a stored or received payload gave.
#[derive(Debug)]
pub(crate) enum Decoded<E> {
    /// The current type, after any upcasts.
    Event(E),
    /// The payload is of a newer version than `E` knows (a rolling deploy).
    Newer,
    /// It does not decode (or an upcaster refused it): the reason.
    Failed(String),
}

/// Decodes a payload of `version` as `E`, upcasting older versions.
pub(crate) fn decode<E: Event>(version: u32, payload: &str) -> Decoded<E> {
    if version > E::VERSION {
        return Decoded::Newer;
    }
    if version == 0 {
        return Decoded::Failed(format!(
            "stored version 0 of `{}` is not a version (versions start at 1)",
            E::NAME
        ));
    }
    match E::decode(version, payload) {
        Ok(event) => Decoded::Event(event),
        Err(err) if version == E::VERSION => Decoded::Failed(format!(
            "payload does not decode as `{}` (`{}`): {err}",
            E::NAME,
            std::any::type_name::<E>()
        )),
        Err(err) => Decoded::Failed(format!(
            "payload of version {version} does not decode as `{}` version {} (`{}`): {err}",
            E::NAME,
            E::VERSION,
            std::any::type_name::<E>()
        )),
    }
}

/// `Event::decode` of a type with `#[outbox(upcast_from = P)]`: the current
/// version decodes as `E`; older ones decode as `P` (with its own chain)
/// and convert with `From`.
#[doc(hidden)]
pub fn decode_from<E, P>(version: u32, payload: &str) -> Result<E, serde_json::Error>
where
    E: Event + From<P>,
    P: Event,
{
    if version >= E::VERSION {
        serde_json::from_str(payload)
    } else {
        P::decode(version, payload).map(E::from)
    }
}

/// `Event::decode` of a type with `#[outbox(upcast(1 => f, 2 => g, ..))]`:
/// `steps[i]` turns version `i + 1` into `i + 2` (the derive checks that
/// the steps cover every version below the current one).
#[doc(hidden)]
pub fn decode_json<E: Event>(
    version: u32,
    payload: &str,
    steps: &[Upcaster],
) -> Result<E, serde_json::Error> {
    use serde::de::Error as _;
    if version >= E::VERSION {
        return serde_json::from_str(payload);
    }
    let mut value: serde_json::Value = serde_json::from_str(payload)?;
    for at in version.max(1)..E::VERSION {
        let step = usize::try_from(at - 1)
            .ok()
            .and_then(|i| steps.get(i))
            .ok_or_else(|| serde_json::Error::custom(format!("no upcaster from version {at}")))?;
        value = step(value).map_err(|reason| {
            serde_json::Error::custom(format!("upcaster from version {at} refused it: {reason}"))
        })?;
    }
    serde_json::from_value(value)
}

/// Byte-wise string equality in const context: the derive's check that an
/// `upcast_from` type has the same event name.
#[doc(hidden)]
#[must_use]
pub const fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}
