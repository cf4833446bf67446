//! End-to-end tests of the real `caravel` binary: a hybrid node process on loopback, driven through
//! the CLI and the REST API as a user would.

mod abuse;
mod admission;
mod api;
mod compat;
mod deploy;
mod e2e;
mod ha;
mod metrics;
mod reports;
mod scheduling;
mod security;

use std::path::{Path, PathBuf};

use caravel_chaos_tests::NodeProcess;

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_caravel"))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A hybrid node on a fresh data dir (kept alive as long as the returned tempdir).
pub fn node() -> (NodeProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = NodeProcess::start_hybrid(&bin(), &dir.path().join("node"), &[])
        .expect("start hybrid node");
    (n, dir)
}

pub use caravel_chaos_tests::wasm::test_module;

/// Runs the CLI, returning (exit ok, stdout, stderr).
pub fn run(n: &NodeProcess, args: &[&str], cwd: Option<&Path>) -> (bool, String, String) {
    let o = n.cli_in(args, cwd).expect("run caravel");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `job describe --output json` of a job.
pub fn describe(n: &NodeProcess, id: &str) -> serde_json::Value {
    let (ok, out, err) = run(n, &["job", "describe", id, "--output", "json"], None);
    assert!(ok, "describe failed: {err}");
    serde_json::from_str(&out).expect("describe json")
}
