#!/usr/bin/env bash
# Makes a private certificate authority and the certificates a Lathe
# deployment needs, with openssl (EC P-256 keys):
#
#   OUT/ca.pem, ca.key          the CA (keep ca.key offline in production)
#   OUT/server.pem, server.key  lathed's certificate (--tls_cert/--tls_key),
#                               valid for localhost, 127.0.0.1, ::1 and HOSTs
#   OUT/worker.pem, worker.key  a worker client certificate (mutual TLS:
#                               lathed --worker_client_ca OUT/ca.pem,
#                               lathe-worker --tls_cert/--tls_key)
#
# Usage: scripts/make-certs.sh OUT [HOST|IP ...]
# An existing OUT/ca.pem is reused, so more certificates can be issued later.
set -euo pipefail
out=${1:?usage: scripts/make-certs.sh OUT [HOST|IP ...]}
shift
mkdir -p "$out"
umask 077
days=825

san="DNS:localhost,IP:127.0.0.1,IP:::1"
for h in "$@"; do
  if [[ $h =~ ^[0-9.]+$ || $h == *:* ]]; then san+=",IP:$h"; else san+=",DNS:$h"; fi
done

if [ ! -f "$out/ca.pem" ]; then
  openssl ecparam -name prime256v1 -genkey -noout -out "$out/ca.key"
  openssl req -x509 -new -key "$out/ca.key" -sha256 -days 3650 \
    -subj "/CN=Lathe private CA" -out "$out/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

# issue NAME CN EXTENSIONS
issue() {
  local name=$1 cn=$2 ext=$3
  openssl ecparam -name prime256v1 -genkey -noout -out "$out/$name.key"
  openssl req -new -key "$out/$name.key" -subj "/CN=$cn" -out "$out/$name.csr" 2>/dev/null
  printf '%b' "$ext" > "$out/$name.ext"
  openssl x509 -req -in "$out/$name.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" \
    -CAcreateserial -days "$days" -sha256 -extfile "$out/$name.ext" \
    -out "$out/$name.pem" 2>/dev/null
  rm -f "$out/$name.csr" "$out/$name.ext"
}

issue server lathed "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=$san\n"
issue worker lathe-worker "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"
chmod 644 "$out/ca.pem" "$out/server.pem" "$out/worker.pem"
echo "certificates in $out: ca.pem, server.pem/.key ($san), worker.pem/.key"
