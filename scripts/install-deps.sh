#!/usr/bin/env bash
# Installs Lathe's build and runtime dependencies from Debian 12's archive.
# Idempotent: does nothing when everything is already installed.
set -euo pipefail

PACKAGES=(
  g++ cmake ninja-build ccache pkg-config git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libsqlite3-dev libssl-dev
  libspdlog-dev nlohmann-json3-dev libgtest-dev libgmock-dev
  libtorch-dev libgloo-dev libsentencepiece-dev libicu-dev
  # LibTorch's CPU matrix multiply is ~45x faster with OpenBLAS than with
  # Debian's reference BLAS.
  libopenblas0-openmp
  # scripts/make-certs.sh (the quick start's and the tests' private CA).
  openssl
  # The GOT-D test's reference dual potentials (POT 0.8.2, with numpy).
  python3-pot
  # The REST gateway, /metrics and the dashboard (server/http), the Python
  # client (clients/python: stubs from the system protoc + grpc_python_plugin)
  # and the browser test (Debian's Chromium driven by playwright-core).
  libcpp-httplib-dev prometheus-cpp-dev python3-grpcio chromium curl
  # scripts/fuzz.sh: clang with libFuzzer and the ASan/UBSan runtimes, and
  # llvm-symbolizer for readable reports.
  clang-14 libclang-rt-14-dev llvm-14
  # The Slurm test (tests/slurm): slurmctld, slurmd, sbatch and munged,
  # started by the test itself on loopback.
  slurm-wlm munge
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js and npm: the machine's own when it has them (Node 20 or later is
# needed by playwright-core), else Debian's.
if ! command -v node > /dev/null || ! command -v npm > /dev/null; then
  missing+=(nodejs npm)
fi
# kubectl, whose built-in kustomize renders deploy/kubernetes' overlays for
# their test (web/tests/kubernetes.test.mjs): the machine's own when it has
# one (another package's /usr/bin/kubectl, e.g. the Google Cloud SDK's,
# would make dpkg refuse Debian's), else Debian's kubernetes-client
# (kubectl 1.20, kustomize v2.0.3: the oldest the manifests keep to).
if ! command -v kubectl > /dev/null; then
  missing+=(kubernetes-client)
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "Installing ${#missing[@]} Debian package(s): ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# web/: the dashboard's charting library (uPlot, built into lathed) and the
# Node tests' packages (the official openai SDK, playwright-core;
# kubernetes-models and yaml for the Kubernetes manifests), exactly as
# package-lock.json pins them.
cd "$(dirname "$0")/../web"
if [ ! -f node_modules/.package-lock.json ] ||
   ! cmp -s package-lock.json node_modules/.lathe-lock; then
  npm ci --no-audit --no-fund
  cp package-lock.json node_modules/.lathe-lock
fi
