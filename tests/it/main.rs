//! End-to-end tests of the real `caravel` binary: a hybrid node process on loopback, driven through
//! the CLI and the REST API as a user would.

mod api;
mod e2e;
mod ha;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

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

/// Builds the test WASM modules (examples/test-modules) once and returns the path of one.
pub fn test_module(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let target = repo().join("examples/test-modules/target");
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--quiet", "--target", "wasm32-wasip1", "--manifest-path"])
            .arg(repo().join("examples/test-modules/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .expect("run cargo to build the test modules");
        assert!(status.success(), "building examples/test-modules for wasm32-wasip1 failed: is the target installed (rustup target add wasm32-wasip1)?");
        target.join("wasm32-wasip1/release")
    });
    let p = dir.join(format!("{name}.wasm"));
    assert!(p.is_file(), "{} was not built", p.display());
    p
}

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
