//! What the fuzz targets check. tests/fuzz_regressions.rs includes these
//! modules by path and replays every input the targets found through the
//! same checks, in the normal test suite.

pub mod inputs;
pub mod plan;
