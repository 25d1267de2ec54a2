//! The cgroup sock_addr programs: `connect` and `sendmsg` translate a
//! frontend to a backend, `recvmsg` and `getpeername` show a backend the
//! socket was translated to as its frontend. Each reads its context, calls
//! the library (`lb`) with plain values and writes the context back.

use crate::lb::{
    Operation,
    addr::{Endpoint, V4_MAPPED_PREFIX, is_v4_mapped},
    choice::choose_backend,
    clock::coarse_now,
    counters::count,
    frontend,
    sockets::{self, Translation},
    trace::{Caller, trace},
};
use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_netns_cookie, bpf_get_socket_cookie,
        bpf_set_retval, generated,
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use balctl_common::{ECONNREFUSED, IPPROTO_TCP, IPPROTO_UDP, result};

/// sock_addr programs allow the socket operation by returning 1.
pub const ALLOW: i32 = 1;
/// Returning 0 rejects it; the error the caller sees is set with
/// `bpf_set_retval` first (the kernel would say EPERM otherwise).
const REJECT: i32 = 0;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

#[cgroup_sock_addr(connect4)]
pub fn balctl_connect4(ctx: SockAddrContext) -> i32 {
    translate(&ctx, Family::V4, Operation::Connect)
}

#[cgroup_sock_addr(connect6)]
pub fn balctl_connect6(ctx: SockAddrContext) -> i32 {
    translate(&ctx, Family::V6, Operation::Connect)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn balctl_sendmsg4(ctx: SockAddrContext) -> i32 {
    translate(&ctx, Family::V4, Operation::SendMsg)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn balctl_sendmsg6(ctx: SockAddrContext) -> i32 {
    translate(&ctx, Family::V6, Operation::SendMsg)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn balctl_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse_translate(&ctx, Family::V4)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn balctl_recvmsg6(ctx: SockAddrContext) -> i32 {
    reverse_translate(&ctx, Family::V6)
}

#[cgroup_sock_addr(getpeername4)]
pub fn balctl_getpeer4(ctx: SockAddrContext) -> i32 {
    reverse_translate(&ctx, Family::V4)
}

#[cgroup_sock_addr(getpeername6)]
pub fn balctl_getpeer6(ctx: SockAddrContext) -> i32 {
    reverse_translate(&ctx, Family::V6)
}

/// Forward translation: frontend -> backend. Traffic to anything that is not
/// a frontend passes untouched.
#[inline(always)]
fn translate(ctx: &SockAddrContext, family: Family, op: Operation) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel passes a valid bpf_sock_addr for the program's whole run.
    let proto = unsafe { read(&raw const (*sa).protocol) } as u8;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return ALLOW;
    }
    let dest = read_dest(sa, family);
    let Some((frontend, master)) = frontend::lookup(&dest, proto) else {
        return ALLOW;
    };
    // SAFETY: the helper only reads the socket behind the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let now = coarse_now();
    let earlier = sockets::earlier(cookie, op, now);
    // SAFETY: a plain helper call on the program's context.
    let client_netns = || unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let connecting = op == Operation::Connect;
    let mut choice = choose_backend(connecting, cookie, client_netns, now, &earlier, &frontend, &master);
    // Validation keeps backend families equal to the frontend's; never
    // write half an IPv6 address into an IPv4 socket.
    if family == Family::V4 && choice.as_ref().is_ok_and(|choice| !is_v4_mapped(&choice.backend.addr)) {
        choice = Err(result::FAMILY);
    }
    count(master.cell, &choice);
    trace(&dest, proto, op.trace_code(), &master, &choice, now, &CurrentTask);
    let Ok(choice) = choice else {
        return reject();
    };
    let to = Endpoint { addr: choice.backend.addr, port: choice.backend.port };
    let translation = Translation { frontend: &dest, backend: &to, service_id: master.service_id, op, now };
    sockets::remember_translation(cookie, &earlier, &choice, &translation);
    write_dest(sa, family, &to);
    ALLOW
}

/// A socket call is made by the current task.
struct CurrentTask;

impl Caller for CurrentTask {
    #[inline(always)]
    fn pid_tgid(&self) -> u64 {
        bpf_get_current_pid_tgid()
    }

    #[inline(always)]
    fn cgroup_id(&self) -> u64 {
        // SAFETY: plain helper call.
        unsafe { bpf_get_current_cgroup_id() }
    }

    #[inline(always)]
    fn name(&self, name: &mut [u8; 16]) {
        // SAFETY: the helper writes at most the buffer's size into it.
        unsafe { generated::bpf_get_current_comm(name.as_mut_ptr().cast(), name.len() as u32) };
    }

    #[inline(always)]
    fn client(&self) -> Endpoint {
        Endpoint { addr: [0; 4], port: 0 }
    }
}

/// Reverse translation for `recvmsg` and `getpeername`: a peer that is the
/// backend this socket was translated to is shown as the frontend.
#[inline(always)]
fn reverse_translate(ctx: &SockAddrContext, family: Family) -> i32 {
    let sa = ctx.sock_addr;
    let peer = read_dest(sa, family);
    // SAFETY: the helper only reads the socket behind the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(frontend) = sockets::frontend_of(cookie, &peer) {
        write_dest(sa, family, &frontend);
    }
    // recvmsg and getpeername programs must allow; they can only rewrite.
    ALLOW
}

#[inline(always)]
fn reject() -> i32 {
    // SAFETY: plain helper call; sets the errno the socket call returns.
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    REJECT
}

#[inline(always)]
fn read_dest(sa: *mut bpf_sock_addr, family: Family) -> Endpoint {
    // SAFETY: `sa` is the program's context; each field is read with one
    // 4-byte load, the access size the verifier allows for these fields.
    unsafe {
        let addr = match family {
            Family::V4 => {
                let mut mapped = V4_MAPPED_PREFIX;
                mapped[3] = read(&raw const (*sa).user_ip4);
                mapped
            }
            Family::V6 => [
                read(&raw const (*sa).user_ip6[0]),
                read(&raw const (*sa).user_ip6[1]),
                read(&raw const (*sa).user_ip6[2]),
                read(&raw const (*sa).user_ip6[3]),
            ],
        };
        Endpoint {
            addr,
            // user_port holds the network-order port in its first two bytes.
            port: read(&raw const (*sa).user_port) as u16,
        }
    }
}

#[inline(always)]
fn write_dest(sa: *mut bpf_sock_addr, family: Family, dest: &Endpoint) {
    // SAFETY: as in read_dest; the fields written are writable for every
    // attach type these programs use, with 4-byte stores.
    unsafe {
        match family {
            Family::V4 => write(&raw mut (*sa).user_ip4, dest.addr[3]),
            Family::V6 => {
                write(&raw mut (*sa).user_ip6[0], dest.addr[0]);
                write(&raw mut (*sa).user_ip6[1], dest.addr[1]);
                write(&raw mut (*sa).user_ip6[2], dest.addr[2]);
                write(&raw mut (*sa).user_ip6[3], dest.addr[3]);
            }
        }
        write(&raw mut (*sa).user_port, u32::from(dest.port));
    }
}

/// Context fields must be accessed with exactly one load or store of the
/// field's size; volatile keeps LLVM from merging or splitting them.
#[inline(always)]
unsafe fn read(field: *const u32) -> u32 {
    unsafe { core::ptr::read_volatile(field) }
}

#[inline(always)]
unsafe fn write(field: *mut u32, value: u32) {
    unsafe { core::ptr::write_volatile(field, value) }
}
