#!/usr/bin/env bash
# debian_packages.sh PACKAGE...: make sure these Debian packages are installed.
#
# Packages already installed are left alone and nothing is fetched when all
# of them are.  Missing ones are installed with apt-get, as root, or with
# sudo when it is there; otherwise the script says what to install and
# fails.  On a system without dpkg it does nothing: there the prerequisites
# (a C compiler, make, Python with venv and its headers) are the user's.
set -euo pipefail

command -v dpkg-query >/dev/null 2>&1 || exit 0

missing=()
for package in "$@"; do
    dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
        missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo=(sudo)
    else
        echo "pygomalloc: please install these Debian packages (as root): apt-get install ${missing[*]}" >&2
        exit 1
    fi
fi

echo "pygomalloc: installing the Debian packages ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# The package lists of a fresh machine may be empty or old: update and retry.
if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; then
    "${sudo[@]}" apt-get update -qq >&2
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
