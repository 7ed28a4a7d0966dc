#!/usr/bin/env bash
# Writes the files an overlay's secretGenerator reads (never commit them;
# .gitignore keeps overlays/*/secrets/ out of git):
#
#   OUT/ca.pem, OUT/ca.key            the private CA (scripts/make-certs.sh;
#                                     move ca.key somewhere offline)
#   OUT/server.pem, OUT/server.key    lathed's certificate, valid for the
#                                     Services' names in NAMESPACE and HOSTs
#   OUT/worker.pem, OUT/worker.key    the workers' client certificate
#   OUT/worker.token                  the worker token (kept if present)
#   OUT/admin.key                     the bootstrap admin key (kept if present)
#
# Usage: deploy/kubernetes/make-secrets.sh OUT NAMESPACE [HOST|IP ...]
#   e.g. deploy/kubernetes/make-secrets.sh deploy/kubernetes/overlays/cpu/secrets lathe
# HOSTs: the names users dial from outside (an Ingress or LoadBalancer name).
# An existing OUT/ca.pem is reused, so running it again renews the
# certificates under the same CA.
set -euo pipefail
out=${1:?usage: make-secrets.sh OUT NAMESPACE [HOST|IP ...]}
ns=${2:?usage: make-secrets.sh OUT NAMESPACE [HOST|IP ...]}
shift 2
here=$(cd "$(dirname "$0")" && pwd)

names=()
for svc in lathed-api lathed-workers; do
  names+=("$svc" "$svc.$ns" "$svc.$ns.svc" "$svc.$ns.svc.cluster.local")
done
bash "$here/../../scripts/make-certs.sh" "$out" "${names[@]}" "$@"

umask 077
# secret FILE PREFIX: a random secret in FILE unless it holds one already.
secret() {
  if [ ! -s "$1" ]; then
    printf '%s%s\n' "$2" "$(openssl rand -hex 32)" > "$1"
  fi
}
secret "$out/worker.token" wt-
secret "$out/admin.key" sk-
rm -f "$out/ca.srl"
echo "worker token and admin key in $out (worker.token, admin.key)"
