#!/usr/bin/env bash
# The README's bench command: install the peer allocators (Debian packages,
# bench/setup_peers.sh) and pygomalloc with numpy into .venv (tools/venv.sh), then
# compare them: `python -m pygomalloc bench`, given this script's arguments
# (e.g. --full, --json FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
bash bench/setup_peers.sh
bash tools/debian_packages.sh gcc
python=$(bash tools/venv.sh)
"$python" -m pip install -q '.[numpy]'  # numpy: the numpy row
exec "$python" -m pygomalloc bench "$@"
