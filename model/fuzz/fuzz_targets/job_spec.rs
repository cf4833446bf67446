//! Fuzz target `job_spec`: see `caravel_model_fuzz::job_spec` for what it checks.
//!
//! Works on the pinned stable toolchain (rustc 1.95) with cargo-fuzz 0.13, from `model/fuzz`:
//! ```text
//! CARGO_TARGET_DIR=$HOME/.cache/caravel-target RUSTC_BOOTSTRAP=1 \
//!     cargo fuzz run job_spec corpus/job_spec -- -max_total_time=60
//! ```
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| caravel_model_fuzz::job_spec(data));
