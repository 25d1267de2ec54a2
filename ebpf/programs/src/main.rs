//! balctl's datapath: cgroup sock_addr programs that rewrite the destination
//! of a socket to a service backend when it connects or sends, and rewrite
//! the peer address back to the frontend when it receives or asks for its
//! peer. No packet is ever touched; the translation happens once per socket
//! (per datagram for unconnected UDP).
//!
//! Lookup path (see `balctl_common` for the map layouts):
//! frontend master entry (slot 0; the exact destination, else the NodePort
//! entry when the destination is a node address or IPv4 loopback) -> chosen slot
//! (backend id and a copy of the backend); a sticky choice's backend id ->
//! backend.
#![no_std]
#![no_main]

/// Trace events are compiled in: this is the datapath balctl loads.
const TRACING: bool = true;

mod lb;

include!("datapath.rs");
