#!/usr/bin/env bash
# Installs the peer tools bench/run compares image-sync with, idempotently:
# crane (go install, pinned), skopeo and docker-registry (Debian apt), GNU time, openssl
# (the upstream's throwaway certificates), and
# regclient's regsync (go install from the Go module proxy, pinned). A tool already at
# the pinned version is left alone. regsync is optional for bench/run: if the module
# proxy does not serve it, this script says so and exits 0.
set -euo pipefail

CRANE_VERSION="${CRANE_VERSION:-v0.22.1}"
REGSYNC_VERSION="${REGSYNC_VERSION:-v0.11.7}"

gobin="$(go env GOPATH)/bin"
export PATH="$gobin:$PATH"

if ! crane version 2>/dev/null | grep -qx "$CRANE_VERSION"; then
    echo "install-peers: crane $CRANE_VERSION (go install)"
    timeout 600 go install "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION"
fi

missing=()
command -v skopeo >/dev/null || missing+=(skopeo)
command -v docker-registry >/dev/null || missing+=(docker-registry)
[ -x /usr/bin/time ] || missing+=(time)
command -v openssl >/dev/null || missing+=(openssl)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-peers: apt-get install ${missing[*]}"
    sudo_cmd=(); [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    timeout 600 "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive timeout 900 "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}"
fi

if "$gobin/regsync" version 2>/dev/null | grep -q "$REGSYNC_VERSION"; then
    :
else
    echo "install-peers: regsync $REGSYNC_VERSION (go install from the Go module proxy)"
    if ! timeout 900 go install "github.com/regclient/regclient/cmd/regsync@$REGSYNC_VERSION"; then
        echo "install-peers: NOTE: regsync $REGSYNC_VERSION could not be installed from the Go module proxy;" \
             "bench/run will leave it out" >&2
    fi
fi

echo "install-peers: crane $(crane version)"
echo "install-peers: $(skopeo --version)"
echo "install-peers: $(docker-registry --version 2>&1 | head -1)"
if [ -x "$gobin/regsync" ]; then
    echo "install-peers: regsync $("$gobin/regsync" version 2>/dev/null | awk '/VCSTag|Version/ {print $2; exit}')"
fi
