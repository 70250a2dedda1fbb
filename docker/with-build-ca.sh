#!/bin/sh
# with-build-ca.sh CMD...: run CMD (uv, pip) trusting an extra CA, if one was
# given to the build as the secret `ca_bundle` (BUILD_CA_BUNDLE in .env).
# For builds behind a TLS-inspecting proxy. The combined bundle lives in a
# temporary file removed afterwards: the CA never lands in an image layer.
# Only used inside docker/Dockerfile's RUN steps (bind-mounted, not copied).
set -eu
extra=/run/secrets/ca_bundle
if [ ! -s "$extra" ]; then
    exec "$@"
fi
bundle=$(mktemp)
trap 'rm -f "$bundle"' EXIT
for system in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
    if [ -f "$system" ]; then
        cat "$system" >>"$bundle"
        break
    fi
done
cat "$extra" >>"$bundle"
echo "with-build-ca: trusting the extra CA bundle given as build secret ca_bundle" >&2
SSL_CERT_FILE="$bundle" PIP_CERT="$bundle" REQUESTS_CA_BUNDLE="$bundle" "$@"
