#!/bin/sh
# setup_peers.sh: install the peer allocators the benchmarks compare against
# (jemalloc, tcmalloc-minimal, mimalloc from Debian) and valgrind (for
# bench/callgrind_fastpath.py).
#
# Idempotent: packages already installed are left alone, and nothing is
# fetched when all of them are there.  `apt-get update` runs only when an
# install fails, which on a fresh machine usually means the package lists
# have not been downloaded yet.  Needs root (or sudo) for the install.
set -eu

PACKAGES="libjemalloc2 libtcmalloc-minimal4 libmimalloc2.0 valgrind"

installed() {
    dpkg-query -W -f '${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup_peers: apt-get not found; install $PACKAGES (or their equivalents) by hand" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    fi
fi

missing=""
for p in $PACKAGES; do
    if installed "$p"; then
        echo "setup_peers: $p already installed ($(dpkg-query -W -f '${Version}' "$p"))"
    else
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    echo "setup_peers: nothing to install"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
echo "setup_peers: installing$missing"
# shellcheck disable=SC2086 # word splitting of the package list is intended
if ! $SUDO apt-get install -y --no-install-recommends $missing; then
    echo "setup_peers: install failed; updating the package lists and retrying"
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends $missing
fi

for p in $missing; do
    if installed "$p"; then
        echo "setup_peers: installed $p $(dpkg-query -W -f '${Version}' "$p")"
    else
        echo "setup_peers: $p is still not installed" >&2
        exit 1
    fi
done
