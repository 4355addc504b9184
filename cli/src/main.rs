//! `backplan`: the command-line glue between the core runner and the built-in plugins.
//!
//! This is the only crate that links every built-in plugin (and so, through them, any cloud
//! SDK): the core library stays free of them. Exit codes are documented in
//! `backplan_core::exit` and the README.

mod args;
mod commands;
mod metrics;
mod notifier;
mod output;
mod schedule;
mod signals;
mod sns;
mod stdout;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: cannot start the async runtime: {e}"
            );
            return ExitCode::from(backplan_core::exit::FAILED as u8);
        }
    };
    let code = runtime.block_on(commands::dispatch(cli));
    // Plugins that ignored cancellation may still hold blocking threads: do not wait for them.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    ExitCode::from(code.clamp(0, 255) as u8)
}
