//! `balctl unload`: detach everything and remove every pin, after asking;
//! with `--purge` also the state dir's files, with `--stay` then idle until
//! SIGTERM (deploy/uninstall.yaml).

use std::io::IsTerminal as _;

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use signal_hook::{
    consts::{SIGINT, SIGTERM},
    iterator::Signals,
};

use super::Context;
use crate::{
    bpf::{
        links,
        loader::{self, UnloadReport},
    },
    cli::UnloadArgs,
    input,
    output::print_structured,
};

/// What `unload -o json` prints.
#[derive(Serialize)]
struct Unloaded {
    #[serde(flatten)]
    unloaded: UnloadReport,
    /// The state dir's files removed (with --purge).
    #[serde(skip_serializing_if = "Option::is_none")]
    state_files_removed: Option<Vec<String>>,
}

pub fn run(ctx: &Context, args: &UnloadArgs) -> Result<()> {
    // Before anything else: as a container's PID 1, balctl would ignore a
    // SIGTERM it has no handler for, and the pod would wait out its grace
    // period.
    let signals =
        args.stay.then(|| Signals::new([SIGINT, SIGTERM])).transpose().context("cannot handle SIGTERM")?;
    unload(ctx, args)?;
    if let Some(mut signals) = signals {
        if !ctx.quiet {
            eprintln!("unload --stay: idle until SIGTERM or SIGINT");
        }
        signals.forever().next();
    }
    Ok(())
}

fn unload(ctx: &Context, args: &UnloadArgs) -> Result<()> {
    let root = ctx.pins.root();
    let loaded = root.exists();
    if !loaded && !args.purge {
        ctx.say(format!("balctl is not loaded at {}; nothing to do", root.display()));
        return Ok(());
    }
    if !args.yes {
        confirm(ctx, args.purge)?;
    }
    let lock = ctx.state.lock()?;
    let unloaded = if loaded { loader::unload(&ctx.pins)? } else { UnloadReport::default() };
    let state_files_removed = args.purge.then(|| ctx.state.purge(&lock)).transpose()?;
    let report = Unloaded { unloaded, state_files_removed };
    if !ctx.output.is_table() {
        return print_structured(ctx.output, &report);
    }
    let state = ctx.state.root().display();
    let kept = match &report.state_files_removed {
        Some(files) => format!("{} files removed from {state}", files.len()),
        None => format!("Applied rules stay in {state}; `balctl load` restores them"),
    };
    if loaded {
        let (device_links, hooks): (Vec<&String>, Vec<&String>) =
            report.unloaded.links_detached.iter().partition(|name| links::is_device_link(name));
        let mut devices: Vec<&str> =
            device_links.iter().filter_map(|name| name.split_once('@').map(|(_, device)| device)).collect();
        devices.sort_unstable();
        devices.dedup();
        let devices = if devices.is_empty() {
            String::new()
        } else {
            format!(", tc programs detached from {}", devices.join(", "))
        };
        ctx.say(format!(
            "balctl unloaded: {} hooks detached{devices}, {} maps removed. {kept}",
            hooks.len(),
            report.unloaded.maps_removed.len(),
        ));
    } else {
        ctx.say(format!("balctl is not loaded at {}; {kept}", root.display()));
    }
    Ok(())
}

fn confirm(ctx: &Context, purge: bool) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        return Err(input!(
            "refusing to unload without --yes when stdin is not a terminal; \
             run `balctl unload --yes` to detach balctl from its cgroup"
        ));
    }
    let rules = if purge {
        format!(" and the applied rules in {}", ctx.state.root().display())
    } else {
        String::new()
    };
    let confirmed = dialoguer::Confirm::new()
        .with_prompt(format!(
            "Detach balctl and remove every pin under {}{rules}? Connections to its frontends will no longer be translated",
            ctx.pins.root().display()
        ))
        .default(false)
        .interact()?;
    if !confirmed {
        bail!("unload cancelled; nothing was changed");
    }
    Ok(())
}
