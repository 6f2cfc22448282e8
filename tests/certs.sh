#!/bin/sh
# Test certificates as cert-manager's CA issuer would mount them: a CA (<prefix>ca.crt) and a server certificate
# it signed (<prefix>tls.crt, <prefix>tls.key) for the given names, in DIR. Used by the crates' TLS tests.
# Usage: tests/certs.sh DIR PREFIX SUBJECT_ALT_NAMES   (e.g. "DNS:localhost,IP:127.0.0.1")
set -eu
dir=$1 p=$2 sans=$3
cd "$dir"
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
  "$sans" >"${p}ext.cnf"
ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
openssl req -x509 $ec -keyout "${p}ca.key" -out "${p}ca.crt" -days 2 -subj "/CN=test ca $p" 2>/dev/null
openssl req $ec -keyout "${p}tls.key" -out "${p}tls.csr" -subj /CN=localhost 2>/dev/null
openssl x509 -req -in "${p}tls.csr" -CA "${p}ca.crt" -CAkey "${p}ca.key" -CAcreateserial -out "${p}tls.crt" \
  -days 2 -extfile "${p}ext.cnf" 2>/dev/null
