//! The datapath library: frontend lookup in layer order, backend choice,
//! the per-socket translations, counters and trace events. The attach
//! points (sock.rs and sock_release.rs today; packet programs later) read
//! their context, call this, and apply what it decided.
//!
//! Conventions:
//! - Functions take plain values, never a program's context: addresses
//!   and ports as an `Endpoint` (see `balctl_common`: mapped IPv4, network
//!   byte order), the protocol, the socket cookie, the current time
//!   (`clock::coarse_now`, read once by the caller for the whole
//!   resolution). What only the context gives and only some paths need
//!   (the client's network namespace, the task a trace event names) comes
//!   as a closure or a trait the attach point implements (`trace::Caller`),
//!   called on those paths only: every helper call here is paid on each
//!   translated connect.
//! - They call only helpers that every program type has: map operations,
//!   the clocks, the random number generator.
//! - They return what was decided (a frontend, a `Choice` or the
//!   `result::` reason there is none, the frontend a peer stands for) and
//!   leave applying it to the attach point: rewriting the address,
//!   refusing with an errno.
//! - The maps are in `maps`; only this library touches them.
//! - Everything is `#[inline(always)]`: each program is one function for
//!   the verifier, which must see every map access in it.

pub mod addr;
pub mod choice;
pub mod clock;
pub mod conns;
pub mod counters;
pub mod flows;
pub mod forward;
pub mod frontend;
pub mod icmp;
pub mod maglev;
pub mod maps;
pub mod nodeport;
pub mod packet;
pub mod sockets;
pub mod trace;

/// What a translation is made for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `connect()` on TCP or UDP: one choice for the life of the socket.
    Connect,
    /// `sendmsg()`/`sendto()` on an unconnected UDP socket: a choice per
    /// datagram, kept stable per socket.
    SendMsg,
}

impl Operation {
    /// How a trace event names it (`TraceEvent::operation`).
    #[inline(always)]
    pub const fn trace_code(self) -> u8 {
        match self {
            Operation::Connect => balctl_common::OP_CONNECT,
            Operation::SendMsg => balctl_common::OP_SENDMSG,
        }
    }
}
