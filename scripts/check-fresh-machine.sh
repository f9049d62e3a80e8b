#!/usr/bin/env bash
# Checks that the README's first commands work on a fresh machine of the project's kind: only
# the Debian packages its base image has (/work/shared/fresh-machine-debian-packages.txt, or
# ../shared/ beside the checkout, or --packages FILE), no pip cache, no cargo registry cache.
#
#   bash scripts/check-fresh-machine.sh [--ref REF] [--repo PATH] [--with-tests]
#       Non-destructive: prints the Debian packages this machine has beyond the list, then
#       clones REF (default main) into a temporary folder and runs the README's commands there
#       with PIP_NO_CACHE_DIR=1 and an empty temporary CARGO_HOME (the toolchain stays usable:
#       rustup's proxies and RUSTUP_HOME are untouched). On a machine that has extra packages
#       this does NOT show that a fresh machine works: it says so at the end.
#
#   bash scripts/check-fresh-machine.sh --sandbox [...]
#       The whole check in a throwaway copy of this machine: an overlay of the root file system
#       (its changes kept in a temporary tmpfs) in private mount and PID namespaces, chrooted;
#       there the extra packages are purged (--remove-packages), the pip cache hidden, and the
#       commands run. Nothing on the machine changes and no process outside can be signalled
#       (service scripts are refused by a policy-rc.d). Needs root and overlayfs.
#
#   bash scripts/check-fresh-machine.sh --remove-packages [...]
#       DESTRUCTIVE: purges (apt-get purge) every installed Debian package the list lacks, on
#       THIS machine, then runs the check. For a throwaway machine, or a quiet moment: the
#       test command installs what it needs again (scripts/install-test-servers.sh).
#
# --with-tests also runs the README's test command (`bash scripts/test.sh`, ~20 minutes).
# --no-apt runs the commands with DELIVERYPOOL_NO_APT=1, as for a user without root or sudo:
# set-up must then leave the milter extra out, say so, and the demo still run.
# Exit status 0 when every command passed.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
ref=main
repo=$here
packages=""
remove=0
sandbox=0
with_tests=0
no_apt=0
while [ $# -gt 0 ]; do
    case $1 in
        --ref) ref=$2; shift 2 ;;
        --repo) repo=$2; shift 2 ;;
        --packages) packages=$2; shift 2 ;;
        --remove-packages) remove=1; shift ;;
        --sandbox) sandbox=1; shift ;;
        --with-tests) with_tests=1; shift ;;
        --no-apt) no_apt=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "check-fresh-machine: unknown argument $1 (--help)" >&2; exit 2 ;;
    esac
done
if [ -z "$packages" ]; then
    for candidate in "$here/../shared/fresh-machine-debian-packages.txt" /work/shared/fresh-machine-debian-packages.txt; do
        if [ -f "$candidate" ]; then packages=$candidate; break; fi
    done
fi
if [ -z "$packages" ] || [ ! -f "$packages" ]; then
    echo "check-fresh-machine: no list of the fresh machine's packages (--packages FILE)" >&2
    exit 2
fi
packages=$(cd "$(dirname "$packages")" && pwd)/$(basename "$packages")

say() { printf '== %s\n' "$*"; }

# Installed packages the fresh machine does not have, one per line.
extra_packages() {
    comm -23 <(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' | awk '$1 ~ /^[ih]i/ {print $2}' | sed 's/:.*//' | sort -u) \
             <(grep -v '^#' "$packages" | sed 's/:.*//; s/[[:space:]]//g' | grep -v '^$' | sort -u)
}

# --- the sandbox: this script again, with --remove-packages, in an overlay of / -------------
if [ "$sandbox" = 1 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "check-fresh-machine: --sandbox needs root (mount and unshare)" >&2
        exit 2
    fi
    work=$(mktemp -d /tmp/dp-fresh-sandbox.XXXXXX)
    args=(--ref "$ref" --repo "$repo" --packages "$packages" --remove-packages)
    [ "$with_tests" = 1 ] && args+=(--with-tests)
    [ "$no_apt" = 1 ] && args+=(--no-apt)
    say "sandbox in $work (an overlay of /; its changes in a tmpfs, gone afterwards)"
    status=0
    unshare --mount --pid --fork --propagation private -- bash -euo pipefail -c '
        work=$1; shift; script=$1; shift
        mount -t tmpfs -o size=12g,mode=0755 dp-fresh "$work"
        mkdir "$work/upper" "$work/ovl" "$work/root"
        mount -t overlay overlay -o "lowerdir=/,upperdir=$work/upper,workdir=$work/ovl" "$work/root"
        root=$work/root
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        mount --rbind /sys "$root/sys"
        mount -t tmpfs tmpfs "$root/tmp"
        mount -t tmpfs tmpfs "$root/run"
        mkdir -p "$root/root/.cache" && mount -t tmpfs tmpfs "$root/root/.cache"   # no pip cache
        # No service is started or stopped by a package script in here.
        printf "#!/bin/sh\nexit 101\n" > "$root/usr/sbin/policy-rc.d" && chmod 755 "$root/usr/sbin/policy-rc.d"
        # The tmpfs over /tmp hides the script and list if they live there: copy them in.
        mkdir -p "$root/tmp/check" && cp "$script" "$root/tmp/check/check-fresh-machine.sh"
        args=()
        while [ $# -gt 0 ]; do
            if [ "$1" = --packages ]; then cp "$2" "$root/tmp/check/packages.txt"; args+=(--packages /tmp/check/packages.txt); shift 2
            else args+=("$1"); shift; fi
        done
        exec chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
            PATH=/root/.cargo/bin:/root/.pyenv/shims:/root/.pyenv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            ${PIP_FIND_LINKS:+PIP_FIND_LINKS=$PIP_FIND_LINKS} ${PIP_CERT:+PIP_CERT=$PIP_CERT} \
            bash /tmp/check/check-fresh-machine.sh "${args[@]}"
    ' sandbox "$work" "$0" "${args[@]}" || status=$?
    rmdir "$work" 2>/dev/null || true
    say "sandbox check: exit status $status"
    exit "$status"
fi

# --- the machine's packages -------------------------------------------------------------------
extra=$(extra_packages)
say "Debian packages installed here beyond $(basename "$packages"): $(echo "$extra" | grep -c . || true)"
[ -n "$extra" ] && echo "$extra" | paste -sd' ' | fold -s -w 100 | sed 's/^/   /'
if [ "$remove" = 1 ] && [ -n "$extra" ]; then
    say "DESTRUCTIVE: purging them (--remove-packages)"
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    apt-get purge -y -qq $extra >/dev/null
    left=$(extra_packages)
    if [ -n "$left" ]; then
        echo "check-fresh-machine: still installed after the purge: $left" >&2
        exit 1
    fi
    gone=$(comm -13 <(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' | awk '$1 ~ /^[ih]i/ {print $2}' | sed 's/:.*//' | sort -u) \
                    <(grep -v '^#' "$packages" | sed 's/:.*//; s/[[:space:]]//g' | grep -v '^$' | sort -u))
    [ -n "$gone" ] && echo "   (the purge also removed packages of the list: $gone)"
    say "the machine now has only the fresh list's packages"
fi
fresh=1
[ -n "$(extra_packages)" ] && fresh=0

# --- a clone, the README's commands, no caches --------------------------------------------------
tmp=$(mktemp -d /tmp/dp-fresh-check.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
say "cloning $ref of $repo into $tmp/deliverypool"
git clone --quiet --branch "$ref" --single-branch "$repo" "$tmp/deliverypool"
cd "$tmp/deliverypool"
git log -1 --format='   at %h %s' | cut -c1-110

# The README's commands: the shell blocks of its "Two commands" section, run as written.
mapfile -t commands < <(awk '/^## Two commands/ {on=1; next} /^## / {on=0} on && /^```sh/ {block=1; next} block && /^```/ {block=0; next} block {print}' README.md)
if [ "${#commands[@]}" -lt 1 ]; then
    echo "check-fresh-machine: no shell block in the README's \"Two commands\" section" >&2
    exit 1
fi
[ "$with_tests" = 1 ] || commands=("${commands[0]}")

export PIP_NO_CACHE_DIR=1
[ "$no_apt" = 1 ] && export DELIVERYPOOL_NO_APT=1
export CARGO_HOME="$tmp/cargo-home"   # an empty registry cache: every crate is downloaded
mkdir -p "$CARGO_HOME"
cargo --version >/dev/null   # the toolchain is still there (rustup's proxies, RUSTUP_HOME)
status=0
for command in "${commands[@]}"; do
    say "running: $command"
    start=$SECONDS
    if bash -c "$command"; then
        say "passed in $((SECONDS - start)) s: $command"
    else
        status=$?
        say "FAILED (exit status $status after $((SECONDS - start)) s): $command"
        break
    fi
done
if [ "$status" = 0 ] && [ "$fresh" = 0 ]; then
    say "passed, but on a machine with packages a fresh one lacks (above): run with --sandbox or --remove-packages for the real check"
fi
exit "$status"
