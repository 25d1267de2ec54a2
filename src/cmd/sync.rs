//! `balctl sync -f PATH...`: make the applied state, and so the maps, hold
//! exactly what the state files say for their sources.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::{Arc, atomic::AtomicBool},
};

use anyhow::{Context as _, Result};
use rustc_hash::FxHashMap as HashMap;
use serde::Serialize;

use super::Context;
use crate::{
    cli::SyncArgs,
    cluster, error,
    image::{FrontendImage, Image},
    input,
    inputs::{self, Inputs},
    metrics,
    output::{OutputFormat, print_structured},
    plan::Summary,
    state::AppliedState,
    transaction::{Mode, Outcome, change, change_prepared},
};

pub fn run(ctx: &Context, args: &SyncArgs) -> Result<()> {
    let this_node = node_name(args)?;
    let mode = if args.dry_run { Mode::DryRun } else { Mode::Apply };
    let mut notes = Vec::new();
    // Inputs are read (files split, the API server listed) while the
    // applied state is read, and finished with it: unchanged objects are
    // kept from it. All under the state lock.
    let outcome = if args.kube {
        let list = || cluster::list_all(&args.api_server, &this_node);
        change_prepared(&ctx.pins, &ctx.state, mode, list, |state, documents| {
            notes = replace(state, inputs::from_cluster(&documents, &this_node, &state.synced)?)?;
            Ok(())
        })?
    } else {
        let gather = || inputs::gather(&args.filenames, &this_node, args.max_input_size);
        change_prepared(&ctx.pins, &ctx.state, mode, gather, |state, gathered| {
            notes = replace(state, gathered.read(&state.synced)?)?;
            Ok(())
        })?
    };
    report(ctx, &outcome, args.dry_run, notes)
}

/// `sync --kube --watch`: syncs the cluster's objects once every kind has
/// been listed, then after every batch of changes, until SIGINT or SIGTERM.
/// A sync that fails is reported and leaves the applied state as it was.
pub fn watch_cluster(ctx: &Context, args: &SyncArgs) -> Result<()> {
    let this_node = node_name(args)?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("cannot handle SIGINT and SIGTERM")?;
    }
    if let Some(addr) = args.metrics_addr {
        metrics::serve(addr, ctx.pins.clone(), ctx.state.clone())?;
    }
    ctx.say("sync --kube --watch: waiting for the first full list of every kind");
    cluster::watch(&args.api_server, &this_node, &stop, |documents| {
        let mut notes = Vec::new();
        let synced = change(&ctx.pins, &ctx.state, Mode::Apply, |state| {
            notes = replace(state, inputs::from_cluster(&documents, &this_node, &state.synced)?)?;
            Ok(())
        })
        .and_then(|outcome| report(ctx, &outcome, false, notes));
        if let Err(err) = synced {
            error::report(&err);
            eprintln!("sync --kube --watch: nothing applied from this change; retrying on the next one");
        }
    })
}

/// Makes `state` hold exactly `inputs` for their sources; returns the notes.
/// An object that another source applied stays that source's: a sync
/// replaces only the objects of what it reads.
fn replace(state: &mut AppliedState, inputs: Inputs) -> Result<Vec<String>> {
    let names: BTreeSet<&str> = inputs.sources.iter().map(|s| s.name.as_str()).collect();
    state.synced.retain(|object| !names.contains(object.source.as_str()));
    let elsewhere: HashMap<&str, &str> =
        state.synced.iter().map(|object| (object.owner.as_str(), object.source.as_str())).collect();
    for located in inputs.sources.iter().flat_map(|source| &source.objects) {
        if let Some(other) = elsewhere.get(located.value.owner.as_str()) {
            return Err(input!(
                "{}: {} is already applied from {other}; a sync replaces only the objects of what it \
                 reads, so remove it from one of them, or sync both in one run",
                located.location,
                located.value.owner
            ));
        }
    }
    for source in inputs.sources {
        state.synced.extend(source.objects.into_iter().map(|located| located.value));
    }
    Ok(inputs.notes)
}

fn node_name(args: &SyncArgs) -> Result<String> {
    match &args.node_name {
        Some(name) => Ok(name.clone()),
        None => hostname(),
    }
}

/// The node name Kubernetes uses by default: the hostname.
fn hostname() -> Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_err(|e| anyhow::anyhow!("cannot read the hostname ({e}); pass --node-name"))?;
    Ok(name.trim().to_owned())
}

/// One frontend that the sync adds, changes or removes.
#[derive(Serialize)]
struct FrontendChange {
    change: &'static str,
    frontend: String,
    owner: String,
    /// The backends after the change (before it, for a removal).
    backends: Vec<SocketAddr>,
}

#[derive(Serialize)]
struct SyncReport {
    dry_run: bool,
    summary: Summary,
    map_writes: usize,
    /// The maps were repaired from what they held: an earlier change was
    /// interrupted during its map writes.
    repaired: bool,
    changes: Vec<FrontendChange>,
    /// What the input held but the sync did not apply, and why.
    notes: Vec<String>,
}

fn changes(before: &Image, after: &Image) -> Vec<FrontendChange> {
    let frontends: BTreeSet<_> = before.frontends.keys().chain(after.frontends.keys()).collect();
    let describe =
        |change, frontend: &crate::model::Frontend, image: &Image, f: &FrontendImage| FrontendChange {
            change,
            frontend: frontend.to_string(),
            owner: f.owner.clone(),
            backends: f.backends.iter().filter_map(|id| image.backends.get(id)).map(|b| b.address).collect(),
        };
    frontends
        .into_iter()
        .filter_map(|frontend| match (before.frontends.get(frontend), after.frontends.get(frontend)) {
            (None, Some(new)) => Some(describe("add", frontend, after, new)),
            (Some(old), None) => Some(describe("remove", frontend, before, old)),
            (Some(old), Some(new)) if old != new => Some(describe("change", frontend, after, new)),
            _ => None,
        })
        .collect()
}

fn report(ctx: &Context, outcome: &Outcome, dry_run: bool, notes: Vec<String>) -> Result<()> {
    let report = SyncReport {
        dry_run,
        summary: outcome.summary,
        map_writes: outcome.map_writes,
        repaired: outcome.repaired,
        changes: changes(&outcome.before.image, &outcome.after.image),
        notes,
    };
    if ctx.output != OutputFormat::Table {
        return print_structured(ctx.output, &report);
    }
    for note in &report.notes {
        ctx.say(format!("note: {note}"));
    }
    if report.repaired {
        ctx.say(format!(
            "note: an earlier change was interrupted during its map writes; \
             the maps were repaired from what they held ({} map writes)",
            report.map_writes
        ));
    }
    if dry_run || ctx.verbose > 0 {
        for change in &report.changes {
            let sign = match change.change {
                "add" => '+',
                "remove" => '-',
                _ => '~',
            };
            let backends: Vec<String> = change.backends.iter().map(ToString::to_string).collect();
            let backends =
                if backends.is_empty() { "(none: rejects)".to_owned() } else { backends.join(", ") };
            ctx.say(format!("{sign} {}  {}  -> {backends}", change.frontend, change.owner));
        }
    }
    if report.changes.is_empty() && report.summary == Summary::default() {
        ctx.say("sync: no changes");
    } else if dry_run {
        ctx.say(format!("sync (dry run, nothing changed): {}", report.summary));
    } else {
        ctx.say(format!("sync: {} ({} map writes)", report.summary, report.map_writes));
    }
    Ok(())
}
