#!/usr/bin/env bash
# Test certificates made with openssl: two CAs, a server certificate from each (SAN localhost and
# 127.0.0.1), and client certificates "operator" and "intruder" from the first CA.
#   make_certs.sh DIR
set -euo pipefail
d="$1"
mkdir -p "$d"
cd "$d"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
for ca in ca1 ca2; do
  key $ca.key
  openssl req -x509 -new -key $ca.key -subj "/CN=kvidx test $ca" -days 2 -out $ca.pem 2>/dev/null
done
# sign NAME CA EXT
sign() {
  key "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$4" -out "$1.csr" 2>/dev/null
  printf '%s\n' "$3" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -days 2 \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
}
server_ext='subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth'
sign server1 ca1 "$server_ext" localhost
sign server2 ca2 "$server_ext" localhost
sign operator ca1 'extendedKeyUsage=clientAuth' operator
sign intruder ca1 'extendedKeyUsage=clientAuth' intruder
echo done >certs.ok
