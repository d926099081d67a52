//! Parsing of `#[outbox(..)]` attributes, one key at a time.
//!
//! Every key is parsed with `Attribute::parse_nested_meta`. A bad value is
//! recorded in [`Errors`] and its tokens are skipped up to the next `,`, so
//! the keys after it are still checked and all errors are reported together.

use std::iter;

use proc_macro2::{TokenStream, TokenTree};
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::parse::discouraged::Speculative;
use syn::parse::{ParseBuffer, ParseStream};
use syn::{Attribute, Error, ExprPath, Ident, LitInt, LitStr, Path, Token, TypePath, token};

/// The attribute namespace: `#[outbox(..)]`.
const OUTBOX: &str = "outbox";
/// `name = "billing.invoice_paid"`: the event name.
pub(crate) const NAME: &str = "name";
/// `publish_if = path::to_fn`: a `fn(&Self) -> bool`.
const PUBLISH_IF: &str = "publish_if";
/// `skip`: the type never enters the outbox.
const SKIP: &str = "skip";
/// `crate = path`: where the runtime crate is, for re-exporting crates.
const CRATE: &str = "crate";
/// `version = 2`: the version stored with each entry.
pub(crate) const VERSION: &str = "version";
/// `aliases = ["billing.paid", ..]`: former names of the event.
const ALIASES: &str = "aliases";
/// `upcast_from = OldType`: the previous version, converted with `From`.
pub(crate) const UPCAST_FROM: &str = "upcast_from";
/// `upcast(1 => path::to_fn, ..)`: upcasters on JSON, one per older version.
const UPCAST: &str = "upcast";

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
    pub(crate) version: Option<Keyed<Version>>,
    pub(crate) aliases: Option<Keyed<Aliases>>,
    pub(crate) upcast_from: Option<Keyed<TypePath>>,
    pub(crate) upcast: Option<Keyed<Upcast>>,
    /// Keys that were given but hold no value because it was rejected, so
    /// that rules depending on them are not checked against the default
    /// (no second error for one mistake).
    pub(crate) failed: Vec<&'static str>,
}

/// A version number as written: `version = 3`, or the left side of an
/// upcast step.
pub(crate) struct Version {
    pub(crate) lit: LitInt,
    pub(crate) number: u32,
}

/// `["billing.paid", ..]`: checked like names, at least one, no repeats.
pub(crate) struct Aliases {
    pub(crate) bracket: token::Bracket,
    pub(crate) list: Vec<LitStr>,
}

/// `(1 => path::to_fn, ..)`: the steps as written, each `from` at most once.
pub(crate) struct Upcast {
    pub(crate) paren: token::Paren,
    pub(crate) steps: Vec<Step>,
}

/// `1 => path::to_fn`: the upcaster from version `from` to the next one.
pub(crate) struct Step {
    pub(crate) from: Version,
    pub(crate) path: ExprPath,
}

impl ToTokens for Version {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        self.lit.to_tokens(tokens);
    }
}

impl ToTokens for Aliases {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        self.bracket.surround(tokens, |tokens| {
            for alias in &self.list {
                alias.to_tokens(tokens);
                <Token![,]>::default().to_tokens(tokens);
            }
        });
    }
}

impl ToTokens for Upcast {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        self.paren.surround(tokens, |tokens| {
            for step in &self.steps {
                step.from.to_tokens(tokens);
                <Token![=>]>::default().to_tokens(tokens);
                step.path.to_tokens(tokens);
                <Token![,]>::default().to_tokens(tokens);
            }
        });
    }
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
            [
                NAME,
                PUBLISH_IF,
                SKIP,
                CRATE,
                VERSION,
                ALIASES,
                UPCAST_FROM,
                UPCAST,
            ]
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
            let usage = match key {
                SKIP => String::from(SKIP),
                UPCAST => String::from("upcast(...)"),
                _ => format!("{key} = ..."),
            };
            self.errors.push(Error::new_spanned(
                &ident,
                format!("duplicate #[outbox({usage})] attribute"),
            ));
        } else {
            self.seen.push(key);
        }

        let parsed = match key {
            NAME => {
                let value = self.value(meta, &ident, "name = \"...\"", parse_name);
                keep(&mut self.attrs.name, duplicate, &ident, value)
            }
            PUBLISH_IF => {
                let value = self.value(meta, &ident, "publish_if = path::to_fn", parse_publish_if);
                keep(&mut self.attrs.publish_if, duplicate, &ident, value)
            }
            CRATE => {
                let value = self.value(meta, &ident, "crate = path::to::outbox", parse_crate);
                keep(&mut self.attrs.krate, duplicate, &ident, value)
            }
            VERSION => {
                let value = self.value(meta, &ident, "version = N", parse_version);
                keep(&mut self.attrs.version, duplicate, &ident, value)
            }
            ALIASES => {
                let value = self
                    .value(meta, &ident, "aliases = [\"...\", ...]", parse_aliases)
                    .and_then(|aliases| self.check_aliases(aliases));
                keep(&mut self.attrs.aliases, duplicate, &ident, value)
            }
            UPCAST_FROM => {
                let value = self.value(meta, &ident, "upcast_from = OldType", parse_upcast_from);
                keep(&mut self.attrs.upcast_from, duplicate, &ident, value)
            }
            UPCAST => {
                let value = self.upcast(meta, &ident);
                keep(&mut self.attrs.upcast, duplicate, &ident, value)
            }
            // SKIP, the last known key: a bare flag.
            _ => {
                let rest = skip_value(meta.input);
                if rest.is_empty() {
                    keep(&mut self.attrs.skip, duplicate, &ident, Some(()))
                } else {
                    self.errors
                        .push(Error::new_spanned(rest, "#[outbox(skip)] takes no value"));
                    false
                }
            }
        };
        if !parsed && !duplicate {
            self.attrs.failed.push(key);
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

    /// Checks each alias like a name, at its literal; any error drops them all.
    fn check_aliases(&mut self, aliases: Aliases) -> Option<Aliases> {
        let mut ok = true;
        if aliases.list.is_empty() {
            self.errors.push(Error::new(
                aliases.bracket.span.join(),
                "#[outbox(aliases = [...])] lists no alias (remove it, or name the former names)",
            ));
            ok = false;
        }
        for (i, alias) in aliases.list.iter().enumerate() {
            if let Err(error) = check_name(alias, "alias") {
                self.errors.push(error);
                ok = false;
            } else if aliases.list[..i].iter().any(|a| a.value() == alias.value()) {
                self.errors.push(Error::new(
                    alias.span(),
                    format!("duplicate alias \"{}\"", alias.value()),
                ));
                ok = false;
            }
        }
        ok.then_some(aliases)
    }

    /// `upcast(1 => path::to_fn, ..)`. Each step is parsed on its own, so
    /// every bad step is reported; any error drops the whole key, except a
    /// repeated step (the first one is kept).
    fn upcast(&mut self, meta: &ParseNestedMeta<'_>, key: &Ident) -> Option<Upcast> {
        let input = meta.input;
        let parens = if input.peek(token::Paren) {
            parens(input).ok()
        } else {
            None
        };
        let Some((paren, content)) = parens else {
            let mut tokens = key.to_token_stream();
            tokens.extend(skip_value(input));
            self.errors.push(Error::new_spanned(
                tokens,
                "expected #[outbox(upcast(1 => path::to_fn, ...))]",
            ));
            return None;
        };
        let mut upcast = Upcast {
            paren,
            steps: Vec::new(),
        };
        let mut ok = true;
        while !content.is_empty() {
            let fork = content.fork();
            match parse_step(&fork) {
                Ok((from, path)) => {
                    content.advance_to(&fork);
                    ok &= self.add_step(&mut upcast, from, path);
                }
                Err(error) => {
                    let tokens = skip_value(&content);
                    self.errors.push(if tokens.is_empty() {
                        error
                    } else {
                        Error::new_spanned(tokens, error.to_string())
                    });
                    ok = false;
                }
            }
            // `skip_value` and `parse_step` stop at a `,` or at the end.
            let _ = content.parse::<Option<Token![,]>>();
        }
        if upcast.steps.is_empty() && ok {
            self.errors.push(Error::new(
                paren.span.join(),
                "#[outbox(upcast(...))] lists no step, expected `1 => path::to_fn`",
            ));
            ok = false;
        }
        ok.then_some(upcast)
    }

    /// Adds the step from `lit` unless its number is invalid or already has
    /// a step; `false` (after recording the error) if the key is invalid.
    fn add_step(&mut self, upcast: &mut Upcast, lit: LitInt, path: ExprPath) -> bool {
        let number = match version_number(&lit, "upcast steps start from version 1") {
            Ok(number) => number,
            Err(error) => {
                self.errors.push(error);
                return false;
            }
        };
        if upcast.steps.iter().any(|s| s.from.number == number) {
            self.errors.push(Error::new(
                lit.span(),
                format!("duplicate upcast step from version {number}"),
            ));
        } else {
            upcast.steps.push(Step {
                from: Version { lit, number },
                path,
            });
        }
        true
    }
}

/// Stores a parsed value unless the key is a duplicate; whether it parsed.
fn keep<T>(slot: &mut Option<Keyed<T>>, duplicate: bool, key: &Ident, value: Option<T>) -> bool {
    let parsed = value.is_some();
    if !duplicate {
        *slot = value.map(|value| Keyed {
            key: key.clone(),
            value,
        });
    }
    parsed
}

/// `name = "billing.invoice_paid"`: a non-empty string without whitespace.
fn parse_name(input: ParseStream<'_>) -> syn::Result<LitStr> {
    const EXPECTED: &str = "expected string literal";
    let lit: LitStr = input.parse().map_err(|e| Error::new(e.span(), EXPECTED))?;
    end_of_value(input, EXPECTED)?;
    check_name(&lit, "event name")?;
    Ok(lit)
}

/// The rules of an event name (`what`: "event name" or "alias").
fn check_name(lit: &LitStr, what: &str) -> syn::Result<()> {
    if !lit.suffix().is_empty() {
        return Err(Error::new(
            lit.span(),
            "unexpected suffix on string literal",
        ));
    }
    let name = lit.value();
    if name.is_empty() {
        return Err(Error::new(lit.span(), format!("{what} must not be empty")));
    }
    if name.contains(char::is_whitespace) {
        return Err(Error::new(
            lit.span(),
            format!("{what} must not contain whitespace"),
        ));
    }
    Ok(())
}

/// `version = 3`: an integer from 1 that fits a `u32`.
fn parse_version(input: ParseStream<'_>) -> syn::Result<Version> {
    const EXPECTED: &str = "expected integer literal";
    let lit: LitInt = input.parse().map_err(|e| Error::new(e.span(), EXPECTED))?;
    end_of_value(input, EXPECTED)?;
    let number = version_number(&lit, "event version must be at least 1")?;
    Ok(Version { lit, number })
}

/// The value of a version literal: from 1, fits a `u32`, no suffix other
/// than `u32`. `below_one` is the message for 0 and negative numbers.
fn version_number(lit: &LitInt, below_one: &str) -> syn::Result<u32> {
    if !matches!(lit.suffix(), "" | "u32") {
        return Err(Error::new(
            lit.span(),
            format!("unexpected suffix `{}` on version number", lit.suffix()),
        ));
    }
    if lit.base10_digits().starts_with('-') {
        return Err(Error::new(lit.span(), below_one));
    }
    // The tables store versions as 32-bit signed integers.
    match lit.base10_parse::<u32>() {
        Ok(0) => Err(Error::new(lit.span(), below_one)),
        Ok(number) if i32::try_from(number).is_ok() => Ok(number),
        _ => Err(Error::new(lit.span(), TOO_LARGE)),
    }
}

/// A version past what the tables' 32-bit integer column holds.
const TOO_LARGE: &str =
    "version number must be at most 2147483647 (versions are stored as 32-bit integers)";

/// `aliases = ["billing.paid", ..]`: the bracketed list of string literals;
/// the literals themselves are checked by `Parser::check_aliases`.
fn parse_aliases(input: ParseStream<'_>) -> syn::Result<Aliases> {
    const EXPECTED: &str = "expected a list of string literals, like `[\"billing.paid\"]`";
    let (bracket, content) = brackets(input).map_err(|e| Error::new(e.span(), EXPECTED))?;
    let list = content
        .parse_terminated(<LitStr as syn::parse::Parse>::parse, Token![,])
        .map_err(|e| Error::new(e.span(), EXPECTED))?;
    end_of_value(input, EXPECTED)?;
    Ok(Aliases {
        bracket,
        list: list.into_iter().collect(),
    })
}

/// `upcast_from = OldType`: a type path, not a string.
fn parse_upcast_from(input: ParseStream<'_>) -> syn::Result<TypePath> {
    let expected = if input.peek(LitStr) {
        "expected path to the previous version's type, found string literal (write the path without quotes)"
    } else {
        "expected path to the previous version's type"
    };
    let path: TypePath = input.parse().map_err(|e| Error::new(e.span(), expected))?;
    end_of_value(input, expected)?;
    Ok(path)
}

/// One step of `upcast(..)`, `1 => path::to_fn`, as written; its number
/// is checked by `Parser::add_step`.
fn parse_step(input: ParseStream<'_>) -> syn::Result<(LitInt, ExprPath)> {
    const EXPECTED: &str = "expected `N => path::to_fn`, an upcaster from version N";
    let from: LitInt = input.parse().map_err(|e| Error::new(e.span(), EXPECTED))?;
    input
        .parse::<Token![=>]>()
        .map_err(|e| Error::new(e.span(), EXPECTED))?;
    let expected = if input.peek(LitStr) {
        "expected path to an `outbox::Upcaster` fn, found string literal (write the path without quotes)"
    } else if input.peek(Token![|]) || input.peek(Token![||]) || input.peek(Token![move]) {
        "expected path to an `outbox::Upcaster` fn, found closure (write a fn and give its path)"
    } else {
        "expected path to an `outbox::Upcaster` fn"
    };
    let path: ExprPath = input.parse().map_err(|e| Error::new(e.span(), expected))?;
    end_of_value(input, expected)?;
    Ok((from, path))
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

/// `( .. )` and its content.
fn parens(input: ParseStream<'_>) -> syn::Result<(token::Paren, ParseBuffer<'_>)> {
    let content;
    let paren = syn::parenthesized!(content in input);
    Ok((paren, content))
}

/// `[ .. ]` and its content.
fn brackets(input: ParseStream<'_>) -> syn::Result<(token::Bracket, ParseBuffer<'_>)> {
    let content;
    let bracket = syn::bracketed!(content in input);
    Ok((bracket, content))
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
        assert!(attrs.version.is_none());
        assert!(attrs.aliases.is_none());
        assert!(attrs.upcast_from.is_none());
        assert!(attrs.upcast.is_none());
        assert!(attrs.failed.is_empty());
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
    fn every_version_key() {
        let (attrs, errors) = parse_input(&parse_quote! {
            #[outbox(version = 3, aliases = ["billing.paid", "paid",], upcast_from = v2::Paid)]
            #[outbox(upcast(2 => Self::v2, 1 => up::v1,))]
            struct Paid;
        });
        assert!(errors.is_empty(), "{errors:?}");
        let version = attrs.version.unwrap();
        assert_eq!(version.key, "version");
        assert_eq!(version.value.number, 3);
        let aliases = attrs.aliases.unwrap().value.list;
        let aliases: Vec<_> = aliases.iter().map(LitStr::value).collect();
        assert_eq!(aliases, ["billing.paid", "paid"]);
        assert_eq!(tokens(&attrs.upcast_from.unwrap().value), "v2 :: Paid");
        let steps = attrs.upcast.unwrap().value.steps;
        let steps: Vec<_> = steps
            .iter()
            .map(|step| (step.from.number, tokens(&step.path)))
            .collect();
        assert_eq!(
            steps,
            [
                (2, String::from("Self :: v2")),
                (1, String::from("up :: v1"))
            ]
        );
    }

    #[test]
    fn version_is_an_integer_from_1_that_fits_an_i32() {
        for (input, number) in [
            (parse_quote!(version = 1), 1),
            (parse_quote!(version = 2u32), 2),
            (parse_quote!(version = 0x10), 16),
            (parse_quote!(version = 2147483647), 2_147_483_647),
        ] {
            let (attrs, errors) = parse_args(&input);
            assert!(errors.is_empty(), "{input}: {errors:?}");
            assert_eq!(attrs.version.unwrap().value.number, number, "{input}");
        }
        for (input, expected) in [
            (
                parse_quote!(version = 0),
                "event version must be at least 1",
            ),
            (
                parse_quote!(version = -2),
                "event version must be at least 1",
            ),
            (parse_quote!(version = 2147483648), TOO_LARGE),
            (parse_quote!(version = 4294967296), TOO_LARGE),
            (
                parse_quote!(version = 2u8),
                "unexpected suffix `u8` on version number",
            ),
            (parse_quote!(version = "2"), "expected integer literal"),
            (parse_quote!(version = 2.0), "expected integer literal"),
            (parse_quote!(version = 1 + 1), "expected integer literal"),
            (parse_quote!(version = V), "expected integer literal"),
            (parse_quote!(version), "expected #[outbox(version = N)]"),
            (parse_quote!(version(2)), "expected #[outbox(version = N)]"),
        ] {
            let (attrs, errors) = parse_args(&input);
            assert_eq!(errors, [expected], "{input}");
            assert!(attrs.version.is_none());
            assert_eq!(attrs.failed, [VERSION], "{input}");
        }
    }

    #[test]
    fn aliases_follow_the_name_rules() {
        for (input, expected) in [
            (
                parse_quote!(aliases = []),
                vec![
                    "#[outbox(aliases = [...])] lists no alias (remove it, or name the former names)",
                ],
            ),
            (
                parse_quote!(aliases = ["a b", "", "c"x, "ok"]),
                vec![
                    "alias must not contain whitespace",
                    "alias must not be empty",
                    "unexpected suffix on string literal",
                ],
            ),
            (
                parse_quote!(aliases = ["a", "b", "a", "a"]),
                vec!["duplicate alias \"a\"", "duplicate alias \"a\""],
            ),
            (
                parse_quote!(aliases = "a"),
                vec!["expected a list of string literals, like `[\"billing.paid\"]`"],
            ),
            (
                parse_quote!(aliases = [a]),
                vec!["expected a list of string literals, like `[\"billing.paid\"]`"],
            ),
            (
                parse_quote!(aliases = ["a"]["b"]),
                vec!["expected a list of string literals, like `[\"billing.paid\"]`"],
            ),
            (
                parse_quote!(aliases),
                vec!["expected #[outbox(aliases = [\"...\", ...])]"],
            ),
        ] {
            let (attrs, errors) = parse_args(&input);
            assert_eq!(errors, expected, "{input}");
            assert!(attrs.aliases.is_none());
            assert_eq!(attrs.failed, [ALIASES], "{input}");
        }
    }

    #[test]
    fn upcast_from_must_be_a_type_path() {
        let (attrs, errors) = parse_args(&parse_quote!(upcast_from = <X as Y>::Old));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            tokens(&attrs.upcast_from.unwrap().value),
            "< X as Y > :: Old"
        );
        for (input, expected) in [
            (
                parse_quote!(upcast_from = "Old"),
                "expected path to the previous version's type, found string literal (write the path without quotes)",
            ),
            (
                parse_quote!(upcast_from = &Old),
                "expected path to the previous version's type",
            ),
            (
                parse_quote!(upcast_from = Old + Send),
                "expected path to the previous version's type",
            ),
            (
                parse_quote!(upcast_from(Old)),
                "expected #[outbox(upcast_from = OldType)]",
            ),
        ] {
            let (attrs, errors) = parse_args(&input);
            assert_eq!(errors, [expected], "{input}");
            assert!(attrs.upcast_from.is_none());
            assert_eq!(attrs.failed, [UPCAST_FROM], "{input}");
        }
    }

    #[test]
    fn upcast_steps_are_each_checked() {
        for (input, expected) in [
            (
                parse_quote!(upcast = f),
                vec!["expected #[outbox(upcast(1 => path::to_fn, ...))]"],
            ),
            (
                parse_quote!(upcast),
                vec!["expected #[outbox(upcast(1 => path::to_fn, ...))]"],
            ),
            (
                parse_quote!(upcast[1 => f]),
                vec!["expected #[outbox(upcast(1 => path::to_fn, ...))]"],
            ),
            (
                parse_quote!(upcast()),
                vec!["#[outbox(upcast(...))] lists no step, expected `1 => path::to_fn`"],
            ),
            (
                parse_quote!(upcast(f, 1 = f, 1 => "f", 2 => |v| v, 3 => f(), 4 => f)),
                vec![
                    "expected `N => path::to_fn`, an upcaster from version N",
                    "expected `N => path::to_fn`, an upcaster from version N",
                    "expected path to an `outbox::Upcaster` fn, found string literal (write the path without quotes)",
                    "expected path to an `outbox::Upcaster` fn, found closure (write a fn and give its path)",
                    "expected path to an `outbox::Upcaster` fn",
                ],
            ),
            (
                parse_quote!(upcast(0 => f, -1 => f, 1u8 => f, 4294967296 => f)),
                vec![
                    "upcast steps start from version 1",
                    "upcast steps start from version 1",
                    "unexpected suffix `u8` on version number",
                    TOO_LARGE,
                ],
            ),
        ] {
            let (attrs, errors) = parse_args(&input);
            assert_eq!(errors, expected, "{input}");
            assert!(attrs.upcast.is_none());
            assert_eq!(attrs.failed, [UPCAST], "{input}");
        }
    }

    #[test]
    fn a_repeated_upcast_step_keeps_the_first() {
        let (attrs, errors) = parse_args(&parse_quote!(upcast(1 => f, 2 => g, 1 => h)));
        assert_eq!(errors, ["duplicate upcast step from version 1"]);
        let steps = attrs.upcast.unwrap().value.steps;
        let steps: Vec<_> = steps
            .iter()
            .map(|step| (step.from.number, tokens(&step.path)))
            .collect();
        assert_eq!(steps, [(1, String::from("f")), (2, String::from("g"))]);
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
            #[outbox(version = 2, version = 3, aliases = ["a"], aliases = ["b"])]
            #[outbox(upcast_from = A, upcast_from = B, upcast(1 => f), upcast(1 => g))]
            struct Paid;
        });
        assert_eq!(
            errors,
            [
                "duplicate #[outbox(name = ...)] attribute",
                "duplicate #[outbox(skip)] attribute",
                "duplicate #[outbox(publish_if = ...)] attribute",
                "duplicate #[outbox(crate = ...)] attribute",
                "duplicate #[outbox(version = ...)] attribute",
                "duplicate #[outbox(aliases = ...)] attribute",
                "duplicate #[outbox(upcast_from = ...)] attribute",
                "duplicate #[outbox(upcast(...))] attribute",
            ]
        );
        assert_eq!(attrs.name.unwrap().value.value(), "a");
        assert_eq!(tokens(&attrs.publish_if.unwrap().value), "f");
        assert_eq!(tokens(&attrs.krate.unwrap().value), "a");
        assert_eq!(attrs.version.unwrap().value.number, 2);
        assert_eq!(attrs.aliases.unwrap().value.list[0].value(), "a");
        assert_eq!(tokens(&attrs.upcast_from.unwrap().value), "A");
        assert_eq!(tokens(&attrs.upcast.unwrap().value.steps[0].path), "f");
        assert!(attrs.failed.is_empty());
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
