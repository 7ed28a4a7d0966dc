#!/usr/bin/env bash
# compare_hf_reference.sh: Lathe's engine_bench and hf_reference.py (the
# transformers + PEFT training step re-implemented in PyTorch, on the same
# LibTorch) side by side, alternating runs, on chat and on text data, and a
# table of tokens/s and peak RSS per run.
#
#   worker/engine/bench/compare_hf_reference.sh [common flags...]
#
# Common flags (engine_bench's names, both programs take them) go to both, e.g.
# --hidden=256 --seq_len=256 --batch=4 --lora_rank=16; with none, both use
# their defaults, the shape of issue 13.  Environment:
#   RUNS=3               runs per program and data kind
#   DATA="chat text"     the data kinds
#   ENGINE_BENCH=build/worker/engine/engine_bench
#   PYTHON=/usr/bin/python3   a Python with torch (Debian's python3-torch)
#   ENGINE_ARGS= HF_ARGS=     extra flags for one side only
#   WAIT_QUIET=1         before each run wait (up to WAIT_MAX_S=2400 in all)
#                        until the CPUs are below MAX_BUSY_PCT=15 % busy over
#                        3 s and no cc1plus runs (the load average is not
#                        used: the previous run's own load lingers in it)
#   OMP_WAIT_POLICY=PASSIVE   (default here; both sides get it)
set -u
cd "$(dirname "$0")/../../.."
RUNS=${RUNS:-3}
DATA=${DATA:-"chat text"}
ENGINE_BENCH=${ENGINE_BENCH:-build/worker/engine/engine_bench}
PYTHON=${PYTHON:-/usr/bin/python3}
HF=worker/engine/bench/hf_reference.py
WAIT_QUIET=${WAIT_QUIET:-1}
WAIT_MAX_S=${WAIT_MAX_S:-2400}
MAX_BUSY_PCT=${MAX_BUSY_PCT:-15}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
read -r -a engine_extra <<<"${ENGINE_ARGS:-}"
read -r -a hf_extra <<<"${HF_ARGS:-}"

[[ -x $ENGINE_BENCH ]] || { echo "no $ENGINE_BENCH (build it first)" >&2; exit 1; }
"$PYTHON" -c 'import torch' 2>/dev/null ||
  { echo "$PYTHON has no torch (apt-get install -y python3-torch)" >&2; exit 1; }

cpu_busy_pct() {  # percent of all CPU time not idle over 3 seconds
  local a b
  a=$(awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8, $5+$6}' /proc/stat)
  sleep 3
  b=$(awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8, $5+$6}' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN{split(a, x, " "); split(b, y, " ");
    t = y[1] - x[1]; i = y[2] - x[2]; printf "%d", (t > 0 ? 100 * (t - i) / t : 0)}'
}

waited=0
wait_quiet() {
  [[ $WAIT_QUIET == 1 ]] || return 0
  while :; do
    local pct cc
    pct=$(cpu_busy_pct)
    cc=$(pgrep -c -x cc1plus || true)
    if ((pct < MAX_BUSY_PCT)) && [[ $cc == 0 ]]; then
      return 0
    fi
    if ((waited >= WAIT_MAX_S)); then
      echo "# still busy (${pct}% CPU, $cc cc1plus) after ${waited}s; running anyway" >&2
      return 0
    fi
    sleep 12
    waited=$((waited + 15))
  done
}

rows=()
run_one() {  # program data run
  local prog=$1 data=$2 run=$3 out load
  wait_quiet
  load=$(cut -d' ' -f1 /proc/loadavg)  # reported only
  if [[ $prog == lathe ]]; then
    out=$("$ENGINE_BENCH" --data="$data" "${common[@]}" "${engine_extra[@]}" 2>&1)
  else
    out=$("$PYTHON" "$HF" --data="$data" "${common[@]}" "${hf_extra[@]}" 2>&1)
  fi
  local rc=$?
  local tps rss pad
  tps=$(sed -n 's/^tokens\/s: \([0-9]*\).*/\1/p' <<<"$out")
  rss=$(sed -n 's/^peak RSS: \([0-9]*\) MiB.*/\1/p' <<<"$out")
  pad=$(sed -n 's/^padding tokens: \(.*\) computed.*/\1/p' <<<"$out")
  if ((rc != 0)) || [[ -z $tps ]]; then
    echo "# $prog $data run $run failed (rc $rc):" >&2
    echo "$out" >&2
    tps=failed
  fi
  [[ $run == 1 ]] && echo "$out" | sed 's/^/#   /' >&2
  rows+=("$prog|$data|$run|$tps|${rss:--}|${pad:--}|$load")
  echo "# $prog $data run $run: $tps tokens/s, peak RSS ${rss:--} MiB (load before $load)" >&2
}

common=("$@")
for data in $DATA; do
  for ((run = 1; run <= RUNS; ++run)); do
    run_one lathe "$data" "$run"
    run_one hf "$data" "$run"
  done
done

median() { sort -n | awk '{a[NR]=$1} END{if (NR) print (NR%2 ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)); else print "-"}'; }

echo
echo "| program | data | run | tokens/s | peak RSS (MiB) | padding computed (whole run) | 1-min load before (incl. the previous run) |"
echo "|---|---|---|---|---|---|---|"
for r in "${rows[@]}"; do
  IFS='|' read -r prog data run tps rss pad load <<<"$r"
  name=$([[ $prog == lathe ]] && echo "Lathe engine_bench" || echo "HF reference (hf_reference.py)")
  echo "| $name | $data | $run | $tps | $rss | $pad | $load |"
done
echo
echo "| data | Lathe tokens/s (median) | HF ref tokens/s (median) | speed-up | Lathe peak RSS | HF ref peak RSS |"
echo "|---|---|---|---|---|---|"
for data in $DATA; do
  col() { printf '%s\n' "${rows[@]}" | awk -F'|' -v p="$1" -v d="$data" -v c="$2" '$1==p && $2==d && $4!="failed" {print $c}' | median; }
  lt=$(col lathe 4) ht=$(col hf 4) lr=$(col lathe 5) hr=$(col hf 5)
  ratio=$(awk -v a="$lt" -v b="$ht" 'BEGIN{if (b > 0) printf "%.2fx", a / b; else print "-"}')
  echo "| $data | $lt | $ht | $ratio | $lr MiB | $hr MiB |"
done
