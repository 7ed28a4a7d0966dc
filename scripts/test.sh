#!/usr/bin/env bash
# The whole test suite: installs dependencies, builds, runs every test
# (unit, engine, end-to-end) with CTest, then the fuzz targets for a bounded
# time (scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
cd "${BUILD_DIR:-build}"
ctest --output-on-failure --timeout 900 -j2 "$@"
cd - > /dev/null
bash scripts/fuzz.sh
