#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ with AddressSanitizer and
# UndefinedBehaviorSanitizer (clang-14) into build-fuzz/, runs each for a
# bounded time on a copy of its seed corpus (fuzz/corpus/<target>/, left
# untouched), and prints executions per target. Fails, naming the
# reproducer, when any target finds a crash, a leak, undefined behaviour, a
# timeout or an out-of-memory.
#
# FUZZ_SECONDS: seconds per target (default 40); 0 only runs the seeds.
# FUZZ_TARGETS: the targets to run (default: all, as listed below).
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=build-fuzz
SECONDS_PER_TARGET=${FUZZ_SECONDS:-40}
# target:max_len (bytes); seeds are well below these.
ALL_TARGETS=(
  jsonl_validator:4096
  model_config:4096
  safetensors:4096
  tokenizer_encode:1024
  tokenizer_load:4096
)
read -r -a WANTED <<< "${FUZZ_TARGETS:-}"

if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  CXX=clang++-14 cmake -S fuzz -B "$BUILD_DIR" -G Ninja
fi
ninja -C "$BUILD_DIR" -j"$(nproc)"

# Scratch files of the targets that read from disk: tmpfs when there is one
# (the safetensors round trip fsyncs on every input).
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  SCRATCH=$(mktemp -d /dev/shm/lathe-fuzz.XXXXXX)
else
  SCRATCH=$(mktemp -d "$PWD/$BUILD_DIR/scratch.XXXXXX")
fi
trap 'rm -rf "$SCRATCH"' EXIT

if [ -x /usr/lib/llvm-14/bin/llvm-symbolizer ]; then
  export ASAN_SYMBOLIZER_PATH=/usr/lib/llvm-14/bin/llvm-symbolizer
fi
export UBSAN_OPTIONS=print_stacktrace=1

# The value of libFuzzer's final statistic `name` in `log`, or "-".
stat() {
  local value
  value=$(sed -n "s/^stat::$1: *//p" "$2" | tail -n 1)
  echo "${value:--}"
}

rows=()
failed=0
for entry in "${ALL_TARGETS[@]}"; do
  name=${entry%%:*}
  max_len=${entry##*:}
  if [ ${#WANTED[@]} -gt 0 ] && [[ ! " ${WANTED[*]} " =~ " $name " ]]; then
    continue
  fi
  run="$BUILD_DIR/run/$name"
  rm -rf "$run"
  mkdir -p "$run/corpus" "$run/artifacts"
  cp fuzz/corpus/"$name"/* "$run/corpus/"
  echo "fuzzing $name for ${SECONDS_PER_TARGET}s"
  # libFuzzer reads -max_total_time=0 as "no limit".
  bound=-max_total_time="$SECONDS_PER_TARGET"
  if [ "$SECONDS_PER_TARGET" -eq 0 ]; then bound=-runs=0; fi
  status=0
  TMPDIR="$SCRATCH" "$BUILD_DIR/${name}_fuzzer" "$bound" -max_len="$max_len" \
    -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    -dict="fuzz/dict/$name.dict" -artifact_prefix="$run/artifacts/" \
    "$run/corpus" > "$run/log" 2>&1 || status=$?
  result=ok
  if [ "$status" -ne 0 ] || [ -n "$(ls -A "$run/artifacts")" ]; then
    result=FAILED
    failed=1
    tail -n 60 "$run/log"
    for reproducer in "$run"/artifacts/*; do
      [ -e "$reproducer" ] || continue
      echo "$name: reproducer $reproducer"
      echo "  rerun: $BUILD_DIR/${name}_fuzzer $reproducer"
    done
    echo "$name: full log $run/log"
  fi
  rows+=("$(printf '%-18s %12s %10s %8s  %s' "$name" \
    "$(stat number_of_executed_units "$run/log")" \
    "$(stat average_exec_per_sec "$run/log")" \
    "$(find "$run/corpus" -type f | wc -l)" "$result")")
done

printf '\n%-18s %12s %10s %8s  %s\n' target executions exec/s corpus result
printf '%s\n' "${rows[@]}"
exit "$failed"
