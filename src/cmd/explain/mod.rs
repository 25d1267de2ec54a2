//! `balctl explain DEST`: what a connect from a client to DEST would
//! resolve to, read from the pinned maps (through `dump`'s readers) and
//! decided as the datapath decides (`resolve`), without connecting and
//! without writing anything.

mod client;
mod resolve;
mod sockets;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::Result;
use serde::Serialize;

use self::{client::Client, resolve::Decision};
use super::{
    Context,
    dump::{OwnerFilter, View},
};
use crate::{
    bpf::links::attach_state,
    cli::ExplainArgs,
    model::Protocol,
    output::{Listing, TableStyle, column, print_structured, wide},
};

/// The whole answer; `-o json` prints it as is.
#[derive(Serialize)]
struct Explanation {
    destination: SocketAddr,
    protocol: Protocol,
    client: Client,
    /// The cgroup balctl's hooks are attached to: only connects from it or
    /// below are translated.
    attached_cgroup: Option<PathBuf>,
    /// `backend` (a connect gets one of `candidates`), `refused` (it fails
    /// with `failure`), or `not_translated` (it goes to DEST itself).
    outcome: &'static str,
    /// The answer in one sentence.
    summary: String,
    #[serde(flatten)]
    decision: Decision,
}

pub fn run(ctx: &Context, args: &ExplainArgs) -> Result<()> {
    let client = Client::of(args)?;
    let protocol = args.proto.protocol();
    let attached_cgroup = attach_state(&ctx.pins)?.cgroup;
    let view = View::read(&ctx.pins, &ctx.state, None, OwnerFilter::default())?;
    let under_attached = attached_cgroup.as_ref().is_some_and(|attached| client.cgroup.starts_with(attached));
    let decision = if under_attached {
        resolve::decide(&view, args.dest, protocol, client.netns_cookie, &client.socket_cookies)?
    } else {
        Decision::default()
    };
    let (outcome, summary) = outcome(attached_cgroup.as_deref(), under_attached, &decision);
    let explanation =
        Explanation { destination: args.dest, protocol, client, attached_cgroup, outcome, summary, decision };
    if ctx.output.is_table() {
        explanation.print_table(ctx.table_style());
        return Ok(());
    }
    print_structured(ctx.output, &explanation)
}

/// What the connect comes to, as `outcome` names it, and in one sentence.
fn outcome(
    attached_cgroup: Option<&Path>,
    under_attached: bool,
    decision: &Decision,
) -> (&'static str, String) {
    match (attached_cgroup, decision) {
        (Some(attached), _) if !under_attached => (
            "not_translated",
            format!("not translated: client outside the attached cgroup {}", attached.display()),
        ),
        (None, _) => ("not_translated", "not translated: balctl's hooks are attached to no cgroup".into()),
        (_, Decision { frontend: None, .. }) => {
            ("not_translated", "not translated: DEST is no frontend; the connect goes to DEST itself".into())
        }
        (_, Decision { failure: Some(failure), .. }) => (
            "refused",
            format!(
                "refused: {} (connect fails with {}, errno {})",
                failure.reason, failure.error, failure.errno
            ),
        ),
        (_, Decision { held: Some(held), .. }) if held.valid => (
            "backend",
            format!("the held choice (session affinity): {}", address(held.backend, held.backend_id)),
        ),
        (_, decision) => {
            let summary = match decision.candidates.as_slice() {
                [only] => format!("its one backend: {}", address(only.backend, only.backend_id)),
                all => format!("one of {} backends at random, by slot", all.len()),
            };
            ("backend", summary)
        }
    }
}

/// A backend as the tables show it.
fn address(backend: Option<SocketAddr>, backend_id: u32) -> String {
    backend.map_or_else(|| format!("missing backend #{backend_id}"), |b| format!("{b} (#{backend_id})"))
}

impl Explanation {
    fn print_table(&self, style: TableStyle) {
        let client = &self.client;
        let pid = client.pid.map_or_else(|| "no process".into(), |pid| format!("pid {pid}"));
        let netns = client.netns_cookie.map_or_else(|| "unknown".into(), |c| c.to_string());
        println!("destination: {}/{}", self.destination, self.protocol);
        println!("client:      {pid}, cgroup {}, netns cookie {netns}", client.cgroup.display());
        let decision = &self.decision;
        if let (Some(frontend), Some(name)) = (&decision.frontend, &decision.name) {
            println!("frontend:    {frontend} ({name})");
        }
        println!("result:      {}", self.summary);
        if !decision.layers.is_empty() {
            println!();
            let mut rows = Listing::new(
                style,
                &[column("LAYER"), column("ENTRY"), column("NAME"), column("TAKES"), column("WHY")],
            );
            for layer in &decision.layers {
                rows.add_row([
                    layer.layer.to_owned(),
                    layer.frontend.clone(),
                    layer.name.clone().unwrap_or_else(|| "-".into()),
                    if layer.takes { "yes" } else { "no" }.to_owned(),
                    layer.why.clone(),
                ]);
            }
            rows.print();
        }
        if let Some(held) = &decision.held {
            println!();
            let kept = if held.valid { "kept" } else { "not kept" };
            println!("held choice: {}, {kept}: {}", address(held.backend, held.backend_id), held.why);
        }
        if !decision.socket_choices.is_empty() {
            println!();
            println!("held by the client's unconnected UDP sockets (their sendmsg, not a connect):");
            for choice in &decision.socket_choices {
                println!(
                    "  socket {}: {}, idle {:.1}s",
                    choice.cookie,
                    address(choice.backend, choice.backend_id),
                    choice.idle_seconds
                );
            }
        }
        if !decision.candidates.is_empty() {
            println!();
            let columns = [column("BACKEND"), column("CHANCE"), wide("SLOTS"), column("FAILS")];
            let mut rows = Listing::new(style, &columns);
            for candidate in &decision.candidates {
                rows.add_row([
                    address(candidate.backend, candidate.backend_id),
                    format!("{:.1}%", candidate.chance * 100.0),
                    format!("{}/{}", candidate.slots, decision.backend_count),
                    candidate.failure.unwrap_or("-").to_owned(),
                ]);
            }
            rows.print();
        }
    }
}
