//! The network namespace's reserved local ports
//! (`net.ipv4.ip_local_reserved_ports`, which also covers IPv6): while tc
//! programs are on its devices, the ports the datapath SNATs external
//! flows from (`SNAT_PORT_MIN..=SNAT_PORT_MAX`) are reserved, so the node's
//! own sockets never bind one by chance and collide with a translated flow.
//! The ports reserved before are kept.

use std::{fs, ops::RangeInclusive};

use anyhow::{Context as _, Result, anyhow};
use balctl_common::{SNAT_PORT_MAX, SNAT_PORT_MIN};

const SYSCTL: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// The ports the datapath SNATs from.
pub const SNAT_PORTS: RangeInclusive<u16> = SNAT_PORT_MIN..=SNAT_PORT_MAX;

/// Adds the SNAT ports to this namespace's reserved ports.
pub fn reserve_snat_ports() -> Result<()> {
    update(|ports| ports.set(&SNAT_PORTS, true))
}

/// Takes the SNAT ports out of this namespace's reserved ports again.
pub fn release_snat_ports() -> Result<()> {
    update(|ports| ports.set(&SNAT_PORTS, false))
}

/// Reads the sysctl, changes it, and writes it back only if it changed.
fn update(change: impl FnOnce(&mut PortSet)) -> Result<()> {
    let text = fs::read_to_string(SYSCTL).with_context(|| format!("cannot read {SYSCTL}"))?;
    let mut ports = PortSet::parse(&text).with_context(|| format!("cannot read {SYSCTL}: {text:?}"))?;
    let before = ports.to_string();
    change(&mut ports);
    let after = ports.to_string();
    if after != before {
        // The kernel takes the whole list at once; an empty line clears it.
        fs::write(SYSCTL, format!("{after}\n"))
            .with_context(|| format!("cannot write {after:?} to {SYSCTL}"))?;
        log::info!("{SYSCTL}: {before:?} -> {after:?}");
    }
    Ok(())
}

/// A set of ports, as the sysctl lists them: `1,3-5`.
struct PortSet(Vec<bool>);

impl PortSet {
    fn parse(text: &str) -> Result<Self> {
        let mut ports = Self(vec![false; 1 << 16]);
        for part in text.trim().split(',').filter(|part| !part.is_empty()) {
            let (first, last) = part.split_once('-').unwrap_or((part, part));
            let port = |s: &str| s.trim().parse::<u16>().map_err(|e| anyhow!("{s:?}: {e}"));
            ports.set(&(port(first)?..=port(last)?), true);
        }
        Ok(ports)
    }

    fn set(&mut self, range: &RangeInclusive<u16>, reserved: bool) {
        for port in range.clone() {
            self.0[usize::from(port)] = reserved;
        }
    }
}

impl std::fmt::Display for PortSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut runs = Vec::new();
        let mut port = 0;
        while port < self.0.len() {
            if !self.0[port] {
                port += 1;
                continue;
            }
            let first = port;
            while port < self.0.len() && self.0[port] {
                port += 1;
            }
            runs.push(if port - 1 == first { first.to_string() } else { format!("{first}-{}", port - 1) });
        }
        f.write_str(&runs.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snat_ports_are_added_and_taken_out_keeping_the_rest() {
        let mut ports = PortSet::parse("8080,60000-61005,65535\n").unwrap();
        ports.set(&SNAT_PORTS, true);
        assert_eq!(ports.to_string(), "8080,60000-65535");
        ports.set(&SNAT_PORTS, false);
        assert_eq!(ports.to_string(), "8080,60000-60999");
        let mut empty = PortSet::parse("\n").unwrap();
        assert_eq!(empty.to_string(), "");
        empty.set(&SNAT_PORTS, true);
        assert_eq!(empty.to_string(), "61000-65535");
        assert!(PortSet::parse("80-x").is_err());
    }
}
