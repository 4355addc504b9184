//! The compile errors `declare_plugin!` gives a plugin author, pinned (`tests/ui/*.stderr`).
//!
//! rustc's wording changes between versions, so the `.stderr` files match the toolchain this
//! repository is built with; after a toolchain update, regenerate them with
//! `TRYBUILD=overwrite cargo test -p backplan-plugin-sdk --test declare_plugin` and read the diff:
//! each error must still name the author's type and say what it lacks.

#[test]
fn declare_plugin_rejects_what_is_not_a_plugin_with_a_clear_error() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
