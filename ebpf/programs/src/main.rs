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
//!
//! Layout: `lb` is the datapath library (maps, frontend lookup, backend
//! choice, socket translations, counters, trace events) on plain values;
//! one file per attach point reads its context, calls it and applies the
//! result (`sock`: the sock_addr hooks; `sock_release`; `sock_destroy`, the
//! socket iterators that destroy stale connected sockets). This file and
//! untraced.rs are the entry points: the same modules, with and without
//! trace events (`TRACING`, which `lb::trace` reads).
#![no_std]
// The atomic add of the live-connection counts (`lb::conns`).
#![feature(core_intrinsics)]
#![allow(internal_features)]
#![no_main]

/// Trace events are compiled in: this is the datapath balctl loads.
const TRACING: bool = true;

mod lb;
mod object;
mod sock;
mod sock_destroy;
mod sock_release;
mod tc;
