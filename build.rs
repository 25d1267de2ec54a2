//! Builds the eBPF programs under ebpf/ with the nightly toolchain and
//! bpf-linker (through aya-build); src/bpf/object.rs embeds the result.

use std::path::Path;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    // Rebuild when anything under ebpf/ changes: the programs and the shared types.
    let ebpf_dir = Path::new(&manifest_dir).join("ebpf");
    let ebpf_dir = ebpf_dir.to_str().expect("the checkout path is UTF-8");
    // aya-build relays the inner cargo's stderr as build warnings; keep it to
    // real diagnostics (which it reads from JSON messages anyway).
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [aya_build::Package { name: "balctl-ebpf", root_dir: ebpf_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
