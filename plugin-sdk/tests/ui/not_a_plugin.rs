//! A type that does not implement `Plugin`.

// The case crate has no `dynamic` feature; only the error under test is pinned.
#![allow(unexpected_cfgs)]

#[derive(Default)]
struct Greeter;

backplan_plugin_sdk::declare_plugin!(Greeter);

fn main() {}
