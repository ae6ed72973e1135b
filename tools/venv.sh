#!/usr/bin/env bash
# venv.sh: print the path of the python of the project's virtual environment,
# .venv at the top of the clone, creating the environment first if needed.
#
# It is made with the system's python3 (or $PYTHON), so that pip installs
# into it whatever the system's policy (PEP 668: Debian's python3 refuses
# `pip install` outside a virtual environment).  Debian's python3 needs
# python3-venv for that (ensurepip) and python3-dev to build the extension
# module (Python.h): they are installed when missing (tools/debian_packages.sh).
# Messages go to stderr; stdout is the path alone:
#
#   python=$(bash tools/venv.sh) && "$python" -m pip install .
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv=$root/.venv

if "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    echo "$venv/bin/python"
    exit 0
fi

python=${PYTHON:-python3}
if ! command -v "$python" >/dev/null 2>&1; then
    bash "$root/tools/debian_packages.sh" python3
fi
python=$(command -v "$python")

needed=()
"$python" -c 'import ensurepip' >/dev/null 2>&1 || needed+=(python3-venv)
"$python" -c 'import os, sys, sysconfig
sys.exit(not os.path.isfile(os.path.join(sysconfig.get_path("include"), "Python.h")))' ||
    needed+=(python3-dev)
if [ ${#needed[@]} -ne 0 ]; then
    case "$python" in
    /usr/bin/*) bash "$root/tools/debian_packages.sh" "${needed[@]}" ;;
    *)
        echo "pygomalloc: $python lacks ${needed[*]} (ensurepip, Python.h): use a Python that has them (PYTHON=...)" >&2
        exit 1
        ;;
    esac
fi

echo "pygomalloc: creating $venv with $python ($("$python" -c 'import platform; print(platform.python_version())'))" >&2
rm -rf "$venv"
"$python" -m venv "$venv" >&2
echo "$venv/bin/python"
