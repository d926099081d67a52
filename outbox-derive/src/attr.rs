//! Parsing of `#[outbox(..)]` attributes, one key at a time.
//!
//! Every key is parsed with `Attribute::parse_nested_meta`. A bad value is
//! recorded in [`Errors`] and its tokens are skipped up to the next `,`, so
//! the keys after it are still checked and all errors are reported together.

use std::iter;

use proc_macro2::{TokenStream, TokenTree};
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::parse::ParseStream;
use syn::parse::discouraged::Speculative;
use syn::{Attribute, Error, ExprPath, Ident, LitStr, Path, Token};

/// The attribute namespace: `#[outbox(..)]`.
const OUTBOX: &str = "outbox";
/// `name = "billing.invoice_paid"`: the event name.
const NAME: &str = "name";
/// `publish_if = path::to_fn`: a `fn(&Self) -> bool`.
const PUBLISH_IF: &str = "publish_if";
/// `skip`: the type never enters the outbox.
const SKIP: &str = "skip";
/// `crate = path`: where the runtime crate is, for re-exporting crates.
const CRATE: &str = "crate";

/// Every error of one derive, combined so that they are reported together.
#[derive(Default)]
pub(crate) struct Errors {
    combined: Option<Error>,
}

impl Errors {
    pub(crate) fn push(&mut self, error: Error) {
        match &mut self.combined {
            Some(combined) => combined.combine(error),
            None => self.combined = Some(error),
        }
    }

    /// `Err` with all errors pushed so far, if any.
    pub(crate) fn finish(self) -> syn::Result<()> {
        self.combined.map_or(Ok(()), Err)
    }
}

/// A key as the user wrote it (for spans) with its parsed value.
pub(crate) struct Keyed<T> {
    pub(crate) key: Ident,
    pub(crate) value: T,
}

/// The `#[outbox(..)]` keys of one type. A key holds a value only if it
/// parsed and passed its own checks; for a duplicate key the first one wins.
#[derive(Default)]
pub(crate) struct Attrs {
    pub(crate) name: Option<Keyed<LitStr>>,
    pub(crate) publish_if: Option<Keyed<ExprPath>>,
    pub(crate) skip: Option<Keyed<()>>,
    pub(crate) krate: Option<Keyed<Path>>,
}

/// Parses every `#[outbox(..)]` among `attrs`; other attributes are ignored.
pub(crate) fn parse(attrs: &[Attribute], errors: &mut Errors) -> Attrs {
    let mut parser = Parser {
        attrs: Attrs::default(),
        seen: Vec::new(),
        errors,
    };
    for attr in attrs.iter().filter(|attr| is_outbox(attr)) {
        if let Err(error) = attr.parse_nested_meta(|meta| {
            parser.key(&meta);
            Ok(())
        }) {
            parser.errors.push(error);
        }
    }
    parser.attrs
}

/// Whether `attr` is `#[outbox(..)]`.
pub(crate) fn is_outbox(attr: &Attribute) -> bool {
    attr.path().is_ident(OUTBOX)
}

struct Parser<'e> {
    attrs: Attrs,
    /// Keys met so far, to report duplicates across and within attributes.
    seen: Vec<&'static str>,
    errors: &'e mut Errors,
}

impl Parser<'_> {
    /// Parses one key and its value; never fails, so the next key is parsed too.
    fn key(&mut self, meta: &ParseNestedMeta<'_>) {
        let known = meta.path.get_ident().and_then(|ident| {
            [NAME, PUBLISH_IF, SKIP, CRATE]
                .into_iter()
                .find(|k| ident == k)
        });
        let (Some(key), Some(ident)) = (known, meta.path.get_ident()) else {
            self.errors.push(Error::new_spanned(
                &meta.path,
                format!("unknown outbox attribute `{}`", path_to_string(&meta.path)),
            ));
            skip_value(meta.input);
            return;
        };
        let ident = ident.clone();
        let duplicate = self.seen.contains(&key);
        if duplicate {
            let usage = if key == SKIP {
                String::from(SKIP)
            } else {
                format!("{key} = ...")
            };
            self.errors.push(Error::new_spanned(
                &ident,
                format!("duplicate #[outbox({usage})] attribute"),
            ));
        } else {
            self.seen.push(key);
        }

        match key {
            NAME => {
                let value = self.value(meta, &ident, "name = \"...\"", parse_name);
                if !duplicate {
                    self.attrs.name = value.map(|value| Keyed { key: ident, value });
                }
            }
            PUBLISH_IF => {
                let value = self.value(meta, &ident, "publish_if = path::to_fn", parse_publish_if);
                if !duplicate {
                    self.attrs.publish_if = value.map(|value| Keyed { key: ident, value });
                }
            }
            CRATE => {
                let value = self.value(meta, &ident, "crate = path::to::outbox", parse_crate);
                if !duplicate {
                    self.attrs.krate = value.map(|value| Keyed { key: ident, value });
                }
            }
            // SKIP, the last known key: a bare flag.
            _ => {
                let rest = skip_value(meta.input);
                if !rest.is_empty() {
                    self.errors
                        .push(Error::new_spanned(rest, "#[outbox(skip)] takes no value"));
                } else if !duplicate {
                    self.attrs.skip = Some(Keyed {
                        key: ident,
                        value: (),
                    });
                }
            }
        }
    }

    /// Parses `= value` with `parse`, which must consume the whole value (up
    /// to the next `,`). On failure the error is recorded, spanned at all of
    /// the value's tokens, and the value is skipped.
    fn value<T>(
        &mut self,
        meta: &ParseNestedMeta<'_>,
        key: &Ident,
        usage: &str,
        parse: fn(ParseStream<'_>) -> syn::Result<T>,
    ) -> Option<T> {
        let input = meta.input;
        let Ok(eq) = input.parse::<Token![=]>() else {
            let mut tokens = key.to_token_stream();
            tokens.extend(skip_value(input));
            self.errors.push(Error::new_spanned(
                tokens,
                format!("expected #[outbox({usage})]"),
            ));
            return None;
        };
        let fork = input.fork();
        match parse(&fork) {
            Ok(value) => {
                input.advance_to(&fork);
                Some(value)
            }
            Err(error) => {
                let tokens = skip_value(input);
                self.errors.push(if tokens.is_empty() {
                    Error::new_spanned(eq, error.to_string())
                } else {
                    Error::new_spanned(tokens, error.to_string())
                });
                None
            }
        }
    }
}

/// `name = "billing.invoice_paid"`: a non-empty string without whitespace.
fn parse_name(input: ParseStream<'_>) -> syn::Result<LitStr> {
    const EXPECTED: &str = "expected string literal";
    let lit: LitStr = input.parse().map_err(|e| Error::new(e.span(), EXPECTED))?;
    end_of_value(input, EXPECTED)?;
    if !lit.suffix().is_empty() {
        return Err(Error::new(
            lit.span(),
            "unexpected suffix on string literal",
        ));
    }
    let name = lit.value();
    if name.is_empty() {
        return Err(Error::new(lit.span(), "event name must not be empty"));
    }
    if name.contains(char::is_whitespace) {
        return Err(Error::new(
            lit.span(),
            "event name must not contain whitespace",
        ));
    }
    Ok(lit)
}

/// `publish_if = path::to_fn`: a path, not a string or an expression.
fn parse_publish_if(input: ParseStream<'_>) -> syn::Result<ExprPath> {
    let expected = if input.peek(LitStr) {
        "expected path to a `fn(&Self) -> bool`, found string literal (write the path without quotes)"
    } else if input.peek(Token![|]) || input.peek(Token![||]) || input.peek(Token![move]) {
        "expected path to a `fn(&Self) -> bool`, found closure (write a fn and give its path)"
    } else {
        "expected path to a `fn(&Self) -> bool`"
    };
    let path: ExprPath = input.parse().map_err(|e| Error::new(e.span(), expected))?;
    end_of_value(input, expected)?;
    Ok(path)
}

/// `crate = path::to::outbox`: a module-style path.
fn parse_crate(input: ParseStream<'_>) -> syn::Result<Path> {
    let expected = if input.peek(LitStr) {
        "expected path to the outbox crate, found string literal (write the path without quotes)"
    } else {
        "expected path to the outbox crate"
    };
    let path = input
        .call(Path::parse_mod_style)
        .map_err(|e| Error::new(e.span(), expected))?;
    end_of_value(input, expected)?;
    Ok(path)
}

/// Fails unless the value ends here, at a `,` or at the end of the attribute.
fn end_of_value(input: ParseStream<'_>, expected: &str) -> syn::Result<()> {
    if input.is_empty() || input.peek(Token![,]) {
        Ok(())
    } else {
        Err(input.error(expected))
    }
}

/// Consumes the tokens up to the next top-level `,` and returns them.
fn skip_value(input: ParseStream<'_>) -> TokenStream {
    input
        .step(|cursor| {
            let mut tokens = TokenStream::new();
            let mut rest = *cursor;
            while let Some((tt, next)) = rest.token_tree() {
                if matches!(&tt, TokenTree::Punct(p) if p.as_char() == ',') {
                    break;
                }
                tokens.extend(iter::once(tt));
                rest = next;
            }
            Ok((tokens, rest))
        })
        .unwrap_or_default()
}

/// `a::b` as written, for messages.
fn path_to_string(path: &Path) -> String {
    let segments = path.segments.iter().map(|s| s.ident.to_string());
    let joined = segments.collect::<Vec<_>>().join("::");
    if path.leading_colon.is_some() {
        format!("::{joined}")
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::{DeriveInput, parse_quote};

    fn parse_input(input: &DeriveInput) -> (Attrs, Vec<String>) {
        let mut errors = Errors::default();
        let attrs = parse(&input.attrs, &mut errors);
        let messages = match errors.finish() {
            Ok(()) => Vec::new(),
            Err(error) => error.into_iter().map(|e| e.to_string()).collect(),
        };
        (attrs, messages)
    }

    /// Parses `#[outbox(<args>)] struct A;`.
    fn parse_args(args: &TokenStream) -> (Attrs, Vec<String>) {
        parse_input(&parse_quote!(
            #[outbox(#args)]
            struct A;
        ))
    }

    fn tokens(value: &impl ToTokens) -> String {
        value.to_token_stream().to_string()
    }

    #[test]
    fn no_attributes_is_all_defaults() {
        let (attrs, errors) = parse_input(&parse_quote! {
            #[derive(Debug)]
            #[serde(rename_all = "snake_case")]
            struct Paid;
        });
        assert!(errors.is_empty(), "{errors:?}");
        assert!(attrs.name.is_none());
        assert!(attrs.publish_if.is_none());
        assert!(attrs.skip.is_none());
        assert!(attrs.krate.is_none());
    }

    #[test]
    fn every_key_in_one_attribute() {
        let (attrs, errors) = parse_input(&parse_quote! {
            #[outbox(name = "billing.invoice_paid", publish_if = Self::is_external, crate = ::outbox)]
            struct Paid;
        });
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(attrs.name.unwrap().value.value(), "billing.invoice_paid");
        let publish_if = attrs.publish_if.unwrap();
        assert_eq!(publish_if.key, "publish_if");
        assert_eq!(tokens(&publish_if.value), "Self :: is_external");
        assert_eq!(tokens(&attrs.krate.unwrap().value), ":: outbox");
    }

    #[test]
    fn keys_spread_over_attributes_and_trailing_comma() {
        let (attrs, errors) = parse_input(&parse_quote! {
            #[outbox(skip,)]
            #[outbox(crate = crate::reexport::inner)]
            #[outbox()]
            enum Paid {}
        });
        assert!(errors.is_empty(), "{errors:?}");
        assert!(attrs.skip.is_some());
        assert_eq!(
            tokens(&attrs.krate.unwrap().value),
            "crate :: reexport :: inner"
        );
    }

    #[test]
    fn publish_if_accepts_qualified_and_turbofish_paths() {
        let (attrs, errors) = parse_input(&parse_quote! {
            #[outbox(publish_if = <Paid as Check>::check::<u8, u16>, name = "a")]
            struct Paid;
        });
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            tokens(&attrs.publish_if.unwrap().value),
            "< Paid as Check > :: check :: < u8 , u16 >"
        );
        assert_eq!(attrs.name.unwrap().value.value(), "a");
    }

    #[test]
    fn unknown_key() {
        let (attrs, errors) = parse_input(&parse_quote! {
            #[outbox(nmae = "a", outbox::name = "b", publish(x), name = "c")]
            struct Paid;
        });
        assert_eq!(
            errors,
            [
                "unknown outbox attribute `nmae`",
                "unknown outbox attribute `outbox::name`",
                "unknown outbox attribute `publish`",
            ]
        );
        assert_eq!(attrs.name.unwrap().value.value(), "c");
    }

    #[test]
    fn duplicate_keys_keep_the_first() {
        let (attrs, errors) = parse_input(&parse_quote! {
            #[outbox(name = "a", skip)]
            #[outbox(name = "b", skip, publish_if = f, publish_if = g, crate = a, crate = b)]
            struct Paid;
        });
        assert_eq!(
            errors,
            [
                "duplicate #[outbox(name = ...)] attribute",
                "duplicate #[outbox(skip)] attribute",
                "duplicate #[outbox(publish_if = ...)] attribute",
                "duplicate #[outbox(crate = ...)] attribute",
            ]
        );
        assert_eq!(attrs.name.unwrap().value.value(), "a");
        assert_eq!(tokens(&attrs.publish_if.unwrap().value), "f");
        assert_eq!(tokens(&attrs.krate.unwrap().value), "a");
    }

    #[test]
    fn name_must_be_a_plain_non_empty_string() {
        for (input, expected) in [
            (parse_quote!(name = billing.paid), "expected string literal"),
            (parse_quote!(name = 42), "expected string literal"),
            (parse_quote!(name = "a" "b"), "expected string literal"),
            (
                parse_quote!(name = concat!("a", "b")),
                "expected string literal",
            ),
            (parse_quote!(name = ""), "event name must not be empty"),
            (
                parse_quote!(name = "billing paid"),
                "event name must not contain whitespace",
            ),
            (
                parse_quote!(name = "billing\tpaid"),
                "event name must not contain whitespace",
            ),
            (
                parse_quote!(name = "a"suffix),
                "unexpected suffix on string literal",
            ),
            (parse_quote!(name = ), "expected string literal"),
            (parse_quote!(name), "expected #[outbox(name = \"...\")]"),
            (
                parse_quote!(name("a")),
                "expected #[outbox(name = \"...\")]",
            ),
        ] {
            let (attrs, errors) = parse_args(&input);
            assert_eq!(errors, [expected], "{input}");
            assert!(attrs.name.is_none());
        }
    }

    #[test]
    fn publish_if_must_be_a_path() {
        for (input, expected) in [
            (
                parse_quote!(publish_if = "Self::is_external"),
                "expected path to a `fn(&Self) -> bool`, found string literal (write the path without quotes)",
            ),
            (
                parse_quote!(publish_if = |e| true),
                "expected path to a `fn(&Self) -> bool`, found closure (write a fn and give its path)",
            ),
            (
                parse_quote!(publish_if = is_external()),
                "expected path to a `fn(&Self) -> bool`",
            ),
            (
                parse_quote!(publish_if = true),
                "expected path to a `fn(&Self) -> bool`",
            ),
            (
                parse_quote!(publish_if),
                "expected #[outbox(publish_if = path::to_fn)]",
            ),
        ] {
            let (attrs, errors) = parse_args(&input);
            assert_eq!(errors, [expected], "{input}");
            assert!(attrs.publish_if.is_none());
        }
    }

    #[test]
    fn crate_must_be_a_path() {
        for (input, expected) in [
            (
                parse_quote!(crate = "outbox"),
                "expected path to the outbox crate, found string literal (write the path without quotes)",
            ),
            (
                parse_quote!(crate = outbox::<u8>),
                "expected path to the outbox crate",
            ),
            (
                parse_quote!(crate),
                "expected #[outbox(crate = path::to::outbox)]",
            ),
        ] {
            let (attrs, errors) = parse_args(&input);
            assert_eq!(errors, [expected], "{input}");
            assert!(attrs.krate.is_none());
        }
    }

    #[test]
    fn skip_takes_no_value() {
        for input in [parse_quote!(skip = true), parse_quote!(skip(true))] {
            let (attrs, errors) = parse_args(&input);
            assert_eq!(errors, ["#[outbox(skip)] takes no value"], "{input}");
            assert!(attrs.skip.is_none());
        }
    }

    #[test]
    fn malformed_attribute() {
        let inputs: [DeriveInput; 3] = [
            parse_quote!(
                #[outbox]
                struct A;
            ),
            parse_quote!(
                #[outbox = "a"]
                struct A;
            ),
            parse_quote!(
                #[outbox("a")]
                struct A;
            ),
        ];
        for input in inputs {
            let (_, errors) = parse_input(&input);
            assert_eq!(errors.len(), 1, "{}", tokens(&input));
        }
    }

    #[test]
    fn independent_errors_are_all_reported() {
        let (attrs, errors) = parse_input(&parse_quote! {
            #[outbox(nmae = "a", name = "", publish_if = "f", skip = 1, crate = ::outbox)]
            #[outbox(name = "x y")]
            struct A;
        });
        assert_eq!(
            errors,
            [
                "unknown outbox attribute `nmae`",
                "event name must not be empty",
                "expected path to a `fn(&Self) -> bool`, found string literal (write the path without quotes)",
                "#[outbox(skip)] takes no value",
                "duplicate #[outbox(name = ...)] attribute",
                "event name must not contain whitespace",
            ]
        );
        assert_eq!(tokens(&attrs.krate.unwrap().value), ":: outbox");
    }
}
