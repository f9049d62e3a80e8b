#!/usr/bin/env bash
# Runs the Python test suite against the INSTALLED wheel, as a user without Rust would have it:
#   1. takes dist/deliverypool-<version>-cp310-abi3-manylinux*_<arch>.whl, building it first with
#      scripts/build-wheels.sh when it is missing or older than the sources;
#   2. makes a fresh virtualenv in a temp dir outside the source tree and installs the wheel with
#      its `test`, `uvloop` and `milter` extras (the pip cache lives in target/pip-cache);
#   3. installs the test servers tests/ starts (scripts/install-test-servers.sh);
#   4. with cargo, rustc and rustup taken off PATH and PYTHONPATH unset, checks the installed
#      package (deliverypool.__file__ in the venv's site-packages, version, console script), then
#      runs pytest on tests/ with a guard plugin that fails the run if `deliverypool` was imported
#      from anywhere but that site-packages: a file missing from the wheel fails the run.
#
# Usage: scripts/test-wheel.sh [--rebuild] [--python PY]... [-- PYTEST_ARGS...]
#   --rebuild     rebuild the wheel even when dist/ has a fresh one
#   --python PY   interpreter to make the venv from (repeatable; default: python3)
#   WHEEL=path    test this wheel instead of dist/'s
# Exits non-zero when the build, the install, a check or a test fails, or when no test ran.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

REBUILD=0
PYTHONS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --rebuild) REBUILD=1; shift ;;
        --python) PYTHONS+=("$2"); shift 2 ;;
        --python=*) PYTHONS+=("${1#--python=}"); shift ;;
        --) shift; break ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) break ;;
    esac
done
[ ${#PYTHONS[@]} -gt 0 ] || PYTHONS=(python3)

log() { printf '\n==> %s\n' "$*"; }
die() { printf 'test-wheel.sh: FAILED: %s\n' "$*" >&2; exit 1; }

VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -1)
ARCH=$(uname -m)

# --- the wheel ---------------------------------------------------------------------------------
find_wheel() { ls -t dist/deliverypool-"$VERSION"-cp310-abi3-manylinux*_"$ARCH".whl 2>/dev/null | head -1; }
if [ -n "${WHEEL:-}" ]; then
    whl=$(cd "$(dirname "$WHEEL")" && pwd)/$(basename "$WHEEL")
    [ -f "$whl" ] || die "no such wheel: $WHEEL"
else
    whl=$(find_wheel || true)
    stale=""
    if [ -n "$whl" ]; then
        stale=$(find rust python Cargo.toml Cargo.lock pyproject.toml LICENSE README.md scripts/build-wheels.sh \
            -type f -newer "$whl" ! -name '*.so' ! -name '*.pyc' ! -path '*/__pycache__/*' 2>/dev/null | head -3)
    fi
    if [ "$REBUILD" = 1 ] || [ -z "$whl" ] || [ -n "$stale" ]; then
        log "building the $ARCH wheel${stale:+ (changed since the last build: $(echo $stale))}"
        scripts/build-wheels.sh --targets "$ARCH" --no-sdist
        whl=$(find_wheel) || die "scripts/build-wheels.sh left no $ARCH wheel in dist/"
    fi
    whl=$REPO/$whl
fi
echo "wheel: $whl ($(stat -c %s "$whl") bytes)"

# --- an environment without Rust -----------------------------------------------------------------
NORUST_PATH=""
IFS=: read -r -a path_dirs <<<"$PATH"
for d in "${path_dirs[@]}"; do
    [ -n "$d" ] || continue
    if [ -e "$d/cargo" ] || [ -e "$d/rustc" ] || [ -e "$d/rustup" ] || [[ "$d" == *"/.cargo/"* ]] \
        || [[ "$d" == "$REPO"* ]]; then
        continue
    fi
    NORUST_PATH=${NORUST_PATH:+$NORUST_PATH:}$d
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/deliverypool-wheel-test.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/plugins"
# Loaded into pytest with -p: fails the session unless deliverypool (and its extension module)
# came from the venv's site-packages, checked after collection and again at the end.
cat >"$TMP/plugins/deliverypool_wheel_guard.py" <<'EOF'
import sys
import sysconfig
from pathlib import Path

import pytest

SITE = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}


def _check() -> None:
    for name in ("deliverypool", "deliverypool._core"):
        module = sys.modules.get(name)
        if module is None:
            __import__(name)
            module = sys.modules[name]
        where = Path(module.__file__).resolve()
        if not any(site in where.parents for site in SITE):
            raise pytest.UsageError(f"{name} was imported from {where}, not from the installed wheel in {sorted(map(str, SITE))}")


def pytest_collection_finish(session):
    _check()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    try:
        _check()
    except pytest.UsageError as err:
        print(f"\nwheel guard: {err}", file=sys.stderr)
        session.exitstatus = 4
EOF

# The test servers tests/ starts (NSD); the script does nothing when they are installed.
if [ -f scripts/install-test-servers.sh ]; then
    bash scripts/install-test-servers.sh
fi

export PIP_CACHE_DIR=$REPO/target/pip-cache
export PIP_DISABLE_PIP_VERSION_CHECK=1

for py in "${PYTHONS[@]}"; do
    pybin=$(command -v "$py") || die "no interpreter $py"
    venv=$TMP/venv-$(basename "$py")
    log "fresh venv from $pybin ($("$pybin" -c 'import sys; print(sys.version.split()[0])')) in $venv"
    "$pybin" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --no-input "deliverypool[test,uvloop,milter] @ file://$whl"
    "$venv/bin/python" -m pip check

    # Everything from here on runs without Rust and without the source tree on the import path.
    run() {
        (cd "$TMP" && env -u PYTHONPATH -u VIRTUAL_ENV -u CARGO_HOME -u RUSTUP_HOME -u RUSTUP_TOOLCHAIN \
            -u CARGO_TARGET_DIR -u RUSTUP_AUTO_INSTALL \
            PATH="$venv/bin:$NORUST_PATH" PYTHONDONTWRITEBYTECODE=1 "$@")
    }
    run sh -c '! command -v cargo && ! command -v rustc && ! command -v rustup' >/dev/null \
        || die "cargo, rustc or rustup is still on PATH"

    log "checking the installed package"
    run python - "$VERSION" <<'EOF' || die "the installed package is not what the wheel should install"
import importlib.metadata
import sys
import sysconfig
from pathlib import Path

import deliverypool
import deliverypool._core

version = sys.argv[1]
site = Path(sysconfig.get_paths()["platlib"]).resolve()
for module in (deliverypool, deliverypool._core):
    where = Path(module.__file__).resolve()
    assert site in where.parents, f"{module.__name__} comes from {where}, not from {site}"
    print(f"{module.__name__}: {where}")
assert deliverypool.__version__ == version, (deliverypool.__version__, version)
assert importlib.metadata.version("deliverypool") == version
package = Path(deliverypool.__file__).parent
for name in ("py.typed", "_core.pyi"):
    assert (package / name).is_file(), f"the wheel installed no {name}"
print(f"version {version}, py.typed and _core.pyi installed")
EOF
    run deliverypool --help >/dev/null || die "the deliverypool console script does not run"
    echo "console script: $(run sh -c 'command -v deliverypool')"

    log "pytest on tests/ against the installed wheel"
    status=0
    run env PYTHONPATH="$TMP/plugins" pytest -c "$REPO/pyproject.toml" --rootdir "$REPO" \
        -p no:cacheprovider -p deliverypool_wheel_guard "$REPO/tests" "$@" || status=$?
    case $status in
        0) ;;
        5) die "pytest collected no test" ;;
        *) die "pytest exited with $status under $py" ;;
    esac
done
log "the installed wheel passed ($(basename "$whl"), ${PYTHONS[*]})"
