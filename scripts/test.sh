#!/usr/bin/env bash
# The project's test command (README, second command; CI runs it through .ci/run).
# Installs what the tests need, then: rustfmt, clippy (-D warnings), rustdoc (-D warnings), all tests.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

step "system packages (libclang-dev for RocksDB's bindgen, g++)"
if ! dpkg -s libclang-dev >/dev/null 2>&1 || ! command -v g++ >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev g++ >/dev/null
fi

step "Rust toolchain and the wasm32-wasip1 target (rust-toolchain.toml)"
rustup show active-toolchain >/dev/null
rustup target add wasm32-wasip1 >/dev/null

step "formatting"
cargo fmt --all --check
cargo fmt --manifest-path examples/wordcount-wasm/Cargo.toml --check
cargo fmt --manifest-path examples/test-modules/Cargo.toml --check

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "rustdoc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
