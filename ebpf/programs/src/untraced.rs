//! balctl's datapath without the trace event code: the baseline the
//! connect bench (bench/connect.rs) compares the real one against, to
//! show what the event code costs while nobody traces.
#![no_std]
// The atomic add of the live-connection counts (`lb::conns`).
#![feature(core_intrinsics)]
#![allow(internal_features)]
#![no_main]

const TRACING: bool = false;

mod lb;
mod object;
mod sock;
mod sock_destroy;
mod sock_release;
mod tc;
