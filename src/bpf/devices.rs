//! The network devices of `load --devices`, in the network namespace
//! balctl runs in: names to ifindexes and back, and which devices `auto`
//! picks.

use std::{
    collections::BTreeMap,
    ffi::{CStr, CString},
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, Result};

use crate::input;

/// A device the tc programs are attached to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Device {
    pub name: String,
    pub ifindex: u32,
}

/// The devices named, each checked to exist here; a missing one is an
/// input error naming it, found before anything is attached.
pub fn resolve(names: &[String]) -> Result<Vec<Device>> {
    let mut devices: Vec<Device> = Vec::new();
    for name in names {
        let ifindex = ifindex_of(name).ok_or_else(|| {
            input!("--devices: there is no device {name:?} in this network namespace (see `ip link`)")
        })?;
        if !devices.iter().any(|d| d.ifindex == ifindex) {
            devices.push(Device { name: name.clone(), ifindex });
        }
    }
    Ok(devices)
}

fn ifindex_of(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: a NUL-terminated name; 0 means no such device.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (ifindex != 0).then_some(ifindex)
}

/// The current name of the device with `ifindex` here, if there is one.
pub fn name_of(ifindex: u32) -> Option<String> {
    let mut buffer = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as if_indextoname needs.
    let name = unsafe { libc::if_indextoname(ifindex, buffer.as_mut_ptr()) };
    // SAFETY: on success the buffer holds a NUL-terminated name.
    (!name.is_null()).then(|| unsafe { CStr::from_ptr(buffer.as_ptr()) }.to_string_lossy().into_owned())
}

/// `--devices auto`, the rule Cilium used before it took every device:
/// the devices that are up, are not loopback and hold a global unicast
/// address, and of those the ones that hold one of the node's addresses
/// (`node_addresses`, the Node's InternalIP/ExternalIP as synced) or carry
/// a default route (IPv4 or IPv6, main table). A veth or bridge without an
/// address never qualifies. None found is an input error listing what was
/// looked at.
pub fn auto(node_addresses: &[IpAddr]) -> Result<Vec<Device>> {
    let candidates = global_unicast_devices()?;
    let defaults = default_route_devices()?;
    let picked: Vec<String> = candidates
        .iter()
        .filter(|(name, addresses)| {
            defaults.contains(*name)
                || addresses
                    .iter()
                    .any(|address| node_addresses.iter().any(|node| node.to_canonical() == *address))
        })
        .map(|(name, _)| name.clone())
        .collect();
    if picked.is_empty() {
        let looked_at: Vec<&str> = candidates.keys().map(String::as_str).collect();
        return Err(input!(
            "--devices auto: no device holds a node address or carries a default route \
             (devices up with a global unicast address: {}); name the devices instead",
            if looked_at.is_empty() { "none".to_owned() } else { looked_at.join(", ") }
        ));
    }
    resolve(&picked)
}

/// The devices that are up and not loopback, with their global unicast
/// addresses, for those that have any.
fn global_unicast_devices() -> Result<BTreeMap<String, Vec<IpAddr>>> {
    let mut devices: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates the list it points `list` at.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot list the network devices");
    }
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: each entry of the list getifaddrs returned is valid until freeifaddrs.
        let ifaddr = unsafe { &*entry };
        entry = ifaddr.ifa_next;
        let flags = ifaddr.ifa_flags as libc::c_int;
        if flags & libc::IFF_UP == 0 || flags & libc::IFF_LOOPBACK != 0 {
            continue;
        }
        // SAFETY: ifa_addr is null or a sockaddr of the family it names.
        let Some(address) = (unsafe { ip_of(ifaddr.ifa_addr) }) else {
            continue;
        };
        if is_global_unicast(address) {
            // SAFETY: ifa_name is a NUL-terminated name.
            let name = unsafe { CStr::from_ptr(ifaddr.ifa_name) }.to_string_lossy().into_owned();
            devices.entry(name).or_default().push(address);
        }
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(devices)
}

/// # Safety
///
/// `address` must be null or point to a sockaddr of the family it names.
unsafe fn ip_of(address: *const libc::sockaddr) -> Option<IpAddr> {
    if address.is_null() {
        return None;
    }
    // SAFETY: per the contract, the family says which sockaddr it is.
    unsafe {
        match i32::from((*address).sa_family) {
            libc::AF_INET => {
                let v4 = &*address.cast::<libc::sockaddr_in>();
                Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr))))
            }
            libc::AF_INET6 => {
                let v6 = &*address.cast::<libc::sockaddr_in6>();
                Some(IpAddr::V6(Ipv6Addr::from(v6.sin6_addr.s6_addr)))
            }
            _ => None,
        }
    }
}

fn is_global_unicast(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            !(v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast())
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback() || v6.is_unicast_link_local() || v6.is_unspecified() || v6.is_multicast())
        }
    }
}

/// The devices of this namespace's default routes in the main table, as
/// /proc/net/route and /proc/net/ipv6_route list them.
fn default_route_devices() -> Result<Vec<String>> {
    let read = |path: &str| fs::read_to_string(path).with_context(|| format!("cannot read {path}"));
    Ok(default_route_devices_of(&read("/proc/net/route")?, &read("/proc/net/ipv6_route")?))
}

fn default_route_devices_of(route: &str, ipv6_route: &str) -> Vec<String> {
    // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
    let v4 = route.lines().skip(1).filter_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() > 7 && fields[1] == "00000000" && fields[7] == "00000000").then(|| fields[0])
    });
    // dest dest_len src src_len next_hop metric refcnt use flags iface
    let v6 = ipv6_route.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() == 10 && fields[0].bytes().all(|b| b == b'0') && fields[1] == "00" && fields[9] != "lo")
            .then(|| fields[9])
    });
    let mut devices: Vec<String> = v4.chain(v6).map(str::to_owned).collect();
    devices.sort();
    devices.dedup();
    devices
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_routes_are_read_from_both_tables() {
        let route = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t00000000\t0102000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                     eth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth1\t0000A8C0\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        let ipv6_route = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 \
                          20010db8000000000000000000000001 00000400 00000001 00000000 00000003 eth2\n\
                          20010db8000000000000000000000000 40 00000000000000000000000000000000 00 \
                          00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth1\n\
                          00000000000000000000000000000000 00 00000000000000000000000000000000 00 \
                          00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo\n";
        assert_eq!(default_route_devices_of(route, ipv6_route), ["eth0", "eth2"]);
    }

    #[test]
    fn only_global_unicast_addresses_count() {
        for address in ["192.0.2.1", "198.18.0.1", "2001:db8::1", "10.0.0.1"] {
            assert!(is_global_unicast(address.parse().unwrap()), "{address}");
        }
        for address in ["127.0.0.1", "169.254.1.1", "0.0.0.0", "224.0.0.1", "::1", "fe80::1", "ff02::1"] {
            assert!(!is_global_unicast(address.parse().unwrap()), "{address}");
        }
    }
}
