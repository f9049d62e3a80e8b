#!/usr/bin/env bash
# The whole test suite, as a newcomer and CI run it: installs what it needs, then runs the
# Rust tests (natively, and on aarch64 under qemu-user), clippy, the stub check, mypy --strict on
# the package, the documentation site, the Python tests on every core (benchmarks once, in quick mode), and the Python
# tests again -- all but the slow end-to-end runs -- against the built wheel installed in a fresh
# virtualenv. Each step prints how long it took. Extra arguments go to the first pytest run.
set -euo pipefail
cd "$(dirname "$0")/.."

START=$SECONDS
STEP_START=$SECONDS
STEP=""
step() {
    if [ -n "$STEP" ]; then
        printf '   (%s: %ds)\n' "$STEP" $((SECONDS - STEP_START))
    fi
    STEP=$1
    STEP_START=$SECONDS
    echo "== $1"
}

step "test servers (apt, when missing)"
bash scripts/install-test-servers.sh
step "virtualenv and the extension (scripts/setup.sh)"
bash scripts/setup.sh

step "cargo test"
cargo test --quiet
step "clippy (the lints are in Cargo.toml's [lints]), the core and the Python binding together"
if ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add clippy
fi
cargo clippy --quiet --all-targets --features python -- -D warnings
step "the Rust core on aarch64 (scripts/test-aarch64.sh)"
bash scripts/test-aarch64.sh
step "stub check"
.venv/bin/python -m mypy.stubtest deliverypool._core
step "mypy --strict: the package (pydantic plugin, pyproject.toml) and the configuration tests"
.venv/bin/python -m mypy
.venv/bin/python -m mypy --strict tests/test_config.py
step "the documentation site: mkdocs build --strict (generated references, every link and anchor)"
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
step "pytest, one process per core"
.venv/bin/python -m pytest -n auto --durations=15 "$@"
step "benchmarks, quick mode (each body once: they must not rot; figures: benches/README.md)"
.venv/bin/python -m pytest benches --benchmark-disable -q -p no:xdist
step "the installed wheel, in a fresh virtualenv without Rust (all but the slow tests)"
bash scripts/test-wheel.sh -- -n auto -m "not slow"
step "done"
printf '== the whole test command took %dm%02ds\n' $(((SECONDS - START) / 60)) $(((SECONDS - START) % 60))
