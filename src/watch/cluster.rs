//! `balctl sync --kube --watch`: the cluster's objects synced once every
//! kind has been listed, then after every batch of changes, by the watch
//! loop (`watch::watch`) with the cluster as its source
//! (`cluster::ClusterWatch`). A batch reads only what can change what is
//! applied (`inputs::kube::Index`), and the change is planned from what it
//! touched (`transaction`).

use std::sync::Arc;

use super::Wake;

use anyhow::Result;

use crate::{
    agent::Agent,
    cli::SyncArgs,
    cluster,
    cmd::{
        Context,
        sync::{NotesTold, destroy_stale_sockets, health_checks, replace, report, this_node},
    },
    error, inputs,
    model::SyncedObject,
    serve,
    transaction::{Continued, Kept, Mode, change_prepared},
};

/// Syncs the cluster until SIGINT or SIGTERM. A sync that fails is
/// reported and leaves the applied state as it was.
pub fn run(ctx: &Context, args: &SyncArgs) -> Result<()> {
    let this_node = this_node(args)?;
    let (signals, wakes) = super::wakes()?;
    let agent = Arc::new(Agent::new(args.health_timeout));
    let health_changed = signals.clone();
    agent.health.wake_with(move || {
        let _ = health_changed.send(Wake::Health);
    });
    let health_check_ports = serve::start(ctx, args, &agent)?;
    ctx.say("sync --kube --watch: waiting for the first full list of every kind");
    let mut kept = Kept::default();
    let mut told = NotesTold::default();
    // What the applied objects were made of: a batch reads only what can
    // change them (inputs::kube::Index).
    let mut index = inputs::kube::Index::new(&this_node, inputs::CLUSTER_SOURCE);
    let apply = |cluster: &cluster::Documents| {
        let mut made = None;
        let mut health_checks_changed = false;
        let synced = agent.sync(|| {
            let mut notes = Vec::new();
            // What the prober says of the checked backends, as of now: a
            // batch translates the policies anew (they record no input),
            // so a change of health reaches them with any batch.
            let live = agent.health.live();
            let nothing_to_prepare = || Ok(());
            let outcome = change_prepared(
                &ctx.pins,
                &ctx.state,
                Mode::Apply,
                &mut kept,
                nothing_to_prepare,
                |state, (), continued| {
                    // Another cluster's objects join this one's global
                    // Services by name, which the index does not follow:
                    // a batch with any of them translates everything.
                    let remote = cluster.changed.keys().any(|label| label.starts_with(cluster::REMOTE));
                    let continued = Continued(continued.0 && !remote);
                    let selection = index.select(
                        &cluster.documents,
                        &cluster.changed,
                        &state.synced,
                        continued,
                        &this_node,
                    );
                    let parsed = index.parsed_for(&selection);
                    let inputs =
                        inputs::from_cluster(&selection.documents, &this_node, &selection.previous, parsed)?;
                    let part = selection.replaced.is_some().then_some(selection.previous.as_slice());
                    let incoming;
                    (notes, incoming) = replace(state, inputs, &this_node, part, Some(&live))?;
                    // The health-check ports change only with objects that have one.
                    let checks =
                        |objects: &[Arc<SyncedObject>]| objects.iter().any(|o| o.health_check.is_some());
                    health_checks_changed =
                        part.is_none() || checks(&selection.previous) || checks(&incoming);
                    let replaced = selection.replaced;
                    made = Some((replaced, incoming));
                    Ok(())
                },
            )?;
            let sockets = destroy_stale_sockets(ctx, args, &outcome, Some(&agent));
            report(ctx, &outcome, false, told.new_ones(notes), sockets)?;
            agent.health.follow(&outcome);
            kept.keep(outcome);
            Ok(())
        });
        match synced.map(|()| kept.state()) {
            Ok(Some(applied)) => {
                if let Some((replaced, incoming)) = made {
                    index.applied(&cluster.documents, &cluster.changed, replaced, &incoming, &applied.synced);
                }
                if health_checks_changed {
                    health_check_ports.update(health_checks(applied));
                }
                true
            }
            Ok(None) => true,
            Err(err) => {
                error::log_failure(
                    &err,
                    "sync --kube --watch: nothing applied from this change; retrying on the next one",
                );
                false
            }
        }
    };
    let mut cluster =
        cluster::ClusterWatch::start(&args.api_server, &this_node.name, signals, &agent, apply)?;
    super::watch(&mut cluster, &wakes, &agent)
}
