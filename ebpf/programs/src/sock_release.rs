//! The cgroup sock_release program: a closing socket's translation is
//! dropped (`lb::sockets::release`).

use aya_ebpf::{
    EbpfContext as _, helpers::bpf_get_socket_cookie, macros::cgroup_sock, programs::SockContext,
};

use crate::{lb::sockets, sock::ALLOW};

/// A socket of the cgroup closes: its way of the sockets map, if it has
/// one, is emptied for the next socket (`sockets::release`). Runs for
/// every TCP and UDP socket of the cgroup, translated or not.
#[cgroup_sock(sock_release)]
pub fn balctl_sock_release(ctx: SockContext) -> i32 {
    // SAFETY: the helper only reads the socket behind the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    sockets::release(cookie);
    // cgroup sock programs allow with 1; sock_release's result is ignored.
    ALLOW
}
