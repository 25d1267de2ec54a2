//! The socket-destroy iterators: walk the TCP or UDP sockets of a network
//! namespace and destroy, with the `bpf_sock_destroy` kfunc (kernel 6.5
//! and later), each connected one that balctl translated through a
//! frontend to a backend that left it (`lb::sockets::is_stale`). The
//! application's next send or receive on it fails with ECONNABORTED, so
//! it connects again, to a backend that is still there.
//!
//! User space loads these lazily, only when a change removed backends
//! (src/bpf/sock_destroy.rs): `load` never loads them, so a kernel without
//! the kfunc still runs the datapath. Each socket destroyed is written to
//! the iterator's output as a `DestroyedSocket`.
//!
//! aya-ebpf 0.2 has no iterator macro or context: the contexts are the
//! kernel's `bpf_iter__tcp` and `bpf_iter__udp` (their layout is the
//! kernel's ABI for these iterators), and the programs are placed in the
//! `iter/` sections by hand.

use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_get_socket_cookie, generated::bpf_seq_write};
use balctl_common::{DestroyedSocket, SOCK_DESTROY_PLACEHOLDER};

use crate::lb::sockets;

/// `struct bpf_iter_meta`: the iterator's output is `seq`.
#[repr(C)]
pub struct IterMeta {
    seq: *mut c_void,
    session_id: u64,
    seq_num: u64,
}

/// `struct bpf_iter__tcp`. `sk_common` is null once, at the end of the walk.
#[repr(C)]
pub struct TcpIterContext {
    meta: *mut IterMeta,
    sk_common: *mut c_void,
    uid: u32,
}

/// `struct bpf_iter__udp`. `udp_sk` is null once, at the end of the walk.
#[repr(C)]
pub struct UdpIterContext {
    meta: *mut IterMeta,
    udp_sk: *mut c_void,
    uid: u32,
    bucket: i32,
}

/// Offset of `skc_state` in `struct sock_common`, which starts every TCP
/// socket, request and time-wait socket and `struct udp_sock`. Read
/// without CO-RE (checked against 6.18's BTF; the fields before it have
/// not moved since long before the kfunc came, in 6.5).
const SKC_STATE: usize = 18;

/// `TCP_ESTABLISHED`: for UDP, a connected socket.
const ESTABLISHED: u8 = 1;
/// TCP states whose `sock_common` is not a full socket, or that no client
/// uses: destroying a time-wait or request socket reads past it, and a
/// listener is a server's.
const TIME_WAIT: u8 = 6;
const LISTEN: u8 = 10;
const NEW_SYN_RECV: u8 = 12;

/// The iterator continues with the next socket when its program returns 0.
const NEXT: i32 = 0;

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub extern "C" fn balctl_destroy_tcp(ctx: *mut TcpIterContext) -> i32 {
    // SAFETY: the kernel hands the iterator its context.
    let (meta, sk) = unsafe { ((*ctx).meta, (*ctx).sk_common) };
    if sk.is_null() {
        return NEXT;
    }
    if matches!(state(sk), TIME_WAIT | LISTEN | NEW_SYN_RECV) {
        return NEXT;
    }
    destroy_if_stale(meta, sk);
    NEXT
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/udp")]
pub extern "C" fn balctl_destroy_udp(ctx: *mut UdpIterContext) -> i32 {
    // SAFETY: as in `balctl_destroy_tcp`.
    let (meta, sk) = unsafe { ((*ctx).meta, (*ctx).udp_sk) };
    if sk.is_null() {
        return NEXT;
    }
    // Unconnected sockets are never destroyed (their way says so too).
    if state(sk) != ESTABLISHED {
        return NEXT;
    }
    destroy_if_stale(meta, sk);
    NEXT
}

/// The socket's `skc_state`.
#[inline(always)]
fn state(sk: *mut c_void) -> u8 {
    // SAFETY: a kernel socket the verifier knows the type of; a plain load
    // of one byte of its `sock_common`.
    unsafe { core::ptr::read_volatile(sk.cast::<u8>().add(SKC_STATE)) }
}

/// Destroys the socket if it is one of the pairs' and writes what became
/// of it to the output.
#[inline(always)]
fn destroy_if_stale(meta: *mut IterMeta, sk: *mut c_void) {
    // SAFETY: the helper reads the cookie of the socket it is given.
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    if !sockets::is_stale(cookie) {
        return;
    }
    let record = DestroyedSocket { cookie, result: sock_destroy(sk), _pad: 0 };
    // SAFETY: `meta` is the iterator's; the record is on the stack, whole.
    unsafe {
        bpf_seq_write((*meta).seq.cast(), (&raw const record).cast(), size_of::<DestroyedSocket>() as u32);
    }
}

/// `int bpf_sock_destroy(struct sock_common *sk)`, called through the
/// placeholder helper id that user space turns into the kfunc call.
#[inline(always)]
fn sock_destroy(sk: *mut c_void) -> i32 {
    // SAFETY: as aya-ebpf calls helpers: the call's immediate is the
    // placeholder, rewritten before the kernel sees it.
    unsafe {
        let kfunc: unsafe extern "C" fn(*mut c_void) -> i32 =
            core::mem::transmute(SOCK_DESTROY_PLACEHOLDER as usize);
        kfunc(sk)
    }
}
