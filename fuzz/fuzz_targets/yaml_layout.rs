//! Any bytes read by the reader of kubectl's YAML layout and by the general
//! YAML reader. The checks are in src/ (docs/fuzzing.md).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| balctl_fuzz::inputs::yaml_layout(data));
