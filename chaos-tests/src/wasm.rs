//! WebAssembly payloads for end-to-end tests: a tiny no-op module, and the test modules of
//! `examples/test-modules` built once per test process.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// A WASI module that exports `_start` and returns at once (33 bytes): jobs that complete fast and
/// keep the replicated log small.
pub const NOOP_WASM: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
    0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // one type: () -> ()
    0x03, 0x02, 0x01, 0x00, // one function of type 0
    0x07, 0x0a, 0x01, 0x06, b'_', b's', b't', b'a', b'r', b't', 0x00, 0x00, // export _start
    0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // its body: end
];

/// Builds `examples/test-modules` for wasm32-wasip1 once (into its own `target/`, inside this
/// checkout) and returns the path of module `name`. Panics with a hint when the build fails.
pub fn test_module(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let modules = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/test-modules");
        let target = modules.join("target");
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--quiet", "--offline", "--target", "wasm32-wasip1"])
            .arg("--manifest-path")
            .arg(modules.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .expect("run cargo to build the test modules");
        assert!(
            status.success(),
            "building examples/test-modules for wasm32-wasip1 failed: is the target installed (rustup target add wasm32-wasip1)?"
        );
        target.join("wasm32-wasip1/release")
    });
    let p = dir.join(format!("{name}.wasm"));
    assert!(p.is_file(), "{} was not built", p.display());
    p
}
