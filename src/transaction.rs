//! One change to the applied state, all or nothing: lock the state dir,
//! compile the new rules, plan the map writes, check every map has room,
//! write the maps (rolled back on failure), then record the new state.
//! Validation and the capacity check happen before the first map write, so
//! bad input changes nothing.

use anyhow::Result;

use crate::{
    bpf::{maps::Datapath, pins::PinDir},
    image::Image,
    model::Policy,
    plan::Plan,
    state::{AppliedState, StateDir},
};

pub struct Outcome {
    pub plan: Plan,
    pub state: AppliedState,
}

/// Applies `change` to the current rules. `change` validates and edits the
/// rule list; its error aborts everything.
pub fn change_policies(
    pins: &PinDir,
    state_dir: &StateDir,
    change: impl FnOnce(&mut Vec<Policy>) -> Result<()>,
) -> Result<Outcome> {
    let lock = state_dir.lock()?;
    let current = state_dir.read()?;
    let mut policies = current.policies.clone();
    change(&mut policies)?;
    let image = Image::compile(&policies, &current.image)?;
    let plan = Plan::between(&current.image, &image);

    let mut datapath = Datapath::open(pins)?;
    datapath.check_capacity(&plan, current.image.entry_counts())?;
    datapath.apply(&plan)?;

    let state = AppliedState { policies, image, ..current };
    if let Err(err) = state_dir.write(&lock, &state) {
        return Err(datapath.revert(&plan, err));
    }
    Ok(Outcome { plan, state })
}
