//! The derive input as the rest of the crate sees it: the type, its shape and
//! its parsed `#[outbox(..)]` attributes.

use syn::ext::IdentExt;
use syn::{Attribute, Data, DeriveInput, Generics, Ident, Token};

use crate::attr::{self, Attrs, Errors};

pub(crate) struct EventInput<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) generics: &'a Generics,
    pub(crate) shape: Shape,
    pub(crate) attrs: Attrs,
    /// `#[outbox]` attributes on fields or variants, where they mean nothing.
    pub(crate) misplaced: Vec<&'a Attribute>,
}

pub(crate) enum Shape {
    Struct,
    Enum,
    /// Rejected by `valid`; the token is kept for the error's span.
    Union(Token![union]),
}

impl<'a> EventInput<'a> {
    /// Reads the type and its attributes; attribute errors go to `errors`.
    pub(crate) fn from_syn(input: &'a DeriveInput, errors: &mut Errors) -> Self {
        let shape = match &input.data {
            Data::Struct(_) => Shape::Struct,
            Data::Enum(_) => Shape::Enum,
            Data::Union(data) => Shape::Union(data.union_token),
        };
        EventInput {
            ident: &input.ident,
            generics: &input.generics,
            shape,
            attrs: attr::parse(&input.attrs, errors),
            misplaced: misplaced(&input.data),
        }
    }

    /// The event name: `#[outbox(name = "..")]`, or else the type's name.
    pub(crate) fn name(&self) -> String {
        match &self.attrs.name {
            Some(name) => name.value.value(),
            None => self.type_name(),
        }
    }

    /// The type's name as written, without `r#`.
    pub(crate) fn type_name(&self) -> String {
        self.ident.unraw().to_string()
    }

    pub(crate) fn is_skip(&self) -> bool {
        self.attrs.skip.is_some()
    }
}

/// The `#[outbox]` attributes on fields and variants.
fn misplaced(data: &Data) -> Vec<&Attribute> {
    let mut attrs = Vec::new();
    match data {
        Data::Struct(data) => {
            for field in &data.fields {
                attrs.extend(&field.attrs);
            }
        }
        Data::Enum(data) => {
            for variant in &data.variants {
                attrs.extend(&variant.attrs);
                for field in &variant.fields {
                    attrs.extend(&field.attrs);
                }
            }
        }
        Data::Union(data) => {
            for field in &data.fields.named {
                attrs.extend(&field.attrs);
            }
        }
    }
    attrs.retain(|attr| attr::is_outbox(attr));
    attrs
}
