//! Turns "what the maps hold" and "what they should hold" into an ordered
//! list of map writes, each with the write that undoes it.
//!
//! The order is what keeps every connection working during an update (the
//! scheme of Cilium's master entry + slots):
//!
//! 1. new backends, then new memberships: nothing refers to them yet;
//! 2. masters whose count shrinks: readers stop picking the doomed slots;
//! 3. masters of removed frontends, then slots nobody can pick any more;
//! 4. new and rewritten slots, then the masters that grow or change: a
//!    reader that sees a count finds every slot up to it written;
//! 5. memberships of removed backends, then the backends. (Sticky choices
//!    of those memberships are dropped by `Datapath::apply` afterwards.)
//!
//! Node addresses only widen where NodePort frontends answer; new ones go
//! first and removed ones last, with the backends.
//!
//! Deleting before adding also keeps the peak fill of the services map at
//! max(before, after), which is what the capacity check assumes.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use balctl_common::{Backend, MembershipKey, NodeAddressKey, ServiceEntry, ServiceKey};

use crate::{
    bpf::raw::{addr_to_raw, service_key},
    image::{BackendId, EntryCounts, FrontendImage, Image},
    model::Frontend,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    PutBackend(BackendId, Backend),
    DeleteBackend(BackendId),
    PutMembership(MembershipKey),
    DeleteMembership(MembershipKey),
    PutService(ServiceKey, ServiceEntry),
    DeleteService(ServiceKey),
    PutNodeAddress(NodeAddressKey),
    DeleteNodeAddress(NodeAddressKey),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub op: Op,
    /// Restores the entry as it was.
    pub undo: Op,
}

/// Counts of what changes, for the one-line summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub frontends_added: usize,
    pub frontends_changed: usize,
    pub frontends_removed: usize,
    pub backends_added: usize,
    pub backends_removed: usize,
    pub node_addresses_added: usize,
    pub node_addresses_removed: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "frontends +{} ~{} -{}, backends +{} -{}",
            self.frontends_added,
            self.frontends_changed,
            self.frontends_removed,
            self.backends_added,
            self.backends_removed
        )?;
        if self.node_addresses_added + self.node_addresses_removed > 0 {
            write!(f, ", node addresses +{} -{}", self.node_addresses_added, self.node_addresses_removed)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub summary: Summary,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The plan that moves the maps from `old` to `new`, both as recorded in
    /// the state dir.
    pub fn between(old: &Image, new: &Image) -> Self {
        let mut phases = Phases::default();
        let mut summary = Summary::default();
        let frontends: BTreeSet<&Frontend> = old.frontends.keys().chain(new.frontends.keys()).collect();
        for frontend in frontends {
            let before = old.frontends.get(frontend);
            let after = new.frontends.get(frontend);
            match (before, after) {
                (Some(b), Some(a)) if b == a => continue,
                (None, Some(_)) => summary.frontends_added += 1,
                (Some(_), None) => summary.frontends_removed += 1,
                _ => summary.frontends_changed += 1,
            }
            phases.frontend(frontend, &slot_map(before), &slot_map(after));
            let members = |f: Option<&FrontendImage>| -> BTreeSet<MembershipKey> {
                f.map(|f| f.memberships().collect()).unwrap_or_default()
            };
            phases.memberships(&members(before), &members(after));
        }
        let raw_backends = |image: &Image| -> BTreeMap<BackendId, Backend> {
            image.backends.iter().map(|(&id, addr)| (id, addr.to_raw())).collect()
        };
        let (old_backends, new_backends) = (raw_backends(old), raw_backends(new));
        summary.backends_added = new_backends.keys().filter(|id| !old_backends.contains_key(id)).count();
        summary.backends_removed = old_backends.keys().filter(|id| !new_backends.contains_key(id)).count();
        phases.backends(&old_backends, &new_backends);
        let (old_nodes, new_nodes) = (node_address_keys(old), node_address_keys(new));
        summary.node_addresses_added = new_nodes.difference(&old_nodes).count();
        summary.node_addresses_removed = old_nodes.difference(&new_nodes).count();
        phases.node_addresses(&old_nodes, &new_nodes);
        Self { steps: phases.into_steps(), summary }
    }

    /// The plan that makes the maps hold exactly `desired`, from what they
    /// hold now (after an unload, a crash or a manual edit).
    pub fn repair(actual: &MapContents, desired: &MapContents) -> Self {
        let mut phases = Phases::default();
        let group = |contents: &MapContents| {
            let mut frontends: BTreeMap<ServiceKey, BTreeMap<u16, ServiceEntry>> = BTreeMap::new();
            for (key, entry) in &contents.services {
                let master_key = ServiceKey { slot: 0, ..*key };
                frontends.entry(master_key).or_default().insert(key.slot, *entry);
            }
            frontends
        };
        let (actual_frontends, desired_frontends) = (group(actual), group(desired));
        let empty = BTreeMap::new();
        let keys: BTreeSet<&ServiceKey> = actual_frontends.keys().chain(desired_frontends.keys()).collect();
        for key in keys {
            let before = actual_frontends.get(key).unwrap_or(&empty);
            let after = desired_frontends.get(key).unwrap_or(&empty);
            if before != after {
                phases.frontend_slots(key, before, after);
            }
        }
        phases.memberships(&actual.membership, &desired.membership);
        phases.backends(&actual.backends, &desired.backends);
        phases.node_addresses(&actual.node_addresses, &desired.node_addresses);
        Self { steps: phases.into_steps(), summary: Summary::default() }
    }

    /// The most entries each map holds at any point while the plan runs,
    /// starting from `start`.
    pub fn peak_entries(&self, start: EntryCounts) -> EntryCounts {
        let mut now = start;
        let mut peak = start;
        for step in &self.steps {
            // A put adds an entry when undoing it means deleting.
            let adds = matches!(
                step.undo,
                Op::DeleteService(_)
                    | Op::DeleteBackend(_)
                    | Op::DeleteMembership(_)
                    | Op::DeleteNodeAddress(_)
            );
            match step.op {
                Op::PutService(..) if adds => now.services += 1,
                Op::PutBackend(..) if adds => now.backends += 1,
                Op::PutMembership(..) if adds => now.membership += 1,
                Op::PutNodeAddress(..) if adds => now.nodes += 1,
                Op::DeleteService(_) => now.services -= 1,
                Op::DeleteBackend(_) => now.backends -= 1,
                Op::DeleteMembership(_) => now.membership -= 1,
                Op::DeleteNodeAddress(_) => now.nodes -= 1,
                _ => {}
            }
            peak.services = peak.services.max(now.services);
            peak.backends = peak.backends.max(now.backends);
            peak.membership = peak.membership.max(now.membership);
            peak.nodes = peak.nodes.max(now.nodes);
        }
        peak
    }
}

/// Everything the balancing maps hold (or should hold), entry by entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapContents {
    pub services: BTreeMap<ServiceKey, ServiceEntry>,
    pub backends: BTreeMap<BackendId, Backend>,
    pub membership: BTreeSet<MembershipKey>,
    pub node_addresses: BTreeSet<NodeAddressKey>,
}

impl MapContents {
    pub fn entry_counts(&self) -> EntryCounts {
        EntryCounts {
            services: self.services.len() as u64,
            backends: self.backends.len() as u64,
            membership: self.membership.len() as u64,
            nodes: self.node_addresses.len() as u64,
        }
    }

    /// What the maps hold when they match `image` exactly.
    pub fn of(image: &Image) -> Self {
        let mut contents = Self::default();
        for (frontend, f) in &image.frontends {
            for (slot, entry) in slot_map(Some(f)) {
                contents.services.insert(service_key(frontend, slot), entry);
            }
            contents.membership.extend(f.memberships());
        }
        contents.backends = image.backends.iter().map(|(&id, addr)| (id, addr.to_raw())).collect();
        contents.node_addresses = node_address_keys(image);
        contents
    }
}

fn node_address_keys(image: &Image) -> BTreeSet<NodeAddressKey> {
    image.node_addresses.iter().map(|&ip| NodeAddressKey { addr: addr_to_raw(ip) }).collect()
}

/// Master (slot 0) and slot entries of one frontend.
fn slot_map(frontend: Option<&FrontendImage>) -> BTreeMap<u16, ServiceEntry> {
    frontend.map(|f| std::iter::once((0, f.master())).chain(f.slots()).collect()).unwrap_or_default()
}

/// Steps sorted into the phases of the module docs, in execution order.
#[derive(Default)]
struct Phases {
    put_backends: Vec<Step>,
    put_memberships: Vec<Step>,
    shrink_masters: Vec<Step>,
    delete_masters: Vec<Step>,
    delete_slots: Vec<Step>,
    put_slots: Vec<Step>,
    put_masters: Vec<Step>,
    late: Vec<Step>,
    delete_backends: Vec<Step>,
}

impl Phases {
    fn frontend(
        &mut self,
        frontend: &Frontend,
        before: &BTreeMap<u16, ServiceEntry>,
        after: &BTreeMap<u16, ServiceEntry>,
    ) {
        self.frontend_slots(&service_key(frontend, 0), before, after);
    }

    fn frontend_slots(
        &mut self,
        master_key: &ServiceKey,
        before: &BTreeMap<u16, ServiceEntry>,
        after: &BTreeMap<u16, ServiceEntry>,
    ) {
        let key = |slot| ServiceKey { slot, ..*master_key };
        for (&slot, old) in before {
            if !after.contains_key(&slot) {
                let step = Step { op: Op::DeleteService(key(slot)), undo: Op::PutService(key(slot), *old) };
                if slot == 0 {
                    self.delete_masters.push(step);
                } else {
                    self.delete_slots.push(step);
                }
            }
        }
        for (&slot, new) in after {
            let old = before.get(&slot);
            if old == Some(new) {
                continue;
            }
            let step = Step {
                op: Op::PutService(key(slot), *new),
                undo: old.map_or(Op::DeleteService(key(slot)), |old| Op::PutService(key(slot), *old)),
            };
            match (slot, old) {
                (0, Some(old)) if new.count < old.count => self.shrink_masters.push(step),
                (0, _) => self.put_masters.push(step),
                _ => self.put_slots.push(step),
            }
        }
    }

    fn memberships(&mut self, before: &BTreeSet<MembershipKey>, after: &BTreeSet<MembershipKey>) {
        for &key in after.difference(before) {
            self.put_memberships.push(Step { op: Op::PutMembership(key), undo: Op::DeleteMembership(key) });
        }
        for &key in before.difference(after) {
            self.late.push(Step { op: Op::DeleteMembership(key), undo: Op::PutMembership(key) });
        }
    }

    fn backends(&mut self, before: &BTreeMap<BackendId, Backend>, after: &BTreeMap<BackendId, Backend>) {
        for (&id, new) in after {
            let old = before.get(&id);
            if old != Some(new) {
                self.put_backends.push(Step {
                    op: Op::PutBackend(id, *new),
                    undo: old.map_or(Op::DeleteBackend(id), |old| Op::PutBackend(id, *old)),
                });
            }
        }
        for (&id, old) in before {
            if !after.contains_key(&id) {
                self.delete_backends.push(Step { op: Op::DeleteBackend(id), undo: Op::PutBackend(id, *old) });
            }
        }
    }

    fn node_addresses(&mut self, before: &BTreeSet<NodeAddressKey>, after: &BTreeSet<NodeAddressKey>) {
        for &key in after.difference(before) {
            self.put_backends.push(Step { op: Op::PutNodeAddress(key), undo: Op::DeleteNodeAddress(key) });
        }
        for &key in before.difference(after) {
            self.delete_backends.push(Step { op: Op::DeleteNodeAddress(key), undo: Op::PutNodeAddress(key) });
        }
    }

    fn into_steps(self) -> Vec<Step> {
        let phases = [
            self.put_backends,
            self.put_memberships,
            self.shrink_masters,
            self.delete_masters,
            self.delete_slots,
            self.put_slots,
            self.put_masters,
            self.late,
            self.delete_backends,
        ];
        // A big plan is most of a sync's memory: move the phases into one
        // vector of the final size, freeing each as it is moved.
        let mut steps = Vec::with_capacity(phases.iter().map(Vec::len).sum());
        for phase in phases {
            steps.extend(phase);
        }
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FrontendRule, parse_backend};

    fn image(previous: &Image, policies: &[(&str, &str, &[&str])]) -> Image {
        let rules: Vec<(String, FrontendRule)> = policies
            .iter()
            .map(|(name, frontend, backends)| {
                let rule = FrontendRule {
                    frontend: frontend.parse().unwrap(),
                    backends: backends.iter().map(|b| parse_backend(b).unwrap()).collect(),
                    affinity_seconds: None,
                };
                (format!("policy/{name}"), rule)
            })
            .collect();
        Image::compile(rules.iter().map(|(owner, rule)| (owner.clone(), rule)), [], previous).unwrap()
    }

    /// Applies steps to an in-memory model of the maps, checking after every
    /// step the invariant the datapath relies on: a master with count N has
    /// slots 1..=N, and every slot's backend exists.
    fn run(start: &MapContents, plan: &Plan) -> MapContents {
        let mut maps = start.clone();
        for step in &plan.steps {
            match &step.op {
                Op::PutBackend(id, b) => drop(maps.backends.insert(*id, *b)),
                Op::DeleteBackend(id) => drop(maps.backends.remove(id)),
                Op::PutMembership(k) => drop(maps.membership.insert(*k)),
                Op::DeleteMembership(k) => drop(maps.membership.remove(k)),
                Op::PutService(k, v) => drop(maps.services.insert(*k, *v)),
                Op::DeleteService(k) => drop(maps.services.remove(k)),
                Op::PutNodeAddress(k) => drop(maps.node_addresses.insert(*k)),
                Op::DeleteNodeAddress(k) => drop(maps.node_addresses.remove(k)),
            }
            for (key, master) in maps.services.iter().filter(|(k, _)| k.slot == 0) {
                for slot in 1..=master.count {
                    let entry = maps.services.get(&ServiceKey { slot, ..*key });
                    let entry = entry.unwrap_or_else(|| panic!("slot {slot} missing after {:?}", step.op));
                    assert!(
                        maps.backends.contains_key(&entry.backend_id),
                        "dangling backend after {:?}",
                        step.op
                    );
                }
            }
        }
        maps
    }

    fn undo(end: &MapContents, plan: &Plan) -> MapContents {
        let reverse = Plan {
            steps: plan.steps.iter().rev().map(|s| Step { op: s.undo.clone(), undo: s.op.clone() }).collect(),
            summary: Summary::default(),
        };
        run(end, &reverse)
    }

    #[test]
    fn every_transition_keeps_the_datapath_consistent_and_undoes() {
        let three = &["192.0.2.1:80", "192.0.2.2:80", "192.0.2.3:80"][..];
        let v1 =
            image(&Image::default(), &[("a", "198.18.0.1:80", three), ("b", "198.18.0.2:80", &three[..1])]);
        let transitions: Vec<Vec<(&str, &str, &[&str])>> = vec![
            vec![("a", "198.18.0.1:80", &three[..1])],
            vec![("a", "198.18.0.1:80", &["192.0.2.4:80", "192.0.2.5:80", "192.0.2.6:80", "192.0.2.7:80"])],
            vec![("c", "198.18.0.3:80", &[])],
            vec![],
        ];
        for policies in transitions {
            let v2 = image(&v1, &policies);
            let plan = Plan::between(&v1, &v2);
            let start = MapContents::of(&v1);
            let end = run(&start, &plan);
            assert_eq!(end, MapContents::of(&v2));
            assert_eq!(undo(&end, &plan), start);
            assert_eq!(Plan::repair(&start, &MapContents::of(&v2)).steps.len(), plan.steps.len());
        }
    }

    #[test]
    fn shrinking_lowers_the_count_before_deleting_slots() {
        let v1 = image(&Image::default(), &[("a", "198.18.0.1:80", &["192.0.2.1:80", "192.0.2.2:80"])]);
        let v2 = image(&v1, &[("a", "198.18.0.1:80", &["192.0.2.2:80"])]);
        let plan = Plan::between(&v1, &v2);
        let ops: Vec<&Op> = plan.steps.iter().map(|s| &s.op).collect();
        let master = ops.iter().position(|op| matches!(op, Op::PutService(k, _) if k.slot == 0)).unwrap();
        let delete = ops.iter().position(|op| matches!(op, Op::DeleteService(k) if k.slot == 2)).unwrap();
        assert!(master < delete, "{ops:?}");
        assert!(matches!(ops.last(), Some(Op::DeleteBackend(1))), "{ops:?}");
    }

    #[test]
    fn an_unchanged_image_plans_nothing() {
        let v1 = image(&Image::default(), &[("a", "198.18.0.1:80", &["192.0.2.1:80"])]);
        assert!(Plan::between(&v1, &v1.clone()).is_empty());
        assert!(Plan::repair(&MapContents::of(&v1), &MapContents::of(&v1)).is_empty());
    }

    #[test]
    fn peak_counts_deletions_before_additions() {
        let v1 = image(&Image::default(), &[("a", "198.18.0.1:80", &["192.0.2.1:80", "192.0.2.2:80"])]);
        let v2 = image(&v1, &[("b", "198.18.0.2:80", &["192.0.2.3:80", "192.0.2.4:80"])]);
        let peak = Plan::between(&v1, &v2).peak_entries(v1.entry_counts());
        // Services: a's 3 entries go before b's 3 arrive. Backends: new ones first.
        assert_eq!(peak, EntryCounts { services: 3, backends: 4, membership: 4, nodes: 0 });
    }
}
