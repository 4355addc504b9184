//! A constructor expression that builds something other than the plugin.

// The case crate has no `dynamic` feature; only the error under test is pinned.
#![allow(unexpected_cfgs)]

use backplan_plugin_sdk::{Action, Plugin};

struct Greeter {
    #[allow(dead_code)]
    name: String,
}

impl Plugin for Greeter {
    type Config = ();
    const NAME: &'static str = "greeter";
    const SUMMARY: &'static str = "Greets.";
    const ACTIONS: &'static [Action] = &[Action::Check];
}

backplan_plugin_sdk::declare_plugin!(Greeter, String::from("ops"));

fn main() {}
