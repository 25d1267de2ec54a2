//! `balctl unload`: detach everything and remove every pin, after asking.

use std::io::IsTerminal as _;

use anyhow::{Result, bail};

use super::Context;
use crate::{bpf::loader, cli::UnloadArgs, input, output::print_structured};

pub fn run(ctx: &Context, args: &UnloadArgs) -> Result<()> {
    let root = ctx.pins.root();
    if !root.exists() {
        ctx.say(format!("balctl is not loaded at {}; nothing to do", root.display()));
        return Ok(());
    }
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            return Err(input!(
                "refusing to unload without --yes when stdin is not a terminal; \
                 run `balctl unload --yes` to detach balctl from its cgroup"
            ));
        }
        let confirmed = dialoguer::Confirm::new()
            .with_prompt(format!(
                "Detach balctl and remove every pin under {}? Connections to its frontends will no longer be translated",
                root.display()
            ))
            .default(false)
            .interact()?;
        if !confirmed {
            bail!("unload cancelled; nothing was changed");
        }
    }
    let _lock = ctx.state.lock()?;
    let report = loader::unload(&ctx.pins)?;
    if !ctx.output.is_table() {
        return print_structured(ctx.output, &report);
    }
    ctx.say(format!(
        "balctl unloaded: {} hooks detached, {} maps removed. Applied rules stay in {}; `balctl load` restores them",
        report.links_detached.len(),
        report.maps_removed.len(),
        ctx.state.root().display()
    ));
    Ok(())
}
