//! Arbitrary histories of rule changes, planned and run on a model of the maps.
//! The checks are in src/ (docs/fuzzing.md).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| balctl_fuzz::plan::check(data));
