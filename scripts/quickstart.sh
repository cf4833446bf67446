#!/usr/bin/env bash
# The README's first command: installs what the build needs (scripts/prereqs.sh), builds Caravel
# (release; the first build compiles RocksDB and wasmtime from source), starts a hybrid node on a
# temporary data dir, runs examples/wordcount.yaml and prints the word counts.
#
#   ./scripts/quickstart.sh                       # the word count
#   ./scripts/quickstart.sh path/to/job.yaml      # any job spec instead
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/prereqs.sh
spec="${1:-examples/wordcount.yaml}"
echo "==> building caravel (release) and running $spec on a local node" >&2
exec cargo run --release --locked -- devstack --run "$spec"
