#!/usr/bin/env bash
# The whole test suite, as a newcomer and CI run it: installs what it needs, then runs the
# Rust tests, the stub check and the Python tests (benchmarks once, in quick mode).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-servers.sh
bash scripts/setup.sh

echo "== cargo test"
cargo test --quiet
echo "== stub check"
.venv/bin/python -m mypy.stubtest deliverypool._core
echo "== pytest"
.venv/bin/python -m pytest "$@"
