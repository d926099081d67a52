//! Rules that involve the type's shape or more than one attribute. Rules on a
//! single key's value are checked while parsing it (`attr`).

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::Error;

use crate::ast::{EventInput, Shape};
use crate::attr::{self, Errors, Keyed};

/// Records every violated rule in `errors`.
pub(crate) fn check(input: &EventInput<'_>, errors: &mut Errors) {
    if let Shape::Union(token) = &input.shape {
        errors.push(Error::new_spanned(
            token,
            "#[derive(Event)] does not support unions",
        ));
    }
    if !input.generics.params.is_empty() {
        // Each type is registered by name in a `static`, which needs one
        // concrete type (the reason typetag refuses generic impls).
        errors.push(Error::new_spanned(
            input.generics,
            "#[derive(Event)] does not support generic types, an event must be a concrete type",
        ));
    }
    for attr in &input.misplaced {
        errors.push(Error::new_spanned(
            attr,
            "#[outbox(...)] goes on the event type, not on a field or variant",
        ));
    }
    check_skip(input, errors);
    check_aliases(input, errors);
    check_upcast(input, errors);
}

/// A skipped type is never stored, so no key about storing it applies.
fn check_skip(input: &EventInput<'_>, errors: &mut Errors) {
    let attrs = &input.attrs;
    if attrs.skip.is_none() {
        return;
    }
    let keys = [
        attrs
            .publish_if
            .as_ref()
            .map(|k| ("publish_if = ...", with_value(k))),
        attrs
            .version
            .as_ref()
            .map(|k| ("version = ...", with_value(k))),
        attrs
            .aliases
            .as_ref()
            .map(|k| ("aliases = ...", with_value(k))),
        attrs
            .upcast_from
            .as_ref()
            .map(|k| ("upcast_from = ...", with_value(k))),
        attrs
            .upcast
            .as_ref()
            .map(|k| ("upcast(...)", with_value(k))),
    ];
    for (usage, tokens) in keys.into_iter().flatten() {
        errors.push(Error::new_spanned(
            tokens,
            format!("#[outbox({usage})] cannot be combined with #[outbox(skip)]"),
        ));
    }
}

/// An alias that is the event's own name routes nothing new.
fn check_aliases(input: &EventInput<'_>, errors: &mut Errors) {
    let Some(aliases) = &input.attrs.aliases else {
        return;
    };
    if input.attrs.failed.contains(&attr::NAME) {
        return;
    }
    let name = input.name();
    for alias in &aliases.value.list {
        if alias.value() == name {
            errors.push(Error::new(
                alias.span(),
                format!("alias \"{name}\" is the event's own name"),
            ));
        }
    }
}

/// An upcaster needs an older version to upcast from, one kind of upcaster
/// at a time, and `upcast(..)` one step for each older version.
fn check_upcast(input: &EventInput<'_>, errors: &mut Errors) {
    let attrs = &input.attrs;
    let version = attrs.version.as_ref().map_or(1, |v| v.value.number);
    // A rejected `version` is reported already; checking against the
    // default would report the same mistake twice.
    let version_known = !attrs.failed.contains(&attr::VERSION);
    if version_known && version < 2 {
        for (usage, key) in [
            (
                "upcast_from = ...",
                attrs.upcast_from.as_ref().map(|k| &k.key),
            ),
            ("upcast(...)", attrs.upcast.as_ref().map(|k| &k.key)),
        ] {
            if let Some(key) = key {
                errors.push(Error::new_spanned(
                    key,
                    format!(
                        "#[outbox({usage})] needs #[outbox(version = N)] with N >= 2, \
                         version 1 has nothing to upcast from"
                    ),
                ));
            }
        }
    }
    let Some(upcast) = &attrs.upcast else {
        return;
    };
    if attrs.upcast_from.is_some() || attrs.failed.contains(&attr::UPCAST_FROM) {
        errors.push(Error::new_spanned(
            with_value(upcast),
            "#[outbox(upcast(...))] cannot be combined with #[outbox(upcast_from = ...)]",
        ));
    }
    if !version_known || version < 2 {
        return;
    }
    let mut covered = Vec::new();
    for step in &upcast.value.steps {
        let from = step.from.number;
        if from >= version {
            errors.push(Error::new(
                step.from.lit.span(),
                format!(
                    "upcast step from version {from}, but this type is version {version} \
                     (the steps go from 1 to {})",
                    version - 1
                ),
            ));
        } else {
            covered.push(from);
        }
    }
    // The versions are not enumerated (`version` may be up to u32::MAX):
    // each run of missing ones is found between two covered versions.
    covered.sort_unstable();
    let mut next = 1;
    for from in covered.into_iter().chain([version]) {
        if from > next {
            let missing = if from - 1 == next {
                format!("no step from version {next}")
            } else {
                format!("no steps from versions {next} to {}", from - 1)
            };
            errors.push(Error::new_spanned(
                &upcast.key,
                format!("the upcast chain to version {version} has {missing}"),
            ));
        }
        next = from.saturating_add(1);
    }
}

/// `key = value` (or `key(value)`) for an error's span.
fn with_value<T: ToTokens>(keyed: &Keyed<T>) -> TokenStream {
    let mut tokens = keyed.key.to_token_stream();
    keyed.value.to_tokens(&mut tokens);
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::{DeriveInput, parse_quote};

    /// The messages of every error `attr` and `valid` find in `input`.
    fn check_input(input: &DeriveInput) -> Vec<String> {
        let mut errors = Errors::default();
        let input = EventInput::from_syn(input, &mut errors);
        check(&input, &mut errors);
        match errors.finish() {
            Ok(()) => Vec::new(),
            Err(error) => error.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn upcast_chains() {
        let cases: [(DeriveInput, &[&str]); 7] = [
            (
                parse_quote!(
                    #[outbox(version = 4, upcast(3 => c, 1 => a, 2 => b))]
                    struct A;
                ),
                &[],
            ),
            (
                parse_quote!(
                    #[outbox(version = 2, upcast_from = Old)]
                    struct A;
                ),
                &[],
            ),
            (
                parse_quote!(
                    #[outbox(version = 9, upcast(2 => b, 5 => e, 9 => i))]
                    struct A;
                ),
                &[
                    "upcast step from version 9, but this type is version 9 (the steps go from 1 to 8)",
                    "the upcast chain to version 9 has no step from version 1",
                    "the upcast chain to version 9 has no steps from versions 3 to 4",
                    "the upcast chain to version 9 has no steps from versions 6 to 8",
                ],
            ),
            (
                // No loop over the versions: the largest one is fine.
                parse_quote!(
                    #[outbox(version = 2147483647, upcast(1 => a))]
                    struct A;
                ),
                &[
                    "the upcast chain to version 2147483647 has no steps from versions 2 to 2147483646",
                ],
            ),
            (
                parse_quote!(
                    #[outbox(upcast_from = Old, upcast(1 => a))]
                    struct A;
                ),
                &[
                    "#[outbox(upcast_from = ...)] needs #[outbox(version = N)] with N >= 2, version 1 has nothing to upcast from",
                    "#[outbox(upcast(...))] needs #[outbox(version = N)] with N >= 2, version 1 has nothing to upcast from",
                    "#[outbox(upcast(...))] cannot be combined with #[outbox(upcast_from = ...)]",
                ],
            ),
            (
                // A rejected version is reported once.
                parse_quote!(
                    #[outbox(version = 0, upcast(1 => a), upcast_from = Old)]
                    struct A;
                ),
                &[
                    "event version must be at least 1",
                    "#[outbox(upcast(...))] cannot be combined with #[outbox(upcast_from = ...)]",
                ],
            ),
            (
                parse_quote!(
                    #[outbox(skip, version = 2, aliases = ["b"], upcast_from = Old, upcast(1 => a))]
                    struct A;
                ),
                &[
                    "#[outbox(version = ...)] cannot be combined with #[outbox(skip)]",
                    "#[outbox(aliases = ...)] cannot be combined with #[outbox(skip)]",
                    "#[outbox(upcast_from = ...)] cannot be combined with #[outbox(skip)]",
                    "#[outbox(upcast(...))] cannot be combined with #[outbox(skip)]",
                    "#[outbox(upcast(...))] cannot be combined with #[outbox(upcast_from = ...)]",
                ],
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(check_input(&input), expected, "{}", input.to_token_stream());
        }
    }

    #[test]
    fn an_alias_is_not_the_event_name() {
        let cases: [(DeriveInput, &[&str]); 3] = [
            (
                parse_quote!(
                    #[outbox(name = "billing.paid", aliases = ["paid", "billing.paid"])]
                    struct A;
                ),
                &["alias \"billing.paid\" is the event's own name"],
            ),
            (
                parse_quote!(
                    #[outbox(aliases = ["A"])]
                    struct A;
                ),
                &["alias \"A\" is the event's own name"],
            ),
            (
                // With a rejected name, the type's name is not the name.
                parse_quote!(
                    #[outbox(name = "", aliases = ["A"])]
                    struct A;
                ),
                &["event name must not be empty"],
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(check_input(&input), expected, "{}", input.to_token_stream());
        }
    }
}
