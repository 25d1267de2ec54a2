//! `balctl policy add|update|list|get|delete`: imperative rules, persisted
//! in the state dir and applied to the maps at once, all or nothing.

use anyhow::Result;
use serde::Serialize;

use super::Context;
use crate::{
    cli::{HealthCheckArgs, PolicyAddArgs, PolicyCommand, PolicyKind, PolicyNameArg, PolicyUpdateArgs},
    health, input,
    model::{
        AddressKind, Frontend, FrontendRule, LEAST_CONNECTIONS, Policy, Protocol, RuleHealth, check_weights,
        health::CheckSpec,
    },
    output::{Listing, column, print_structured, wide},
    stale_sockets,
    transaction::{Mode, Outcome, change},
};

pub fn run(ctx: &Context, command: &PolicyCommand) -> Result<()> {
    match command {
        PolicyCommand::Add(args) => add(ctx, args),
        PolicyCommand::Update(args) => update(ctx, args),
        PolicyCommand::List => list(ctx),
        PolicyCommand::Get(args) => get(ctx, args),
        PolicyCommand::Delete(args) => delete(ctx, args),
    }
}

/// The rule's health check from `--health-check` and its flags, or what
/// is wrong, naming the flag.
fn health_check(args: &HealthCheckArgs, protocol: Protocol) -> Result<Option<Box<RuleHealth>>> {
    let Some(kind) = &args.health_check else { return Ok(None) };
    let spec = CheckSpec {
        kind,
        path: args.health_check_path.as_deref(),
        expected_status: args.health_check_status,
        query: args.health_check_query.as_deref(),
        port: args.health_check_port,
        interval: args.health_check_interval.as_deref(),
        timeout: args.health_check_timeout.as_deref(),
        rise: args.health_check_rise,
        fall: args.health_check_fall,
        when_all_unhealthy: args.when_all_unhealthy.as_deref(),
    };
    let flag = |field: &str| match field {
        "type" => "--health-check".to_owned(),
        "expected_status" => "--health-check-status".to_owned(),
        "when_all_unhealthy" => "--when-all-unhealthy".to_owned(),
        field => format!("--health-check-{field}"),
    };
    let (check, when) = spec.build().map_err(|e| input!("invalid {}: {}", flag(e.field), e.message))?;
    check.fits(protocol).map_err(|e| input!("invalid {}: {}", flag(e.field), e.message))?;
    Ok(Some(Box::new(RuleHealth::new(check, when))))
}

fn add(ctx: &Context, args: &PolicyAddArgs) -> Result<()> {
    let policy = Policy {
        name: args.name.clone(),
        rule: FrontendRule {
            frontend: Frontend { scope: args.kind.scope(), ..args.vip },
            backends: args.backend.clone(),
            local_backends: Vec::new(),
            affinity_seconds: args.affinity,
            local_only: false,
            requests_per_second: args.rate_limit,
            address_kind: AddressKind::default(),
            external: crate::model::ExternalBalancing::default(),
            health: health_check(&args.health, args.vip.protocol)?,
            weights: if args.weight.is_empty() {
                Vec::new()
            } else {
                check_weights(&args.weight, args.backend.len())
                    .map_err(|e| input!("invalid --weight: {e}"))?
            },
            least_connections: args.lb_algorithm.as_deref() == Some(LEAST_CONNECTIONS),
        },
    };
    if args.rate_limit.is_some() && args.kind != PolicyKind::Redirect {
        return Err(input!("--rate-limit applies to --kind redirect only"));
    }
    policy.validate().map_err(|e| input!("{e}"))?;
    let outcome = change(&ctx.pins, &ctx.state, Mode::Apply, |state| {
        if let Some(existing) = state.policy(&policy.name) {
            return Err(input!(
                "policy `{}` already exists (frontend {}); change it with `balctl policy update {}` \
                 or delete it first",
                policy.name,
                existing.rule.frontend,
                policy.name
            ));
        }
        let mut added = policy.clone();
        // Its backends' health as recorded for the same check elsewhere;
        // new ones start healthy (the agent probes them from its next sync).
        if added.rule.health.is_some() {
            health::mark_policies(std::slice::from_mut(&mut added), &health::recorded(state));
        }
        state.policies.push(added);
        Ok(())
    })?;
    report(ctx, &outcome, &policy.name, "created")
}

fn update(ctx: &Context, args: &PolicyUpdateArgs) -> Result<()> {
    let changes_nothing = args.vip.is_none()
        && args.backend.is_empty()
        && !args.no_backends
        && args.affinity.is_none()
        && !args.no_affinity;
    if changes_nothing {
        return Err(input!(
            "nothing to change: give --vip, --backend, --no-backends, --affinity or --no-affinity"
        ));
    }
    let outcome = change(&ctx.pins, &ctx.state, Mode::Apply, |state| {
        let policy = find_mut(&mut state.policies, &args.name)?;
        if let Some(vip) = args.vip {
            policy.rule.frontend = Frontend { scope: policy.rule.frontend.scope, ..vip };
        }
        if !args.backend.is_empty() || args.no_backends {
            policy.rule.backends.clone_from(&args.backend);
            // Weights were given for the old list, in its order.
            policy.rule.weights.clear();
            // Only backends the rule still has can be down.
            if let Some(health) = policy.rule.health.as_deref_mut() {
                health.down.retain(|backend| args.backend.contains(backend));
            }
        }
        if args.affinity.is_some() || args.no_affinity {
            policy.rule.affinity_seconds = args.affinity;
        }
        policy.validate().map_err(|e| input!("{e}"))
    })?;
    destroy_stale_sockets(ctx, &outcome, &args.name);
    report(ctx, &outcome, &args.name, "updated")
}

fn delete(ctx: &Context, args: &PolicyNameArg) -> Result<()> {
    let outcome = change(&ctx.pins, &ctx.state, Mode::Apply, |state| {
        find_mut(&mut state.policies, &args.name)?;
        state.policies.retain(|p| p.name != args.name);
        Ok(())
    })?;
    destroy_stale_sockets(ctx, &outcome, &args.name);
    if !ctx.output.is_table() {
        return print_structured(ctx.output, &Deleted { deleted: &args.name });
    }
    ctx.say(format!("policy/{} deleted", args.name));
    summarize_plan(ctx, &outcome);
    Ok(())
}

/// The connected UDP sockets of backends the change took away from the
/// policy's frontend (src/stale_sockets.rs). TCP connections are left
/// alone: `sync --destroy-tcp-sockets` is sync's.
fn destroy_stale_sockets(ctx: &Context, outcome: &Outcome, name: &str) {
    if let Some(sockets) = stale_sockets::destroy(&ctx.pins, outcome, false).filter(|s| s.any()) {
        ctx.say(format!("policy/{name}: {sockets}"));
    }
}

#[derive(Serialize)]
struct Deleted<'a> {
    deleted: &'a str,
}

fn find_mut<'a>(policies: &'a mut [Policy], name: &str) -> Result<&'a mut Policy> {
    policies
        .iter_mut()
        .find(|p| p.name == name)
        .ok_or_else(|| input!("there is no policy named `{name}` (`balctl policy list` shows them)"))
}

fn report(ctx: &Context, outcome: &Outcome, name: &str, verb: &str) -> Result<()> {
    let policy = outcome.after.policy(name).expect("the policy was just written");
    if !ctx.output.is_table() {
        return print_structured(ctx.output, policy);
    }
    let backends = match policy.rule.backends.len() {
        0 => "no backends: connections are refused".to_owned(),
        1 => "1 backend".to_owned(),
        n => format!("{n} backends"),
    };
    ctx.say(format!("policy/{name} {verb}: {} -> {backends}", policy.rule.frontend));
    summarize_plan(ctx, outcome);
    Ok(())
}

fn summarize_plan(ctx: &Context, outcome: &Outcome) {
    if ctx.verbose > 0 {
        ctx.say(format!("  {} ({} map writes)", outcome.summary, outcome.map_writes));
    }
}

#[derive(Serialize)]
struct PolicyList<'a> {
    policies: &'a [Policy],
}

fn list(ctx: &Context) -> Result<()> {
    let state = ctx.state.read()?;
    if !ctx.output.is_table() {
        return print_structured(ctx.output, &PolicyList { policies: &state.policies });
    }
    let columns = [column("NAME"), column("FRONTEND"), column("BACKENDS"), column("AFFINITY"), wide("KIND")];
    let mut rows = Listing::new(ctx.table_style(), &columns);
    for policy in &state.policies {
        rows.add_row([
            policy.name.clone(),
            policy.rule.frontend.to_string(),
            backend_list(policy),
            affinity(policy),
            kind(policy),
        ]);
    }
    rows.print();
    Ok(())
}

fn get(ctx: &Context, args: &PolicyNameArg) -> Result<()> {
    let state = ctx.state.read()?;
    let policy = state.policy(&args.name).ok_or_else(|| {
        input!("there is no policy named `{}` (`balctl policy list` shows them)", args.name)
    })?;
    if !ctx.output.is_table() {
        return print_structured(ctx.output, policy);
    }
    println!("Name:      {}", policy.name);
    println!("Frontend:  {}", policy.rule.frontend);
    println!("Kind:      {}", kind(policy));
    println!("Backends:  {}", backend_list(policy).replace('\n', "\n           "));
    println!("Affinity:  {}", affinity(policy));
    Ok(())
}

fn backend_list(policy: &Policy) -> String {
    if policy.rule.backends.is_empty() {
        return "(none: rejects)".to_owned();
    }
    let list: Vec<String> = policy.rule.backends.iter().map(ToString::to_string).collect();
    list.join("\n")
}

fn kind(policy: &Policy) -> String {
    match policy.rule.requests_per_second {
        Some(limit) => format!("{:?} ({limit}/s)", policy.rule.frontend.scope).to_lowercase(),
        None => format!("{:?}", policy.rule.frontend.scope).to_lowercase(),
    }
}

fn affinity(policy: &Policy) -> String {
    policy.rule.affinity_seconds.map_or_else(|| "-".to_owned(), |s| format!("{s}s"))
}
