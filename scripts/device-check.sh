#!/usr/bin/env bash
# The one-command GPU check of the training engine (docs/device-check.md).
#
#   scripts/device-check.sh --pack DIR
#       On a Debian 12 machine with scripts/install-deps.sh's packages:
#       copies what the engine's build needs beyond LibTorch, CMake, Ninja
#       and a C++ compiler (Abseil, spdlog, fmt, nlohmann-json, GoogleTest,
#       sentencepiece, ICU, pkgconf) and the test fixtures into DIR, and
#       writes DIR.tar.xz beside it (small enough to carry).
#
#   scripts/device-check.sh [--pack-dir DIR|FILE.tar.xz] [--out FILE]
#       On a GPU machine with a PyTorch 2.x pip install and no package
#       registry: builds the engine, its tests, engine_device_check and
#       engine_bench against PyTorch's LibTorch and the pack, runs the
#       engine tests, compares logits on CUDA (bfloat16 and float32) with
#       the CPU in float32 and with Hugging Face's, times a bf16 matmul,
#       benchmarks a Llama-3.2-1B-shaped model (LoRA r=16 on every
#       projection, and full fine-tuning) and, when transformers and peft
#       import, the same shape with them. Writes the figures to FILE.
#
#   scripts/device-check.sh --dry-run [--torch DIR] [--pack-dir ...]
#       The same on the CPU (also what a machine without a GPU gets): builds
#       against the LibTorch of DIR (default: Debian's), runs the engine
#       tests, compares bfloat16 and float32 on the CPU, and a tiny
#       benchmark. With no --pack-dir it packs this machine first.
#
# Other flags: --work DIR (builds, default build-device-check/ in the
# repository), --jobs N (default: every core), --budget S (seconds for the
# whole run, default 540; a step that would pass it is skipped and said so).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd -P)
START=$SECONDS

MODE=gpu
PACK_OUT=
PACK_DIR=
TORCH=
OUT_FILE=
WORK=$REPO/build-device-check
JOBS=$(nproc)
BUDGET=540
ARCH=x86_64-linux-gnu

usage() { sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "device-check.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case $1 in
    --pack) PACK_OUT=${2:?--pack needs a folder}; MODE=pack; shift 2 ;;
    --pack-dir) PACK_DIR=${2:?}; shift 2 ;;
    --dry-run) MODE=dry; shift ;;
    --torch) TORCH=${2:?}; shift 2 ;;
    --out) OUT_FILE=${2:?}; shift 2 ;;
    --work) WORK=${2:?}; shift 2 ;;
    --jobs) JOBS=${2:?}; shift 2 ;;
    --budget) BUDGET=${2:?}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

# ---------------------------------------------------------------- the pack

# Debian 12 packages whose files the engine's build or its programs use:
# headers, CMake and pkg-config files, shared libraries (GoogleTest's are
# static). LibTorch is not among them: the GPU machine brings its own.
PACK_PACKAGES=(
  libabsl-dev libabsl20220623
  libspdlog-dev libspdlog1.10 libfmt-dev libfmt9
  nlohmann-json3-dev libgtest-dev
  libsentencepiece-dev libsentencepiece0 libprotobuf-lite32
  libicu-dev libicu72
  pkgconf-bin libpkgconf3
)

# Libraries a GPU machine provides itself: the C library, the compiler's
# runtime, and LibTorch with what its wheel bundles.
BASE_LIBS='^(linux-vdso|ld-linux-x86-64|libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|libgomp|libtorch|libtorch_cpu|libtorch_cuda|libc10|libc10_cuda|libcudart|libcuda)\.so'

make_pack() {
  local dir=$1
  command -v dpkg-query > /dev/null || die "--pack runs on Debian 12 (dpkg)"
  rm -rf "$dir" "$dir.tar.xz"
  mkdir -p "$dir"
  local p f rel
  for p in "${PACK_PACKAGES[@]}"; do
    dpkg-query -W "$p" > /dev/null 2>&1 ||
      die "--pack: package $p is not installed (scripts/install-deps.sh)"
    while read -r f; do
      [ -f "$f" ] || [ -L "$f" ] || continue
      case $f in
        /usr/share/doc/*|/usr/share/man/*|/usr/share/lintian/*|/usr/src/*) continue ;;
        /usr/bin/*) [ "$f" = /usr/bin/pkgconf ] || continue ;;
        *.a) [ "$p" = libgtest-dev ] || continue ;;
      esac
      rel=${f#/usr/}
      mkdir -p "$dir/$(dirname "$rel")"
      cp -a "$f" "$dir/$rel"
    done < <(dpkg -L "$p")
  done
  # pkg-config files name /usr: make them relative to where they lie.
  for f in "$dir/lib/$ARCH/pkgconfig/"*.pc; do
    # shellcheck disable=SC2016 # ${pcfiledir} is pkg-config's, not ours.
    sed -i 's|^prefix *= */usr$|prefix=${pcfiledir}/../../..|' "$f"
  done
  cat > "$dir/bin/pkg-config" <<'EOF'
#!/bin/sh
# pkgconf from the pack, reading the pack's .pc files only.
here=$(cd "$(dirname "$0")/.." && pwd)
LD_LIBRARY_PATH="$here/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
PKG_CONFIG_LIBDIR="$here/lib/x86_64-linux-gnu/pkgconfig:$here/share/pkgconfig" \
  exec "$here/bin/pkgconf" "$@"
EOF
  chmod +x "$dir/bin/pkg-config"
  local fixtures
  fixtures=$(dirname "$REPO")/shared/fixtures
  [ -d "$fixtures" ] || die "--pack: no test fixtures at $fixtures"
  cp -a "$fixtures" "$dir/fixtures"
  # What the pack's libraries need of the machine they run on.
  {
    echo "made $(date -u +%FT%TZ) on $(. /etc/os-release && echo "$PRETTY_NAME")"
    for p in "${PACK_PACKAGES[@]}"; do dpkg-query -W -f '${Package} ${Version}\n' "$p"; done
    echo "needs glibc $(pack_needs "$dir" GLIBC_) and libstdc++ $(pack_needs "$dir" GLIBCXX_)"
  } > "$dir/MANIFEST"
  tar -C "$(dirname "$dir")" -cf - "$(basename "$dir")" | xz -T0 -6 > "$dir.tar.xz"
  echo "device-check.sh: packed $(du -sh "$dir" | cut -f1) into $dir ($(du -h "$dir.tar.xz" | cut -f1) as $dir.tar.xz)"
  cat "$dir/MANIFEST"
}

# pack_needs DIR PREFIX: the newest symbol version with PREFIX (GLIBC_,
# GLIBCXX_) that the programs and libraries in DIR need, e.g. GLIBC_2.34.
pack_needs() {
  find "$1" -type f \( -name '*.so*' -o -name pkgconf \) -print0 |
    xargs -0 objdump -T 2>/dev/null | grep -o "$2[0-9.]*[0-9]" | sort -uV | tail -1
}

if [ "$MODE" = pack ]; then
  PACK_OUT=$(realpath -m "$PACK_OUT")
  make_pack "$PACK_OUT"
  exit 0
fi

# ------------------------------------------------------------ the check run

if [ "$MODE" = gpu ] && ! { command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; }; then
  echo "device-check.sh: no NVIDIA GPU here: a dry run on the CPU"
  MODE=dry
fi
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd -P)
if [ -z "$OUT_FILE" ]; then
  OUT_FILE=${OUT:+$OUT/device-check.txt}
  OUT_FILE=${OUT_FILE:-$WORK/device-check.txt}
fi
mkdir -p "$(dirname "$OUT_FILE")"
: > "$OUT_FILE"
LOG=$WORK/device-check.log
: > "$LOG"

# A line of figures: to the figures file and the terminal.
say() { echo "$*" | tee -a "$OUT_FILE"; }
left() { echo $((BUDGET - (SECONDS - START))); }
# step NAME LIMIT CMD...: runs the program CMD for at most LIMIT seconds and
# what is left of the budget, its output in $STEP_OUT and the log (and its
# tail on the terminal when it fails). Returns CMD's status; 124 when it ran
# out of time.
STEP_OUT=$WORK/step.out
step() {
  local name=$1 limit=$2 t
  shift 2
  t=$(left)
  [ "$t" -lt "$limit" ] && limit=$t
  if [ "$limit" -le 5 ]; then
    say "$name: skipped (the ${BUDGET} s budget is spent)"
    return 124
  fi
  echo "== $name (up to ${limit} s)" | tee -a "$LOG"
  local begin=$SECONDS status=0
  timeout --kill-after=10 "$limit" "$@" > "$STEP_OUT" 2>&1 || status=$?
  cat "$STEP_OUT" >> "$LOG"
  echo "== $name: status $status in $((SECONDS - begin)) s" >> "$LOG"
  if [ $status -ne 0 ]; then
    say "$name: FAILED (status $status$([ $status -eq 124 ] && echo ", out of time"); log: $LOG)"
    tail -n 25 "$STEP_OUT" | sed 's/^/    /'
  fi
  return $status
}

say "Lathe device check ($MODE) $(date -u +%FT%TZ) on $(hostname)"
say "commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet 2>/dev/null || echo ' (with local changes)')"

# The pack: a folder, an archive of one, or (dry run) made now.
if [ -z "$PACK_DIR" ]; then
  for candidate in "$REPO/build/device-pack" "$REPO/build/device-pack.tar.xz"; do
    [ -e "$candidate" ] && PACK_DIR=$candidate && break
  done
fi
if [ -z "$PACK_DIR" ] && [ "$MODE" = dry ]; then
  PACK_OUT=$WORK/pack
  [ -f "$PACK_OUT/MANIFEST" ] || make_pack "$PACK_OUT" >> "$LOG"
  PACK_DIR=$PACK_OUT
fi
[ -n "$PACK_DIR" ] || die "no pack: make one with --pack on Debian 12 and pass --pack-dir (docs/device-check.md)"
if [ -f "$PACK_DIR" ]; then
  rm -rf "$WORK/unpacked"
  mkdir -p "$WORK/unpacked"
  tar -C "$WORK/unpacked" -xJf "$PACK_DIR"
  PACK_DIR=$(find "$WORK/unpacked" -mindepth 2 -maxdepth 2 -name MANIFEST -printf '%h\n' | head -1)
fi
PACK_DIR=$(cd "$PACK_DIR" && pwd -P)
[ -f "$PACK_DIR/MANIFEST" ] || die "$PACK_DIR is not a pack (no MANIFEST)"
say "pack $PACK_DIR: $(head -1 "$PACK_DIR/MANIFEST")"

# LibTorch: PyTorch's on a GPU machine, Debian's for a dry run.
if [ -z "$TORCH" ]; then
  if [ "$MODE" = gpu ]; then
    TORCH=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)') ||
      die "cannot import torch: give --torch DIR (a folder with TorchConfig.cmake)"
  else
    TORCH=$(dirname "$(find /usr/lib /usr/local /opt -name TorchConfig.cmake -path '*Torch*' 2>/dev/null | head -1)")
  fi
fi
if [ -f "$TORCH/TorchConfig.cmake" ]; then
  TORCH_DIR=$TORCH
elif [ -f "$TORCH/Torch/TorchConfig.cmake" ]; then
  TORCH_DIR=$TORCH/Torch
else
  die "no TorchConfig.cmake in $TORCH or $TORCH/Torch"
fi
TORCH_DIR=$(cd "$TORCH_DIR" && pwd -P)
TORCH_VERSION=$(sed -n 's/^set(PACKAGE_VERSION "\(.*\)")/\1/p' "$TORCH_DIR/TorchConfigVersion.cmake" 2>/dev/null || true)
say "LibTorch ${TORCH_VERSION:-?} at $TORCH_DIR"

# What this machine has against what the pack needs. The pack's C++
# libraries use libstdc++'s new ABI, so a LibTorch built with the old one
# (PyTorch pip wheels before 2.7) cannot link with them.
if grep -q '_GLIBCXX_USE_CXX11_ABI=0' "$TORCH_DIR/TorchConfig.cmake"; then
  say "stop: this LibTorch uses libstdc++'s old ABI (_GLIBCXX_USE_CXX11_ABI=0, PyTorch wheels before 2.7); the pack's libraries use the new one. Use PyTorch 2.7 or later, or LibTorch's cxx11-abi build (docs/device-check.md)"
  exit 3
fi
GLIBC=$(getconf GNU_LIBC_VERSION | awk '{print $2}')
NEED_GLIBC=$(sed -n 's/^needs glibc GLIBC_\([0-9.]*\).*/\1/p' "$PACK_DIR/MANIFEST")
if [ -n "$NEED_GLIBC" ] && [ "$(printf '%s\n%s\n' "$NEED_GLIBC" "$GLIBC" | sort -V | head -1)" != "$NEED_GLIBC" ]; then
  say "stop: glibc $GLIBC here; the pack's libraries need $NEED_GLIBC (Debian 12's)"
  exit 3
fi
[ -d /usr/local/cuda/bin ] && PATH=$PATH:/usr/local/cuda/bin
for tool in cmake ninja c++; do
  command -v $tool > /dev/null || die "$tool is missing"
done
say "tools: $(cmake --version | head -1), ninja $(ninja --version), $(c++ --version | head -1), glibc $GLIBC"
if [ "$MODE" = gpu ]; then
  say "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
  command -v nvcc > /dev/null && say "nvcc: $(nvcc --version | tail -1)"
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>/dev/null | while read -r l; do say "python: $l"; done
fi

# ------------------------------------------------------------------ build
BUILD=$WORK/build
PACK_LIB=$PACK_DIR/lib/$ARCH
export LD_LIBRARY_PATH=$PACK_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
TARGETS=(engine_test engine_text_test engine_torch_test engine_device_test
         safetensors_test common_unit_test engine_device_check engine_bench
         lathe-worker)
CMAKE_ARGS=(-S "$REPO" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
  -DLATHE_ENGINE_ONLY=ON -DLATHE_BUILD_TESTS=ON
  -DTorch_DIR="$TORCH_DIR"
  -Dabsl_DIR="$PACK_LIB/cmake/absl" -Dspdlog_DIR="$PACK_LIB/cmake/spdlog"
  -Dfmt_DIR="$PACK_LIB/cmake/fmt" -DGTest_DIR="$PACK_LIB/cmake/GTest"
  -Dnlohmann_json_DIR="$PACK_DIR/share/cmake/nlohmann_json"
  -DCMAKE_PREFIX_PATH="$PACK_DIR"
  -DPKG_CONFIG_EXECUTABLE="$PACK_DIR/bin/pkg-config"
  -DLATHE_FIXTURES_DIR="$PACK_DIR/fixtures"
  -DCMAKE_BUILD_RPATH="$PACK_LIB")
command -v ccache > /dev/null && CMAKE_ARGS+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
# A pip LibTorch finds its CUDA libraries (pip's nvidia-* packages) through
# its own RUNPATH at run time; the linker need not resolve them.
# shellcheck disable=SC2054 # the comma is the linker's.
[ "$MODE" = gpu ] && CMAKE_ARGS+=(-DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined)
step configure 120 cmake "${CMAKE_ARGS[@]}" || exit 1
grep -h "LibTorch with CUDA" "$STEP_OUT" | tail -1 | sed 's/^-- /build: /' | tee -a "$OUT_FILE"
step build "$BUDGET" ninja -C "$BUILD" -j"$JOBS" "${TARGETS[@]}" || exit 1
B=$BUILD/worker/engine

# Dry run: every library our programs load directly is LibTorch's, the
# machine's base, or the pack's, and no header of a packed library came from
# the system (a pack missing it would break on the GPU machine). GPU: every
# library they need is found.
check_pack_use() {
  local f lib bad=0
  for f in "$B/engine_torch_test" "$B/engine_device_check" "$B/liblathe_spm.so"; do
    if [ "$MODE" = gpu ]; then
      if ldd "$f" | grep 'not found'; then bad=1; fi
      continue
    fi
    for lib in $(readelf -d "$f" | sed -n 's/.*NEEDED.*\[\(.*\)\]/\1/p'); do
      if ! [[ $lib =~ $BASE_LIBS ]] && [ ! -e "$PACK_LIB/$lib" ]; then
        echo "$(basename "$f") needs $lib, which is neither in the pack nor the base"
        bad=1
      fi
    done
  done
  local leaks
  leaks=$(ninja -C "$BUILD" -t deps | grep -E '^ +/usr/include/(absl|spdlog|fmt|nlohmann|gtest|gmock|unicode|sentencepiece)' | sort -u | head -5 || true)
  if [ -n "$leaks" ]; then
    echo "headers from the system instead of the pack:"
    echo "$leaks"
    bad=1
  fi
  return $bad
}
if check_pack_use > "$STEP_OUT" 2>&1; then
  say "pack use: every library and header from the pack, LibTorch or the base system"
else
  say "pack use: FAILED"
  sed 's/^/    /' "$STEP_OUT" | tee -a "$OUT_FILE"
fi

# ------------------------------------------------------------------ tests
step "engine tests" 240 ctest --test-dir "$BUILD" -L engine -j"$JOBS" --output-on-failure --timeout 200 || true
say "engine tests: $(grep -E 'tests passed' "$STEP_OUT" | tail -1)"
if step devices 30 "$B/engine_device_check" devices; then
  sed 's/^/devices: /' "$STEP_OUT" | tee -a "$OUT_FILE"
fi

# ---------------------------------------------------------------- compare
FIX=$PACK_DIR/fixtures/tiny-tinyllama-spm
if [ "$MODE" = gpu ]; then DEVICE=cuda; else DEVICE=cpu; fi
# compare DTYPE LIMIT [--adapter]: the fixture's conversations on $DEVICE
# in DTYPE against the CPU in float32 and Hugging Face's logits.
compare() {
  local dtype=$1 limit=$2 extra=() reference=$FIX/logits0.safetensors name=base
  if [ "${3:-}" = --adapter ]; then
    extra=(--adapter "$FIX/adapter_ref")
    reference=$FIX/lora_logits0.safetensors
    name="base + LoRA"
  fi
  local status=0
  step "compare $name $DEVICE $dtype" 60 \
    "$B/engine_device_check" compare --model "$FIX/model" --data "$FIX/train.jsonl" \
    "${extra[@]}" --device "$DEVICE" --dtype "$dtype" \
    --reference-logits "$reference" --max-logit-diff "$limit" || status=$?
  grep -E '^(compare|reference)' "$STEP_OUT" | sed "s/^/$name: /" | tee -a "$OUT_FILE"
  [ $status -eq 0 ] && say "$name $DEVICE $dtype: within $limit"
  return 0
}
compare float32 1e-3
compare bfloat16 0.5
compare bfloat16 0.5 --adapter

# ----------------------------------------------------------------- matmul
if [ "$MODE" = gpu ]; then MM=(--size 8192 --seconds 3); else MM=(--size 512 --seconds 1); fi
MATMUL_TFLOPS=
if step "matmul bf16" 60 "$B/engine_device_check" matmul --device "$DEVICE" --dtype bfloat16 "${MM[@]}"; then
  line=$(grep '^matmul ' "$STEP_OUT" | tail -1)
  say "$line"
  MATMUL_TFLOPS=$(echo "$line" | sed -n 's/.*: \([0-9.e+-]*\) TFLOP\/s$/\1/p')
fi

# ------------------------------------------------------------ benchmarks
# A Llama-3.2-1B shape on the GPU; a tiny one for a dry run.
if [ "$MODE" = gpu ]; then
  SHAPE=(--hidden=2048 --intermediate=8192 --layers=16 --heads=32 --kv_heads=8
         --vocab=128256 --seq_len=2048 --batch=4 --steps=6 --warmup_steps=2
         --threads=8)
else
  SHAPE=(--hidden=128 --intermediate=344 --layers=2 --heads=4 --kv_heads=2
         --vocab=2048 --seq_len=128 --batch=2 --steps=3 --warmup_steps=1
         --threads=2)
fi
shape_value() {  # shape_value hidden -> 2048
  local a
  for a in "${SHAPE[@]}"; do [ "${a%%=*}" = "--$1" ] && echo "${a#*=}"; done
}
# Model FLOPs per token: 2 per weight of the projections and the head for
# the forward pass, as much again for the gradients of the activations and,
# in full fine-tuning, as much again for the weights' (6N, or 4N for LoRA,
# whose frozen weights get no gradient); attention adds 12 * layers *
# hidden * seq_len (PaLM's convention).
flops_per_token() {
  python3 - "$1" "$(shape_value hidden)" "$(shape_value intermediate)" \
    "$(shape_value layers)" "$(shape_value heads)" "$(shape_value kv_heads)" \
    "$(shape_value vocab)" "$(shape_value seq_len)" <<'EOF'
import sys
method, d, inter, layers, heads, kv, vocab, seq = sys.argv[1], *map(int, sys.argv[2:])
kv_dim = d * kv // heads
n = layers * (2 * d * d + 2 * d * kv_dim + 3 * d * inter) + vocab * d
print((6 if method == "full" else 4) * n + 12 * layers * d * seq)
EOF
}
# figures METHOD TOKENS_PER_S PEAK_MIB SOURCE: one line with the MFU.
figures() {
  python3 - "$@" "$(flops_per_token "$1")" "${MATMUL_TFLOPS:-0}" "$MODE" <<'EOF'
import sys
method, tps, peak, source, fpt, matmul, mode = sys.argv[1:8]
tps, fpt, matmul = float(tps), float(fpt), float(matmul)
achieved = tps * fpt / 1e12
line = f"{source} {method}: {tps:.0f} tokens/s, {achieved:.3g} TFLOP/s"
if mode == "gpu":
    line += f", MFU {100 * achieved / 989:.1f}% of 989 TFLOP/s"
if matmul > 0:
    line += f", {100 * achieved / matmul:.1f}% of the measured bf16 matmul"
line += f", peak memory {peak}"
print(line)
EOF
}
ENGINE_DEVICE_FLAGS=()
if "$B/engine_bench" --help | grep -q -- '--device'; then
  ENGINE_DEVICE_FLAGS=(--device="$DEVICE" --dtype=bfloat16)
  [ "$MODE" = dry ] && ENGINE_DEVICE_FLAGS=(--device=cpu --dtype=float32)
fi
declare -A ENGINE_TPS
for method in lora full; do
  if [ "$MODE" = gpu ] && [ ${#ENGINE_DEVICE_FLAGS[@]} -eq 0 ]; then
    say "engine $method: skipped (this engine_bench has no --device flag yet: it would run on the CPU)"
    continue
  fi
  if step "engine bench $method" 180 \
      "$B/engine_bench" "${SHAPE[@]}" --method=$method --lora_rank=16 "${ENGINE_DEVICE_FLAGS[@]}"; then
    out=$STEP_OUT
    tps=$(sed -n 's/^tokens\/s: \([0-9]*\).*/\1/p' "$out")
    peak=$(sed -n 's/^peak device memory: \(.*\)/\1/p' "$out")
    [ -n "$peak" ] || peak="$(sed -n 's/^peak RSS: \(.*\)/\1/p' "$out") (RSS)"
    ENGINE_TPS[$method]=$tps
    say "$(figures $method "$tps" "$peak" engine)"
  fi
done

# Several LoRA jobs at once in one process over one shared copy of the base
# (issue 17; its goal on a GPU: at least 1.5x the aggregate tokens/s of the
# same jobs one after another).
if "$B/engine_bench" --help | grep -q -- '--jobs'; then
  if step "engine bench 4 LoRA jobs on one base" 240 \
      "$B/engine_bench" "${SHAPE[@]}" --method=lora --lora_rank=16 --jobs=4 "${ENGINE_DEVICE_FLAGS[@]}"; then
    say "engine 4 LoRA jobs on one base: $(grep -E '^(base|4 jobs|aggregate)' "$STEP_OUT" | tr '\n' ';')"
  fi
fi

# transformers + PEFT on the same shape, when they import.
if python3 -c 'import torch, transformers, peft' > /dev/null 2>&1; then
  HF_DEVICE=$DEVICE
  for method in lora full; do
    if step "transformers $method" 180 \
        python3 "$REPO/scripts/device_check_hf.py" --method $method --device "$HF_DEVICE" "${SHAPE[@]}"; then
      out=$STEP_OUT
      tps=$(sed -n 's/^tokens\/s: \([0-9.]*\).*/\1/p' "$out")
      peak=$(sed -n 's/^peak memory: \(.*\)/\1/p' "$out")
      say "$(figures $method "$tps" "$peak" transformers)"
      if [ -n "${ENGINE_TPS[$method]:-}" ]; then
        say "engine / transformers $method: $(python3 -c "print(f'{${ENGINE_TPS[$method]} / $tps:.2f}')")x tokens/s"
      fi
    fi
  done
else
  say "transformers: skipped (python3 cannot import torch, transformers and peft)"
fi

say "done in $((SECONDS - START)) s; figures in $OUT_FILE, log in $LOG"
if grep -q FAILED "$OUT_FILE"; then exit 1; fi
