//! The registry of every `#[derive(Event)]` type in the binary, by name,
//! version and alias.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// One event type, submitted to `inventory` by `#[derive(Event)]`.
#[doc(hidden)]
#[derive(Debug)]
pub struct Registration {
    name: &'static str,
    version: u32,
    aliases: &'static [&'static str],
    rust_type: &'static str,
}

impl Registration {
    /// Used by the derive's generated code only.
    #[must_use]
    pub const fn new(
        name: &'static str,
        version: u32,
        aliases: &'static [&'static str],
        rust_type: &'static str,
    ) -> Self {
        Self {
            name,
            version,
            aliases,
            rust_type,
        }
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

/// The first clash, with both type names in sorted order so the message
/// does not depend on link order. Two types clash when they share a name
/// and a version (the types of one name with different versions are one
/// event: its current type and the old ones it upcasts from), or when an
/// alias of one is the name or an alias of a type of another name.
fn find_duplicate<'a>(
    regs: impl IntoIterator<Item = &'a Registration>,
) -> Result<(), (String, String, String)> {
    let regs: Vec<&Registration> = regs.into_iter().collect();
    let mut dups = Vec::new();
    let mut push = |name: String, a: &str, b: &str| {
        let (a, b) = if a < b { (a, b) } else { (b, a) };
        dups.push((name, a.to_owned(), b.to_owned()));
    };
    let mut versions: BTreeMap<(&str, u32), &str> = BTreeMap::new();
    for reg in &regs {
        match versions.get(&(reg.name, reg.version)) {
            Some(other) if *other != reg.rust_type => {
                let name = if reg.version == 1 {
                    reg.name.to_owned()
                } else {
                    format!("{}` version `{}", reg.name, reg.version)
                };
                push(name, other, reg.rust_type);
            }
            Some(_) => {}
            None => {
                versions.insert((reg.name, reg.version), reg.rust_type);
            }
        }
    }
    // Every name and alias, with the event name it stands for.
    let mut owners: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
    for reg in &regs {
        owners.entry(reg.name).or_insert((reg.name, reg.rust_type));
    }
    for reg in &regs {
        for &alias in reg.aliases {
            match owners.get(alias) {
                Some((event, other)) if *event != reg.name => {
                    push(alias.to_owned(), other, reg.rust_type);
                }
                Some(_) => {}
                None => {
                    owners.insert(alias, (reg.name, reg.rust_type));
                }
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
            Registration::new("a", 1, &[], "x::A"),
            Registration::new("b", 1, &[], "x::B"),
        ];
        assert_eq!(find_duplicate(&regs), Ok(()));
    }

    #[test]
    fn duplicate_names_name_both_types() {
        let regs = [
            Registration::new("a", 1, &[], "x::Z"),
            Registration::new("b", 1, &[], "x::B"),
            Registration::new("a", 1, &[], "x::A"),
        ];
        assert_eq!(
            find_duplicate(&regs),
            Err(("a".into(), "x::A".into(), "x::Z".into()))
        );
    }

    #[test]
    fn same_type_registered_twice_is_not_a_duplicate() {
        let regs = [
            Registration::new("a", 1, &[], "x::A"),
            Registration::new("a", 1, &[], "x::A"),
        ];
        assert_eq!(find_duplicate(&regs), Ok(()));
    }

    #[test]
    fn versions_of_one_name_are_one_event() {
        let regs = [
            Registration::new("a", 1, &[], "x::A1"),
            Registration::new("a", 2, &[], "x::A2"),
            Registration::new("a", 3, &["old"], "x::A"),
        ];
        assert_eq!(find_duplicate(&regs), Ok(()));
    }

    #[test]
    fn one_name_and_version_held_twice_names_both_types() {
        let regs = [
            Registration::new("a", 2, &[], "x::B"),
            Registration::new("a", 2, &[], "x::A"),
        ];
        assert_eq!(
            find_duplicate(&regs),
            Err(("a` version `2".into(), "x::A".into(), "x::B".into()))
        );
    }

    #[test]
    fn an_alias_may_not_be_another_events_name_or_alias() {
        let name = [
            Registration::new("a", 1, &[], "x::A"),
            Registration::new("b", 1, &["a"], "x::B"),
        ];
        assert_eq!(
            find_duplicate(&name),
            Err(("a".into(), "x::A".into(), "x::B".into()))
        );
        let alias = [
            Registration::new("a", 1, &["old"], "x::A"),
            Registration::new("b", 1, &["old"], "x::B"),
        ];
        assert_eq!(
            find_duplicate(&alias),
            Err(("old".into(), "x::A".into(), "x::B".into()))
        );
        // The versions of one event may repeat its aliases.
        let same = [
            Registration::new("a", 1, &["old"], "x::A1"),
            Registration::new("a", 2, &["old"], "x::A"),
        ];
        assert_eq!(find_duplicate(&same), Ok(()));
    }
}
