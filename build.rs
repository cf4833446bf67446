//! Builds the example WebAssembly module (examples/wordcount-wasm) for wasm32-wasip1, so that the
//! README's first command finds it at examples/wordcount-wasm/target/wasm32-wasip1/release/. A
//! separate cargo invocation with its own target dir (no lock shared with this build). A missing
//! wasm target is a warning, not a failure: only the example needs it. While the module is missing,
//! the build script runs again on every build (cargo reruns a script whose `rerun-if-changed` path
//! does not exist), so it appears as soon as `rustup target add wasm32-wasip1` has been run.

use std::path::Path;
use std::process::Command;

fn main() {
    let root = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let example = Path::new(&root).join("examples/wordcount-wasm");
    println!("cargo:rerun-if-changed=examples/wordcount-wasm/src");
    println!("cargo:rerun-if-changed=examples/wordcount-wasm/Cargo.toml");
    println!("cargo:rerun-if-env-changed=CARAVEL_SKIP_EXAMPLE_BUILD");
    if std::env::var_os("CARAVEL_SKIP_EXAMPLE_BUILD").is_some() {
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "--target",
            "wasm32-wasip1",
            "--manifest-path",
        ])
        .arg(example.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(example.join("target"))
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .current_dir(&example)
        .status();
    let module = example.join("target/wasm32-wasip1/release/wordcount.wasm");
    match status {
        Ok(s) if s.success() && module.is_file() => return,
        Ok(s) => println!(
            "cargo:warning=building examples/wordcount-wasm for wasm32-wasip1 failed ({s}); run `rustup target add wasm32-wasip1` (or ./scripts/prereqs.sh) and build again"
        ),
        Err(e) => println!("cargo:warning=cannot run cargo to build examples/wordcount-wasm: {e}"),
    }
    // Only on failure: watching the module once it exists would rerun this script (and rebuild the
    // package) on every build, since the module is written after the script started.
    println!("cargo:rerun-if-changed={}", module.display());
}
