//! Rules that involve the type's shape or more than one attribute. Rules on a
//! single key's value are checked while parsing it (`attr`).

use quote::ToTokens;
use syn::Error;

use crate::ast::{EventInput, Shape};
use crate::attr::Errors;

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
    if let (Some(_), Some(publish_if)) = (&input.attrs.skip, &input.attrs.publish_if) {
        let mut tokens = publish_if.key.to_token_stream();
        publish_if.value.to_tokens(&mut tokens);
        errors.push(Error::new_spanned(
            tokens,
            "#[outbox(publish_if = ...)] cannot be combined with #[outbox(skip)]",
        ));
    }
}
