#!/usr/bin/env bash
# Runs the Rust core on aarch64, emulated with qemu-user, so that the code the aarch64 wheel
# ships (the portable byte classifier in rust/line_scanner.rs instead of SSE2/AVX2) is executed,
# not only compiled:
#   1. the crate's unit tests, cross-compiled and run under qemu-aarch64;
#   2. examples/corpus_driver.rs on both architectures: everything scan and classify return for
#      the corpus and its mutated copies must be byte for byte the same.
# Installs qemu-user and the aarch64 cross linker with apt when missing. Skips, with a message,
# when rustup cannot add the aarch64 standard library (as scripts/build-wheels.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."

TRIPLE=aarch64-unknown-linux-gnu
SYSROOT=/usr/aarch64-linux-gnu

if ! rustup target list --installed 2>/dev/null | grep -qx "$TRIPLE"; then
    if ! rustup target add "$TRIPLE"; then
        echo "SKIPPED: rustup cannot fetch the Rust standard library for $TRIPLE here" >&2
        exit 0
    fi
fi
if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null || [ ! -d "$SYSROOT/lib" ]; then
    echo "== installing qemu-user and the aarch64 cross linker"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross >/dev/null
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L $SYSROOT"

echo "== cargo test on aarch64 (qemu-user)"
cargo test --quiet --profile crosscheck --target "$TRIPLE" --lib

echo "== corpus_driver: aarch64 output against x86_64 output"
cargo build --quiet --profile crosscheck --example corpus_driver
cargo build --quiet --profile crosscheck --target "$TRIPLE" --example corpus_driver
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
target/crosscheck/examples/corpus_driver >"$WORK/native.txt"
qemu-aarch64 -L "$SYSROOT" "target/$TRIPLE/crosscheck/examples/corpus_driver" >"$WORK/aarch64.txt"
if ! cmp -s "$WORK/native.txt" "$WORK/aarch64.txt"; then
    diff "$WORK/native.txt" "$WORK/aarch64.txt" | head -20 >&2
    echo "FAILED: scan/classify output differs on aarch64" >&2
    exit 1
fi
echo "aarch64: same output as $(uname -m) on $(grep -c '^== ' "$WORK/native.txt") inputs"
