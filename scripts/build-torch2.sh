#!/usr/bin/env bash
# Builds Lathe against LibTorch 2.x and runs its tests there: Debian 13
# ("trixie") has LibTorch 2.6 (CPU), GCC 14 and the rest of Lathe's stack, so
# this script makes a Debian 13 root folder with debootstrap (or reuses it),
# builds the whole tree in it into build-torch2/ and runs CTest there. The
# Debian 12 build (scripts/build.sh, LibTorch 1.13) is untouched.
#
# LATHE_TORCH2_ROOT:   the root folder (default /var/cache/lathe/trixie-root),
#                      outside the repository so every clone reuses it.
# LATHE_TORCH2_MIRROR: the Debian archive (default http://deb.debian.org/debian).
# LATHE_TORCH2_CTEST:  CTest's selection (default: everything but the fault
#                      suite; see docs/torch2.md for why).
#
# Needs root (debootstrap, mount, chroot; it asks sudo otherwise) and installs
# debootstrap when it is missing. Safe to run again and concurrently: a
# complete root is reused, a half-made one (no stamp, which is written last)
# is made again, and the mounts live in a mount namespace of their own, so
# they vanish with this script however it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$(pwd -P)

ROOT=${LATHE_TORCH2_ROOT:-/var/cache/lathe/trixie-root}
MIRROR=${LATHE_TORCH2_MIRROR:-http://deb.debian.org/debian}
CTEST_ARGS=${LATHE_TORCH2_CTEST--LE fault}
BUILD_DIR=build-torch2
SUITE=trixie

# Debian 13's names for what scripts/install-deps.sh installs on Debian 12
# (less git and the fuzzers' clang, which this build does not use).
PACKAGES=(
  g++ cmake ninja-build ccache pkg-config
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libsqlite3-dev libssl-dev
  libspdlog-dev nlohmann-json3-dev libgtest-dev libgmock-dev
  libtorch-dev libgloo-dev libsentencepiece-dev libicu-dev
  libopenblas0-openmp
  openssl
  python3-pot
  # The Python client's test (clients/python).
  python3-grpcio
  # lathed's HTTP port (server/http) and its tests: the Node SDK test runs
  # on Debian 13's Node 20 over the tree's web/node_modules; the dashboard
  # test in its Chromium.
  libcpp-httplib-dev prometheus-cpp-dev nodejs chromium curl
  # The Kubernetes manifests' test (kubectl's kustomize). The Slurm test
  # skips here (no slurm-wlm in the root): it runs in the Debian 12 suite.
  kubernetes-client git
)

if [ "$(id -u)" -ne 0 ]; then
  exec sudo --preserve-env=LATHE_TORCH2_ROOT,LATHE_TORCH2_MIRROR,LATHE_TORCH2_CTEST \
    bash "$0" "$@"
fi
# Everything below runs in a mount namespace of its own: the mounts it makes
# are invisible outside and vanish when the script ends, however it ends
# (even by SIGKILL), so no trap has to undo them.
if [ -z "${LATHE_TORCH2_NAMESPACE:-}" ]; then
  exec unshare --mount --propagation private \
    env LATHE_TORCH2_NAMESPACE=1 bash "$0" "$@"
fi
if ! command -v debootstrap > /dev/null; then
  echo "build-torch2.sh: installing debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap
fi

# Runs a command in the root with a clean environment. ccache's settings let
# clones at other paths share objects (paths under the tree are hashed
# relative to it) and cache the precompiled torch header.
in_root() {
  chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive CCACHE_DIR=/var/cache/ccache \
    CCACHE_BASEDIR="$SRC" CCACHE_NOHASHDIR=1 CCACHE_SLOPPINESS=pch_defines,time_macros \
    "$@"
}

# What the root's programs need: /proc, /dev, /dev/pts, a private /dev/shm.
mount_system() {
  mount -t proc proc "$ROOT/proc"
  mount --bind /dev "$ROOT/dev"
  mount --bind /dev/pts "$ROOT/dev/pts"
  mount -t tmpfs shm "$ROOT/dev/shm"
}

# The stamp holds the package list, so a changed list is installed into the
# existing root instead of remaking it.
STAMP=$ROOT/.lathe-root-complete
BOOTSTRAPPED=$ROOT/.lathe-debootstrap-done
wanted=$(printf '%s\n' "$SUITE" "${PACKAGES[@]}")

root_complete() { [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$wanted" ]; }

# Builds hold the lock shared; making or changing the root holds it alone.
mkdir -p "$(dirname "$ROOT")"
exec 9> "$ROOT.lock"
flock -s 9
if ! root_complete; then
  flock -u 9
  flock 9
fi
if ! root_complete; then
  start=$SECONDS
  if [ ! -f "$BOOTSTRAPPED" ]; then
    if [ -e "$ROOT" ]; then
      # Never delete through a mount (one left by a hand-made chroot, say).
      if findmnt -rn -o TARGET | grep "^$ROOT/" > /dev/null; then
        echo "build-torch2.sh: $ROOT has mounts under it; unmount them first" >&2
        exit 1
      fi
      echo "build-torch2.sh: removing the half-made root $ROOT"
      rm -rf --one-file-system "$ROOT"
    fi
    echo "build-torch2.sh: making a Debian 13 root in $ROOT"
    debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR"
    touch "$BOOTSTRAPPED"
  fi
  echo "build-torch2.sh: installing ${#PACKAGES[@]} packages in $ROOT"
  cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
  mount_system
  in_root apt-get update -q
  in_root apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
  in_root apt-get clean
  printf '%s\n' "$wanted" > "$STAMP"
  echo "build-torch2.sh: root ready in $((SECONDS - start)) s"
  flock -s 9
else
  mount_system
fi

# The source tree, and the shared test fixtures beside it (../shared), appear
# in the root at the same paths, so CMake's cache and the paths compiled into
# the tests hold inside and out.
mkdir -p "$ROOT$SRC"
mount --bind "$SRC" "$ROOT$SRC"
FIXTURES=$(dirname "$SRC")/shared
if [ -d "$FIXTURES" ]; then
  mkdir -p "$ROOT$FIXTURES"
  mount --bind -o ro "$FIXTURES" "$ROOT$FIXTURES"
fi

start=$SECONDS
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  in_root cmake -S "$SRC" -B "$SRC/$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
fi
in_root ninja -C "$SRC/$BUILD_DIR" -j2
echo "build-torch2.sh: built in $((SECONDS - start)) s"
start=$SECONDS
# shellcheck disable=SC2086 # CTEST_ARGS is a list of words.
in_root ctest --test-dir "$SRC/$BUILD_DIR" --output-on-failure --timeout 900 -j2 $CTEST_ARGS
echo "build-torch2.sh: LibTorch 2.x tests passed in $((SECONDS - start)) s"
