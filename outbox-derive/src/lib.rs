//! Implementation detail of the `outbox` crate: `#[derive(Event)]`.
//!
//! Depend on `outbox` and write `#[derive(outbox::Event)]`; the attribute
//! reference lives in the `outbox` crate docs. This crate is released in
//! lockstep with `outbox` and its output uses `outbox::__private`, which is
//! not public API.
//!
//! The derive runs in three steps: `ast` (with `attr`) turns the `syn` input
//! into an `EventInput`, `valid` checks the rules that span several
//! attributes, and `expand` writes the impl (or, on any error, the errors plus
//! the `fallback` impl).

mod ast;
mod attr;
mod expand;
mod fallback;
mod valid;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Implements `outbox::Event` and registers the type by name.
#[proc_macro_derive(Event, attributes(outbox))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive(&input).into()
}
