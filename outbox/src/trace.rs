//! Trace context from the request that recorded an event to the broker
//! message (feature `opentelemetry`).
//!
//! - At record time ([`record_context`]), the current `tracing` span's
//!   OpenTelemetry context is stored in the entry's headers as the W3C
//!   `traceparent` (and `tracestate` when it is not empty), unless the
//!   caller set either header.
//! - At relay time ([`PublishSpans`]), each entry whose headers carry a
//!   `traceparent` gets its own `outbox.publish` span, an OpenTelemetry child
//!   of that context. Before the publisher sees the entry, its `traceparent`
//!   and `tracestate` are rewritten to the new span's context, so the
//!   message continues the trace from the relay's span. The span closes once
//!   the outcome is known, with the outcome recorded on it.
//!
//! The W3C propagator of the OpenTelemetry project lives in
//! `opentelemetry_sdk`, which a library should not pull in (the application
//! picks its SDK). The `traceparent` format is small, so it is written and
//! parsed here, on the types of the `opentelemetry` API, following
//! <https://www.w3.org/TR/trace-context/> (`tracestate` is parsed by
//! `opentelemetry`'s `TraceState`).
//!
//! Without the feature, [`record_context`] is empty and [`PublishSpans`] is
//! zero-sized: nothing changes and nothing costs. With it, an entry without
//! a `traceparent` costs the relay one map lookup and no allocation.

use crate::entry::{Entry, Headers};
use crate::publisher::Delivery;

/// The W3C header naming the trace, the parent span and the sampling flag.
#[cfg(any(
    feature = "opentelemetry",
    feature = "broker-http",
    feature = "broker-redis"
))]
pub(crate) const TRACEPARENT: &str = "traceparent";
/// The W3C header with vendor-specific trace state.
#[cfg(any(
    feature = "opentelemetry",
    feature = "broker-http",
    feature = "broker-redis"
))]
pub(crate) const TRACESTATE: &str = "tracestate";

/// Stores the current span's trace context in `headers` (record time),
/// unless they already hold a `traceparent` or `tracestate`.
#[cfg(feature = "opentelemetry")]
pub(crate) fn record_context(headers: &mut Headers) {
    otel::record_context(headers);
}

/// Without the feature: nothing.
#[cfg(not(feature = "opentelemetry"))]
#[inline]
pub(crate) fn record_context(_: &mut Headers) {}

/// The `outbox.publish` spans of one dispatch, by index of their entry.
pub(crate) struct PublishSpans {
    #[cfg(feature = "opentelemetry")]
    spans: Vec<(usize, tracing::Span)>,
}

impl PublishSpans {
    /// Opens an `outbox.publish` span for each entry that carries a
    /// `traceparent`, as a child of that context, and rewrites the entry's
    /// `traceparent` and `tracestate` to the new span's context. Call it
    /// just before the entries are handed to the publisher.
    #[cfg(feature = "opentelemetry")]
    pub(crate) fn open(mut entries: Vec<Entry>) -> (Vec<Entry>, Self) {
        let spans = otel::open(&mut entries);
        (entries, spans)
    }

    /// Records on each span the outcome of its entry (`deliveries` has one
    /// per entry given to [`open`](Self::open), in the same order), and
    /// closes the spans.
    #[cfg(feature = "opentelemetry")]
    pub(crate) fn close(self, deliveries: &[Delivery]) {
        otel::close(self, deliveries);
    }

    /// Without the feature: nothing.
    #[cfg(not(feature = "opentelemetry"))]
    #[inline]
    pub(crate) fn open(entries: Vec<Entry>) -> (Vec<Entry>, Self) {
        (entries, Self {})
    }

    /// Without the feature: nothing.
    #[cfg(not(feature = "opentelemetry"))]
    #[inline]
    #[allow(clippy::unused_self)] // Reason: the signature it has with the feature.
    pub(crate) fn close(self, _: &[Delivery]) {}
}

#[cfg(feature = "opentelemetry")]
mod otel {
    use std::str::FromStr;

    use opentelemetry::Context;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing::field::Empty;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::{PublishSpans, TRACEPARENT, TRACESTATE};
    use crate::entry::{Entry, Headers};
    use crate::publisher::{Delivery, ErrorKind};

    /// The only `traceparent` version this writes; later ones are read as it.
    const VERSION: &str = "00";

    pub(super) fn record_context(headers: &mut Headers) {
        if headers.contains_key(TRACEPARENT) || headers.contains_key(TRACESTATE) {
            return;
        }
        let cx = tracing::Span::current().context();
        write(&cx, headers);
    }

    /// Writes the span context of `cx` into `headers`; `false` (and nothing
    /// written) if `cx` has no valid span context.
    fn write(cx: &Context, headers: &mut Headers) -> bool {
        let span = cx.span();
        let context = span.span_context();
        if !context.is_valid() {
            return false;
        }
        headers.insert(TRACEPARENT.to_owned(), traceparent(context));
        let state = context.trace_state().header();
        if state.is_empty() {
            headers.remove(TRACESTATE);
        } else {
            headers.insert(TRACESTATE.to_owned(), state);
        }
        true
    }

    /// `00-<trace id>-<span id>-<flags>`, lowercase hex.
    pub(super) fn traceparent(context: &SpanContext) -> String {
        let flags = (context.trace_flags() & TraceFlags::SAMPLED).to_u8();
        format!(
            "{VERSION}-{}-{}-{flags:02x}",
            context.trace_id(),
            context.span_id()
        )
    }

    /// Whether `s` is `len` lowercase hex digits.
    fn lower_hex(s: &str, len: usize) -> bool {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }

    /// A remote span context from a `traceparent` (and `tracestate`) header,
    /// or `None` if the `traceparent` is not valid. A `tracestate` that does
    /// not parse is dropped, as the W3C recommendation says.
    pub(super) fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
        let value = traceparent.trim_matches([' ', '\t']);
        let mut parts = value.splitn(5, '-');
        let version = parts.next()?;
        let (trace_id, span_id, flags) = (parts.next()?, parts.next()?, parts.next()?);
        // Version ff is invalid; 00 has exactly four fields; a later
        // version may append fields after a dash, which are ignored.
        if !lower_hex(version, 2)
            || version == "ff"
            || (version == VERSION && parts.next().is_some())
        {
            return None;
        }
        if !(lower_hex(trace_id, 32) && lower_hex(span_id, 16) && lower_hex(flags, 2)) {
            return None;
        }
        let trace_id = TraceId::from_hex(trace_id).ok()?;
        let span_id = SpanId::from_hex(span_id).ok()?;
        let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?) & TraceFlags::SAMPLED;
        let state = tracestate
            .and_then(|state| TraceState::from_str(state).ok())
            .unwrap_or_default();
        let context = SpanContext::new(trace_id, span_id, flags, true, state);
        context.is_valid().then_some(context)
    }

    pub(super) fn open(entries: &mut [Entry]) -> PublishSpans {
        let mut spans = Vec::new();
        for (i, entry) in entries.iter_mut().enumerate() {
            let Some(recorded) = entry.headers.get(TRACEPARENT) else {
                continue;
            };
            let state = entry.headers.get(TRACESTATE).map(String::as_str);
            let Some(parent) = parse(recorded, state) else {
                tracing::debug!(position = entry.position, event_id = %entry.event_id, "traceparent header is not W3C trace context: sent as recorded");
                continue;
            };
            let span = tracing::info_span!(
                "outbox.publish",
                otel.kind = "producer",
                name = %entry.name,
                event_id = %entry.event_id,
                position = entry.position,
                outcome = Empty,
                error = Empty,
                error_kind = Empty,
                otel.status_description = Empty,
            );
            // A disabled span, or no OpenTelemetry layer: the message keeps
            // the context it was recorded with.
            if span.is_disabled()
                || span
                    .set_parent(Context::new().with_remote_span_context(parent))
                    .is_err()
                || !write(&span.context(), &mut entry.headers)
            {
                continue;
            }
            spans.push((i, span));
        }
        PublishSpans { spans }
    }

    pub(super) fn close(spans: PublishSpans, deliveries: &[Delivery]) {
        for (i, span) in spans.spans {
            match deliveries.get(i) {
                Some(Delivery::Published) => {
                    span.record("outcome", "published");
                }
                Some(Delivery::Failed(err)) => {
                    let kind = match err.kind() {
                        ErrorKind::Rejected => "rejected",
                        ErrorKind::Transient => "transient",
                        ErrorKind::Unavailable => "unavailable",
                    };
                    span.record("outcome", "failed");
                    span.record("error_kind", kind);
                    span.record("error", err.message());
                    span.record("otel.status_description", err.message());
                }
                Some(Delivery::Undecodable(reason)) => {
                    span.record("outcome", "undecodable");
                    span.record("error", reason.as_str());
                    span.record("otel.status_description", reason.as_str());
                }
                Some(Delivery::NotAttempted) | None => {
                    span.record("outcome", "not_attempted");
                }
            }
            // Dropping the span closes it.
        }
    }
}

#[cfg(all(test, feature = "opentelemetry"))]
mod tests {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId};

    use super::otel::{parse, traceparent};

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_writes_back_the_same_header() {
        let context = parse(VALID, Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")).unwrap();
        assert_eq!(
            context.trace_id(),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
        assert_eq!(
            context.span_id(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap()
        );
        assert!(context.is_sampled());
        assert!(context.is_remote());
        assert_eq!(context.trace_state().get("rojo"), Some("00f067aa0ba902b7"));
        assert_eq!(traceparent(&context), VALID);
    }

    #[test]
    fn keeps_only_the_sampled_flag_and_reads_later_versions() {
        let unsampled = parse(&VALID.replace("-01", "-00"), None).unwrap();
        assert_eq!(unsampled.trace_flags(), TraceFlags::NOT_SAMPLED);
        let other_flags = parse(&VALID.replace("-01", "-09"), None).unwrap();
        assert_eq!(other_flags.trace_flags(), TraceFlags::SAMPLED);
        let later = parse(&format!("cc{}-what-comes-next", &VALID[2..]), None).unwrap();
        assert_eq!(traceparent(&later), VALID);
        let padded = parse(&format!(" {VALID}\t"), None).unwrap();
        assert_eq!(traceparent(&padded), VALID);
    }

    #[test]
    fn a_bad_tracestate_is_dropped_not_the_context() {
        let context = parse(VALID, Some("not a list member")).unwrap();
        assert!(context.trace_state().header().is_empty());
    }

    #[test]
    fn refuses_what_is_not_w3c_trace_context() {
        for bad in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse(bad, None).is_none(), "{bad:?} parsed");
        }
    }
}
