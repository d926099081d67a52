//! The registry of every `#[derive(Event)]` type in the binary, by name.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// One event type, submitted to `inventory` by `#[derive(Event)]`.
#[doc(hidden)]
#[derive(Debug)]
pub struct Registration {
    name: &'static str,
    rust_type: &'static str,
}

impl Registration {
    /// Used by the derive's generated code only.
    #[must_use]
    pub const fn new(name: &'static str, rust_type: &'static str) -> Self {
        Self { name, rust_type }
    }
}

inventory::collect!(Registration);

/// Checks the registered names once per process; the answer is cached.
pub(crate) fn check() -> Result<()> {
    static CHECKED: OnceLock<Result<(), (String, String, String)>> = OnceLock::new();
    CHECKED
        .get_or_init(|| find_duplicate(inventory::iter::<Registration>))
        .clone()
        .map_err(|(name, first, second)| Error::DuplicateEventName {
            name,
            first,
            second,
        })
}

/// The first name held by two distinct Rust types, with both type names in
/// sorted order so the message does not depend on link order.
fn find_duplicate<'a>(
    regs: impl IntoIterator<Item = &'a Registration>,
) -> Result<(), (String, String, String)> {
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    let mut dups = Vec::new();
    for reg in regs {
        match seen.get(reg.name) {
            Some(other) if *other != reg.rust_type => {
                let (a, b) = if *other < reg.rust_type {
                    (*other, reg.rust_type)
                } else {
                    (reg.rust_type, *other)
                };
                dups.push((reg.name.to_owned(), a.to_owned(), b.to_owned()));
            }
            Some(_) => {}
            None => {
                seen.insert(reg.name, reg.rust_type);
            }
        }
    }
    dups.sort();
    dups.into_iter().next().map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_names_pass() {
        let regs = [
            Registration::new("a", "x::A"),
            Registration::new("b", "x::B"),
        ];
        assert_eq!(find_duplicate(&regs), Ok(()));
    }

    #[test]
    fn duplicate_names_name_both_types() {
        let regs = [
            Registration::new("a", "x::Z"),
            Registration::new("b", "x::B"),
            Registration::new("a", "x::A"),
        ];
        assert_eq!(
            find_duplicate(&regs),
            Err(("a".into(), "x::A".into(), "x::Z".into()))
        );
    }

    #[test]
    fn same_type_registered_twice_is_not_a_duplicate() {
        let regs = [
            Registration::new("a", "x::A"),
            Registration::new("a", "x::A"),
        ];
        assert_eq!(find_duplicate(&regs), Ok(()));
    }
}
