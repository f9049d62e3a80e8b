#!/usr/bin/env bash
# Builds deliverypool's release artifacts into dist/, reproducibly and without Docker:
#   - one abi3 wheel (cp310-abi3, so CPython 3.10 and later) per Linux architecture, tagged
#     manylinux2014 / manylinux_2_17, linked with zig (the `ziglang` package from PyPI) so the
#     wheel needs nothing newer than glibc 2.17 whatever glibc this machine has;
#   - the sdist, then checks that the sdist builds a wheel from source.
# Every wheel is checked with `auditwheel show` and for the files it must carry.
#
# Usage: scripts/build-wheels.sh [--targets "x86_64 aarch64"] [--no-sdist] [--verify-repro]
#   --targets LIST   architectures to build (default: x86_64 aarch64). aarch64 is cross-compiled
#                    and skipped, with a message, when rustup cannot add its Rust target.
#   --no-sdist       build wheels only (scripts/test-wheel.sh uses `--targets <host> --no-sdist`).
#   --verify-repro   build the first wheel a second time and fail unless both are byte-identical.
#
# The build tools (maturin, ziglang, auditwheel, pinned below) live in a virtualenv under
# target/wheel-tools/; Cargo builds into target/wheels/ so release builds do not wait on the
# lock of target/ used by `cargo test` and `maturin develop`. Nothing is cached outside the repo.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

# Pinned tool versions: change them here, deliberately.
MATURIN_VERSION=1.16.0
ZIGLANG_VERSION=0.15.2
AUDITWHEEL_VERSION=6.8.2
MANYLINUX=manylinux2014          # = manylinux_2_17

TARGETS="x86_64 aarch64"
SDIST=1
VERIFY_REPRO=0
while [ $# -gt 0 ]; do
    case "$1" in
        --targets) TARGETS=$2; shift 2 ;;
        --targets=*) TARGETS=${1#--targets=}; shift ;;
        --no-sdist) SDIST=0; shift ;;
        --verify-repro) VERIFY_REPRO=1; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "build-wheels.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done

log() { printf '\n==> %s\n' "$*"; }
die() { printf 'build-wheels.sh: error: %s\n' "$*" >&2; exit 1; }

command -v cargo >/dev/null || die "cargo is not on PATH: building wheels needs the Rust toolchain"

# --- tools -------------------------------------------------------------------------------------
TOOLS=$REPO/target/wheel-tools
# Caches stay in the repo's target/: pip's, zig's and cargo-zigbuild's (which follow XDG_CACHE_HOME).
export PIP_CACHE_DIR=$REPO/target/pip-cache
export XDG_CACHE_HOME=$REPO/target/wheel-cache
export ZIG_GLOBAL_CACHE_DIR=$XDG_CACHE_HOME/zig ZIG_LOCAL_CACHE_DIR=$XDG_CACHE_HOME/zig
TOOLS_VENV=$TOOLS/venv
TOOLS_SPEC="maturin==$MATURIN_VERSION ziglang==$ZIGLANG_VERSION auditwheel==$AUDITWHEEL_VERSION"
if [ "$(cat "$TOOLS/stamp" 2>/dev/null)" != "$TOOLS_SPEC" ]; then
    log "installing build tools into target/wheel-tools: $TOOLS_SPEC"
    rm -rf "$TOOLS"
    mkdir -p "$TOOLS"
    python3 -m venv "$TOOLS_VENV"
    # shellcheck disable=SC2086
    "$TOOLS_VENV/bin/python" -m pip install --quiet --disable-pip-version-check $TOOLS_SPEC
    echo "$TOOLS_SPEC" > "$TOOLS/stamp"
fi
# maturin finds zig as `python -m ziglang` of the interpreter on PATH, so the tools venv goes first.
export PATH="$TOOLS_VENV/bin:$PATH"
MATURIN=$TOOLS_VENV/bin/maturin
AUDITWHEEL=$TOOLS_VENV/bin/auditwheel

# --- reproducibility ---------------------------------------------------------------------------
# Archive timestamps come from the last commit; paths baked into panic messages are made
# independent of where the repo and the cargo registry are.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$REPO" log -1 --pretty=%ct 2>/dev/null || echo 315532800)
fi
export SOURCE_DATE_EPOCH
CARGO_HOME_DIR=${CARGO_HOME:-$HOME/.cargo}
export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }--remap-path-prefix=$REPO=/deliverypool --remap-path-prefix=$CARGO_HOME_DIR=/cargo"
export CARGO_TARGET_DIR=$REPO/target/wheels
export CARGO_INCREMENTAL=0
VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -1)
[ -n "$VERSION" ] || die "cannot read the version from Cargo.toml"
echo "deliverypool $VERSION, SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH ($(date -u -d "@$SOURCE_DATE_EPOCH" +%FT%TZ))"

mkdir -p dist
declare -a SUMMARY=()

# Files every wheel must carry: each file git tracks under python/deliverypool (so a new module
# is checked as soon as it is committed), the typing markers, and the extension module.
required_wheel_files() {
    git ls-files python/deliverypool 2>/dev/null | grep -v '\.so$' | sed 's#^python/##' || true
    echo deliverypool/py.typed
    echo deliverypool/_core.abi3.so
    [ -e python/deliverypool/_core.pyi ] && echo deliverypool/_core.pyi
    return 0
}

check_wheel() {
    local whl=$1 arch=$2 listing missing=()
    log "checking $(basename "$whl")"
    case "$(basename "$whl")" in
        "deliverypool-$VERSION-cp310-abi3-manylinux2014_$arch.manylinux_2_17_$arch.whl") ;;
        "deliverypool-$VERSION-cp310-abi3-manylinux_2_17_$arch.manylinux2014_$arch.whl") ;;
        *) die "unexpected wheel name $(basename "$whl"): want cp310-abi3 manylinux_2_17/manylinux2014 $arch" ;;
    esac
    listing=$(unzip -Z1 "$whl")
    while read -r f; do
        [ -n "$f" ] || continue
        grep -qxF "$f" <<<"$listing" || missing+=("$f")
    done < <(required_wheel_files | sort -u)
    [ ${#missing[@]} -eq 0 ] || die "$(basename "$whl") lacks: ${missing[*]}"
    [ "$(grep -c '\.so$' <<<"$listing")" = 1 ] || die "$(basename "$whl") has more than one shared object"
    unzip -p "$whl" "deliverypool-$VERSION.dist-info/entry_points.txt" | grep -q '^deliverypool *= *deliverypool.cli:main' \
        || die "$(basename "$whl") has no deliverypool console script"
    [ -e python/deliverypool/_core.pyi ] || echo "warning: python/deliverypool/_core.pyi does not exist yet; the wheel has no stubs for _core"
    unzip -l "$whl"
    "$AUDITWHEEL" show "$whl" | tee "$TOOLS/auditwheel-$arch.txt"
    grep -q 'manylinux_2_17_'"$arch" "$TOOLS/auditwheel-$arch.txt" \
        || die "auditwheel does not find $(basename "$whl") consistent with manylinux_2_17_$arch"
}

build_wheel() {
    local arch=$1 out=$2 triple="$1-unknown-linux-gnu"
    "$MATURIN" build --release --locked --zig --strip \
        --target "$triple" --compatibility "$MANYLINUX" --out "$out"
}

for arch in $TARGETS; do
    triple="$arch-unknown-linux-gnu"
    case "$arch" in x86_64|aarch64) ;; *) die "unsupported architecture: $arch" ;; esac
    if ! rustup target list --installed 2>/dev/null | grep -qx "$triple"; then
        log "adding Rust target $triple"
        if ! rustup target add "$triple"; then
            echo "SKIPPED $arch: rustup cannot fetch the Rust standard library for $triple here" >&2
            SUMMARY+=("$arch: SKIPPED (rustup target add $triple failed)")
            continue
        fi
    fi
    log "building the $arch wheel"
    rm -f dist/deliverypool-*-"$arch".whl
    t0=$(date +%s)
    build_wheel "$arch" dist
    t1=$(date +%s)
    whl=$(ls dist/deliverypool-"$VERSION"-*"$arch".whl)
    check_wheel "$whl" "$arch"
    SUMMARY+=("$(basename "$whl"): $(stat -c %s "$whl") bytes, built in $((t1 - t0)) s, sha256 $(sha256sum "$whl" | cut -c1-16)…")
    if [ "$VERIFY_REPRO" = 1 ]; then
        log "rebuilding the $arch wheel from scratch to check it is reproducible"
        again=$(mktemp -d)
        cargo clean --release --target "$triple" -p deliverypool >/dev/null 2>&1 || true
        build_wheel "$arch" "$again"
        if cmp -s "$whl" "$again/$(basename "$whl")"; then
            SUMMARY+=("  reproducible: a second build is byte-identical")
        else
            rm -rf "$again"
            die "the second $arch build differs from the first: the build is not reproducible"
        fi
        rm -rf "$again"
        VERIFY_REPRO=0
    fi
done

if [ "$SDIST" = 1 ]; then
    log "building the sdist"
    rm -f dist/deliverypool-*.tar.gz
    "$MATURIN" sdist --out dist
    sdist=dist/deliverypool-$VERSION.tar.gz
    [ -f "$sdist" ] || die "maturin did not write $sdist"
    contents=$(tar -tzf "$sdist")
    for f in Cargo.toml Cargo.lock pyproject.toml README.md LICENSE rust/lib.rs python/deliverypool/__init__.py python/deliverypool/py.typed; do
        grep -qx "deliverypool-$VERSION/$f" <<<"$contents" || die "the sdist lacks $f"
    done
    ! grep -q '\.so$' <<<"$contents" || die "the sdist carries a built shared object: $(grep '\.so$' <<<"$contents")"

    log "checking that the sdist builds from source (pip wheel, isolated build, in a temp dir)"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    t0=$(date +%s)
    # The sdist build gets its own target dir so its dependencies stay compiled between runs.
    (cd "$tmp" && CARGO_TARGET_DIR=$REPO/target/sdist-check RUSTFLAGS= \
        "$TOOLS_VENV/bin/python" -m pip wheel --quiet --disable-pip-version-check --no-deps \
        -w "$tmp/out" "$REPO/$sdist")
    t1=$(date +%s)
    built=$(ls "$tmp"/out/deliverypool-*.whl) || die "pip wheel built nothing from the sdist"
    unzip -Z1 "$built" | grep -qx 'deliverypool/_core.abi3.so' || die "the wheel built from the sdist has no extension module"
    SUMMARY+=("$(basename "$sdist"): $(stat -c %s "$sdist") bytes; pip wheel from it: OK in $((t1 - t0)) s ($(basename "$built"))")
fi

log "summary"
printf '  %s\n' "${SUMMARY[@]}"
ls -l dist/
