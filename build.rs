//! Builds the eBPF programs under ebpf/ with the nightly toolchain and
//! bpf-linker (through aya-build); src/bpf/object.rs embeds the result.
//!
//! The object depends on the target's architecture only (aya-build builds
//! it for bpfel or bpfeb, always in release, with the architecture as a
//! cfg), not on balctl's profile or C library. So it is built once per
//! architecture, in `ebpf/<arch>` of the target directory, shared by every
//! profile and target of that architecture, and copied into this build's
//! OUT_DIR: the image's amd64 build, the debug build and the tests' build
//! compile it once, not three times (a minute of CI each). The inner cargo
//! decides whether it is fresh, and its lock serializes builds that share
//! the directory.
//!
//! It also hashes balctl's own source (src/), which the fingerprints of
//! synced objects include (`BALCTL_SOURCE_HASH`, see src/inputs/kube's
//! `fingerprint_seed`): a balctl whose code differs in any way translates
//! everything anew rather than keep what another translated.

use std::{
    env, fs,
    hash::{DefaultHasher, Hash as _, Hasher as _},
    path::{Path, PathBuf},
};

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = env::var("CARGO_MANIFEST_DIR")?;
    let src = Path::new(&manifest_dir).join("src");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rustc-env=BALCTL_SOURCE_HASH={:016x}", source_hash(&src)?);
    // Rebuild when anything under ebpf/ changes: the programs and the shared types.
    let ebpf_dir = Path::new(&manifest_dir).join("ebpf");
    let ebpf_dir = ebpf_dir.to_str().expect("the checkout path is UTF-8");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let arch = env::var("CARGO_CFG_TARGET_ARCH")?;
    let shared =
        target_dir(&out_dir).map_or_else(|| out_dir.clone(), |target| target.join("ebpf").join(&arch));
    fs::create_dir_all(&shared).with_context(|| format!("cannot create {}", shared.display()))?;
    // aya-build relays the inner cargo's stderr as build warnings; keep it to
    // real diagnostics (which it reads from JSON messages anyway). It builds
    // in and copies the programs to OUT_DIR, here the shared directory.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe {
        env::set_var("CARGO_TERM_QUIET", "true");
        env::set_var("OUT_DIR", &shared);
    }
    aya_build::build_ebpf(
        [aya_build::Package { name: "balctl-ebpf", root_dir: ebpf_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )?;
    if shared != out_dir {
        // The programs (the ebpf crate's binaries) are the directory's files.
        for entry in fs::read_dir(&shared)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                let to = out_dir.join(entry.file_name());
                fs::copy(entry.path(), &to).with_context(|| format!("cannot copy to {}", to.display()))?;
            }
        }
    }
    Ok(())
}

/// The target directory OUT_DIR is in (`<target>[/<triple>]/<profile>/
/// build/<crate>-<hash>/out`): the highest of those ancestors that cargo
/// marked with CACHEDIR.TAG (it marks `<triple>` too). None if none is.
fn target_dir(out_dir: &Path) -> Option<PathBuf> {
    let tagged = out_dir.ancestors().skip(1).take(5).filter(|dir| dir.join("CACHEDIR.TAG").is_file());
    tagged.last().map(Path::to_path_buf)
}

/// A hash of every file under `dir`, names and contents, in name order.
fn source_hash(dir: &Path) -> anyhow::Result<u64> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() { pending.push(path) } else { files.push(path) }
        }
    }
    files.sort();
    let mut hasher = DefaultHasher::new();
    for file in files {
        file.strip_prefix(dir)?.hash(&mut hasher);
        fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?.hash(&mut hasher);
    }
    Ok(hasher.finish())
}
