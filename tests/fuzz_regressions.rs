//! Replays what the fuzz targets (fuzz/, docs/fuzzing.md) found, kept
//! minimized in fuzz/regressions/TARGET/, and their seeds in
//! fuzz/seeds/TARGET/, through the very checks the targets run: their
//! modules are included here by path. A fixed bug that comes back fails
//! `cargo test`, without nightly or cargo-fuzz.

use std::{
    fs,
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
};

#[path = "../fuzz/src/inputs.rs"]
mod inputs;
#[path = "../fuzz/src/plan.rs"]
mod plan;

/// Runs `check` on every kept input of `target`; names each that fails.
fn replay(target: &str, check: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    // A target without findings has no regressions directory (git keeps
    // no empty ones); every target has seeds.
    let mut files: Vec<PathBuf> = ["regressions", "seeds"]
        .iter()
        .filter_map(|kind| fs::read_dir(fuzz.join(kind).join(target)).ok())
        .flatten()
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no inputs for {target}");
    let failed: Vec<String> = files
        .iter()
        .filter(|file| {
            let data = fs::read(file).expect("read an input");
            catch_unwind(AssertUnwindSafe(|| check(&data))).is_err()
        })
        .map(|file| file.display().to_string())
        .collect();
    assert!(failed.is_empty(), "{target}: these inputs fail again (see the panics above): {failed:#?}");
}

#[test]
fn toml_inputs() {
    replay("toml", inputs::toml);
}

#[test]
fn yaml_inputs() {
    replay("yaml", inputs::yaml);
}

#[test]
fn yaml_layout_inputs() {
    replay("yaml_layout", inputs::yaml_layout);
}

#[test]
fn plans() {
    replay("plan", plan::check);
}
