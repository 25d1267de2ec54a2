//! `balctl sync --watch` of files: sync once, then sync again whenever an
//! input changes (the loop is `watch::watch`'s); with `--health-addr` and
//! `--metrics-addr`, serve health and metrics meanwhile (src/serve/), from
//! what the loop reports to its `Agent` (src/agent.rs).
//!
//! Every sync is `cmd::sync::run`, exactly what a one-shot sync does, so a
//! change goes through the same validation, plan and all-or-nothing apply.
//! A failed sync (an input that does not parse or validate, balctl not
//! loaded) is reported and leaves the applied state as it was; the watcher
//! keeps running and tries again on the next change. That includes the
//! first sync: a watcher started on a broken file applies it once fixed.
//!
//! An input caught while it is written is not applied. An empty input is
//! being written (`kubectl get ... > file` empties the file first): the
//! watcher says so once and waits for the next change. A change that would
//! remove more than a quarter of a source's frontends (a writer stalled
//! part way through a list) is held, writing nothing, until the inputs have
//! not changed for `--settle`; then they are read again and applied, even
//! if no event comes. A change during the hold is synced as any other, so
//! a writer that completes the file ends the hold, and one that leaves it
//! as large a removal restarts the settle time. Smaller changes apply at
//! once. A one-shot sync is asked for exactly its input's state and holds
//! nothing.
//!
//! Inotify (through the `notify` crate) watches the directory holding each
//! input rather than the file itself: editors often save by writing a
//! temporary file and renaming it over the old one, which ends a watch on
//! the old file but is an event in its directory. A directory given with
//! -f is watched as well, for input files added to, changed in or removed
//! from it.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};

use super::{Source, Wake, Waker};
use crate::{
    agent::Agent,
    cli::SyncArgs,
    cmd::{
        self, Context,
        sync::{Held, NotesTold, Removals},
    },
    error::{self, EmptyInput},
    input, inputs,
    serve::{self, HealthCheckPorts},
    transaction::Kept,
};

/// Kubernetes ConfigMap and Secret volumes update by pointing this symlink
/// at a new directory; the files in the volume are symlinks through it and
/// do not change.
const KUBERNETES_DATA_LINK: &str = "..data";

/// Why the last sync applied nothing although its inputs read.
#[derive(Debug, PartialEq, Eq)]
enum Hold {
    /// This input is empty, so being written: retried on the next change.
    Empty(String),
    /// The change would remove much of a source (`sync::Held`): applied
    /// once the inputs have not changed for `--settle`.
    LargeRemoval,
}

pub fn run(ctx: &Context, args: &SyncArgs) -> Result<()> {
    if args.filenames.iter().any(|f| f == Path::new("-")) {
        return Err(input!(
            "-f -: standard input cannot be watched; give --watch files or directories, \
             or sync standard input without --watch"
        ));
    }
    let targets = args.filenames.iter().map(|f| Target::new(f)).collect::<Result<Vec<_>>>()?;
    let (tx, wakes) = super::wakes()?;
    let agent = Arc::new(Agent::new(args.health_timeout));
    let health_changed = tx.clone();
    agent.health.wake_with(move || {
        let _ = health_changed.send(Wake::Health);
    });
    let watcher = watch_parents(&targets, tx)?;
    let health_check_ports = serve::start(ctx, args, &agent)?;
    log::info!("watching {} for changes", describe(&targets));
    let mut files = Files {
        ctx,
        args,
        agent: &agent,
        health_check_ports,
        targets,
        watcher,
        hold: None,
        kept: Kept::default(),
        told: NotesTold::default(),
    };
    super::watch(&mut files, &wakes, &agent)
}

/// The input files watched, and what their syncs need.
struct Files<'a> {
    ctx: &'a Context,
    args: &'a SyncArgs,
    agent: &'a Agent,
    health_check_ports: HealthCheckPorts,
    targets: Vec<Target>,
    watcher: RecommendedWatcher,
    /// Why the last sync held its change, if it did.
    hold: Option<Hold>,
    /// The state each sync applied, which the next starts from.
    kept: Kept,
    /// The notes the last sync gave, said then.
    told: NotesTold,
}

impl Source for Files<'_> {
    /// An input may have changed (events that concern none are dropped
    /// where they come from, `watch_parents`).
    type Event = ();

    fn take(&mut self, (): ()) -> bool {
        true
    }

    /// A large removal held waits for the inputs to settle (`--settle`),
    /// and then for nothing else: the writer may have finished. A change
    /// during the hold is synced as any other, so a writer that completes
    /// the file ends the hold, and one that leaves it as large a removal
    /// restarts the settle time.
    fn sync(&mut self, settled: bool) -> Option<Duration> {
        watch_directories(&mut self.watcher, &self.targets);
        let removals = if settled { Removals::Apply } else { Removals::HoldLarge };
        self.hold = sync(self, removals);
        (self.hold == Some(Hold::LargeRemoval)).then_some(self.args.settle)
    }
}

/// One sync; returns why it held its change, if it did. Other errors are
/// reported, not returned, so watching goes on. A hold is told once, not
/// again on every change that finds it still there (`files.hold`: why the
/// sync before held its change). A sync that applied opens and closes the
/// health-check node ports of what it applied.
fn sync(files: &mut Files, removals: Removals) -> Option<Hold> {
    let Files { ctx, args, agent, health_check_ports, kept, told, hold: held, .. } = files;
    let err = match agent.sync(|| cmd::sync::run_with(ctx, args, removals, Some(agent), kept, Some(told))) {
        Ok(()) => {
            if let Some(applied) = kept.state() {
                health_check_ports.update(cmd::sync::health_checks(applied));
            }
            if removals == Removals::Apply {
                log::warn!(
                    "sync --watch: applied the held change: the inputs had not changed for {}",
                    humantime::format_duration(args.settle)
                );
            }
            return None;
        }
        Err(err) => err,
    };
    let (hold, why) = if let Some(empty) = err.downcast_ref::<EmptyInput>() {
        (Hold::Empty(empty.label.clone()), format!("{} is empty: being written; holding", empty.label))
    } else if let Some(large) = err.downcast_ref::<Held>() {
        let why = format!(
            "holding the change: {large}; it is applied once the inputs have not changed for {}",
            humantime::format_duration(args.settle)
        );
        (Hold::LargeRemoval, why)
    } else {
        error::log_failure(
            &err,
            "sync --watch: nothing applied from this change; retrying when an input changes",
        );
        return None;
    };
    if held.as_ref() != Some(&hold) {
        log::warn!("sync --watch: {why}");
    }
    Some(hold)
}

/// Watches the directory of every input; events that concern no input are
/// dropped here.
fn watch_parents(targets: &[Target], tx: Waker<()>) -> Result<RecommendedWatcher> {
    let interesting = targets.to_vec();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
        let changed = match event {
            Ok(event) => concerns(&interesting, &event),
            Err(err) => {
                log::warn!("watching the inputs: {err}; syncing in case a change was missed");
                true
            }
        };
        if changed {
            let _ = tx.send(Wake::Event(()));
        }
    })
    .context("cannot start watching files (inotify)")?;
    let mut parents: Vec<&Path> = targets.iter().filter_map(|t| t.path.parent()).collect();
    parents.sort();
    parents.dedup();
    for parent in parents {
        watcher.watch(parent, RecursiveMode::NonRecursive).with_context(|| {
            format!("cannot watch {} (the directory of an input) for changes", parent.display())
        })?;
    }
    Ok(watcher)
}

/// Watches every input that is a directory now. Called before each sync:
/// a directory that was removed and created again needs a new watch (its
/// parent's watch reports that it came back).
fn watch_directories(watcher: &mut RecommendedWatcher, targets: &[Target]) {
    for target in targets.iter().filter(|t| t.path.is_dir()) {
        if let Err(err) = watcher.watch(&target.path, RecursiveMode::NonRecursive) {
            log::warn!("cannot watch {}: {err}; changes in it are not seen", target.path.display());
        }
    }
}

/// Whether `event` may change what the inputs say. Opening and reading a
/// file (the sync itself does) changes nothing; an overflowed event queue
/// may hide anything.
fn concerns(targets: &[Target], event: &Event) -> bool {
    if event.need_rescan() {
        return true;
    }
    !matches!(event.kind, EventKind::Access(_))
        && event.paths.iter().any(|path| targets.iter().any(|t| t.affected_by(path)))
}

fn describe(targets: &[Target]) -> String {
    targets.iter().map(|t| t.path.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// One `-f` argument as the path that events name: its directory resolved
/// (events are reported under the watched directory's path) and its own
/// name kept (events in that directory name it, not what it points to).
#[derive(Clone, Debug)]
struct Target {
    path: PathBuf,
}

impl Target {
    fn new(argument: &Path) -> Result<Self> {
        Ok(Self { path: inputs::source_path(argument)? })
    }

    /// Whether a change at `changed` can change this input: the input
    /// itself (a file, or a directory replaced as a whole), or, when it is a
    /// directory, an input file in it or a Kubernetes volume update.
    fn affected_by(&self, changed: &Path) -> bool {
        let read_from_directory =
            inputs::is_input_file(changed) || changed.file_name() == Some(OsStr::new(KUBERNETES_DATA_LINK));
        changed == self.path || (changed.parent() == Some(&self.path) && read_from_directory)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(path: &str) -> Target {
        Target { path: PathBuf::from(path) }
    }

    #[test]
    fn a_file_is_affected_by_its_own_name_only() {
        let file = target("/etc/balctl/web.toml");
        assert!(file.affected_by(Path::new("/etc/balctl/web.toml")));
        assert!(!file.affected_by(Path::new("/etc/balctl/dns.toml")));
        assert!(!file.affected_by(Path::new("/etc/balctl/.web.toml.swp")));
        assert!(!file.affected_by(Path::new("/etc/balctl")));
    }

    #[test]
    fn a_directory_is_affected_by_its_input_files_and_by_itself() {
        let dir = target("/etc/balctl");
        for name in ["new.toml", "svc.yaml", "svc.yml", "list.json"] {
            assert!(dir.affected_by(&Path::new("/etc/balctl").join(name)), "{name}");
        }
        assert!(dir.affected_by(Path::new("/etc/balctl")));
        assert!(!dir.affected_by(Path::new("/etc/balctl/notes.txt")));
        assert!(!dir.affected_by(Path::new("/etc/balctl/sub/deep.toml")));
        assert!(!dir.affected_by(Path::new("/etc/other.toml")));
    }

    #[test]
    fn a_kubernetes_volume_update_affects_its_directory() {
        assert!(target("/etc/balctl").affected_by(Path::new("/etc/balctl/..data")));
        assert!(!target("/etc/balctl").affected_by(Path::new("/etc/balctl/..data_tmp")));
    }

    #[test]
    fn relative_arguments_become_absolute() {
        let target = Target::new(Path::new("Cargo.toml")).unwrap();
        assert_eq!(target.path, std::env::current_dir().unwrap().canonicalize().unwrap().join("Cargo.toml"));
        let missing = Target::new(Path::new("no-such-dir/web.toml")).unwrap_err();
        assert_eq!(crate::error::exit_code(&missing), crate::error::EXIT_INPUT);
    }
}
