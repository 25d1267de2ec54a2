//! The test binary doubles as the network peer of the tests: run as
//! `cli __peer [--cgroup DIR] [--netns NAME] [--hold] COMMAND ...` it joins
//! the cgroup (first: `ip netns exec`-style /sys remounts would hide it),
//! then the network namespace, then serves or acts as a client and prints
//! one JSON document describing what happened (one line). With `--hold` a
//! client keeps the sockets it made open after that, until stdin closes.

use std::{
    cell::Cell,
    collections::BTreeMap,
    fs,
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use serde_json::{Value, json};

pub const PEER_ARG: &str = "__peer";

const IO_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Parser)]
struct PeerArgs {
    /// cgroup v2 directory to move into before anything else.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Network namespace (under /run/netns) to enter.
    #[arg(long)]
    netns: Option<String>,
    /// Keep the sockets the client made open after the report, until
    /// stdin closes (connect, udp-sendto, tcp-peers).
    #[arg(long)]
    hold: bool,
    #[command(subcommand)]
    command: PeerCommand,
}

#[derive(Subcommand)]
enum PeerCommand {
    /// Answer every TCP connection and UDP datagram with `ID\n` (`{peer}`
    /// in it replaced by the client's address); prints `ready` once every
    /// socket is bound.
    Serve {
        #[arg(long)]
        id: String,
        #[arg(long)]
        tcp: Vec<SocketAddr>,
        #[arg(long)]
        udp: Vec<SocketAddr>,
        /// TCP addresses whose connections stay open, answered `ID\n` for
        /// each read, until the client closes.
        #[arg(long)]
        tcp_lasting: Vec<SocketAddr>,
    },
    /// Make connections one after another (a fixed count, or for a time)
    /// and count answers by backend id and failures by errno.
    Connect {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Keep connecting for this long instead of `count` times.
        #[arg(long)]
        millis: Option<u64>,
        /// Also report what happened in each slice of this many
        /// milliseconds, by when it began (milliseconds since the epoch):
        /// a timeline the caller compares with when it changed things.
        #[arg(long)]
        timeline: Option<u64>,
    },
    /// One TCP connection to each address in turn; reports each one's
    /// answer (the backend id) or errno.
    ConnectEach {
        #[arg(long, required = true)]
        to: Vec<SocketAddr>,
    },
    /// TCP connect, then report getpeername() and the answer.
    TcpPeer {
        #[arg(long)]
        to: SocketAddr,
    },
    /// `count` TCP connections to `to` open at once: once the last has
    /// connected, getpeername() of each, counted by the address it shows.
    /// `rounds` times, a round's sockets closed before the next. With
    /// `sets` (a sockets map's number of sets) a socket connects only while
    /// its set (SO_COOKIE modulo `sets`) holds fewer than `WAYS` of the
    /// round's sockets, and is closed unconnected otherwise, so that a round
    /// of `sets * WAYS` fills every way of such a map.
    TcpPeers {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: u32,
        #[arg(long, default_value_t = 1)]
        rounds: u32,
        #[arg(long)]
        sets: Option<u64>,
    },
    /// One TCP connection to `to` that asks for its peer's address
    /// (getpeername()) at each of `turns` turns, each `pause_ms` after the
    /// last so that the kernel's clock ticks in between, after which `fresh`
    /// more connections are made and kept open: what it was shown each turn.
    ReaderAmongFresh {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        turns: u32,
        #[arg(long)]
        fresh: u32,
        #[arg(long)]
        pause_ms: u64,
    },
    /// Unconnected UDP: from one socket, `count` times sendto() then
    /// recvfrom() to each `to` in turn, reporting each reply's destination,
    /// source address and answer. After each turn, `fresh` exchanges with
    /// the first `to`, each from a new socket, reported as `fresh` answers
    /// (a reply from elsewhere is an `InvalidData` error).
    UdpSendto {
        #[arg(long, required = true)]
        to: Vec<SocketAddr>,
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[arg(long, default_value_t = 0)]
        fresh: u32,
    },
    /// Connected UDP: connect(), getpeername(), send, receive.
    UdpConnected {
        #[arg(long)]
        to: SocketAddr,
    },
    /// Benchmark: `rounds` rounds of `per_round` sequential TCP
    /// connections to the VIP and as many to the direct address, the first
    /// target alternating per round; reports rate and connect latency of each.
    Bench {
        #[arg(long)]
        vip: SocketAddr,
        #[arg(long)]
        direct: SocketAddr,
        #[arg(long)]
        rounds: u32,
        #[arg(long)]
        per_round: u32,
    },
    /// Benchmark worker for one client, driven by whoever started it: reads
    /// batches from stdin, `tcp N` (N connection cycles to `tcp`), `udp N`
    /// (N request/response exchanges with `udp`, each from a new socket),
    /// `udp-flow N` (N exchanges with one of `udp` over one socket) or
    /// `bystander N` (N connection cycles to `bystander`: addresses no rule
    /// translates, what a mechanism costs a node's other traffic),
    /// `warmup N` (N of each, not counted), and answers each with one JSON
    /// line (`ok`, `seconds`); at the end of stdin it prints the report of
    /// each protocol. With several addresses of a protocol, each cycle goes
    /// to one of them at random, as a load balancer would spread them. One
    /// process per client lets clients in different namespaces and cgroups
    /// take turns within one run.
    BenchWorker {
        #[arg(long, required = true)]
        tcp: Vec<SocketAddr>,
        #[arg(long, required = true)]
        udp: Vec<SocketAddr>,
        #[arg(long)]
        bystander: Vec<SocketAddr>,
    },
    /// Sockets that live on, driven by stdin, one command a line, each
    /// answered with one JSON line: `udp NAME ADDR` (a UDP socket connected
    /// to ADDR), `udp-unconnected NAME`, `tcp NAME ADDR` (connected), each
    /// answered with its local address or errno; `ask NAME [ADDR]` (one
    /// exchange: send, or sendto ADDR, then receive) answered with the
    /// answer or errno and the socket's local address; `recv NAME` (a UDP
    /// socket's next datagram or pending error); `close NAME`. Ends with
    /// stdin.
    Session,
    /// Replace this process with another program (after joining).
    Exec {
        #[arg(trailing_var_arg = true, required = true)]
        argv: Vec<String>,
    },
}

/// Runs the peer if the process was started as one; returns otherwise.
pub fn run_if_requested() {
    let mut args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some(PEER_ARG) {
        return;
    }
    args.remove(1);
    let peer = PeerArgs::parse_from(args);
    if let Some(cgroup) = &peer.cgroup {
        let procs = cgroup.join("cgroup.procs");
        fs::write(&procs, std::process::id().to_string())
            .unwrap_or_else(|e| panic!("joining {}: {e}", procs.display()));
    }
    if let Some(netns) = &peer.netns {
        let ns = fs::File::open(format!("/run/netns/{netns}")).expect("open netns");
        // SAFETY: setns on a descriptor we own; this thread then lives in the namespace.
        assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns {netns}");
    }
    let mut held = Held(peer.hold.then(Vec::new));
    let output = match peer.command {
        PeerCommand::Serve { id, tcp, udp, tcp_lasting } => serve(&id, &tcp, &udp, &tcp_lasting),
        PeerCommand::Session => session(),
        PeerCommand::Connect { to, count, millis, timeline } => {
            connect(to, count, millis, timeline, &mut held)
        }
        PeerCommand::ConnectEach { to } => connect_each(&to),
        PeerCommand::TcpPeer { to } => tcp_peer(to),
        PeerCommand::TcpPeers { to, count, rounds, sets } => tcp_peers(to, count, rounds, sets, &mut held),
        PeerCommand::ReaderAmongFresh { to, turns, fresh, pause_ms } => {
            reader_among_fresh(to, turns, fresh, pause_ms, &mut held)
        }
        PeerCommand::UdpSendto { to, count, fresh } => udp_sendto(to, count, fresh, &mut held),
        PeerCommand::UdpConnected { to } => udp_connected(to),
        PeerCommand::Bench { vip, direct, rounds, per_round } => bench(vip, direct, rounds, per_round),
        PeerCommand::BenchWorker { tcp, udp, bystander } => bench_worker(tcp, udp, bystander),
        PeerCommand::Exec { argv } => {
            let err = Command::new(&argv[0]).args(&argv[1..]).exec();
            panic!("exec {}: {err}", argv[0]);
        }
    };
    println!("{output}");
    if let Held(Some(sockets)) = held {
        io::stdout().flush().expect("stdout");
        io::stdin().read_to_end(&mut Vec::new()).expect("read stdin to its end");
        drop(sockets);
    }
    std::process::exit(0);
}

/// The sockets a client keeps open under `--hold`; None drops them at once.
struct Held(Option<Vec<OwnedFd>>);

impl Held {
    fn keep(&mut self, socket: impl Into<OwnedFd>) {
        if let Some(sockets) = &mut self.0 {
            sockets.push(socket.into());
        }
    }
}

fn serve(id: &str, tcp: &[SocketAddr], udp: &[SocketAddr], tcp_lasting: &[SocketAddr]) -> Value {
    let answer = format!("{id}\n");
    let mut workers = Vec::new();
    for &addr in tcp_lasting {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind tcp {addr}: {e}"));
        let answer = answer.clone();
        workers.push(thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let answer = answer.clone();
                thread::spawn(move || {
                    let mut stream = stream;
                    let mut buf = [0u8; 1500];
                    while stream.read(&mut buf).is_ok_and(|n| n > 0) {
                        if stream.write_all(answer.as_bytes()).is_err() {
                            break;
                        }
                    }
                });
            }
        }));
    }
    for &addr in tcp {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind tcp {addr}: {e}"));
        let answer = answer.clone();
        workers.push(thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut stream = stream;
                let answer = with_peer(&answer, stream.peer_addr());
                // The server closes first, so client ports never sit in TIME_WAIT.
                let _ = stream.write_all(answer.as_bytes());
            }
        }));
    }
    for &addr in udp {
        let socket = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind udp {addr}: {e}"));
        let answer = answer.clone();
        workers.push(thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((_, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(with_peer(&answer, Ok(from)).as_bytes(), from);
            }
        }));
    }
    println!("ready");
    std::io::stdout().flush().expect("stdout");
    for worker in workers {
        let _ = worker.join();
    }
    json!({})
}

/// A server's answer with `{peer}` replaced by the address the client's
/// packets came from, as the server sees it (north-south tests: SNATed or
/// not).
fn with_peer(answer: &str, peer: io::Result<SocketAddr>) -> String {
    match peer {
        Ok(peer) if answer.contains("{peer}") => answer.replace("{peer}", &peer.ip().to_string()),
        _ => answer.to_owned(),
    }
}

/// The errno name of an I/O error, for stable assertions.
fn errno_name(err: &std::io::Error) -> String {
    let name = match err.raw_os_error() {
        Some(libc::ECONNREFUSED) => "ECONNREFUSED",
        Some(libc::ENETUNREACH) => "ENETUNREACH",
        Some(libc::EHOSTUNREACH) => "EHOSTUNREACH",
        Some(libc::ETIMEDOUT) => "ETIMEDOUT",
        Some(libc::EPERM) => "EPERM",
        Some(libc::ECONNRESET) => "ECONNRESET",
        Some(libc::EADDRNOTAVAIL) => "EADDRNOTAVAIL",
        Some(libc::EAGAIN) => "EAGAIN",
        Some(libc::ECONNABORTED) => "ECONNABORTED",
        Some(libc::EDESTADDRREQ) => "EDESTADDRREQ",
        _ => return format!("{:?}", err.kind()),
    };
    name.to_owned()
}

/// Connects, asks for the peer and reads the answer; returns them and the
/// still open socket.
fn ask(to: SocketAddr) -> std::io::Result<(String, SocketAddr, TcpStream)> {
    let mut stream = TcpStream::connect_timeout(&to, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let peer = stream.peer_addr()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok((answer.trim().to_owned(), peer, stream))
}

fn connect(to: SocketAddr, count: u32, millis: Option<u64>, timeline: Option<u64>, held: &mut Held) -> Value {
    let mut backends: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut latencies_us: Vec<u64> = Vec::new();
    // Per slice: its start (ms since the epoch) and the outcomes in it.
    let mut slices: Vec<(u64, BTreeMap<String, u64>)> = Vec::new();
    let deadline = millis.map(|ms| Instant::now() + Duration::from_millis(ms));
    let mut made = 0;
    loop {
        match deadline {
            Some(deadline) if Instant::now() >= deadline => break,
            None if made >= count => break,
            _ => {}
        }
        made += 1;
        let started = Instant::now();
        let outcome = match ask(to) {
            Ok((answer, _, stream)) if !answer.is_empty() => {
                latencies_us.push(started.elapsed().as_micros() as u64);
                *backends.entry(answer.clone()).or_default() += 1;
                held.keep(stream);
                answer
            }
            Ok(_) => "EMPTY_ANSWER".to_owned(),
            Err(err) => errno_name(&err),
        };
        if !backends.contains_key(&outcome) {
            *errors.entry(outcome.clone()).or_default() += 1;
        }
        if let Some(width) = timeline {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
                as u64;
            let slice = now - now % width.max(1);
            if slices.last().is_none_or(|(start, _)| *start != slice) {
                slices.push((slice, BTreeMap::new()));
            }
            *slices.last_mut().unwrap().1.entry(outcome).or_default() += 1;
        }
    }
    let ok: u64 = backends.values().sum();
    let failed: u64 = errors.values().sum();
    latencies_us.sort_unstable();
    let max_latency_us = latencies_us.last().copied().unwrap_or(0);
    json!({
        "ok": ok, "failed": failed, "backends": backends, "errors": errors, "max_latency_us": max_latency_us,
        "timeline": slices,
    })
}

fn connect_each(targets: &[SocketAddr]) -> Value {
    let answers: BTreeMap<String, String> = targets
        .iter()
        .map(|&to| {
            let answer = match ask(to) {
                Ok((answer, ..)) => answer,
                Err(err) => format!("error: {}", errno_name(&err)),
            };
            (to.to_string(), answer)
        })
        .collect();
    json!({ "answers": answers })
}

fn tcp_peer(to: SocketAddr) -> Value {
    match ask(to) {
        Ok((answer, peer, _)) => json!({ "peer": peer.to_string(), "answer": answer }),
        Err(err) => json!({ "error": errno_name(&err) }),
    }
}

fn udp_socket_for(to: SocketAddr) -> UdpSocket {
    let bind: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
    let socket = UdpSocket::bind(bind).expect("bind udp client");
    socket.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    socket
}

/// Keeps this process on the CPU it runs on. The kernel hands out socket
/// cookies in batches per CPU, so only sockets made on one CPU have cookies
/// in the order they were made; the sockets map replaces, among ways used in
/// the same clock tick, the one of the highest cookie first (the newest
/// socket's, on one CPU), which a test of which way is replaced relies on.
fn stay_on_this_cpu() {
    // SAFETY: sched_getcpu has no preconditions; the set is ours and zeroed.
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(cpu >= 0, "sched_getcpu: {}", std::io::Error::last_os_error());
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        let pinned = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(pinned, 0, "sched_setaffinity: {}", std::io::Error::last_os_error());
    }
}

fn reader_among_fresh(to: SocketAddr, turns: u32, fresh: u32, pause_ms: u64, held: &mut Held) -> Value {
    stay_on_this_cpu();
    let reader = TcpStream::connect_timeout(&to, IO_TIMEOUT).expect("the reader connects");
    let mut peers = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..turns {
        thread::sleep(Duration::from_millis(pause_ms));
        peers.push(reader.peer_addr().map_or_else(|err| errno_name(&err), |peer| peer.to_string()));
        for _ in 0..fresh {
            match TcpStream::connect_timeout(&to, IO_TIMEOUT) {
                Ok(socket) => held.keep(socket),
                Err(err) => *errors.entry(errno_name(&err)).or_default() += 1,
            }
        }
    }
    held.keep(reader);
    json!({ "peers": peers, "errors": errors })
}

fn udp_sendto(targets: Vec<SocketAddr>, count: u32, fresh: u32, held: &mut Held) -> Value {
    if fresh > 0 {
        stay_on_this_cpu();
    }
    let socket = udp_socket_for(targets[0]);
    let (mut replies, mut fresh_answers) = (Vec::new(), Vec::new());
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut buf = [0u8; 1500];
    for _ in 0..count {
        for &to in &targets {
            if let Err(err) = socket.send_to(b"hello", to) {
                *errors.entry(errno_name(&err)).or_default() += 1;
                continue;
            }
            match socket.recv_from(&mut buf) {
                Ok((n, from)) => replies.push(json!({
                    "to": to.to_string(),
                    "from": from.to_string(),
                    "answer": String::from_utf8_lossy(&buf[..n]).trim(),
                })),
                Err(err) => *errors.entry(errno_name(&err)).or_default() += 1,
            }
        }
        for _ in 0..fresh {
            match exchange_from_new_socket(targets[0], &mut buf) {
                Ok((_, n, socket)) => {
                    fresh_answers.push(String::from_utf8_lossy(&buf[..n]).trim().to_owned());
                    held.keep(socket);
                }
                Err(err) => *errors.entry(errno_name(&err)).or_default() += 1,
            }
        }
    }
    held.keep(socket);
    json!({ "replies": replies, "fresh": fresh_answers, "errors": errors })
}

/// Ways per set of balctl's sockets map (`balctl_common::SOCKET_WAYS`).
const WAYS: usize = 4;

fn tcp_peers(to: SocketAddr, count: u32, rounds: u32, sets: Option<u64>, held: &mut Held) -> Value {
    let mut reports = Vec::new();
    for round in 0..rounds {
        let mut sockets = Vec::new();
        let mut per_set: BTreeMap<u64, usize> = BTreeMap::new();
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        // Bounded: each try is one socket; a fair set fills long before.
        for _ in 0..count * 100 {
            if sockets.len() == count as usize {
                break;
            }
            let socket = socket2::Socket::new(socket2::Domain::for_address(to), socket2::Type::STREAM, None)
                .expect("a TCP socket");
            if let Some(sets) = sets {
                let taken = per_set.entry(socket.cookie().expect("SO_COOKIE") % sets).or_default();
                if *taken == WAYS {
                    continue;
                }
                *taken += 1;
            }
            match socket.connect_timeout(&to.into(), IO_TIMEOUT) {
                Ok(()) => sockets.push(socket),
                Err(err) => *errors.entry(errno_name(&err)).or_default() += 1,
            }
        }
        let mut peers: BTreeMap<String, u64> = BTreeMap::new();
        for socket in &sockets {
            let peer = match socket.peer_addr().map(|peer| peer.as_socket()) {
                Ok(Some(peer)) => peer.to_string(),
                Ok(None) => "not an IP address".to_owned(),
                Err(err) => errno_name(&err),
            };
            *peers.entry(peer).or_default() += 1;
        }
        reports.push(json!({ "connected": sockets.len(), "peers": peers, "errors": errors }));
        if round + 1 == rounds {
            sockets.into_iter().for_each(|socket| held.keep(socket));
        }
    }
    json!({ "rounds": reports })
}

fn udp_connected(to: SocketAddr) -> Value {
    let socket = udp_socket_for(to);
    if let Err(err) = socket.connect(to) {
        return json!({ "error": errno_name(&err) });
    }
    let peer = socket.peer_addr().map(|p| p.to_string()).unwrap_or_default();
    let mut buf = [0u8; 1500];
    let answer = socket
        .send(b"hello")
        .and_then(|_| socket.recv(&mut buf))
        .map(|n| String::from_utf8_lossy(&buf[..n]).trim().to_owned());
    match answer {
        Ok(answer) => json!({ "peer": peer, "answer": answer }),
        Err(err) => json!({ "peer": peer, "error": errno_name(&err) }),
    }
}

/// A socket of a `session`.
enum SessionSocket {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

fn session() -> Value {
    let mut sockets: BTreeMap<String, SessionSocket> = BTreeMap::new();
    for line in io::stdin().lines() {
        let line = line.expect("read a session command");
        let words: Vec<&str> = line.split_whitespace().collect();
        let addr = |at: usize| words.get(at).map(|a| a.parse::<SocketAddr>().expect("an address"));
        let reply = match words.as_slice() {
            ["udp", name, _] => {
                let to = addr(2).expect("an address");
                let socket = udp_socket_for(to);
                let connected = socket.connect(to).map(|()| SessionSocket::Udp(socket));
                opened(&mut sockets, name, connected)
            }
            ["udp-unconnected", name] => {
                let socket = udp_socket_for("0.0.0.0:0".parse().expect("literal"));
                opened(&mut sockets, name, Ok(SessionSocket::Udp(socket)))
            }
            ["tcp", name, _] => {
                let connected = TcpStream::connect_timeout(&addr(2).expect("an address"), IO_TIMEOUT)
                    .and_then(|stream| stream.set_read_timeout(Some(IO_TIMEOUT)).map(|()| stream))
                    .map(SessionSocket::Tcp);
                opened(&mut sockets, name, connected)
            }
            ["ask", name, ..] => {
                let socket = sockets.get(*name).expect("a socket of the session");
                let mut buf = [0u8; 1500];
                let (answer, local) = match socket {
                    SessionSocket::Udp(socket) => {
                        let sent = match addr(2) {
                            Some(to) => socket.send_to(b"?", to),
                            None => socket.send(b"?"),
                        };
                        (sent.and_then(|_| socket.recv(&mut buf)), socket.local_addr())
                    }
                    SessionSocket::Tcp(stream) => {
                        let mut stream: &TcpStream = stream;
                        let local = stream.local_addr();
                        (stream.write_all(b"?\n").and_then(|()| stream.read(&mut buf)), local)
                    }
                };
                let local = local.map(|l| l.to_string()).unwrap_or_default();
                match answer {
                    Ok(0) => json!({ "error": "EOF", "local": local }),
                    Ok(n) => json!({ "answer": String::from_utf8_lossy(&buf[..n]).trim(), "local": local }),
                    Err(err) => json!({ "error": errno_name(&err), "local": local }),
                }
            }
            ["recv", name] => {
                let Some(SessionSocket::Udp(socket)) = sockets.get(*name) else {
                    panic!("recv: {name} is no UDP socket of the session");
                };
                let mut buf = [0u8; 1500];
                match socket.recv(&mut buf) {
                    Ok(n) => json!({ "answer": String::from_utf8_lossy(&buf[..n]).trim() }),
                    Err(err) => json!({ "error": errno_name(&err) }),
                }
            }
            ["close", name] => match sockets.remove(*name) {
                Some(_) => json!({ "closed": name }),
                None => panic!("close: {name} is no socket of the session"),
            },
            _ => panic!("unknown session command {line}"),
        };
        println!("{reply}");
        io::stdout().flush().expect("stdout");
    }
    json!({ "sockets": sockets.len() })
}

/// Keeps a session's new socket under `name`; its local address or errno.
fn opened(
    sockets: &mut BTreeMap<String, SessionSocket>,
    name: &str,
    socket: io::Result<SessionSocket>,
) -> Value {
    match socket {
        Ok(socket) => {
            let local = match &socket {
                SessionSocket::Udp(socket) => socket.local_addr(),
                SessionSocket::Tcp(stream) => stream.local_addr(),
            };
            sockets.insert(name.to_owned(), socket);
            json!({ "local": local.map(|l| l.to_string()).unwrap_or_default() })
        }
        Err(err) => json!({ "error": errno_name(&err) }),
    }
}

/// Uncounted connections made to each target before measuring, so the
/// first target measured does not alone pay for cold caches (neighbour
/// entry, page faults, the first map lookups).
const BENCH_WARMUP: u32 = 100;

/// What one benchmark target collected.
#[derive(Default)]
struct Measured {
    /// Of each successful cycle: connect() for TCP, send to answer for UDP.
    latency_ns: Vec<u64>,
    cycle_total: Duration,
    failures: BTreeMap<String, u64>,
}

impl Measured {
    /// Runs and records one cycle (`timed_cycle`, `timed_exchange`); returns
    /// whether it succeeded and how long the whole cycle took.
    fn record(&mut self, cycle: impl FnOnce() -> io::Result<(Duration, usize)>) -> (bool, Duration) {
        let started = Instant::now();
        let ok = match cycle() {
            Ok((latency, answer)) if answer > 0 => {
                self.latency_ns.push(latency.as_nanos() as u64);
                true
            }
            Ok(_) => {
                *self.failures.entry("EMPTY_ANSWER".into()).or_default() += 1;
                false
            }
            Err(err) => {
                *self.failures.entry(errno_name(&err)).or_default() += 1;
                false
            }
        };
        // Failed cycles take time too, so they lower the rate.
        let took = started.elapsed();
        self.cycle_total += took;
        (ok, took)
    }

    fn report(mut self) -> Value {
        self.latency_ns.sort_unstable();
        let connections = self.latency_ns.len() as u64;
        let rate = connections as f64 / self.cycle_total.as_secs_f64();
        json!({
            "connections": connections,
            "failures": self.failures,
            "rate_per_s": rate.round(),
            "p50_us": percentile_us(&self.latency_ns, 0.50),
            "p99_us": percentile_us(&self.latency_ns, 0.99),
        })
    }
}

/// One full client cycle: connect, read the answer to EOF, close. Returns
/// how long `connect()` took (the handshake included: connect_timeout
/// waits for it) and how many bytes the server answered.
fn timed_cycle(to: SocketAddr) -> io::Result<(Duration, usize)> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&to, IO_TIMEOUT)?;
    let connected = started.elapsed();
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok((connected, answer.len()))
}

/// Nearest-rank percentile of sorted nanoseconds, in microseconds to 0.1.
fn percentile_us(sorted_ns: &[u64], q: f64) -> Option<f64> {
    let rank = (q * sorted_ns.len() as f64).ceil() as usize;
    let ns = *sorted_ns.get(rank.max(1) - 1)?;
    Some((ns as f64 / 100.0).round() / 10.0)
}

fn bench(vip: SocketAddr, direct: SocketAddr, rounds: u32, per_round: u32) -> Value {
    for _ in 0..BENCH_WARMUP {
        let _ = timed_cycle(vip);
        let _ = timed_cycle(direct);
    }
    let (mut via_vip, mut to_direct) = (Measured::default(), Measured::default());
    for round in 0..rounds {
        // Alternating the first target spreads drift (other load, frequency
        // changes) evenly over both.
        let mut order = [(&mut via_vip, vip), (&mut to_direct, direct)];
        if round % 2 == 1 {
            order.reverse();
        }
        for (measured, to) in order {
            for _ in 0..per_round {
                measured.record(|| timed_cycle(to));
            }
        }
    }
    json!({ "vip": via_vip.report(), "direct": to_direct.report() })
}

/// One request/response exchange as a stub resolver makes it: a new
/// unconnected socket, `sendto()` the target, `recvfrom()` the answer,
/// close. Returns the time from sending to the answer and the answer's
/// length; the answer is in `buf`. An answer that does not come from the
/// target (a reply whose source was not translated back) is an error,
/// `InvalidData`.
fn timed_exchange(to: SocketAddr, buf: &mut [u8]) -> io::Result<(Duration, usize)> {
    exchange_from_new_socket(to, buf).map(|(took, length, _closed)| (took, length))
}

/// `timed_exchange` without the close: the socket is returned.
fn exchange_from_new_socket(to: SocketAddr, buf: &mut [u8]) -> io::Result<(Duration, usize, UdpSocket)> {
    let socket = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
    socket.set_read_timeout(Some(IO_TIMEOUT))?;
    let (took, length) = exchange_over(&socket, to, buf)?;
    Ok((took, length, socket))
}

/// Sends one request over `socket` and waits for its answer, which must
/// come from `to`: the time between them and the answer's length.
fn exchange_over(socket: &UdpSocket, to: SocketAddr, buf: &mut [u8]) -> io::Result<(Duration, usize)> {
    let started = Instant::now();
    socket.send_to(b"q", to)?;
    let (length, from) = socket.recv_from(buf)?;
    let took = started.elapsed();
    if from != to {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("answer from {from}")));
    }
    Ok((took, length))
}

/// Picks one of several targets per cycle, uniformly at random (xorshift:
/// quality is no concern, a few nanoseconds are).
struct Spread {
    targets: Vec<SocketAddr>,
    state: Cell<u64>,
}

impl Spread {
    fn new(targets: Vec<SocketAddr>) -> Self {
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos());
        Self { targets, state: Cell::new(seed as u64 | 1) }
    }

    fn next(&self) -> SocketAddr {
        let mut x = self.state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state.set(x);
        self.targets[(x % self.targets.len() as u64) as usize]
    }
}

fn bench_worker(tcp: Vec<SocketAddr>, udp: Vec<SocketAddr>, bystander: Vec<SocketAddr>) -> Value {
    let has_bystander = !bystander.is_empty();
    let (tcp, udp, bystander) = (Spread::new(tcp), Spread::new(udp), Spread::new(bystander));
    let (mut over_tcp, mut over_udp, mut over_bystander) =
        (Measured::default(), Measured::default(), Measured::default());
    let mut over_udp_flow = Measured::default();
    for line in io::stdin().lines() {
        let line = line.expect("read a batch");
        let (kind, count) = line.split_once(' ').expect("a batch is `KIND COUNT`");
        let count: u32 = count.parse().expect("a batch count");
        let (mut ok, mut took) = (0u32, Duration::ZERO);
        let mut run = |measured: &mut Measured, cycle: &dyn Fn() -> io::Result<(Duration, usize)>| {
            for _ in 0..count {
                let (success, cycle_took) = measured.record(cycle);
                ok += u32::from(success);
                took += cycle_took;
            }
        };
        match kind {
            "tcp" => run(&mut over_tcp, &|| timed_cycle(tcp.next())),
            "udp" => run(&mut over_udp, &|| timed_exchange(udp.next(), &mut [0; 64])),
            "udp-flow" => {
                let flow = Flow::open(udp.next()).expect("a UDP socket");
                run(&mut over_udp_flow, &|| flow.exchange(&mut [0; 64]));
            }
            "bystander" if has_bystander => run(&mut over_bystander, &|| timed_cycle(bystander.next())),
            "warmup" => {
                run(&mut Measured::default(), &|| timed_cycle(tcp.next()));
                run(&mut Measured::default(), &|| timed_exchange(udp.next(), &mut [0; 64]));
                if has_bystander {
                    run(&mut Measured::default(), &|| timed_cycle(bystander.next()));
                }
            }
            other => panic!("unknown batch kind {other}"),
        }
        println!("{}", json!({ "ok": ok, "seconds": took.as_secs_f64() }));
        io::stdout().flush().expect("stdout");
    }
    json!({
        "tcp": over_tcp.report(),
        "udp": over_udp.report(),
        "udp-flow": over_udp_flow.report(),
        "bystander": over_bystander.report(),
    })
}

/// One socket's exchanges with one target (`udp-flow`): after the first,
/// each is a packet of a known flow, what a long-lived connection's
/// requests and responses cost.
struct Flow {
    socket: UdpSocket,
    to: SocketAddr,
}

impl Flow {
    fn open(to: SocketAddr) -> io::Result<Self> {
        let socket = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
        socket.set_read_timeout(Some(IO_TIMEOUT))?;
        Ok(Self { socket, to })
    }

    fn exchange(&self, buf: &mut [u8]) -> io::Result<(Duration, usize)> {
        exchange_over(&self.socket, self.to, buf)
    }
}
