//! A `Config` that deserialises but has no JSON Schema (no `#[derive(JsonSchema)]`).

// The case crate has no `dynamic` feature; only the error under test is pinned.
#![allow(unexpected_cfgs)]

use backplan_plugin_sdk::{Action, Plugin};
use serde::Deserialize;

#[derive(Deserialize)]
struct Config {
    #[allow(dead_code)]
    name: String,
}

#[derive(Default)]
struct Greeter;

impl Plugin for Greeter {
    type Config = Config;
    const NAME: &'static str = "greeter";
    const SUMMARY: &'static str = "Greets.";
    const ACTIONS: &'static [Action] = &[Action::Check];
}

backplan_plugin_sdk::declare_plugin!(Greeter);

fn main() {}
