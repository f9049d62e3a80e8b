#!/usr/bin/env bash
# Sets up a development environment on a fresh machine: a virtualenv in .venv with the
# extension built in place and everything the tests and benchmarks use. Safe to run again.
#
# What it needs: Python >= 3.10 with venv and pip, a Rust toolchain (cargo), and the network
# (PyPI, crates.io). One extra needs a Debian package: pymilter (the `milter` extra, for
# `deliverypool milter`) compiles against libmilter-dev. When that is missing, set-up installs
# it with apt-get as root, or with sudo when sudo asks no password; otherwise (or with
# DELIVERYPOOL_NO_APT=1) it leaves the milter extra out and says how to add it. Everything else,
# the demo included, needs no root.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
EXTRAS=test,bench,docs,uvloop

# Debian's libmilter-dev, for pymilter: installed when root or password-less sudo can.
milter_header=/usr/include/libmilter/mfapi.h
if [ ! -e "$milter_header" ] && [ "${DELIVERYPOOL_NO_APT:-0}" != 1 ] && command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            SUDO="sudo -n"
        else
            SUDO="none"
        fi
    fi
    if [ "$SUDO" != none ]; then
        echo "setup: installing libmilter-dev (apt-get), which pymilter builds against"
        export DEBIAN_FRONTEND=noninteractive
        $SUDO apt-get update -qq
        $SUDO apt-get install -y -qq --no-install-recommends libmilter-dev >/dev/null
    fi
fi
if [ -e "$milter_header" ]; then
    EXTRAS=$EXTRAS,milter
else
    cat >&2 <<'EOF'
setup: libmilter-dev is not installed and this user cannot install it (not root, no
  password-less sudo, or DELIVERYPOOL_NO_APT=1): leaving out the milter extra (pymilter, for
  `deliverypool milter` and its tests). Everything else works. To add it:
      sudo apt-get install libmilter-dev && bash scripts/setup.sh
EOF
fi

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "maturin>=1.9,<2"
# The extras are the single list of what tests and benchmarks need (pyproject.toml).
.venv/bin/maturin develop --quiet --extras "$EXTRAS" ${MATURIN_ARGS:-}
.venv/bin/python -c "import deliverypool; print('deliverypool', deliverypool.__version__, 'ready in .venv')"
