#!/usr/bin/env bash
# The README's test command: everything the project tests, on a fresh
# machine.  Installs what is missing (Debian packages: the C toolchain and
# the sanitizer runtimes; Python's venv and headers), installs the package
# with its test extras, numpy and matplotlib (so that tests/test_numpy.py
# and the page map's plot test run rather than skip) into .venv
# (tools/venv.sh), runs the C tests (release,
# debug, ASan+UBSan, TSan builds), the fuzzer for a minute (tests/fuzz.sh),
# then the Python tests with .venv's python.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/debian_packages.sh gcc make libasan8 libtsan2 libubsan1 valgrind
python=$(bash tools/venv.sh)
"$python" -m pip install -q '.[test,numpy,plot]'
make -C csrc -j2 check
bash tests/fuzz.sh "${FUZZ_SECONDS:-60}"
"$python" -m pytest -q
