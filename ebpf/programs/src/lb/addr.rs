//! Addresses as the maps hold them: IPv4 mapped into IPv6 (the helpers
//! are in `balctl_common`, which `explain` shares).

use balctl_common::Addr;
pub use balctl_common::{V4_MAPPED_PREFIX, is_v4_mapped};

/// An address and port, both in network byte order.
pub struct Endpoint {
    pub addr: Addr,
    pub port: u16,
}
