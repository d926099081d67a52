//! What `#[derive(Event)]` emits when the input has errors: the errors, plus
//! an `impl Event` of the right shape so that code using the type gets no
//! second wave of "trait `Event` is not implemented" errors. The fallback is
//! never registered with `inventory`, and has no const assertions on
//! `upcast_from` (they check the version, which may be the mistake already
//! reported); its `fn decode` still checks the upcasters' types, so those
//! errors come in the same compile.

use proc_macro2::TokenStream;
use quote::quote;
use syn::parse_quote;

use crate::ast::{EventInput, Shape};
use crate::expand::{event_impl, upcast_from_static, wrap_in_const};

pub(crate) fn expand(input: &EventInput<'_>, error: &syn::Error) -> TokenStream {
    let errors = error.to_compile_error();
    let fallback = match input.shape {
        // A union cannot meet `Event`'s supertraits (serde does not derive
        // for unions either), so an impl would only add errors.
        Shape::Union(_) => None,
        Shape::Struct | Shape::Enum => Some(fallback_impl(input)),
    };
    quote! {
        #errors
        #fallback
    }
}

/// The impl the derive would write, minus the registration and the checks
/// of `upcast_from`. Values that did not parse fall back to their defaults.
/// A generic type gets the trait's supertraits as a where clause, so the
/// impl itself is well-formed.
fn fallback_impl(input: &EventInput<'_>) -> TokenStream {
    let event_impl = if input.generics.params.is_empty() {
        event_impl(input, input.generics)
    } else {
        let mut generics = input.generics.clone();
        generics.make_where_clause().predicates.push(parse_quote! {
            Self: _outbox::__private::Serialize
                + _outbox::__private::DeserializeOwned
                + _outbox::__private::Send
                + _outbox::__private::Sync
                + 'static
        });
        event_impl(input, &generics)
    };
    let upcast_from = upcast_from_static(input, false);
    wrap_in_const(
        input,
        &quote! {
            #event_impl
            #upcast_from
        },
    )
}
