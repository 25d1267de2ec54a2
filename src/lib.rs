//! balctl: an eBPF socket-level load balancer. The binary in
//! src/bin/balctl.rs parses the command line and dispatches to `cmd`.

pub mod agent;
pub mod bpf;
pub mod caps;
pub mod cli;
pub mod cluster;
pub mod cmd;
pub mod docs;
#[cfg(test)]
mod draws;
pub mod error;
pub mod health;
pub mod image;
pub mod inputs;
pub mod maglev;
pub mod model;
pub mod output;
pub mod plan;
pub mod progress;
pub mod serve;
pub mod stale_sockets;
pub mod state;
pub mod stats;
pub mod trace;
pub mod transaction;
pub mod trusted_dir;
pub mod watch;

use anyhow::Result;

use crate::{
    bpf::pins::PinDir,
    cli::{Cli, Command},
    cmd::Context,
    state::StateDir,
};

pub fn run(cli: Cli) -> Result<()> {
    progress::enable(!cli.quiet);
    let ctx = Context {
        pins: PinDir::new(&cli.bpffs),
        state: StateDir::new(&cli.state_dir),
        output: cli.output,
        verbose: cli.verbose,
        quiet: cli.quiet,
        no_headers: cli.no_headers,
    };
    match &cli.command {
        Command::Load(args) => cmd::load::run(&ctx, args),
        Command::Unload(args) => cmd::unload::run(&ctx, args),
        Command::Status => cmd::status::run(&ctx),
        Command::Policy(command) => cmd::policy::run(&ctx, command),
        Command::Dump(args) => cmd::dump::run(&ctx, args),
        Command::Trace(args) => cmd::trace::run(&ctx, args),
        Command::Explain(args) => cmd::explain::run(&ctx, args),
        Command::Sync(args) if args.watch && args.kube => watch::cluster::run(&ctx, args),
        Command::Sync(args) if args.watch => watch::files::run(&ctx, args),
        Command::Sync(args) => cmd::sync::run(&ctx, args),
        Command::Completions(args) => cmd::completions::run(args),
    }
}
