#!/usr/bin/env bash
# Sets up a development environment on a fresh machine: a virtualenv in .venv with the
# extension built in place and everything the tests and benchmarks use. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "maturin>=1.9,<2"
# The extras are the single list of what tests and benchmarks need (pyproject.toml).
.venv/bin/maturin develop --quiet --extras test,bench,docs,uvloop,milter ${MATURIN_ARGS:-}
.venv/bin/python -c "import deliverypool; print('deliverypool', deliverypool.__version__, 'ready in .venv')"
