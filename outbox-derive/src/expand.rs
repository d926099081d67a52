//! Writes the `impl Event` and its registration. Code is quoted only here and
//! in `fallback`, which reuses the pieces below.
//!
//! Generated code names the runtime only as `_outbox`, bound once by
//! `use ::outbox as _outbox;` (or the `#[outbox(crate = path)]` path), and
//! reaches std items through `_outbox::__private`, so user items named
//! `Option`, `bool`, `core` or `inventory` cannot change its meaning.

use proc_macro2::{Literal, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, ExprPath, Generics};

use crate::ast::EventInput;
use crate::attr::{Errors, Step};
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

/// The impl, the checks of `upcast_from` and, unless `skip`, the
/// `inventory` registration.
fn impl_event(input: &EventInput<'_>) -> TokenStream {
    let event_impl = event_impl(input, input.generics);
    let upcast_from = upcast_from_static(input, true);
    let registration = (!input.is_skip()).then(|| {
        let ident = input.ident;
        let type_name = input.type_name();
        quote! {
            _outbox::__private::inventory::submit! {
                _outbox::__private::Registration::new(
                    <#ident as _outbox::Event>::NAME,
                    <#ident as _outbox::Event>::VERSION,
                    <#ident as _outbox::Event>::ALIASES,
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
            #upcast_from
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
    let version = input.attrs.version.as_ref().map(|version| {
        let mut number = Literal::u32_unsuffixed(version.value.number);
        number.set_span(version.value.lit.span());
        quote! {
            const VERSION: _outbox::__private::U32 = #number;
        }
    });
    let aliases = input.attrs.aliases.as_ref().map(|aliases| {
        let list = &aliases.value.list;
        quote! {
            const ALIASES: _outbox::__private::Aliases = &[#(#list),*];
        }
    });
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
    // With both kinds of upcaster (an error) the fallback keeps the first.
    // A generic type (an error too) gets no `upcast_from` decode, since
    // `__OUTBOX_UPCAST_FROM` would need its parameters.
    let decode = match (&input.attrs.upcast_from, &input.attrs.upcast) {
        (Some(_), _) if !generics.params.is_empty() => None,
        (Some(_), _) => Some(decode_fn(&quote! {
            __OUTBOX_UPCAST_FROM(__outbox_version, __outbox_payload)
        })),
        (None, Some(upcast)) => Some(decode_json_fn(&upcast.value.steps)),
        (None, None) => None,
    };
    quote! {
        #[automatically_derived]
        impl #impl_generics _outbox::Event for #ident #ty_generics #where_clause {
            const NAME: _outbox::__private::Str = #name;
            #version
            #aliases
            #skip
            #publish_if
            #decode
        }
    }
}

/// `fn decode` of `upcast(1 => f, ..)`: each upcaster goes through a typed
/// binding spanned at the user's path, so a wrong signature is reported
/// there; the steps are passed in version order.
fn decode_json_fn(steps: &[Step]) -> TokenStream {
    let mut steps: Vec<&Step> = steps.iter().collect();
    steps.sort_by_key(|step| step.from.number);
    let names: Vec<_> = steps
        .iter()
        .map(|step| format_ident!("__outbox_upcast_{}", step.from.number))
        .collect();
    let bindings = steps.iter().zip(&names).map(|(step, name)| {
        let path = &step.path;
        quote_spanned! {path.span()=>
            let #name: _outbox::__private::Upcaster = #path;
        }
    });
    decode_fn(&quote! {
        #(#bindings)*
        _outbox::__private::decode_json::<Self>(
            __outbox_version,
            __outbox_payload,
            &[#(#names),*],
        )
    })
}

/// `fn decode(version, payload)` with `body`.
fn decode_fn(body: &TokenStream) -> TokenStream {
    quote! {
        fn decode(
            __outbox_version: _outbox::__private::U32,
            __outbox_payload: &_outbox::__private::Text,
        ) -> _outbox::__private::DecodeResult<Self> {
            #body
        }
    }
}

/// For `upcast_from = OldType`: `static __OUTBOX_UPCAST_FROM`, the
/// `decode_from::<Self, OldType>` that `fn decode` calls and, if `checked`,
/// const assertions that `OldType` is the version just before this one of
/// the same event (the fallback leaves them out: the version they check may
/// be the reported mistake).
///
/// Everything is spanned at the user's path, so "`OldType` is not an
/// `Event`", a missing `From` impl and a failed assertion are reported
/// there. As one body that names `OldType` once (through an alias), it
/// reports each of those once, where the assertions and `fn decode` would
/// each report them; a `static`, unlike a `const`, is not evaluated into
/// `fn decode`, so a failed assertion gets no second note there. The
/// messages name both types, since rustc shows a failed assertion as
/// "evaluation panicked" with little else.
pub(crate) fn upcast_from_static(input: &EventInput<'_>, checked: bool) -> Option<TokenStream> {
    let old = &input.attrs.upcast_from.as_ref()?.value;
    if !input.generics.params.is_empty() {
        return None;
    }
    let span = old.span();
    // This type, named at the user's path: the `From` bound on it is
    // reported there.
    let mut ident = input.ident.clone();
    ident.set_span(span);
    let checks = checked.then(|| upcast_from_checks(input)).flatten();
    Some(quote_spanned! {span=>
        static __OUTBOX_UPCAST_FROM: fn(
            _outbox::__private::U32,
            &_outbox::__private::Text,
        ) -> _outbox::__private::DecodeResult<#ident> = {
            type __OutboxOld = #old;
            type __OutboxNew = #ident;
            #checks
            _outbox::__private::decode_from::<__OutboxNew, __OutboxOld>
        };
    })
}

/// The statements of `upcast_from_static`'s assertions, on its aliases.
fn upcast_from_checks(input: &EventInput<'_>) -> Option<TokenStream> {
    let old = &input.attrs.upcast_from.as_ref()?.value;
    let version = input.attrs.version.as_ref().map_or(1, |v| v.value.number);
    // `valid` has rejected `upcast_from` on version 1.
    let previous = Literal::u32_unsuffixed(version.checked_sub(1)?);
    let old_name = tokens_to_string(old);
    let name = input.name();
    let type_name = input.type_name();
    let attr = format!("`#[outbox(upcast_from = {old_name})]`");
    let other_name =
        format!("{attr}: `{old_name}` is not a version of event `{name}` (it has another name)");
    let gap = format!(
        "{attr}: `{old_name}` must have version {previous} (this type, `{type_name}`, \
         is version {version}): a gap in the upcast chain"
    );
    let later = format!(
        "{attr}: `{old_name}` must have version {previous} (this type, `{type_name}`, \
         is version {version}): an upcast goes from the version just before"
    );
    Some(quote_spanned! {old.span()=>
        if !_outbox::__private::same_name(
            <__OutboxOld as _outbox::Event>::NAME,
            <__OutboxNew as _outbox::Event>::NAME,
        ) {
            _outbox::__private::panic!("{}", #other_name);
        }
        if <__OutboxOld as _outbox::Event>::VERSION < #previous {
            _outbox::__private::panic!("{}", #gap);
        }
        if <__OutboxOld as _outbox::Event>::VERSION > #previous {
            _outbox::__private::panic!("{}", #later);
        }
    })
}

/// Tokens as a person writes them (`a::B<C>`, not `a :: B < C >`), for
/// messages: a space is kept only between two words.
fn tokens_to_string(tokens: &impl ToTokens) -> String {
    let spaced = tokens.to_token_stream().to_string();
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let chars: Vec<char> = spaced.chars().collect();
    let mut out = String::with_capacity(spaced.len());
    for (i, &c) in chars.iter().enumerate() {
        let keep = c != ' '
            || (i > 0
                && i + 1 < chars.len()
                && (is_word(chars[i - 1]) || chars[i - 1] == ',')
                && is_word(chars[i + 1]));
        if keep {
            out.push(c);
        }
    }
    out
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
///
/// `unused_qualifications` is allowed inside: code spanned at the user's
/// tokens (for error locations) names runtime items by full path, and a
/// user module that imports `outbox::Event` would otherwise see that
/// lint on its own `upcast_from` path.
pub(crate) fn wrap_in_const(input: &EventInput<'_>, items: &TokenStream) -> TokenStream {
    let runtime = input
        .attrs
        .krate
        .as_ref()
        .map_or_else(|| quote!(::outbox), |krate| krate.value.to_token_stream());
    quote! {
        #[doc(hidden)]
        #[allow(unused_qualifications)]
        const _: () = {
            use #runtime as _outbox;
            #items
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::{TypePath, parse_quote};

    #[test]
    fn types_in_messages_read_as_written() {
        let cases: [(TypePath, &str); 4] = [
            (parse_quote!(InvoicePaidV1), "InvoicePaidV1"),
            (parse_quote!(crate::v1::Paid), "crate::v1::Paid"),
            (parse_quote!(<X as Y>::Old), "<X as Y>::Old"),
            (parse_quote!(v1::Paid<u8, String>), "v1::Paid<u8, String>"),
        ];
        for (ty, expected) in cases {
            assert_eq!(tokens_to_string(&ty), expected);
        }
    }
}
