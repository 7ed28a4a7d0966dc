#!/usr/bin/env bash
# The whole test suite: installs dependencies, builds, runs every test
# (unit, engine, end-to-end) with CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
cd "${BUILD_DIR:-build}"
ctest --output-on-failure --timeout 900 -j2 "$@"
