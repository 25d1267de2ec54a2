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

use std::{
    env, fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = env::var("CARGO_MANIFEST_DIR")?;
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
