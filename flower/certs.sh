#!/usr/bin/env bash
# A throw-away certificate authority and a SuperLink certificate for a TLS deployment (one machine or a
# LAN). Usage: flower/certs.sh OUT_DIR [HOST ...]   (default hosts: localhost 127.0.0.1 ::1)
# Writes OUT_DIR/ca.crt (give it to every SuperNode and to `flwr`: root-certificates), OUT_DIR/server.pem
# and OUT_DIR/server.key (the SuperLink's), and OUT_DIR/ca.key (keep it private; it signs certificates).
# For devices on a real network list the SuperLink's public name or address as HOST.
set -euo pipefail
out=${1:?usage: certs.sh OUT_DIR [HOST ...]}
shift
hosts=("$@")
[ ${#hosts[@]} -gt 0 ] || hosts=(localhost 127.0.0.1 ::1)
mkdir -p "$out"
san=""
for h in "${hosts[@]}"; do
  if [[ $h =~ ^[0-9.]+$ || $h == *:* ]]; then san+="IP:$h,"; else san+="DNS:$h,"; fi
done
san=${san%,}
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out "$out/ca.key"
openssl req -x509 -new -nodes -key "$out/ca.key" -sha256 -days 365 -subj "/CN=fedrec-flower-ca" \
  -out "$out/ca.crt"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out "$out/server.key"
openssl req -new -key "$out/server.key" -subj "/CN=${hosts[0]}" -out "$out/server.csr"
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
  "$san" >"$out/server.ext"
openssl x509 -req -in "$out/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
  -days 365 -sha256 -extfile "$out/server.ext" -out "$out/server.pem" 2>/dev/null
rm -f "$out/server.csr" "$out/server.ext" "$out/ca.srl"
chmod 600 "$out/ca.key" "$out/server.key"
echo "$out: ca.crt server.pem server.key (SAN $san)"
