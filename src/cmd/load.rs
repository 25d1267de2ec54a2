//! `balctl load`: attach (or replace in place) on the cgroup and the
//! devices, then make the maps hold exactly the applied state, through the
//! transaction's write protocol (`transaction::restore`): a failed write
//! leaves the maps as they were.

use anyhow::Result;
use serde::Serialize;

use super::Context;
use crate::{
    bpf::{
        devices::{self, Device},
        loader::{self, HookAction, LoadReport, MapSizes, Targets},
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
        let targets = Targets { cgroup: args.cgroup.as_deref(), devices: requested_devices(args, state)? };
        let report = match &args.object {
            Some(path) => {
                let object = std::fs::read(path)
                    .map_err(|err| input!("--object {}: cannot read it: {err}", path.display()))?;
                loader::load_object(&object, &ctx.pins, &targets, &sizes)
                    .map_err(|err| err.context(format!("--object {}", path.display())))?
            }
            None => loader::load(&ctx.pins, &targets, &sizes)?,
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
    if !output.report.device_links.is_empty() {
        ctx.say(devices_line(&output.report));
    }
    if output.entries_repaired > 0 {
        ctx.say(format!(
            "programmed {} from the applied state ({})",
            count(output.entries_repaired, "map entry", "map entries"),
            count(frontends, "frontend", "frontends")
        ));
    }
    Ok(())
}

/// `--devices`: None keeps the devices attached; `auto` picks them from
/// the node's addresses and default routes; `none` is no device. Every
/// device named must exist, checked before anything is attached.
fn requested_devices(args: &LoadArgs, state: &AppliedState) -> Result<Option<Vec<Device>>> {
    let Some(names) = &args.devices else {
        return Ok(None);
    };
    match names.as_slice() {
        [keyword] if keyword == "auto" => {
            let node_addresses: Vec<_> = state.image.node_addresses.iter().copied().collect();
            devices::auto(&node_addresses).map(Some)
        }
        [keyword] if keyword == "none" => Ok(Some(Vec::new())),
        _ if names.iter().any(|name| name == "auto" || name == "none") => {
            Err(input!("--devices: `auto` and `none` stand alone, not in a list of devices"))
        }
        _ => devices::resolve(names).map(Some),
    }
}

/// What the load did on the devices: `tc programs on eth0, eth1: 2 links
/// attached, 2 replaced in place; 2 detached from eth2`.
fn devices_line(report: &LoadReport) -> String {
    let counted =
        |wanted: HookAction| report.device_links.iter().filter(|(_, action)| *action == wanted).count();
    let mut done = Vec::new();
    for (action, what) in [(HookAction::Attached, "attached"), (HookAction::Replaced, "replaced in place")] {
        if counted(action) > 0 {
            done.push(format!("{} {what}", count(counted(action), "link", "links")));
        }
    }
    let mut line = match report.devices.as_slice() {
        [] => "tc programs on no device".to_owned(),
        devices => format!("tc programs on {}: {}", devices.join(", "), done.join(", ")),
    };
    let detached: Vec<&str> = report
        .device_links
        .iter()
        .filter(|(_, action)| *action == HookAction::Detached)
        .filter_map(|(name, _)| name.split_once('@').map(|(_, device)| device))
        .collect();
    if !detached.is_empty() {
        let mut devices = detached.clone();
        devices.sort_unstable();
        devices.dedup();
        line.push_str(&format!(
            "; {} detached from {}",
            count(detached.len(), "link", "links"),
            devices.join(", ")
        ));
    }
    line
}
