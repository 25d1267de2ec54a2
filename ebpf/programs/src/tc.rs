//! The tc programs on the devices of `load --devices` (tcx links): packets
//! that arrive from outside the node for an external frontend
//! (`SCOPE_EXTERNAL`: node ports, LoadBalancer IPs, external IPs) are
//! translated on the way in, and their replies on the way back.
//!
//! Skeleton: both programs pass every packet untouched until the
//! north-south datapath fills them in.

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};

/// A packet arriving on a device (tcx ingress).
#[classifier]
pub fn balctl_from_device(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

/// A packet leaving through a device (tcx egress).
#[classifier]
pub fn balctl_to_device(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}
