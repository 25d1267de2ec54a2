//! The tc programs on the devices of `load --devices` (tcx links): packets
//! that arrive from outside the node for an external frontend
//! (`SCOPE_EXTERNAL`: node ports, LoadBalancer IPs, external IPs) are
//! translated on the way in, and their replies on the way back
//! (`lb::nodeport`).

use aya_ebpf::{macros::classifier, programs::TcContext};

use crate::lb::nodeport;

/// A packet arriving on a device (tcx ingress).
#[classifier]
pub fn balctl_from_device(ctx: TcContext) -> i32 {
    nodeport::from_device(&ctx)
}

/// A packet leaving through a device (tcx egress).
#[classifier]
pub fn balctl_to_device(ctx: TcContext) -> i32 {
    nodeport::to_device(&ctx)
}
