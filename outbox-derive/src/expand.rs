//! Writes the `impl Event` and its registration. Code is quoted only here and
//! in `fallback`, which reuses the pieces below.
//!
//! Generated code names the runtime only as `_outbox`, bound once by
//! `use ::outbox as _outbox;` (or the `#[outbox(crate = path)]` path), and
//! reaches std items through `_outbox::__private`, so user items named
//! `Option`, `bool`, `core` or `inventory` cannot change its meaning.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, ExprPath, Generics};

use crate::ast::EventInput;
use crate::attr::Errors;
use crate::{fallback, valid};

/// The whole expansion of `#[derive(Event)]`.
pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    let mut errors = Errors::default();
    let input = EventInput::from_syn(input, &mut errors);
    valid::check(&input, &mut errors);
    match errors.finish() {
        Ok(()) => impl_event(&input),
        Err(error) => fallback::expand(&input, &error),
    }
}

/// The impl plus, unless `skip`, its `inventory` registration.
fn impl_event(input: &EventInput<'_>) -> TokenStream {
    let event_impl = event_impl(input, input.generics);
    let registration = (!input.is_skip()).then(|| {
        let name = input.name();
        let type_name = input.type_name();
        quote! {
            _outbox::__private::inventory::submit! {
                _outbox::__private::Registration::new(
                    #name,
                    _outbox::__private::concat!(
                        _outbox::__private::module_path!(),
                        "::",
                        #type_name,
                    ),
                )
            }
        }
    });
    wrap_in_const(
        input,
        &quote! {
            #event_impl
            #registration
        },
    )
}

/// `impl _outbox::Event for T { .. }`, with `generics` (the fallback adds
/// bounds to them).
pub(crate) fn event_impl(input: &EventInput<'_>, generics: &Generics) -> TokenStream {
    let ident = input.ident;
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let name = input.name();
    let skip = input.is_skip().then(|| {
        quote! {
            const SKIP: _outbox::__private::Bool = true;
        }
    });
    let publish_if = input
        .attrs
        .publish_if
        .as_ref()
        .map(|publish_if| publish_if_fn(&publish_if.value));
    quote! {
        #[automatically_derived]
        impl #impl_generics _outbox::Event for #ident #ty_generics #where_clause {
            const NAME: _outbox::__private::Str = #name;
            #skip
            #publish_if
        }
    }
}

/// `fn publish_if` calling the user's function through a typed binding that
/// is spanned at the user's path, so a wrong signature is reported there.
fn publish_if_fn(path: &ExprPath) -> TokenStream {
    let binding = quote_spanned! {path.span()=>
        let __outbox_publish_if: fn(&Self) -> _outbox::__private::Bool = #path;
    };
    quote! {
        fn publish_if(&self) -> _outbox::__private::Bool {
            #binding
            __outbox_publish_if(self)
        }
    }
}

/// `#[doc(hidden)] const _: () = { use <runtime> as _outbox; <items> };`
pub(crate) fn wrap_in_const(input: &EventInput<'_>, items: &TokenStream) -> TokenStream {
    let runtime = input
        .attrs
        .krate
        .as_ref()
        .map_or_else(|| quote!(::outbox), |krate| krate.value.to_token_stream());
    quote! {
        #[doc(hidden)]
        const _: () = {
            use #runtime as _outbox;
            #items
        };
    }
}
