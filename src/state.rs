//! The state directory: what has been applied (the rules and the compiled
//! image with its ids), written atomically, and a lock so that two balctl
//! processes that change state never interleave.
//!
//! The state is binary (postcard after a magic and a format version): a
//! sync of 10,000 services reads and writes it whole, and as JSON that
//! alone took 70 ms of a change that should take less than 100. `balctl
//! dump`, `status` and `policy list -o json` show what it holds. Formats
//! 3 (bincode 1), 4 and 5 are still read, and rewritten by the first balctl
//! that takes the lock (docs/state-files.md).

use std::{
    fs::File,
    io::{self, BufWriter, Read as _, Write as _},
    net::IpAddr,
    os::{fd::AsRawFd as _, unix::fs::FileExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use self::change_log::{Delta, LOG_FILE, Replay};
use crate::{
    image::{Image, Touched},
    model::{AddressKind, Frontend, Policy},
    trusted_dir::{Problem, Trust, TrustedDir, user},
};

mod change_log;
mod legacy;
mod synced;

pub use synced::{Slot, Synced, SyncedChanges};

const STATE_FILE: &str = "state.bin";
const LOCK_FILE: &str = "lock";
/// Present while a change writes the maps; see `StateDir::begin_map_writes`.
const MAP_WRITES_FILE: &str = "map-writes-in-progress";
const MAGIC: &[u8; 8] = b"balctl\0S";
/// Bumped whenever the layout of `AppliedState` changes: postcard is not
/// self-describing, so another version's file cannot be read by postcard.
/// Formats 4 and 5 are postcard (https://postcard.jamesmunns.com/wire-format);
/// 5 added which backends are local, 6 Services' health-check node ports,
/// 7 the objects each synced object's translation read, 8 whether node
/// ports answer on IPv4 loopback, 9 the snapshot's generation (a `u64`,
/// little endian, before the state), which its change log names
/// (`change_log`), 10 the frontends' counter cells, 11 rules' health
/// checks and whether every backend of a frontend fails its check.
pub(crate) const STATE_VERSION: u32 = 11;
/// Format 8: format 9 without a generation, and so without a log.
const UNLOGGED_LEGACY_VERSION: u32 = 8;
/// Formats 9 and 10: the format of 11 without what `legacy::ADDED` lists
/// after them (a snapshot with a generation and its log), read only to
/// migrate them.
const LOGGED_LEGACY_VERSIONS: [u32; 2] = [9, 10];
/// The first format with counter cells.
const CELLS_VERSION: u32 = 10;
/// Older formats, read only to migrate them (`legacy`): 3 is the format 4
/// layout in bincode 1, written up to commit a86b197; 4 to 9 lack the
/// fields `legacy::ADDED` lists; 8 has no generation, and so no log.
const LEGACY_VERSIONS: [u32; 8] = legacy::FORMATS;
/// A log longer than its snapshot (and than this) is folded into a new
/// snapshot by the next change: reading costs at most about two
/// snapshots, and a change, whatever the state's size, one record plus
/// its share of the next snapshot.
const COMPACT_AFTER: u64 = 256 << 10;
/// The magic and the format version.
const HEADER_LEN: usize = MAGIC.len() + 4;

/// Everything balctl has applied. The maps are the datapath's truth; this is
/// what they were last made to hold, and what `load` restores.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    /// Rules from `balctl policy`.
    #[serde(with = "policy_records")]
    pub policies: Vec<Policy>,
    /// Objects from `balctl sync`, each with the input it came from. Shared,
    /// so that a change can tell the objects it kept by identity; edited in
    /// place with a journal of what a change did (`Synced`).
    pub synced: Synced,
    pub image: Image,
}

/// What a change started from, as its record needs it: the policies and
/// the image (at least the part the change touched). Its synced objects
/// are not needed: the journal of the objects after the change says what
/// it did to them (`Synced::changes`).
#[derive(Clone, Copy)]
pub struct Before<'a> {
    pub policies: &'a [Policy],
    pub image: &'a Image,
}

#[cfg(test)]
impl<'a> From<&'a AppliedState> for Before<'a> {
    fn from(state: &'a AppliedState) -> Self {
        Self { policies: &state.policies, image: &state.image }
    }
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

/// Where the record of a state read for a change ends: its snapshot's
/// generation and length, and the end of its log, if it has one
/// (`StateDir::write`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    generation: u64,
    snapshot_len: u64,
    log_end: Option<u64>,
}

/// The generation of a first snapshot (none to follow, or one of an older
/// format): the time, so that no log left in the state dir (by someone
/// who moved only the snapshot away) can name it.
fn fresh_generation() -> u64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    since_epoch.as_nanos() as u64
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
    /// no lock: the snapshot is only ever replaced whole, and a record the
    /// log holds only in part is not read.
    pub fn read(&self) -> Result<AppliedState> {
        Ok(self.read_recorded()?.0)
    }

    /// The applied state, and where its record ends (None when the next
    /// write must be a new snapshot: no log to append to), for a change
    /// under the lock (`write`).
    pub fn read_for_change(&self, _lock: &StateLock) -> Result<(AppliedState, Option<Recorded>)> {
        self.read_recorded()
    }

    /// Where the record ends now, without reading it: the snapshot's
    /// generation and length and the log's length. The same as what a
    /// state read before said, exactly when nobody changed the state since
    /// (a change always grows the log or writes a new snapshot).
    pub fn recorded(&self, _lock: &StateLock) -> Result<Option<Recorded>> {
        let Some(dir) = self.dir()? else { return Ok(None) };
        let Some(snapshot) = dir.open_file(STATE_FILE)? else { return Ok(None) };
        let path = self.root.join(STATE_FILE);
        let snapshot_len =
            snapshot.metadata().with_context(|| format!("cannot read {}", path.display()))?.len();
        let mut header = Vec::with_capacity(HEADER_LEN + 8);
        snapshot
            .take((HEADER_LEN + 8) as u64)
            .read_to_end(&mut header)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let generation = match header.strip_prefix(MAGIC).and_then(|rest| rest.split_first_chunk::<4>()) {
            Some((version, rest)) if u32::from_le_bytes(*version) == STATE_VERSION => {
                rest.first_chunk::<8>().map(|generation| u64::from_le_bytes(*generation))
            }
            _ => None,
        };
        let Some(generation) = generation else { return Ok(None) };
        let log_end = match dir.open_file(LOG_FILE)? {
            Some(log) => Some(
                log.metadata()
                    .with_context(|| format!("cannot read {}", self.root.join(LOG_FILE).display()))?
                    .len(),
            ),
            None => None,
        };
        Ok(Some(Recorded { generation, snapshot_len, log_end }))
    }

    fn read_recorded(&self) -> Result<(AppliedState, Option<Recorded>)> {
        let path = self.root.join(STATE_FILE);
        let Some(dir) = self.dir()? else { return Ok((AppliedState::default(), None)) };
        let Some(mut file) = dir.open_file(STATE_FILE)? else { return Ok((AppliedState::default(), None)) };
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
        let decoded = |body: &[u8]| match postcard::take_from_bytes::<AppliedState>(body) {
            Ok((state, [])) => Ok(state),
            Ok((_, rest)) => Err(corrupt(&format!("{} bytes follow the end of its data", rest.len()))),
            Err(postcard::Error::DeserializeUnexpectedEnd) => {
                Err(corrupt("it ends in the middle of its data (truncated)"))
            }
            Err(other) => Err(corrupt(&other.to_string())),
        };
        match u32::from_le_bytes(*version) {
            // A snapshot with a generation, which its log names.
            version if version == STATE_VERSION || LOGGED_LEGACY_VERSIONS.contains(&version) => {
                let Some((generation, body)) = body.split_first_chunk::<8>() else {
                    return Err(corrupt("it ends in the middle of its data (truncated)"));
                };
                let generation = u64::from_le_bytes(*generation);
                if version == STATE_VERSION {
                    let (state, log_end) = self.replay(&dir, generation, decoded(body)?, version)?;
                    return Ok((
                        state,
                        Some(Recorded { generation, snapshot_len: bytes.len() as u64, log_end }),
                    ));
                }
                let snapshot = legacy::from_bytes(body, version).map_err(|err| corrupt(&err.to_string()))?;
                let (mut state, _) = self.replay(&dir, generation, snapshot, version)?;
                complete_legacy(&mut state, version);
                Ok((state, None))
            }
            version if LEGACY_VERSIONS.contains(&version) => {
                let mut state = legacy::from_bytes(body, version).map_err(|err| corrupt(&err.to_string()))?;
                complete_legacy(&mut state, version);
                Ok((state, None))
            }
            version => bail!(
                "{} is state format {version}, this balctl reads formats {} to {STATE_VERSION}; use \
                 the balctl that wrote it, or move the state dir away and re-apply (`balctl unload \
                 --yes`, `balctl load`, then sync and policy add again)",
                path.display(),
                LEGACY_VERSIONS[0],
            ),
        }
    }

    /// The snapshot of `generation` with its log's records applied, and
    /// where they end; None for the end when there is no log of that
    /// generation.
    fn replay(
        &self,
        dir: &TrustedDir,
        generation: u64,
        snapshot: AppliedState,
        format: u32,
    ) -> Result<(AppliedState, Option<u64>)> {
        let path = self.root.join(LOG_FILE);
        let Some(mut file) = dir.open_file(LOG_FILE)? else { return Ok((snapshot, None)) };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).with_context(|| format!("cannot read {}", path.display()))?;
        let mut replay = Replay::new(snapshot);
        let read =
            change_log::read(&bytes, generation, format, |delta| replay.apply(delta)).map_err(|why| {
                anyhow!(
                    "{} is corrupt: {why}; move it and {STATE_FILE} away to start from an empty state, \
                 then apply your rules again (`balctl sync`, `balctl policy add`)",
                    path.display()
                )
            })?;
        if let Some(read) = &read
            && read.end < bytes.len() as u64
        {
            log::debug!(
                "{}: the last {} bytes are a change record cut short (a balctl stopped while writing it): \
                 not read, and cut off by the next change",
                path.display(),
                bytes.len() as u64 - read.end
            );
        }
        Ok((replay.finish(), read.map(|read| read.end)))
    }

    /// The format version of the state file; None when there is none, or
    /// it is too short to say.
    fn format_version(&self) -> Result<Option<u32>> {
        let Some(dir) = self.dir()? else { return Ok(None) };
        let Some(file) = dir.open_file(STATE_FILE)? else { return Ok(None) };
        let mut header = Vec::with_capacity(HEADER_LEN);
        file.take(HEADER_LEN as u64)
            .read_to_end(&mut header)
            .with_context(|| format!("cannot read {}", self.root.join(STATE_FILE).display()))?;
        Ok(header
            .strip_prefix(MAGIC)
            .and_then(|rest| rest.first_chunk::<4>())
            .map(|version| u32::from_le_bytes(*version)))
    }

    /// Rewrites a state file of an older format in the current one, so
    /// that no later change depends on reading it. Every command that
    /// changes state, `load` included, takes the lock first; a read-only one
    /// (`dump`, `status`) reads the older format as it is.
    fn migrate(&self, lock: &StateLock) -> Result<()> {
        let older = |v: &u32| LEGACY_VERSIONS.contains(v);
        let Some(version) = self.format_version()?.filter(older) else {
            return Ok(());
        };
        // A corrupt file is left as it is, for the commands that read it to
        // say so; `unload` still works.
        let Ok(state) = self.read() else { return Ok(()) };
        self.write_snapshot(lock, &state, fresh_generation())?;
        log::info!(
            "rewrote {} from state format {version} in format {STATE_VERSION}",
            self.root.join(STATE_FILE).display()
        );
        Ok(())
    }

    /// Takes the exclusive lock, waiting (and saying so) if another balctl
    /// holds it.
    pub fn lock(&self) -> Result<StateLock> {
        let file = self.lock_file(LOCK_FILE)?;
        if !flock(&file, libc::LOCK_NB).with_context(|| self.lock_failed(LOCK_FILE))? {
            eprintln!("waiting for another balctl to finish (lock {})", self.root.join(LOCK_FILE).display());
            flock(&file, 0).with_context(|| self.lock_failed(LOCK_FILE))?;
        }
        let lock = StateLock { _file: file };
        self.migrate(&lock)?;
        Ok(lock)
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

    /// Records `after`, the state a change made of `before` (as
    /// `read_for_change` read it, with `recorded`): one record appended to
    /// the log, or, when there is no log to append to or it has grown
    /// longer than its snapshot, a new snapshot. Durable when it returns;
    /// a crash before leaves the state as it was. Returns where the record
    /// now ends.
    pub fn write(
        &self,
        lock: &StateLock,
        recorded: Option<Recorded>,
        before: Before,
        after: &AppliedState,
        touched: Touched,
    ) -> Result<Recorded> {
        let Some(recorded) = recorded else {
            return self.write_snapshot(lock, after, fresh_generation());
        };
        match recorded.log_end {
            Some(end) if end - change_log::HEADER_LEN <= recorded.snapshot_len.max(COMPACT_AFTER) => {
                let end = self.append(lock, end, &Delta::between(before, after, touched))?;
                Ok(Recorded { log_end: Some(end), ..recorded })
            }
            _ => self.write_snapshot(lock, after, recorded.generation + 1),
        }
    }

    /// Appends `delta` to the log at `end` (cutting off a torn record
    /// after it); returns the new end.
    fn append(&self, _lock: &StateLock, end: u64, delta: &Delta) -> Result<u64> {
        let dir = self.created_dir()?;
        let file = dir.open_or_create(LOG_FILE)?;
        let record = change_log::record(delta);
        let write = || -> io::Result<()> {
            file.set_len(end)?;
            file.write_all_at(&record, end)?;
            file.sync_data()
        };
        write().with_context(|| format!("cannot write {}", dir.path().join(LOG_FILE).display()))?;
        Ok(end + record.len() as u64)
    }

    /// Replaces the snapshot atomically with `state` as `generation`, then
    /// starts its empty log: a crash leaves the old snapshot with its log,
    /// or the new one with a log of the old generation, which is not
    /// read. Temporaries are made anew (a link planted in their place is
    /// removed, not written through).
    fn write_snapshot(&self, _lock: &StateLock, state: &AppliedState, generation: u64) -> Result<Recorded> {
        let dir = self.created_dir()?;
        // Writes the file `name` anew; returns its length.
        let replace = |name: &str, write: &dyn Fn(&mut BufWriter<File>) -> io::Result<()>| -> Result<u64> {
            let tmp = format!("{name}.tmp");
            let file = dir.create_new(&tmp)?;
            let written = || -> io::Result<u64> {
                // postcard writes field by field: unbuffered, a large state
                // costs millions of write(2) calls.
                let mut out = BufWriter::with_capacity(1 << 20, file);
                write(&mut out)?;
                let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
                file.sync_all()?;
                Ok(file.metadata()?.len())
            };
            let len =
                written().with_context(|| format!("cannot write {}", dir.path().join(&tmp).display()))?;
            dir.rename(&tmp, name)?;
            // The new snapshot is durable before the old log goes.
            dir.sync()?;
            Ok(len)
        };
        let snapshot_len = replace(STATE_FILE, &|out| {
            out.write_all(MAGIC)?;
            out.write_all(&STATE_VERSION.to_le_bytes())?;
            out.write_all(&generation.to_le_bytes())?;
            postcard::to_io(state, &mut *out).map(drop).map_err(io::Error::other)
        })?;
        let log_end = replace(LOG_FILE, &|out| out.write_all(&change_log::header(generation)))?;
        Ok(Recorded { generation, snapshot_len, log_end: Some(log_end) })
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
        let (tmp, log_tmp) = (format!("{STATE_FILE}.tmp"), format!("{LOG_FILE}.tmp"));
        let ours = |name: &str| {
            [STATE_FILE, tmp.as_str(), LOG_FILE, log_tmp.as_str(), MAP_WRITES_FILE, LOCK_FILE].contains(&name)
                || name.ends_with(".lock")
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
/// fields, neither of which a format that is not self-describing (postcard,
/// bincode before it) can read back.
mod policy_records {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Policy;
    use crate::model::rule_records;

    pub fn serialize<S: Serializer>(policies: &[Policy], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(policies.iter().map(|p| (&p.name, rule_records::record(&p.rule))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Policy>, D::Error> {
        let records = Vec::<(String, rule_records::Record)>::deserialize(deserializer)?;
        Ok(records.into_iter().map(|(name, rule)| Policy { name, rule: rule_records::rule(rule) }).collect())
    }
}

/// What older formats did not record. Format 4 did not say which backends
/// run on this node, and format 3 not which address of a Service a
/// frontend is either (read as ClusterIP; its node ports are the frontends
/// on the unspecified address, where every NodePort frontend is stored).
/// Neither can be told from what they hold, so every synced object forgets
/// the inputs it came from, and the next sync translates it again (once)
/// instead of keeping it, which records them.
///
/// Formats 9 and before had no counter cells: every frontend is handed its
/// cells (`Image::hand_out_cells`), which the counters that pinned maps of
/// those formats held are not at (their layout differs: `load` refuses
/// them, and `unload` then `load` starts counting anew).
fn complete_legacy(state: &mut AppliedState, version: u32) {
    if version < CELLS_VERSION {
        state.image.hand_out_cells();
    }
    if version >= UNLOGGED_LEGACY_VERSION {
        return;
    }
    let node_port = |frontend: &Frontend| version == 3 && frontend.address.is_unspecified();
    let mut synced = std::mem::take(&mut state.synced).into_vec();
    for object in &mut synced {
        let object = Arc::make_mut(object);
        object.inputs.clear();
        for rule in &mut object.rules {
            if node_port(&rule.frontend) {
                rule.address_kind = AddressKind::NodePort;
            }
        }
    }
    state.synced = Synced::from(synced);
    for (frontend, image) in &mut state.image.frontends {
        if node_port(frontend) {
            image.address_kind = AddressKind::NodePort;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, fs, os::unix::fs::PermissionsExt as _};

    use super::*;
    use crate::{
        draws::Draws,
        model::{FrontendRule, Protocol, SyncedObject},
    };

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
                local_backends: Vec::new(),
                affinity_seconds: Some(30),
                local_only: false,
                requests_per_second: None,
                address_kind: AddressKind::ClusterIp,
                external: crate::model::ExternalBalancing::default(),
                health: None,
                weights: Vec::new(),
                least_connections: false,
            },
        });
        state.synced = Synced::from(vec![Arc::new(SyncedObject {
            source: "/etc/balctl/web.toml".into(),
            owner: "service/web".into(),
            rules: vec![FrontendRule {
                frontend: "[2001:db8::10]:53/udp".parse().unwrap(),
                backends: vec!["[2001:db8::2]:5353".parse().unwrap()],
                local_backends: vec!["[2001:db8::2]:5353".parse().unwrap()],
                affinity_seconds: None,
                local_only: true,
                requests_per_second: None,
                address_kind: AddressKind::ExternalIp,
                external: crate::model::ExternalBalancing::default(),
                health: None,
                weights: Vec::new(),
                least_connections: false,
            }],
            addresses: vec!["192.0.2.1".parse().unwrap()],
            inputs: vec![u128::MAX],
            health_check: Some(crate::model::HealthCheck {
                namespace: "shop".into(),
                name: "web".into(),
                port: 32443,
                local_endpoints: 2,
            }),
            dependencies: vec![
                crate::model::Dependency { owner: "node/node-a".into(), fingerprint: Some(7) },
                crate::model::Dependency { owner: "node/node-b".into(), fingerprint: None },
            ],
            held_back: vec!["192.0.2.9:8080".parse().unwrap()],
        })]);
        state
    }

    #[test]
    fn missing_state_is_empty_and_writes_round_trip() {
        let dir = temp_dir("roundtrip");
        let state_dir = StateDir::new(&dir);
        assert_eq!(state_dir.read().unwrap(), AppliedState::default());
        let state = sample_state();
        let lock = state_dir.lock().unwrap();
        state_dir.write(&lock, None, Before::from(&AppliedState::default()), &state, Touched::All).unwrap();
        assert_eq!(state_dir.read().unwrap(), state);
        let mode = |name: &str| fs::metadata(dir.join(name)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(STATE_FILE), 0o600);
        assert_eq!(mode(LOG_FILE), 0o600);
        assert_eq!(mode(""), 0o700);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Issue 20: a thousand changes of every kind, each recorded as a
    /// change would (a record, or a new snapshot once the log has grown),
    /// one of them after a torn record; the state read back, as a new
    /// process reads it, is each time exactly the state written.
    #[test]
    fn a_thousand_changes_read_back_exactly() {
        let dir = temp_dir("changes");
        let state_dir = StateDir::new(&dir);
        let lock = state_dir.lock().unwrap();
        let mut draws = Draws(0x9e37_79b9_7f4a_7c15);
        let mut random = |n: usize| draws.below(n as u64) as usize;
        let template = sample_state();
        let mut written = AppliedState::default();
        let mut generations = BTreeSet::new();
        for change in 0..1000_u32 {
            let (before, recorded) = state_dir.read_for_change(&lock).unwrap();
            assert_eq!(before, written, "change {change}: read back");
            generations.extend(recorded.map(|r| r.generation));
            let mut after = before.clone();
            let object = |owner: String| {
                let mut object = (*template.synced[0]).clone();
                object.owner = owner;
                object.source = format!("/etc/balctl/{}.toml", change % 3);
                object.rules[0].frontend.port = change as u16;
                // Big enough records for the log to outgrow its snapshot.
                object.inputs = vec![u128::MAX - u128::from(change); 100];
                Arc::new(object)
            };
            let mut synced = after.synced.to_vec();
            let count = synced.len();
            match random(8) {
                0 | 1 => synced.push(object(format!("service/o{change}"))),
                2 if count > 0 => drop(synced.remove(random(count))),
                3 if count > 0 => {
                    let at = random(count);
                    synced[at] = object(synced[at].owner.clone());
                }
                // A kept object moved to the end.
                4 if count > 1 => {
                    let moved = synced.remove(random(count));
                    synced.push(moved);
                }
                5 => {
                    let mut policy = template.policies[0].clone();
                    policy.name = format!("p{}", random(5));
                    after.policies.retain(|p| p.name != policy.name);
                    if random(2) == 0 {
                        after.policies.push(policy);
                    }
                }
                6 => {
                    let image = &mut after.image;
                    let frontend: Frontend =
                        format!("198.18.{}.{}:80", random(3), random(200)).parse().unwrap();
                    if image.frontends.remove(&frontend).is_none() {
                        let rule = &template.policies[0].rule;
                        let compiled =
                            Image::default().update([], [("policy/p".into(), rule)], [], true).unwrap();
                        let mut entry = compiled.frontends.into_values().next().unwrap();
                        entry.service_id = change;
                        image.frontends.insert(frontend, entry);
                    }
                    let id = random(50) as u32;
                    if image.backends.remove(&id).is_none() {
                        let address = "192.0.2.3:80".parse().unwrap();
                        let backend =
                            crate::image::BackendAddr { address, protocol: Protocol::Tcp, local: false };
                        image.backends.insert(id, backend);
                    }
                    image.next_service_id = change;
                }
                _ => {
                    let image = &mut after.image;
                    image.node_ports_on_loopback = random(2) == 0;
                    let address: IpAddr = format!("192.0.2.{}", random(4)).parse().unwrap();
                    if !image.node_addresses.remove(&address) {
                        image.node_addresses.insert(address);
                    }
                    image.next_backend_id = change;
                }
            }
            if change == 500 {
                // A record torn by a crash: not read, cut off by the next.
                let mut log = fs::OpenOptions::new().append(true).open(dir.join(LOG_FILE)).unwrap();
                log.write_all(&[200, 0, 0, 0, 1, 2, 3]).unwrap();
                assert_eq!(state_dir.read().unwrap(), before, "the torn record is read");
            }
            after.synced.begin_change();
            after.synced.rebuild(synced);
            state_dir.write(&lock, recorded, Before::from(&before), &after, Touched::All).unwrap();
            written = after;
        }
        assert_eq!(state_dir.read().unwrap(), written);
        assert!(generations.len() > 1, "no compaction in a thousand changes: {generations:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Cuts the state file anywhere after the header, including inside a
    /// string, and expects the one clear error for each.
    fn every_cut_is_truncated(state_dir: &StateDir, whole: &[u8]) {
        let file = state_dir.root().join(STATE_FILE);
        for end in HEADER_LEN..whole.len() {
            fs::write(&file, &whole[..end]).unwrap();
            let err = format!("{:#}", state_dir.read().unwrap_err());
            assert!(err.contains("state.bin is corrupt: it ends in the middle of its data"), "{end}: {err}");
            assert!(err.contains("move it away") && !err.contains("io error"), "{end}: {err}");
        }
    }

    #[test]
    fn corrupt_state_names_the_file() {
        let dir = temp_dir("corrupt");
        let state_dir = StateDir::new(&dir);
        let lock = state_dir.lock().unwrap();
        let empty = AppliedState::default();
        state_dir.write(&lock, None, Before::from(&empty), &sample_state(), Touched::All).unwrap();
        let whole = fs::read(dir.join(STATE_FILE)).unwrap();
        every_cut_is_truncated(&state_dir, &whole);
        let mut longer = whole.clone();
        longer.push(0);
        fs::write(dir.join(STATE_FILE), longer).unwrap();
        let err = state_dir.read().unwrap_err();
        assert!(format!("{err:#}").contains("state.bin is corrupt: 1 bytes follow the end"), "{err:#}");
        fs::write(dir.join(STATE_FILE), "{not binary").unwrap();
        let err = state_dir.read().unwrap_err();
        assert!(format!("{err:#}").contains("state.bin is corrupt: it does not start"), "{err:#}");
        let mut other_version = MAGIC.to_vec();
        other_version.extend((STATE_VERSION + 1).to_le_bytes());
        fs::write(dir.join(STATE_FILE), other_version).unwrap();
        let err = state_dir.read().unwrap_err();
        assert!(format!("{err:#}").contains("this balctl reads formats 3 to 11"), "{err:#}");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A state file written by balctl a86b197 (format 3, bincode 1): see
    /// tests/fixtures/state-v3/README.md.
    const FORMAT_3: &[u8] = include_bytes!("../tests/fixtures/state-v3/state.bin");
    /// One written by balctl 3d7c9f6 (format 4, postcard without local
    /// backends): see tests/fixtures/state-v4/README.md.
    const FORMAT_4: &[u8] = include_bytes!("../tests/fixtures/state-v4/state.bin");
    /// One written by balctl 57438ba (format 5, without health-check node
    /// ports): see tests/fixtures/state-v5/README.md.
    const FORMAT_5: &[u8] = include_bytes!("../tests/fixtures/state-v5/state.bin");
    /// One written by balctl 44db0f3 (format 6, without recorded reads):
    /// see tests/fixtures/state-v6/README.md.
    const FORMAT_6: &[u8] = include_bytes!("../tests/fixtures/state-v6/state.bin");
    /// One written by balctl 5003ef0 (format 7, before loopback followed
    /// --nodeport-addresses): see tests/fixtures/state-v7/README.md.
    const FORMAT_7: &[u8] = include_bytes!("../tests/fixtures/state-v7/state.bin");
    /// One written by balctl b4d679e (format 8, one file before the change
    /// log): see tests/fixtures/state-v8/README.md.
    const FORMAT_8: &[u8] = include_bytes!("../tests/fixtures/state-v8/state.bin");

    /// Reads `file` (of format `version`), takes the lock (which rewrites
    /// it), and returns what it held.
    fn read_and_rewrite(name: &str, file: &[u8], version: u32) -> AppliedState {
        let dir = temp_dir(name);
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(dir.join(STATE_FILE), file).unwrap();
        fs::set_permissions(dir.join(STATE_FILE), fs::Permissions::from_mode(0o600)).unwrap();
        let state_dir = StateDir::new(&dir);
        assert_eq!(state_dir.format_version().unwrap(), Some(version));
        let legacy = state_dir.read().unwrap();
        drop(state_dir.lock().unwrap());
        assert_eq!(state_dir.format_version().unwrap(), Some(STATE_VERSION));
        assert_eq!(state_dir.read().unwrap(), legacy);
        // Its errors are as clear as the current format's.
        every_cut_is_truncated(&state_dir, file);
        // A corrupt one is left for the commands that read it to report.
        state_dir.lock().unwrap();
        assert_eq!(fs::read(dir.join(STATE_FILE)).unwrap(), file[..file.len() - 1]);
        fs::remove_dir_all(&dir).unwrap();
        legacy
    }

    #[test]
    fn a_format_3_state_is_read_and_rewritten_when_locked() {
        let legacy = read_and_rewrite("format3", FORMAT_3, 3);
        assert_eq!((legacy.policies.len(), legacy.synced.len()), (4, 12), "{legacy:#?}");
        assert_eq!(legacy.policy("local-dns").unwrap().rule.requests_per_second, Some(500));
    }

    #[test]
    fn a_format_4_state_is_read_and_rewritten_when_locked() {
        let legacy = read_and_rewrite("format4", FORMAT_4, 4);
        assert_eq!((legacy.policies.len(), legacy.synced.len()), (4, 14), "{legacy:#?}");
        assert_eq!(legacy.policy("local-dns").unwrap().rule.requests_per_second, Some(500));
        let api = legacy.synced.iter().find(|o| o.owner == "service/shop/api").expect("service/shop/api");
        let kinds: Vec<AddressKind> = api.rules.iter().map(|r| r.address_kind).collect();
        assert_eq!(kinds, [AddressKind::ClusterIp, AddressKind::LoadBalancer, AddressKind::NodePort]);
        // What format 4 did not know: nothing is local, and every object is
        // translated again by the next sync, which finds out.
        assert!(legacy.image.backends.values().all(|b| !b.local));
        assert!(
            legacy
                .synced
                .iter()
                .all(|o| o.inputs.is_empty() && o.rules.iter().all(|r| r.local_backends.is_empty()))
        );
    }

    #[test]
    fn a_format_5_state_is_read_and_rewritten_when_locked() {
        let legacy = read_and_rewrite("format5", FORMAT_5, 5);
        assert_eq!((legacy.policies.len(), legacy.synced.len()), (4, 7), "{legacy:#?}");
        let api = legacy.synced.iter().find(|o| o.owner == "service/shop/api").expect("service/shop/api");
        assert!(api.rules.iter().any(|r| r.local_only), "format 5's fields are read: {api:#?}");
        // No health checks, and every object translated again by the next
        // sync, which makes them.
        assert!(legacy.synced.iter().all(|o| o.inputs.is_empty() && o.health_check.is_none()));
    }

    #[test]
    fn a_format_6_state_is_read_and_rewritten_when_locked() {
        let legacy = read_and_rewrite("format6", FORMAT_6, 6);
        assert_eq!((legacy.policies.len(), legacy.synced.len()), (4, 7), "{legacy:#?}");
        let api = legacy.synced.iter().find(|o| o.owner == "service/shop/api").expect("service/shop/api");
        assert!(api.health_check.is_some(), "format 6's fields are read: {api:#?}");
        // Nothing recorded what it read, so the next sync translates
        // every object again.
        assert!(
            legacy
                .synced
                .iter()
                .all(|o| o.inputs.is_empty() && o.dependencies.is_empty() && o.held_back.is_empty())
        );
    }

    #[test]
    fn a_format_7_state_is_read_and_rewritten_when_locked() {
        let legacy = read_and_rewrite("format7", FORMAT_7, 7);
        assert_eq!((legacy.policies.len(), legacy.synced.len()), (4, 7), "{legacy:#?}");
        let api = legacy.synced.iter().find(|o| o.owner == "service/shop/api").expect("service/shop/api");
        assert!(api.health_check.is_some(), "format 7's fields are read: {api:#?}");
        // Format 7 served node ports on loopback whatever the sync said.
        assert!(legacy.image.node_ports_on_loopback);
        assert!(!legacy.image.node_addresses.is_empty(), "the image's last fields of format 7 are read");
    }

    #[test]
    fn a_format_8_state_is_read_and_rewritten_when_locked() {
        let legacy = read_and_rewrite("format8", FORMAT_8, 8);
        assert_eq!((legacy.policies.len(), legacy.synced.len()), (4, 7), "{legacy:#?}");
        assert!(legacy.image.node_ports_on_loopback && !legacy.image.frontends.is_empty());
    }

    /// Varints wider than their type are refused, not wrapped.
    #[test]
    fn an_overlong_varint_is_corrupt() {
        let mut body = postcard::to_stdvec(&AppliedState::default()).unwrap();
        // The policies' count, 0, as a varint of eleven bytes.
        body.splice(0..1, [0x80; 10].into_iter().chain([0]));
        let err = legacy::from_bytes::<AppliedState>(&body, 4).unwrap_err();
        assert!(err.to_string().contains("does not fit in 64 bits"), "{err}");
    }
}
