//! Compile-fail and hygiene tests for `#[derive(Event)]`.
//!
//! The `.stderr` files are rustc's exact output, so this test exists only on
//! the toolchain they were generated with. Regenerate them with
//! `TRYBUILD=overwrite cargo test -p outbox-suite --test ui` and review the
//! diff like code.

#[rustversion::stable(1.95)]
#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
