//! Everything that touches the kernel: the embedded object, loading and
//! attaching, pins, typed map access and the raw bpf(2) calls aya lacks.

pub mod batch;
pub mod cgroup;
pub mod counters;
pub mod devices;
pub mod inventory;
pub mod links;
pub mod loader;
pub mod maps;
pub mod object;
pub mod pins;
pub mod reserved_ports;
pub mod sock_destroy;
pub mod sockets;
pub mod sys;
