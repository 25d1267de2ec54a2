//! The map entries one sync's inputs may make, counted as they are read.
//!
//! A frontend rule is made per address × port, each with a copy of its
//! backends, so a few kilobytes of input can ask for billions of backend
//! copies: 1,000 addresses × 1,000 ports × 1,000 backends is 30 KB of TOML
//! and 32 GB of rules. Every object's rules are counted here as soon as
//! their numbers are known, before they are built, and a sync whose inputs
//! make more entries than `MAX_ENTRIES` is refused as bad input.

use std::fmt;

use anyhow::Result;

use crate::{input, model::FrontendRule};

/// The map entries of everything one sync reads, counted against
/// `MAX_ENTRIES`. A frontend rule costs 1 + its number of backends: the
/// services map holds a master entry per frontend and a slot per backend
/// (see plan.rs). Made once per read and passed down; never shared.
#[derive(Debug, Default)]
pub struct EntryBudget {
    used: u128,
}

/// The most map entries one sync may make: 16,777,216, far more than the
/// services map balctl makes by default (65,536) holds, yet a bound on the
/// memory reading takes (about 40 bytes a backend slot). The services map
/// of a load must hold what a sync makes anyway.
pub const MAX_ENTRIES: u128 = 1 << 24;

impl EntryBudget {
    /// Counts `frontends` rules (the product of the counted things, each
    /// with its name: `(1000, "addresses")`) of `backends` backends each
    /// (with its name), before they are made. Over the budget, an input
    /// error says `what` made them (where it is, which object) and the
    /// numbers.
    pub fn reserve(
        &mut self,
        what: impl fmt::Display,
        frontends: &[(usize, &str)],
        backends: (usize, &str),
    ) -> Result<()> {
        let entries =
            frontends.iter().try_fold(1 + backends.0 as u128, |e, &(count, _)| e.checked_mul(count as u128));
        self.add(entries).map_err(|total| {
            let factors: Vec<String> = frontends
                .iter()
                .map(|&(count, name)| format!("{} {name}", Thousands(count as u128)))
                .collect();
            input!(
                "{what}: {} x (1 + {} {}) = {} map entries{total}; a sync may make at most {} (the services \
                 map must hold them)",
                factors.join(" x "),
                Thousands(backends.0 as u128),
                backends.1,
                Count(entries),
                Thousands(MAX_ENTRIES)
            )
        })
    }

    /// Counts the rules of an object read before (kept from the last sync,
    /// so its rules exist already), as a sync that read it again would.
    pub fn reserve_made(&mut self, what: impl fmt::Display, rules: &[FrontendRule]) -> Result<()> {
        let entries: u128 = rules.iter().map(|rule| 1 + rule.backends.len() as u128).sum();
        self.add(Some(entries)).map_err(|total| {
            input!(
                "{what}: {} rules with their backends make {} map entries{total}; a sync may make at most \
                 {} (the services map must hold them)",
                Thousands(rules.len() as u128),
                Thousands(entries),
                Thousands(MAX_ENTRIES)
            )
        })
    }

    /// Adds `entries` (`None`: more than a u128 holds) to those counted,
    /// or says how many the sync would make with them, if others were
    /// counted before.
    fn add(&mut self, entries: Option<u128>) -> Result<(), String> {
        match entries.and_then(|e| e.checked_add(self.used)) {
            Some(total) if total <= MAX_ENTRIES => {
                self.used = total;
                Ok(())
            }
            Some(total) if self.used > 0 => Err(format!(", {} with those counted before", Thousands(total))),
            _ => Err(String::new()),
        }
    }
}

/// A number of entries, or more than a u128 holds.
struct Count(Option<u128>);

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(count) => Thousands(count).fmt(f),
            None => write!(f, "more than {}", Thousands(u128::MAX)),
        }
    }
}

/// A count with its thousands separated: 1,001,000,000.
struct Thousands(u128);

impl fmt::Display for Thousands {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.0.to_string();
        for (index, digit) in digits.chars().enumerate() {
            if index > 0 && (digits.len() - index).is_multiple_of(3) {
                f.write_str(",")?;
            }
            write!(f, "{digit}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_separated() {
        let shown: Vec<String> =
            [0, 7, 999, 1_000, 65_536, 1_001_000_000].map(|n| Thousands(n).to_string()).into();
        assert_eq!(shown, ["0", "7", "999", "1,000", "65,536", "1,001,000,000"]);
    }

    #[test]
    fn a_cross_product_over_the_budget_is_refused_with_its_numbers() {
        let mut budget = EntryBudget::default();
        let err = budget
            .reserve(
                "s.toml:2:1: service `web`",
                &[(1_000, "addresses"), (1_000, "ports")],
                (1_000, "backends"),
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "s.toml:2:1: service `web`: 1,000 addresses x 1,000 ports x (1 + 1,000 backends) = 1,001,000,000 \
             map entries; a sync may make at most 16,777,216 (the services map must hold them)"
        );
        assert_eq!(crate::error::exit_code(&err), crate::error::EXIT_INPUT);
        // Nothing was counted: what fits still does.
        budget.reserve("b", &[(4_096, "addresses")], (4_095, "backends")).unwrap();
        assert_eq!(budget.used, MAX_ENTRIES);
        budget.reserve("c", &[(0, "addresses")], (1_000, "backends")).unwrap();
        let err = budget.reserve("d", &[(1, "frontends")], (0, "backends")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("d: 1 frontends x (1 + 0 backends) = 1 map entries, 16,777,217 with those"),
            "{err}"
        );
    }

    #[test]
    fn counts_beyond_any_integer_do_not_overflow() {
        let mut budget = EntryBudget::default();
        let huge = (usize::MAX, "addresses");
        let err = budget.reserve("x", &[huge, huge, huge], (usize::MAX, "backends")).unwrap_err();
        assert!(
            err.to_string().contains(&format!("= more than {} map entries;", Thousands(u128::MAX))),
            "{err}"
        );
        budget.reserve("y", &[(1, "addresses")], (MAX_ENTRIES as usize - 1, "backends")).unwrap();
        let err = budget.reserve("z", &[(usize::MAX, "addresses")], (usize::MAX, "backends")).unwrap_err();
        assert!(err.to_string().contains("with those counted before; a sync"), "{err}");
        let rules = [FrontendRule {
            frontend: crate::model::Frontend {
                address: [198, 18, 0, 1].into(),
                port: 80,
                protocol: crate::model::Protocol::Tcp,
                scope: crate::model::Scope::Service,
            },
            backends: vec!["192.0.2.2:80".parse().unwrap(); 2],
            local_backends: Vec::new(),
            affinity_seconds: None,
            local_only: false,
            requests_per_second: None,
            address_kind: crate::model::AddressKind::ClusterIp,
            external: crate::model::ExternalBalancing::default(),
            health: None,
            weights: Vec::new(),
            least_connections: false,
        }];
        let err = budget.reserve_made("kept", &rules).unwrap_err();
        assert!(
            err.to_string().starts_with("kept: 1 rules with their backends make 3 map entries, 16,777,219"),
            "{err}"
        );
    }
}
