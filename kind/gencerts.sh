#!/usr/bin/env bash
# kind/gencerts.sh OUTDIR [NAMESPACE] [SERVICE]: makes, with openssl, a CA, the tailer's server
# certificate (SANs: the Service's DNS names) and the forwarder's client certificate, and
# writes OUTDIR/secrets.yaml with the two Secrets that hold them:
#   audittailer-server  ca.crt tls.crt tls.key   mounted by the tailer (kind/tailer*.yaml)
#   audittailer-client  ca.crt tls.crt tls.key   read by the sidecar through the API
#                                                (AUDIT_SECRET_NAME, AUDIT_TLS_*_FILE)
# Apply with `kubectl apply -f OUTDIR/secrets.yaml` after kind/namespace.yaml.
# Defaults: namespace audit, Service audittailer. Valid for 30 days.
set -euo pipefail

if [ $# -lt 1 ] || [ $# -gt 3 ]; then
    echo "usage: $0 OUTDIR [NAMESPACE] [SERVICE]" >&2
    exit 2
fi
out=$1
namespace=${2:-audit}
service=${3:-audittailer}
command -v openssl >/dev/null 2>&1 || { echo "gencerts: missing: openssl" >&2; exit 1; }
mkdir -p "$out"
cd "$out"

days=30
# ECDSA P-256: quick to make, and what both rustls and fluentd's OpenSSL accept.
newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)

# A v3 CA with keyCertSign: webpki (rustls) refuses v1 certificates and CAs without it.
openssl req -x509 "${newkey[@]}" -keyout ca.key -out ca.crt -days "$days" \
    -subj "/CN=audit-forwarder kind CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

# leaf NAME CN EXTENSIONS: a key and a certificate signed by the CA, extensions in an
# extfile because `openssl x509 -req` drops those of the request.
leaf() {
    openssl req -new "${newkey[@]}" -keyout "$1.key" -out "$1.csr" -subj "/CN=$2" 2>/dev/null
    printf '%s\n' "$3" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
        -days "$days" -sha256 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}

# The names the sidecar may use as AUDIT_TLS_VHOST: the short Service name (the default in
# kind/apiserver-patch.yaml and the README's Gardener example) and its qualified forms.
sans="DNS:$service,DNS:$service.$namespace,DNS:$service.$namespace.svc"
sans="$sans,DNS:$service.$namespace.svc.cluster.local"
leaf server "$service" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$sans"
leaf client audit-forwarder "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
chmod 600 ./*.key

b64() { base64 <"$1" | tr -d '\n'; }

# secret NAME PREFIX: one Secret with the CA and the PREFIX.crt/PREFIX.key pair.
secret() {
    cat <<YAML
---
apiVersion: v1
kind: Secret
metadata:
  name: $1
  namespace: $namespace
type: Opaque
data:
  ca.crt: $(b64 ca.crt)
  tls.crt: $(b64 "$2.crt")
  tls.key: $(b64 "$2.key")
YAML
}
{
    secret audittailer-server server
    secret audittailer-client client
} >secrets.yaml
echo "gencerts: $out/secrets.yaml (audittailer-server, audittailer-client in $namespace)" >&2
