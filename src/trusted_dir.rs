//! Directories that only the user running balctl can change, and the files
//! in them: the pin dir and the state dir. What they hold decides where
//! every connection on the host goes, and a directory another user can
//! write lets that user detach balctl or rewrite its rules. bpffs's root
//! is world-writable (mode 1777), so anyone can create /sys/fs/bpf/balctl
//! before root's first `load`; a state dir can be made group- or
//! world-writable by mistake.
//!
//! A directory is trusted when it is a directory (not a symbolic link),
//! belongs to the effective uid and no group or other user may write it:
//! then nobody else can add, remove or replace what it holds. Files in it
//! are opened relative to the directory's descriptor, never through a
//! symbolic link, and checked the same way. Its ancestors are not checked:
//! they are the system's (/sys/fs/bpf, /var/lib).

use std::{
    ffi::OsStr,
    fmt,
    fs::{self, File},
    os::{
        fd::{AsFd, OwnedFd},
        unix::fs::DirBuilderExt as _,
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow};
use rustix::{
    fs::{AtFlags, CWD, Dir, FileType, Mode, OFlags, Stat},
    io::Errno,
    process::geteuid,
};

use crate::caps;

/// Mode bits no trusted directory may have: group and other write.
const DIRECTORY_FORBIDDEN_BITS: u32 = 0o022;

/// What a kind of trusted directory accepts, and what its refusals say.
pub struct Trust {
    /// Mode bits no file in it may have.
    pub forbidden_file_bits: u32,
    /// What a path another user controls lets them do, e.g. "another user
    /// could change what balctl applies".
    pub risk: &'static str,
    /// What to do about an untrusted path: (path, whether it is meant to be
    /// a directory, what is wrong).
    pub remedy: fn(&Path, bool, &Problem) -> String,
}

/// Why a path is not trusted.
pub enum Problem {
    Symlink,
    /// Not a directory where one belongs, or not a regular file.
    WrongType {
        directory: bool,
    },
    /// Owned by another uid.
    Owner(u32),
    /// Has forbidden mode bits (the mode shown).
    Mode(u32),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Symlink => f.write_str("it is a symbolic link, and balctl follows none here"),
            Self::WrongType { directory: true } => f.write_str("it is not a directory"),
            Self::WrongType { directory: false } => f.write_str("it is not a regular file"),
            Self::Owner(uid) => {
                write!(f, "it belongs to uid {uid}, not to uid {}, which runs balctl", euid())
            }
            Self::Mode(mode) => {
                let who = if mode & 0o002 != 0 {
                    "world-writable"
                } else if mode & 0o020 != 0 {
                    "group-writable"
                } else {
                    "open to group or others"
                };
                write!(f, "it is {who} (mode {mode:o})")
            }
        }
    }
}

impl Trust {
    fn refuse(&self, path: &Path, directory: bool, problem: Problem) -> anyhow::Error {
        let risk = match problem {
            Problem::Owner(_) | Problem::Mode(_) => format!(", so {}", self.risk),
            Problem::Symlink | Problem::WrongType { .. } => String::new(),
        };
        anyhow!("refusing {}: {problem}{risk}; {}", path.display(), (self.remedy)(path, directory, &problem))
    }

    /// Checks what `stat` describes: ours, without `forbidden` bits.
    fn check_owner_and_mode(&self, path: &Path, directory: bool, stat: &Stat, forbidden: u32) -> Result<()> {
        if stat.st_uid != euid() {
            // Another user meets root's pins or state: not theirs to use.
            if stat.st_uid == 0 {
                return Err(caps::denied(path));
            }
            return Err(self.refuse(path, directory, Problem::Owner(stat.st_uid)));
        }
        let mode = stat.st_mode & 0o7777;
        if mode & forbidden != 0 {
            return Err(self.refuse(path, directory, Problem::Mode(mode)));
        }
        Ok(())
    }
}

/// The effective uid, which owns what balctl trusts.
fn euid() -> u32 {
    geteuid().as_raw()
}

/// The user to give things back to in a remedy: `root`, or the uid.
pub fn user() -> String {
    match euid() {
        0 => "root".to_owned(),
        uid => uid.to_string(),
    }
}

/// A trusted directory, open.
pub struct TrustedDir {
    fd: OwnedFd,
    path: PathBuf,
    trust: &'static Trust,
}

impl TrustedDir {
    /// The directory at `path`, checked; None when there is none.
    pub fn open(path: &Path, trust: &'static Trust) -> Result<Option<Self>> {
        open_dir(CWD, path.as_os_str(), path.to_owned(), trust)
    }

    /// The directory at `path`, made (mode 0700) if missing, then checked
    /// like any other: one that was there already, or that another user
    /// put there first, is refused unless it is trusted. Missing parents
    /// are made as `mkdir -p` would and not checked.
    pub fn create(path: &Path, trust: &'static Trust) -> Result<Self> {
        if let Some(parent) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .with_context(|| format!("cannot create directory {}", parent.display()))?;
        }
        make_dir(CWD, path.as_os_str(), path)?;
        Self::open(path, trust)?.ok_or_else(|| vanished(path))
    }

    /// The subdirectory `name`, checked; None when there is none.
    pub fn subdir(&self, name: &str) -> Result<Option<Self>> {
        open_dir(&self.fd, OsStr::new(name), self.path.join(name), self.trust)
    }

    /// The subdirectory `name`, made (mode 0700) if missing; see `create`.
    pub fn create_subdir(&self, name: &str) -> Result<Self> {
        let path = self.path.join(name);
        make_dir(&self.fd, OsStr::new(name), &path)?;
        self.subdir(name)?.ok_or_else(|| vanished(&path))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the directory mode 0700: nobody else may even look in.
    pub fn restrict(&self) -> Result<()> {
        rustix::fs::fchmod(&self.fd, Mode::from_raw_mode(0o700))
            .with_context(|| format!("cannot restrict {} to mode 0700", self.path.display()))
    }

    /// Checks the file `name`, if there is one, without following it; true
    /// when there is. For files that others open by path (bpf pins).
    pub fn check_file(&self, name: &str) -> Result<bool> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => self.check_file_stat(name, &stat).map(|()| true),
            Err(Errno::NOENT) => Ok(false),
            Err(err) => Err(self.failed("inspect", name, err)),
        }
    }

    /// The file `name`, open for reading and checked; None when there is none.
    pub fn open_file(&self, name: &str) -> Result<Option<File>> {
        self.open_checked(name, OFlags::RDONLY)
    }

    /// The file `name`, open for writing and checked, created (mode 0600)
    /// if missing; its contents are kept (lock files).
    pub fn open_or_create(&self, name: &str) -> Result<File> {
        let file = self.open_checked(name, OFlags::WRONLY | OFlags::CREATE)?;
        file.ok_or_else(|| vanished(&self.path))
    }

    /// A new, empty file `name` (mode 0600), open for writing. Whatever had
    /// the name before is removed first: a symbolic link there is removed,
    /// never followed, and what it points to stays as it was.
    pub fn create_new(&self, name: &str) -> Result<File> {
        self.remove(name)?;
        let file = self.open_checked(name, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL)?;
        file.ok_or_else(|| vanished(&self.path))
    }

    /// Removes the entry `name` (a symbolic link itself, not its target);
    /// false when there was none.
    pub fn remove(&self, name: &str) -> Result<bool> {
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(err) => Err(self.failed("remove", name, err)),
        }
    }

    /// Renames `from` to `to`, both in this directory, replacing `to`.
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        rustix::fs::renameat(&self.fd, from, &self.fd, to).map_err(|err| self.failed("rename", from, err))
    }

    /// Flushes the directory itself (a rename in it) to disk.
    pub fn sync(&self) -> Result<()> {
        rustix::fs::fsync(&self.fd).with_context(|| format!("cannot sync {}", self.path.display()))
    }

    /// The names of its entries, sorted.
    pub fn names(&self) -> Result<Vec<String>> {
        let listing = || -> rustix::io::Result<Vec<String>> {
            let mut names = Vec::new();
            for entry in Dir::read_from(&self.fd)? {
                let name = entry?.file_name().to_string_lossy().into_owned();
                if name != "." && name != ".." {
                    names.push(name);
                }
            }
            Ok(names)
        };
        let mut names = listing().with_context(|| format!("cannot list {}", self.path.display()))?;
        names.sort();
        Ok(names)
    }

    fn open_checked(&self, name: &str, flags: OFlags) -> Result<Option<File>> {
        // NONBLOCK: a FIFO in its place is refused below instead of
        // blocking the open; it changes nothing for a regular file.
        let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let fd = match rustix::fs::openat(&self.fd, name, flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP) => {
                return Err(self.trust.refuse(&self.path.join(name), false, Problem::Symlink));
            }
            Err(err) => return Err(self.failed("open", name, err)),
        };
        let stat = rustix::fs::fstat(&fd).map_err(|err| self.failed("inspect", name, err))?;
        self.check_file_stat(name, &stat)?;
        Ok(Some(File::from(fd)))
    }

    fn check_file_stat(&self, name: &str, stat: &Stat) -> Result<()> {
        let path = self.path.join(name);
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => {
                self.trust.check_owner_and_mode(&path, false, stat, self.trust.forbidden_file_bits)
            }
            FileType::Symlink => Err(self.trust.refuse(&path, false, Problem::Symlink)),
            _ => Err(self.trust.refuse(&path, false, Problem::WrongType { directory: false })),
        }
    }

    fn failed(&self, what: &str, name: &str, err: Errno) -> anyhow::Error {
        failed(what, &self.path.join(name), err)
    }
}

fn open_dir(at: impl AsFd, name: &OsStr, path: PathBuf, trust: &'static Trust) -> Result<Option<TrustedDir>> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(&at, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        // A symbolic link, or something other than a directory: say which.
        Err(Errno::NOTDIR | Errno::LOOP) => {
            let problem = match rustix::fs::statat(&at, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink => Problem::Symlink,
                _ => Problem::WrongType { directory: true },
            };
            return Err(trust.refuse(&path, true, problem));
        }
        Err(err) => return Err(failed("open", &path, err)),
    };
    let stat = rustix::fs::fstat(&fd).map_err(|err| failed("inspect", &path, err))?;
    trust.check_owner_and_mode(&path, true, &stat, DIRECTORY_FORBIDDEN_BITS)?;
    Ok(Some(TrustedDir { fd, path, trust }))
}

/// mkdir, mode 0700; one that exists already is left for the check.
fn make_dir(at: impl AsFd, name: &OsStr, path: &Path) -> Result<()> {
    match rustix::fs::mkdirat(at, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(err) => Err(failed("create directory", path, err)),
    }
}

fn failed(what: &str, path: &Path, err: Errno) -> anyhow::Error {
    if err == Errno::ACCESS || err == Errno::PERM {
        return caps::denied(path);
    }
    anyhow!("cannot {what} {}: {}", path.display(), std::io::Error::from(err))
}

fn vanished(path: &Path) -> anyhow::Error {
    anyhow!("{} vanished while balctl opened it; try again", path.display())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt as _, symlink};

    use super::*;

    static TEST: Trust = Trust { forbidden_file_bits: 0o022, risk: "others could change it", remedy };

    fn remedy(path: &Path, directory: bool, _: &Problem) -> String {
        format!("fix {} ({})", path.display(), if directory { "dir" } else { "file" })
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("balctl-trusted-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn set_mode(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_missing_directory_is_none_and_is_made_0700() {
        let dir = temp_dir("made");
        assert!(TrustedDir::open(&dir, &TEST).unwrap().is_none());
        let made = TrustedDir::create(&dir.join("sub"), &TEST).unwrap();
        assert_eq!(fs::metadata(made.path()).unwrap().permissions().mode() & 0o7777, 0o700);
        assert!(TrustedDir::open(&dir, &TEST).unwrap().is_some());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writable_and_symlinked_directories_are_refused() {
        let dir = temp_dir("refused");
        fs::create_dir(&dir).unwrap();
        set_mode(&dir, 0o777);
        let err = TrustedDir::open(&dir, &TEST).err().unwrap().to_string();
        assert!(err.contains("world-writable (mode 777), so others could change it; fix"), "{err}");
        set_mode(&dir, 0o770);
        let err = TrustedDir::create(&dir, &TEST).err().unwrap().to_string();
        assert!(err.contains("group-writable (mode 770)"), "{err}");
        set_mode(&dir, 0o755);
        let trusted = TrustedDir::open(&dir, &TEST).unwrap().unwrap();
        symlink(std::env::temp_dir(), dir.join("link")).unwrap();
        let err = trusted.subdir("link").err().unwrap().to_string();
        assert!(err.contains("link: it is a symbolic link") && err.ends_with("(dir)"), "{err}");
        fs::write(dir.join("file"), "").unwrap();
        let err = trusted.subdir("file").err().unwrap().to_string();
        assert!(err.contains("file: it is not a directory"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_are_never_followed_and_temporaries_replace_links() {
        let dir = temp_dir("files");
        let trusted = TrustedDir::create(&dir, &TEST).unwrap();
        let target = temp_dir("files-target");
        fs::write(&target, "keep").unwrap();
        symlink(&target, dir.join("state")).unwrap();
        let err = trusted.open_file("state").err().unwrap().to_string();
        assert!(err.contains("state: it is a symbolic link") && err.ends_with("(file)"), "{err}");
        assert!(trusted.check_file("state").is_err());
        assert!(trusted.open_or_create("state").is_err());
        // A new file in its place: the link goes, its target stays.
        trusted.create_new("state").unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
        assert!(fs::symlink_metadata(dir.join("state")).unwrap().file_type().is_file());
        assert!(trusted.check_file("state").unwrap());
        assert!(!trusted.check_file("none").unwrap());
        assert!(trusted.open_file("none").unwrap().is_none());
        set_mode(&dir.join("state"), 0o622);
        let err = trusted.open_file("state").err().unwrap().to_string();
        assert!(err.contains("world-writable (mode 622)"), "{err}");
        assert_eq!(trusted.names().unwrap(), ["state"]);
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_file(&target).unwrap();
    }
}
