//! `balctl load`: attach (or replace in place), then make the maps hold
//! exactly the applied state, through the transaction's write protocol
//! (`transaction::restore`): a failed write leaves the maps as they were.

use anyhow::Result;
use serde::Serialize;

use super::Context;
use crate::{
    bpf::{
        loader::{self, HookAction, LoadReport, MapSizes},
        maps::check_fits,
    },
    caps,
    cli::LoadArgs,
    input,
    output::{count, print_structured},
    state::AppliedState,
    transaction,
};

#[derive(Serialize)]
struct LoadOutput {
    #[serde(flatten)]
    report: LoadReport,
    /// Map entries written or removed to match the applied state.
    entries_repaired: usize,
}

pub fn run(ctx: &Context, args: &LoadArgs) -> Result<()> {
    // Measured on 6.18: loading and attaching need all three (mounting
    // bpffs also CAP_SYS_ADMIN, which the mount itself reports).
    caps::require("balctl load", &[caps::BPF, caps::NET_ADMIN, caps::PERFMON])?;
    let sizes = MapSizes(args.map_size.iter().cloned().collect());
    let attach = |state: &AppliedState| -> Result<(LoadReport, usize)> {
        // Refuse before touching anything if the applied state cannot fit.
        check_fits(state.image.entry_counts(), loader::capacities_after_load(&ctx.pins, &sizes)?)?;
        let report = match &args.object {
            Some(path) => {
                let object = std::fs::read(path)
                    .map_err(|err| input!("--object {}: cannot read it: {err}", path.display()))?;
                loader::load_object(&object, &ctx.pins, args.cgroup.as_deref(), &sizes)
                    .map_err(|err| err.context(format!("--object {}", path.display())))?
            }
            None => loader::load(&ctx.pins, args.cgroup.as_deref(), &sizes)?,
        };
        Ok((report, state.image.frontends.len()))
    };
    let ((report, frontends), entries_repaired) = transaction::restore(&ctx.pins, &ctx.state, attach)?;

    let output = LoadOutput { report, entries_repaired };
    if !ctx.output.is_table() {
        return print_structured(ctx.output, &output);
    }
    let attached = output.report.hooks.iter().filter(|(_, a)| *a == HookAction::Attached).count();
    let replaced = output.report.hooks.len() - attached;
    let hooks = match (attached, replaced) {
        (_, 0) => format!("{attached} hooks attached"),
        (0, _) => format!("{replaced} hooks replaced in place"),
        _ => format!("{attached} hooks attached, {replaced} replaced in place"),
    };
    let maps = match output.report.maps_created.len() {
        0 => "maps reused".to_owned(),
        n => format!("{n} maps created"),
    };
    ctx.say(format!("balctl loaded on {}: {hooks}, {maps}", output.report.cgroup.display()));
    if output.entries_repaired > 0 {
        ctx.say(format!(
            "programmed {} from the applied state ({})",
            count(output.entries_repaired, "map entry", "map entries"),
            count(frontends, "frontend", "frontends")
        ));
    }
    Ok(())
}
