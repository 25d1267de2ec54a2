//! Any bytes as a Kubernetes YAML file given to `balctl sync -f`.
//! The checks are in src/ (docs/fuzzing.md).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| balctl_fuzz::inputs::yaml(data));
