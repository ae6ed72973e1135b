#!/usr/bin/env bash
# Everything the project tests: install the package with its test extras,
# run the C tests (release, debug, ASan+UBSan, TSan builds), then the Python
# tests.  The README's test command is `bash tests/run_all.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q '.[test]'
make -C csrc -j2 check
python -m pytest -q
