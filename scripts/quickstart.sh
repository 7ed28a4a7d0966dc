#!/usr/bin/env bash
# The main job, end to end on this machine: build Lathe, start lathed and one
# lathe-worker, make a tiny demo model and chat dataset, upload it, create a
# LoRA fine-tuning job, follow it, and download the adapter.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
bash scripts/install-deps.sh
bash scripts/build.sh

BIN="$ROOT/build"
WORK="$ROOT/.lathe/quickstart"
PORT=${LATHE_PORT:-7070}
export LATHE_SERVER="127.0.0.1:$PORT"
LATHE="$BIN/cli/lathe"
rm -rf "$WORK"   # a fresh demo each run
mkdir -p "$WORK"

echo "== Making the demo model and dataset in $WORK/demo"
"$BIN/worker/agent/lathe-worker" make-demo --out "$WORK/demo"

echo "== Making a private CA and certificates in $WORK/certs (TLS, mutual TLS for workers)"
bash scripts/make-certs.sh "$WORK/certs"
export LATHE_CA_CERT="$WORK/certs/ca.pem"

WORKER_PORT=${LATHE_WORKER_PORT:-7071}
echo "== Starting lathed on $LATHE_SERVER, workers on port $WORKER_PORT (data in $WORK/data, log $WORK/lathed.log)"
rm -f "$WORK/lathed.port"
"$BIN/server/lathed" --listen "$LATHE_SERVER" --worker_listen "127.0.0.1:$WORKER_PORT" \
  --tls_cert "$WORK/certs/server.pem" --tls_key "$WORK/certs/server.key" \
  --worker_client_ca "$WORK/certs/ca.pem" --data_dir "$WORK/data" \
  --base_model "lathe-demo=$WORK/demo/model" --port_file "$WORK/lathed.port" \
  >"$WORK/lathed.log" 2>&1 &
LATHED_PID=$!
trap 'kill $LATHED_PID 2>/dev/null; wait 2>/dev/null' EXIT
for _ in $(seq 100); do [ -s "$WORK/lathed.port" ] && break; sleep 0.1; done
[ -s "$WORK/lathed.port" ] || { cat "$WORK/lathed.log"; echo "lathed did not start"; exit 1; }

echo "== Starting one lathe-worker (log $WORK/worker.log)"
"$BIN/worker/agent/lathe-worker" serve --server "127.0.0.1:$WORKER_PORT" \
  --ca_cert "$WORK/certs/ca.pem" --tls_cert "$WORK/certs/worker.pem" \
  --tls_key "$WORK/certs/worker.key" --token_file "$WORK/data/worker.token" \
  --work_dir "$WORK/worker" >"$WORK/worker.log" 2>&1 &
WORKER_PID=$!
trap 'kill $WORKER_PID $LATHED_PID 2>/dev/null; wait 2>/dev/null' EXIT

echo "== Creating an API key for project \"demo\" (with the admin key lathed wrote)"
LATHE_API_KEY=$("$LATHE" --api_key "$(cat "$WORK/data/admin.key")" \
  admin keys create --project demo --name quickstart -o json |
  sed -n 's/.*"secret": "\([^"]*\)".*/\1/p')
export LATHE_API_KEY

echo "== Uploading the training file"
FILE_ID=$("$LATHE" files upload "$WORK/demo/train.jsonl" -o json | sed -n 's/.*"id": "\(file-[^"]*\)".*/\1/p')
echo "file: $FILE_ID"

echo "== Creating a LoRA fine-tuning job"
JOB_ID=$("$LATHE" jobs create --model lathe-demo --training-file "$FILE_ID" \
  --n-epochs 3 --batch-size 4 --learning-rate-multiplier 10 --suffix quickstart \
  --lora-target-modules q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj \
  -o json | sed -n 's/.*"id": "\(ftjob-[^"]*\)".*/\1/p')
echo "job: $JOB_ID"

echo "== Following its events"
"$LATHE" jobs events "$JOB_ID" --follow
echo "== Final state"
"$LATHE" jobs wait "$JOB_ID"

echo "== Downloading the adapter"
"$LATHE" jobs download "$JOB_ID" --out "$WORK/adapter"
echo
echo "The adapter (Hugging Face PEFT layout) is in $WORK/adapter"
