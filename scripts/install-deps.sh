#!/usr/bin/env bash
# Installs Lathe's build and runtime dependencies from Debian 12's archive.
# Idempotent: does nothing when everything is already installed.
set -euo pipefail

PACKAGES=(
  g++ cmake ninja-build ccache pkg-config git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libsqlite3-dev libssl-dev
  libspdlog-dev nlohmann-json3-dev libgtest-dev libgmock-dev
  libtorch-dev libsentencepiece-dev libicu-dev
  # LibTorch's CPU matrix multiply is ~45x faster with OpenBLAS than with
  # Debian's reference BLAS.
  libopenblas0-openmp
  # scripts/make-certs.sh (the quick start's and the tests' private CA).
  openssl
  # The GOT-D test's reference dual potentials (POT 0.8.2, with numpy).
  python3-pot
  # scripts/fuzz.sh: clang with libFuzzer and the ASan/UBSan runtimes, and
  # llvm-symbolizer for readable reports.
  clang-14 libclang-rt-14-dev llvm-14
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "Installing ${#missing[@]} Debian package(s): ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
