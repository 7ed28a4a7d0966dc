#!/usr/bin/env bash
# The whole test suite: installs dependencies, builds, runs every test
# (unit, engine, end-to-end) with CTest, then the fuzz targets for a bounded
# time (scripts/fuzz.sh), then the LibTorch 2.x build and its tests in a
# Debian 13 root (scripts/build-torch2.sh; LATHE_SKIP_TORCH2=1 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
cd "${BUILD_DIR:-build}"
ctest --output-on-failure --timeout 900 -j2 "$@"
cd - > /dev/null
bash scripts/fuzz.sh
if [ "${LATHE_SKIP_TORCH2:-}" = 1 ]; then
  echo "test.sh: LATHE_SKIP_TORCH2=1: skipping the LibTorch 2.x build"
else
  bash scripts/build-torch2.sh
fi
