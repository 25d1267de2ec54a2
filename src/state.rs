//! The state directory: what has been applied (the rules and the compiled
//! image with its ids), written atomically, and a lock so that two balctl
//! processes that change state never interleave.
//!
//! The state is binary (bincode after a magic and a format version): a sync
//! of 10,000 services reads and writes it whole, and as JSON that alone
//! took 70 ms of a change that should take less than 100. `balctl dump`,
//! `status` and `policy list -o json` show what it holds.

use std::{
    fs::File,
    io::{self, BufWriter, Read as _, Write as _},
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::{
    image::Image,
    inputs::Fingerprint,
    model::{AddressKind, Frontend, FrontendRule, Policy},
    trusted_dir::{Problem, Trust, TrustedDir, user},
};

const STATE_FILE: &str = "state.bin";
const LOCK_FILE: &str = "lock";
/// Present while a change writes the maps; see `StateDir::begin_map_writes`.
const MAP_WRITES_FILE: &str = "map-writes-in-progress";
const MAGIC: &[u8; 8] = b"balctl\0S";
/// Bumped whenever the layout of `AppliedState` changes: bincode is not
/// self-describing, so another version's file cannot be read at all.
const STATE_VERSION: u32 = 4;

/// Everything balctl has applied. The maps are the datapath's truth; this is
/// what they were last made to hold, and what `load` restores.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    /// Rules from `balctl policy`.
    #[serde(with = "policy_records")]
    pub policies: Vec<Policy>,
    /// Objects from `balctl sync`, each with the input it came from. Shared,
    /// so that the copy a change starts from costs no memory per object, and
    /// so that a change can tell the objects it kept by identity.
    pub synced: Vec<Arc<SyncedObject>>,
    pub image: Image,
}

/// An object applied by `balctl sync`, compiled to its frontend rules. A
/// sync replaces exactly the objects of the sources it reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncedObject {
    /// The `-f` input it came from: an absolute path, or `-` for stdin.
    pub source: String,
    /// What it is, e.g. `service/web`; shown by `dump` and in errors.
    pub owner: String,
    #[serde(with = "rule_records")]
    pub rules: Vec<FrontendRule>,
    /// A Node's addresses, on which NodePort frontends answer.
    pub addresses: Vec<IpAddr>,
    /// Fingerprints of the input items it was translated from (a Service's
    /// own, then its EndpointSlices'), when nothing else went into it: a
    /// later sync whose input holds exactly these items again keeps the
    /// object without parsing them. Empty: always translated anew.
    pub inputs: Vec<Fingerprint>,
}

impl AppliedState {
    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.name == name)
    }

    pub fn node_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.synced.iter().flat_map(|o| o.addresses.iter().copied())
    }
}

/// The state dir decides what balctl applies: another user's hand in it
/// is refused. Its files are balctl's user's, mode 0600.
static STATE: Trust = Trust {
    forbidden_file_bits: 0o022,
    risk: "another user could change what balctl applies",
    remedy: take_back,
};

/// What it holds is the record of what was applied: look before keeping it.
fn take_back(path: &Path, directory: bool, problem: &Problem) -> String {
    let shown = path.display();
    match problem {
        Problem::Symlink => {
            format!("put what it points to in its place, or remove it (`rm {shown}` removes only the link)")
        }
        Problem::WrongType { .. } => format!("move {shown} out of the way"),
        Problem::Owner(_) | Problem::Mode(_) => {
            let mode = if directory { 700 } else { 600 };
            format!(
                "check what it holds, then `chown {user}: {shown} && chmod {mode} {shown}`",
                user = user()
            )
        }
    }
}

#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

/// Held while state is being changed; released when dropped.
pub struct StateLock {
    _file: File,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The state dir, checked; None when nothing was ever applied.
    fn dir(&self) -> Result<Option<TrustedDir>> {
        TrustedDir::open(&self.root, &STATE)
    }

    /// The state dir, made (mode 0700) if missing.
    fn created_dir(&self) -> Result<TrustedDir> {
        TrustedDir::create(&self.root, &STATE)
    }

    /// The applied state; empty when nothing was ever applied. Reading needs
    /// no lock: the file is only ever replaced whole.
    pub fn read(&self) -> Result<AppliedState> {
        let path = self.root.join(STATE_FILE);
        let Some(dir) = self.dir()? else { return Ok(AppliedState::default()) };
        let Some(mut file) = dir.open_file(STATE_FILE)? else { return Ok(AppliedState::default()) };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).with_context(|| format!("cannot read {}", path.display()))?;
        let corrupt = |why: &str| {
            anyhow!(
                "{} is corrupt: {why}; move it away to start from an empty state, \
                 then apply your rules again (`balctl sync`, `balctl policy add`)",
                path.display()
            )
        };
        let Some((version, body)) = bytes.strip_prefix(MAGIC).and_then(|rest| rest.split_first_chunk::<4>())
        else {
            return Err(corrupt("it does not start with balctl's state header"));
        };
        let version = u32::from_le_bytes(*version);
        if version != STATE_VERSION {
            bail!(
                "{} is state format {version}, this balctl reads format {STATE_VERSION}; \
                 use the balctl that wrote it, or move the state dir away and re-apply \
                 (`balctl unload --yes`, `balctl load`, then sync and policy add again)",
                path.display()
            );
        }
        bincode::deserialize(body).map_err(|err| match *err {
            // bincode reports a file that ends too soon as an I/O error,
            // sometimes with no message at all.
            bincode::ErrorKind::Io(ref e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                corrupt("it ends in the middle of its data (truncated)")
            }
            other => corrupt(&other.to_string()),
        })
    }

    /// Takes the exclusive lock, waiting (and saying so) if another balctl
    /// holds it.
    pub fn lock(&self) -> Result<StateLock> {
        let file = self.lock_file(LOCK_FILE)?;
        if !flock(&file, libc::LOCK_NB).with_context(|| self.lock_failed(LOCK_FILE))? {
            eprintln!("waiting for another balctl to finish (lock {})", self.root.join(LOCK_FILE).display());
            flock(&file, 0).with_context(|| self.lock_failed(LOCK_FILE))?;
        }
        Ok(StateLock { _file: file })
    }

    /// Takes an exclusive lock on the file `name` in the state dir without
    /// waiting; None when another process holds it. The lock lasts as long
    /// as the returned file, and ends with the process however it ends.
    pub fn try_lock(&self, name: &str) -> Result<Option<File>> {
        let file = self.lock_file(name)?;
        let locked = flock(&file, libc::LOCK_NB).with_context(|| self.lock_failed(name))?;
        Ok(locked.then_some(file))
    }

    fn lock_file(&self, name: &str) -> Result<File> {
        self.created_dir()?.open_or_create(name)
    }

    fn lock_failed(&self, name: &str) -> String {
        format!("cannot lock {}", self.root.join(name).display())
    }

    /// Replaces the state file atomically: a crash leaves the old or the new
    /// file, never a torn one. The temporary is made anew (a link planted
    /// in its place is removed, not written through).
    pub fn write(&self, _lock: &StateLock, state: &AppliedState) -> Result<()> {
        let dir = self.created_dir()?;
        let tmp = format!("{STATE_FILE}.tmp");
        let file = dir.create_new(&tmp)?;
        let write = || -> io::Result<()> {
            // bincode writes field by field: unbuffered, a large state
            // costs millions of write(2) calls.
            let mut out = BufWriter::with_capacity(1 << 20, file);
            out.write_all(MAGIC)?;
            out.write_all(&STATE_VERSION.to_le_bytes())?;
            bincode::serialize_into(&mut out, state).map_err(io::Error::other)?;
            out.into_inner().map_err(io::IntoInnerError::into_error)?.sync_all()
        };
        write().with_context(|| format!("cannot write {}", dir.path().join(&tmp).display()))?;
        dir.rename(&tmp, STATE_FILE)?;
        dir.sync()
    }

    /// Marks that map writes are about to start, before the first one. A
    /// balctl killed half way (SIGKILL, the OOM killer) leaves the mark
    /// behind, and the maps hold a mix of the recorded state and the one it
    /// was applying. The next change
    /// sees the mark and plans from what the maps hold instead of from the
    /// recorded state, so it converges whatever the mix. No fsync: a crash
    /// of the machine takes the maps with it, and `load` rebuilds them from
    /// the recorded state anyway.
    pub fn begin_map_writes(&self, _lock: &StateLock) -> Result<()> {
        self.created_dir()?.create_new(MAP_WRITES_FILE)?;
        Ok(())
    }

    /// Clears the mark once the maps hold the recorded state again: after
    /// a change, or after a failed one whose writes were all undone. When
    /// an undo fails too the mark stays, and the next change repairs from
    /// the maps.
    pub fn end_map_writes(&self, _lock: &StateLock) {
        if let Err(err) = self.created_dir().and_then(|dir| dir.remove(MAP_WRITES_FILE)) {
            // Harmless: the next change repairs from the maps, which only costs reading them.
            log::warn!("{err:#}");
        }
    }

    /// Whether a change was interrupted during its map writes (and nothing
    /// repaired the maps since).
    pub fn map_writes_interrupted(&self) -> Result<bool> {
        match self.dir()? {
            Some(dir) => dir.check_file(MAP_WRITES_FILE),
            None => Ok(false),
        }
    }

    /// Removes the files balctl keeps here (the state, its temporary, the
    /// map-writes mark, the lock and the `try_lock` locks, `*.lock`), then
    /// the dir itself if that empties it; a dir that is a mount point (a
    /// DaemonSet's hostPath) stays, empty. Files balctl does not make are
    /// left alone, so a state dir pointed at a shared directory loses only
    /// balctl's. Returns the names removed.
    pub fn purge(&self, _lock: &StateLock) -> Result<Vec<String>> {
        let Some(dir) = self.dir()? else { return Ok(Vec::new()) };
        let tmp = format!("{STATE_FILE}.tmp");
        let ours = |name: &str| {
            [STATE_FILE, tmp.as_str(), MAP_WRITES_FILE, LOCK_FILE].contains(&name) || name.ends_with(".lock")
        };
        let mut removed = Vec::new();
        for name in dir.names()?.into_iter().filter(|name| ours(name)) {
            if dir.remove(&name)? {
                removed.push(name);
            }
        }
        match std::fs::remove_dir(&self.root) {
            // A mount point: EBUSY, or EROFS in a read-only root (a container's).
            Err(err) if !matches!(err.raw_os_error(), Some(libc::EBUSY | libc::EROFS | libc::ENOTEMPTY)) => {
                Err(err).with_context(|| format!("cannot remove {}", self.root.display()))
            }
            _ => Ok(removed),
        }
    }
}

/// flock(LOCK_EX | `flags`) on `file`; false when it would block.
fn flock(file: &File, flags: i32) -> io::Result<bool> {
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | flags) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) { Ok(false) } else { Err(err) }
}

/// Policies as `(name, rule record)`: `Policy`'s own serde form is the
/// `policy -o json` output, which flattens the rule and leaves out absent
/// fields, neither of which bincode can read back.
mod policy_records {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{Policy, rule_records};

    pub fn serialize<S: Serializer>(policies: &[Policy], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(policies.iter().map(|p| (&p.name, rule_records::record(&p.rule))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Policy>, D::Error> {
        let records = Vec::<(String, rule_records::Record)>::deserialize(deserializer)?;
        Ok(records.into_iter().map(|(name, rule)| Policy { name, rule: rule_records::rule(rule) }).collect())
    }
}

/// Rules as tuples of their fields, for the same reason.
mod rule_records {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{AddressKind, Frontend, FrontendRule, SocketAddr};

    /// Frontend, backends, affinity, local only, requests per second, address kind.
    pub type Record = (Frontend, Vec<SocketAddr>, Option<u32>, bool, Option<u32>, AddressKind);

    pub fn record(
        rule: &FrontendRule,
    ) -> (&Frontend, &Vec<SocketAddr>, Option<u32>, bool, Option<u32>, AddressKind) {
        (
            &rule.frontend,
            &rule.backends,
            rule.affinity_seconds,
            rule.local_only,
            rule.requests_per_second,
            rule.address_kind,
        )
    }

    pub fn rule(
        (frontend, backends, affinity_seconds, local_only, requests_per_second, address_kind): Record,
    ) -> FrontendRule {
        FrontendRule { frontend, backends, affinity_seconds, local_only, requests_per_second, address_kind }
    }

    pub fn serialize<S: Serializer>(rules: &[FrontendRule], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(rules.iter().map(record))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<FrontendRule>, D::Error> {
        Ok(Vec::<Record>::deserialize(deserializer)?.into_iter().map(rule).collect())
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::PermissionsExt as _};

    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("balctl-state-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn sample_state() -> AppliedState {
        let mut state = AppliedState::default();
        state.policies.push(Policy {
            name: "web".into(),
            rule: FrontendRule {
                frontend: "198.18.0.1:80".parse().unwrap(),
                backends: vec!["192.0.2.1:80".parse().unwrap()],
                affinity_seconds: Some(30),
                local_only: false,
                requests_per_second: None,
                address_kind: AddressKind::ClusterIp,
            },
        });
        state.synced.push(Arc::new(SyncedObject {
            source: "/etc/balctl/web.toml".into(),
            owner: "service/web".into(),
            rules: vec![FrontendRule {
                frontend: "[2001:db8::10]:53/udp".parse().unwrap(),
                backends: vec!["[2001:db8::2]:5353".parse().unwrap()],
                affinity_seconds: None,
                local_only: true,
                requests_per_second: None,
                address_kind: AddressKind::ExternalIp,
            }],
            addresses: vec!["192.0.2.1".parse().unwrap()],
            inputs: vec![u128::MAX],
        }));
        state
    }

    #[test]
    fn missing_state_is_empty_and_writes_round_trip() {
        let dir = temp_dir("roundtrip");
        let state_dir = StateDir::new(&dir);
        assert_eq!(state_dir.read().unwrap(), AppliedState::default());
        let state = sample_state();
        let lock = state_dir.lock().unwrap();
        state_dir.write(&lock, &state).unwrap();
        assert_eq!(state_dir.read().unwrap(), state);
        let mode = |name: &str| fs::metadata(dir.join(name)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(STATE_FILE), 0o600);
        assert_eq!(mode(""), 0o700);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_state_names_the_file() {
        let dir = temp_dir("corrupt");
        let state_dir = StateDir::new(&dir);
        let lock = state_dir.lock().unwrap();
        state_dir.write(&lock, &sample_state()).unwrap();
        let whole = fs::read(dir.join(STATE_FILE)).unwrap();
        // Cut anywhere after the header, including inside a string (where
        // bincode's own error says "io error: " and nothing more).
        for end in MAGIC.len() + 4..whole.len() {
            fs::write(dir.join(STATE_FILE), &whole[..end]).unwrap();
            let err = format!("{:#}", state_dir.read().unwrap_err());
            assert!(err.contains("state.bin is corrupt: it ends in the middle of its data"), "{end}: {err}");
            assert!(err.contains("move it away") && !err.contains("io error"), "{end}: {err}");
        }
        fs::write(dir.join(STATE_FILE), "{not binary").unwrap();
        let err = state_dir.read().unwrap_err();
        assert!(format!("{err:#}").contains("state.bin is corrupt: it does not start"), "{err:#}");
        let mut other_version = MAGIC.to_vec();
        other_version.extend((STATE_VERSION + 1).to_le_bytes());
        fs::write(dir.join(STATE_FILE), other_version).unwrap();
        let err = state_dir.read().unwrap_err();
        assert!(format!("{err:#}").contains("this balctl reads format"), "{err:#}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
