//! The state directory: what has been applied (the rules and the compiled
//! image with its ids), written atomically, and a lock so that two balctl
//! processes that change state never interleave.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write as _},
    net::IpAddr,
    os::{
        fd::AsRawFd as _,
        unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::{
    image::Image,
    model::{FrontendRule, Policy},
};

const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "lock";
const STATE_VERSION: u32 = 1;

/// Everything balctl has applied. The maps are the datapath's truth; this is
/// what they were last made to hold, and what `load` restores.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    pub version: u32,
    /// Rules from `balctl policy`.
    pub policies: Vec<Policy>,
    /// Objects from `balctl sync`, each with the input it came from. Shared,
    /// so that the copy a change starts from costs no memory per object.
    #[serde(default)]
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
    pub rules: Vec<FrontendRule>,
    /// A Node's addresses, on which NodePort frontends answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpAddr>,
}

impl Default for AppliedState {
    fn default() -> Self {
        Self { version: STATE_VERSION, policies: Vec::new(), synced: Vec::new(), image: Image::default() }
    }
}

impl AppliedState {
    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.name == name)
    }

    pub fn node_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.synced.iter().flat_map(|o| o.addresses.iter().copied())
    }

    /// Every rule with its owner, policies first.
    pub fn rules(&self) -> impl Iterator<Item = (String, &FrontendRule)> {
        let policies = self.policies.iter().map(|p| (p.owner(), &p.rule));
        let synced = self.synced.iter().flat_map(|o| o.rules.iter().map(|r| (o.owner.clone(), r)));
        policies.chain(synced)
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

    fn file(&self) -> PathBuf {
        self.root.join(STATE_FILE)
    }

    /// The applied state; empty when nothing was ever applied. Reading needs
    /// no lock: the file is only ever replaced whole.
    pub fn read(&self) -> Result<AppliedState> {
        let path = self.file();
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(AppliedState::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        // Parsed as it is read: at 100,000 services the text alone would be
        // about 100 MB on top of the state it describes.
        let reader = io::BufReader::with_capacity(1 << 20, file);
        let state: AppliedState = serde_json::from_reader(reader).with_context(|| {
            format!("{} is corrupt; move it away to start from an empty state", path.display())
        })?;
        if state.version > STATE_VERSION {
            bail!(
                "{} was written by a newer balctl (state version {}, this one reads {STATE_VERSION})",
                path.display(),
                state.version
            );
        }
        Ok(state)
    }

    /// Takes the exclusive lock, waiting (and saying so) if another balctl
    /// holds it.
    pub fn lock(&self) -> Result<StateLock> {
        self.create_dir()?;
        let path = self.root.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open lock file {}", path.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(err).with_context(|| format!("cannot lock {}", path.display()));
            }
            eprintln!("waiting for another balctl to finish (lock {})", path.display());
            // SAFETY: as above.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(io::Error::last_os_error())
                    .with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        Ok(StateLock { _file: file })
    }

    /// Replaces the state file atomically: a crash leaves the old or the new
    /// file, never a torn one.
    pub fn write(&self, _lock: &StateLock, state: &AppliedState) -> Result<()> {
        let path = self.file();
        let tmp = self.root.join(format!("{STATE_FILE}.tmp"));
        let write = || -> io::Result<()> {
            let file = OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&tmp)?;
            // serde_json writes token by token: unbuffered, a large state
            // costs millions of write(2) calls.
            let mut out = BufWriter::new(file);
            serde_json::to_writer(&mut out, state)?;
            out.write_all(b"\n")?;
            out.into_inner().map_err(io::IntoInnerError::into_error)?.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&self.root)?.sync_all()
        };
        write().with_context(|| format!("cannot write {}", path.display()))
    }

    fn create_dir(&self) -> Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .with_context(|| format!("cannot create state directory {}", self.root.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("balctl-state-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn missing_state_is_empty_and_writes_round_trip() {
        let dir = temp_dir("roundtrip");
        let state_dir = StateDir::new(&dir);
        assert_eq!(state_dir.read().unwrap(), AppliedState::default());
        let mut state = AppliedState::default();
        state.policies.push(Policy {
            name: "web".into(),
            rule: FrontendRule {
                frontend: "198.18.0.1:80".parse().unwrap(),
                backends: vec!["192.0.2.1:80".parse().unwrap()],
                affinity_seconds: Some(30),
            },
        });
        state.synced.push(Arc::new(SyncedObject {
            source: "/etc/balctl/web.toml".into(),
            owner: "service/web".into(),
            rules: Vec::new(),
            addresses: vec!["192.0.2.1".parse().unwrap()],
        }));
        let lock = state_dir.lock().unwrap();
        state_dir.write(&lock, &state).unwrap();
        assert_eq!(state_dir.read().unwrap(), state);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(dir.join(STATE_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_state_names_the_file() {
        let dir = temp_dir("corrupt");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(STATE_FILE), "{not json").unwrap();
        let err = StateDir::new(&dir).read().unwrap_err();
        assert!(format!("{err:#}").contains("state.json is corrupt"), "{err:#}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
