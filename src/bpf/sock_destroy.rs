//! Destroying the connected sockets balctl translated through given
//! (frontend, backend) pairs, with the socket-destroy iterators of the
//! object (ebpf/programs/src/sock_destroy.rs) and the `bpf_sock_destroy`
//! kfunc of kernel 6.5 and later.
//!
//! The iterators are loaded here, only when there is something to destroy,
//! never by `load`: a kernel without the kfunc still runs the datapath.
//! They reuse the pinned maps (the sockets map above all); the pairs go in
//! the destroy_pairs map their load creates.
//!
//! A TCP or UDP iterator walks the sockets of the network namespace of the
//! thread that creates its file. So each network namespace of a process in
//! the attached cgroup's subtree is walked once, from a thread that joined
//! it (never the calling one: it stays where it was).
//!
//! aya and bpf-linker cannot emit a kfunc call: the programs call a
//! placeholder helper id (`SOCK_DESTROY_PLACEHOLDER`), and each such call
//! of their sections is rewritten here into a call of the kernel's
//! `bpf_sock_destroy` by its BTF id before the object is loaded.

use std::{
    collections::BTreeSet,
    fs::{self, File},
    io::Read as _,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Btf, Ebpf,
    maps::{HashMap, MapInfo},
    programs::{Iter, iter::IterLink},
};
use aya_obj::btf::BtfKind;
use balctl_common::{
    DESTROY_PAIRS_ENTRIES, DestroyedSocket, SOCK_DESTROY_PLACEHOLDER, SOCKET_UNCONNECTED, SocketPair,
    map_names,
};
use object::{Object as _, ObjectSection as _};

use super::{
    cgroup, links,
    loader::pinned_maps_loader,
    maps::check_layout,
    object::{MAPS, OBJECT},
    pins::PinDir,
    sockets::translated_sockets,
};

/// The sockets of one transport protocol, walked by its own iterator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    /// The iterator program, and the kernel's iterator it attaches to
    /// (`bpf_iter_<name>`).
    fn program(self) -> (&'static str, &'static str) {
        match self {
            Self::Udp => ("balctl_destroy_udp", "udp"),
            Self::Tcp => ("balctl_destroy_tcp", "tcp"),
        }
    }
}

/// What became of the sockets of the pairs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destroyed {
    /// The iterators walked every network namespace of the cgroup's
    /// processes: `destroyed` sockets were destroyed, the kernel refused
    /// `refused` (they stay connected). `unseen_processes` of the cgroup
    /// are in PID namespaces this process cannot see (a container without
    /// the host's): their network namespaces were not walked.
    Ran { destroyed: u64, refused: u64, unseen_processes: u64 },
    /// The iterators cannot run here or stopped (`reason`: no kfunc, a
    /// program refused, no right to enter a namespace): `destroyed` were
    /// destroyed before, `left` connected sockets of the pairs were not.
    Stopped { reason: String, destroyed: u64, left: u64 },
}

/// Destroys the connected sockets of `transports` that the datapath
/// translated through one of `pairs`, in every network namespace of the
/// processes of the cgroup balctl is attached to. Fails only when even the
/// sockets left cannot be counted.
pub fn destroy_sockets(
    pins: &PinDir,
    pairs: &BTreeSet<SocketPair>,
    transports: &[Transport],
) -> Result<Destroyed> {
    if pairs.is_empty() || transports.is_empty() {
        return Ok(Destroyed::Ran { destroyed: 0, refused: 0, unseen_processes: 0 });
    }
    let mut walked = Walked::default();
    let ran = Iterators::load(pins, transports)
        .and_then(|iterators| walk(pins, iterators, pairs, transports, &mut walked));
    let destroyed = walked.destroyed.len() as u64;
    Ok(match ran {
        Ok(unseen_processes) => Destroyed::Ran { destroyed, refused: walked.refused, unseen_processes },
        Err(err) => {
            let left = stale_sockets(pins, pairs, &walked.destroyed)?;
            Destroyed::Stopped { reason: format!("{err:#}"), destroyed, left }
        }
    })
}

/// What the iterators reported so far.
#[derive(Default)]
struct Walked {
    /// The cookies of the sockets destroyed.
    destroyed: BTreeSet<u64>,
    refused: u64,
}

/// Runs the iterators over every network namespace of the cgroup's
/// processes, `DESTROY_PAIRS_ENTRIES` pairs at a time; the processes whose
/// namespace could not be seen.
fn walk(
    pins: &PinDir,
    mut iterators: Iterators,
    pairs: &BTreeSet<SocketPair>,
    transports: &[Transport],
    walked: &mut Walked,
) -> Result<u64> {
    let (namespaces, unseen_processes) = cgroup_network_namespaces(&attached_cgroup(pins)?)?;
    let pairs: Vec<SocketPair> = pairs.iter().copied().collect();
    for chunk in pairs.chunks(DESTROY_PAIRS_ENTRIES as usize) {
        iterators.set_pairs(chunk)?;
        for &transport in transports {
            for netns in &namespaces {
                let link = iterators.link(transport)?;
                for record in walk_in(netns, link)? {
                    if record.result == 0 {
                        walked.destroyed.insert(record.cookie);
                    } else {
                        let errno = -record.result;
                        log::debug!("the kernel refused to destroy socket {}: errno {errno}", record.cookie);
                        walked.refused += 1;
                    }
                }
            }
        }
    }
    Ok(unseen_processes)
}

/// Connected sockets translated through one of `pairs`, by the sockets
/// map, but for those `destroyed` (whose ways stay until they close): those
/// that stay on their backends.
fn stale_sockets(pins: &PinDir, pairs: &BTreeSet<SocketPair>, destroyed: &BTreeSet<u64>) -> Result<u64> {
    let sockets = translated_sockets(pins)?;
    let stale = sockets.iter().filter(|socket| {
        let t = &socket.translation;
        t.flags & SOCKET_UNCONNECTED == 0
            && !destroyed.contains(&socket.cookie)
            && pairs.contains(&SocketPair { service_id: t.service_id, backend_id: t.backend_id })
    });
    Ok(stale.count() as u64)
}

/// The loaded iterator programs and their destroy_pairs map.
struct Iterators {
    ebpf: Ebpf,
}

impl Iterators {
    fn load(pins: &PinDir, transports: &[Transport]) -> Result<Self> {
        let btf = Btf::from_sys_fs().context("the kernel's BTF cannot be read")?;
        let kfunc = btf
            .id_by_type_name_kind("bpf_sock_destroy", BtfKind::Func)
            .map_err(|_| anyhow!("the kernel has no bpf_sock_destroy kfunc (it came with Linux 6.5)"))?;
        let object = with_kfunc_calls(OBJECT, kfunc)?;
        let mut ebpf =
            open_object(pins, object.bytes(), &btf).context("the iterators' object cannot be opened")?;
        for &transport in transports {
            let (name, iterator) = transport.program();
            let program: &mut Iter = ebpf
                .program_mut(name)
                .with_context(|| format!("the eBPF object has no program {name}"))?
                .try_into()?;
            program
                .load(iterator, &btf)
                .with_context(|| format!("the kernel rejected the {name} program"))?;
        }
        Ok(Self { ebpf })
    }

    /// Makes the destroy_pairs map hold exactly `pairs`.
    fn set_pairs(&mut self, pairs: &[SocketPair]) -> Result<()> {
        let map =
            self.ebpf.map_mut(map_names::DESTROY_PAIRS).context("the object has no destroy_pairs map")?;
        let mut map: HashMap<_, SocketPair, u8> = HashMap::try_from(map)?;
        let old: Vec<SocketPair> = map.keys().collect::<Result<_, _>>()?;
        for pair in old {
            map.remove(&pair)?;
        }
        for pair in pairs {
            map.insert(pair, 1, 0).context("writing the destroy_pairs map")?;
        }
        Ok(())
    }

    /// A new link of `transport`'s iterator: each file made from a link
    /// walks the namespace of the thread that makes it, once.
    fn link(&mut self, transport: Transport) -> Result<IterLink> {
        let (name, _) = transport.program();
        let program: &mut Iter = self.ebpf.program_mut(name).context("a loaded iterator")?.try_into()?;
        let id = program.attach().with_context(|| format!("cannot attach {name}"))?;
        Ok(program.take_link(id)?)
    }
}

/// The object with the pinned maps of the pin dir, the kernel's `btf`, and
/// the sockets map's number of sets the programs find a socket's set by
/// (as `load` does).
/// Every map must be pinned, with this build's layout: aya would create
/// and pin a missing one.
fn open_object(pins: &PinDir, object: &[u8], btf: &Btf) -> Result<Ebpf> {
    check_layout(pins, |_| None)?;
    for spec in MAPS {
        let path = pins.map(spec.name)?;
        if !path.exists() {
            bail!("{} is not pinned: balctl is not loaded there", path.display());
        }
    }
    let sockets = pins.map(map_names::SOCKETS)?;
    let socket_sets = MapInfo::from_pin(&sockets)
        .with_context(|| format!("cannot inspect {}", sockets.display()))?
        .max_entries();
    let mut loader = pinned_maps_loader(pins, &socket_sets)?;
    // The kernel's BTF, read once: parsing it is most of a run's time.
    loader.btf(Some(btf));
    Ok(loader.load(object)?)
}

/// Walks the sockets of the network namespace `netns` with `link`'s
/// iterator, from a thread that joins it: what the program wrote.
fn walk_in(netns: &File, link: IterLink) -> Result<Vec<DestroyedSocket>> {
    let output = std::thread::scope(|scope| {
        let walk = scope.spawn(move || -> Result<Vec<u8>> {
            // SAFETY: setns on this thread only, with a namespace file we hold open.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("cannot enter a network namespace");
            }
            let mut file = link.into_file().context("cannot create the socket iterator")?;
            let mut output = Vec::new();
            file.read_to_end(&mut output).context("running the socket iterator")?;
            Ok(output)
        });
        walk.join().map_err(|_| anyhow!("the socket iterator's thread panicked"))?
    })?;
    Ok(output
        .chunks_exact(size_of::<DestroyedSocket>())
        // SAFETY: the program writes whole `DestroyedSocket`s, all integers.
        .map(|bytes| unsafe { bytes.as_ptr().cast::<DestroyedSocket>().read_unaligned() })
        .collect())
}

/// The cgroup balctl's cgroup hooks are attached to.
fn attached_cgroup(pins: &PinDir) -> Result<PathBuf> {
    let (live, _) = links::live_links(pins)?;
    let id = live
        .values()
        .find_map(|link| link.info.target.cgroup_id())
        .context("balctl is not attached to a cgroup")?;
    cgroup::cgroup_path(id).with_context(|| format!("cannot find cgroup id {id} under the cgroup2 mount"))
}

/// One open file of each network namespace that a process of `cgroup` or
/// its descendants is in, and how many of those processes are in PID
/// namespaces this one cannot see (`cgroup.procs` shows them as 0). A
/// process that exits meanwhile is skipped.
fn cgroup_network_namespaces(cgroup: &Path) -> Result<(Vec<File>, u64)> {
    let mut seen = BTreeSet::new();
    let (mut namespaces, mut unseen) = (Vec::new(), 0);
    let mut pending = vec![cgroup.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(pids) = fs::read_to_string(dir.join("cgroup.procs")) else {
            // Removed meanwhile.
            continue;
        };
        for pid in pids.lines() {
            if pid == "0" {
                unseen += 1;
                continue;
            }
            let Ok(netns) = File::open(format!("/proc/{pid}/ns/net")) else {
                continue;
            };
            let meta = netns.metadata().context("cannot stat a network namespace")?;
            if seen.insert((meta.dev(), meta.ino())) {
                namespaces.push(netns);
            }
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            let subdirs = entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir()));
            pending.extend(subdirs.map(|e| e.path()));
        }
    }
    Ok((namespaces, unseen))
}

/// A copy of an ELF object, 8-byte aligned as the ELF reader wants it.
struct AlignedObject {
    words: Vec<u64>,
    len: usize,
}

impl AlignedObject {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialised bytes.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast(), self.len) }
    }
}

/// `BPF_JMP | BPF_CALL`.
const CALL: u8 = 0x85;
/// `src_reg` of a call to a kernel function by BTF id.
const BPF_PSEUDO_KFUNC_CALL: u8 = 2;

/// `object` with every call of the placeholder in its `iter/` sections
/// made a call of the kfunc with BTF id `kfunc`. An object with none is
/// refused: its programs would call a helper that does not exist.
fn with_kfunc_calls(object: &[u8], kfunc: u32) -> Result<AlignedObject> {
    let mut copy = AlignedObject { words: vec![0; object.len().div_ceil(8)], len: object.len() };
    copy.bytes_mut().copy_from_slice(object);
    let mut patched = 0;
    for range in iter_sections(object)? {
        let code = copy.bytes_mut().get_mut(range).context("an iter section outside the object")?;
        for ins in code.chunks_exact_mut(8) {
            let imm = i32::from_le_bytes([ins[4], ins[5], ins[6], ins[7]]);
            if ins[0] == CALL && ins[1] >> 4 == 0 && imm == SOCK_DESTROY_PLACEHOLDER {
                // src_reg is the high nibble of the registers byte (little endian).
                ins[1] = (ins[1] & 0x0f) | (BPF_PSEUDO_KFUNC_CALL << 4);
                ins[4..8].copy_from_slice(&kfunc.to_le_bytes());
                patched += 1;
            }
        }
    }
    if patched == 0 {
        bail!("the eBPF object's socket iterators call no bpf_sock_destroy");
    }
    Ok(copy)
}

/// The byte ranges in the object file of its `iter/...` sections.
fn iter_sections(elf: &[u8]) -> Result<Vec<std::ops::Range<usize>>> {
    let file = object::File::parse(elf).context("the eBPF object is not an ELF file")?;
    let mut sections = Vec::new();
    for section in file.sections() {
        if section.name().is_ok_and(|name| name.starts_with("iter/"))
            && let Some((offset, size)) = section.file_range()
        {
            let offset = usize::try_from(offset)?;
            sections.push(offset..offset + usize::try_from(size)?);
        }
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every placeholder call of the iterators becomes a kfunc call, and
    /// nothing else of the object changes.
    #[test]
    fn placeholder_calls_become_kfunc_calls() {
        let patched = with_kfunc_calls(OBJECT, 0x1234).expect("the object has placeholder calls");
        let changed: Vec<usize> = (0..OBJECT.len()).filter(|&i| OBJECT[i] != patched.bytes()[i]).collect();
        assert!(!changed.is_empty());
        let sections = iter_sections(OBJECT).unwrap();
        assert_eq!(sections.len(), 2);
        assert!(changed.iter().all(|i| sections.iter().any(|s| s.contains(i))));
        let calls = sections.iter().flat_map(|s| patched.bytes()[s.clone()].chunks_exact(8));
        let kfunc_calls = calls.filter(|ins| ins[0] == CALL && ins[1] >> 4 == BPF_PSEUDO_KFUNC_CALL);
        assert!(kfunc_calls.clone().count() >= 2);
        assert!(kfunc_calls.into_iter().all(|ins| ins[4..8] == 0x1234u32.to_le_bytes()));
        assert!(with_kfunc_calls(b"\x7fELF\x02\x01", 1).is_err());
    }
}
