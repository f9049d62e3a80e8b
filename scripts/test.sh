#!/usr/bin/env bash
# The whole test suite, as a newcomer and CI run it: installs what it needs, then runs the
# Rust tests (natively, and on aarch64 under qemu-user), clippy, the stub check, mypy --strict on
# the package, the Python tests (benchmarks once, in quick mode), and the Python tests again
# against the built wheel installed in a fresh virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-servers.sh
bash scripts/setup.sh

echo "== cargo test"
cargo test --quiet
echo "== clippy (the lints are in Cargo.toml's [lints]), without and with the Python binding"
if ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add clippy
fi
cargo clippy --quiet --all-targets -- -D warnings
cargo clippy --quiet --all-targets --features python -- -D warnings
bash scripts/test-aarch64.sh
echo "== stub check"
.venv/bin/python -m mypy.stubtest deliverypool._core
echo "== mypy --strict: the package (pydantic plugin, pyproject.toml) and the configuration tests"
.venv/bin/python -m mypy
.venv/bin/python -m mypy --strict tests/test_config.py
echo "== pytest"
.venv/bin/python -m pytest "$@"
echo "== benchmarks, quick mode (each body once: they must not rot; figures: benches/README.md)"
.venv/bin/python -m pytest benches --benchmark-disable -q
echo "== the installed wheel, in a fresh virtualenv without Rust"
bash scripts/test-wheel.sh
