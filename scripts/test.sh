#!/usr/bin/env bash
# The project's test command (README, second command; CI runs it through .ci/run).
# Installs what the tests need, then: rustfmt, clippy (-D warnings), rustdoc (-D warnings), all tests
# (with a Docker test image and a moto S3 server, killed on exit; see compute/tests/it).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

step "prerequisites (scripts/prereqs.sh: libclang-dev, g++, the pinned toolchain and wasm32-wasip1)"
./scripts/prereqs.sh

step "deploy checkers: promtool (Debian's prometheus), PyYAML, systemd-analyze"
need_apt=()
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
python3 -c 'import yaml' >/dev/null 2>&1 || need_apt+=(python3-yaml)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
if [ "${#need_apt[@]}" -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
promtool --version 2>&1 | head -1 >&2

step "supply chain: cargo deny (licenses, bans, sources; advisories when a RustSec copy is at hand)"
if ! cargo deny --version >/dev/null 2>&1; then
  cargo install --locked --quiet cargo-deny@0.20.2
fi
cargo deny --log-level error check bans licenses sources
if [ -n "${CARAVEL_ADVISORY_DB:-}" ] && [ -d "$CARAVEL_ADVISORY_DB/crates" ]; then
  # cargo-deny looks for the default database under this name (a hash of its URL).
  mkdir -p "$HOME/.cargo/advisory-dbs"
  ln -sfn "$(cd "$CARAVEL_ADVISORY_DB" && pwd)" "$HOME/.cargo/advisory-dbs/advisory-db-3157b0e258782691"
  echo "advisories: RustSec database at $CARAVEL_ADVISORY_DB ($(git -C "$CARAVEL_ADVISORY_DB" log -1 --format=%cs 2>/dev/null || echo 'date unknown'))" >&2
  cargo deny --offline --log-level error check advisories
else
  echo "NOTE: advisories NOT checked: the RustSec database (github.com/rustsec/advisory-db) is not" >&2
  echo "      reachable from here; put a clone at CARAVEL_ADVISORY_DB=DIR to check them." >&2
fi

step "formatting"
cargo fmt --all --check
cargo fmt --manifest-path examples/wordcount-wasm/Cargo.toml --check
cargo fmt --manifest-path examples/test-modules/Cargo.toml --check

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "rustdoc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

step "Docker engine and the test image caravel-busybox:latest (scripts/test-image.sh)"
# The compute crate's docker tests run real containers; they fail (not skip) without an engine.
if ! docker info >/dev/null 2>&1; then
  echo "the tests need a running Docker engine: 'docker info' failed (start dockerd, or add this user to the docker group)" >&2
  exit 1
fi
./scripts/test-image.sh

step "S3 test server (moto_server on 127.0.0.1)"
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
fi
moto_bin="$(command -v moto_server || true)"
if [ -z "$moto_bin" ]; then
  # A private virtualenv: Debian's system Python refuses `pip install` (PEP 668).
  moto_venv="${CARAVEL_MOTO_VENV:-$HOME/.cache/caravel-moto}"
  if [ ! -x "$moto_venv/bin/moto_server" ]; then
    python3 -m venv "$moto_venv"
    "$moto_venv/bin/pip" install -q 'moto[server]==5.2.5'
  fi
  moto_bin="$moto_venv/bin/moto_server"
fi
moto_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
moto_log="$(mktemp -t caravel-moto.XXXXXX.log)"
"$moto_bin" -H 127.0.0.1 -p "$moto_port" >"$moto_log" 2>&1 &
moto_pid=$!
trap 'kill "$moto_pid" 2>/dev/null || true; rm -f "$moto_log"' EXIT
if ! python3 - "$moto_port" <<'PY'
import socket, sys, time
deadline = time.time() + 60
while time.time() < deadline:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.2)
sys.exit(1)
PY
then
  echo "moto_server did not start on 127.0.0.1:$moto_port; its log:" >&2
  cat "$moto_log" >&2
  exit 1
fi
export CARAVEL_TEST_S3_ENDPOINT="http://127.0.0.1:$moto_port"
export CARAVEL_TEST_MOTO_SERVER="$moto_bin"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
echo "moto_server $moto_bin on $CARAVEL_TEST_S3_ENDPOINT" >&2

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

step "compose cluster smoke test (deploy/compose/smoke.sh on this machine's Docker engine)"
# The debug binary the tests just built: a release build would double the CI time.
./deploy/compose/smoke.sh --binary "${CARGO_TARGET_DIR:-target}/debug/caravel"
