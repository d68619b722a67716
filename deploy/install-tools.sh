#!/usr/bin/env bash
# Installs what tests/deploy needs on a fresh Debian machine, and nothing that
# is already there (safe to run on every CI run):
#   - Python packages from tests/deploy/requirements.txt (pinned)
#   - kustomize, built from source with `go install` (needs Go >= 1.22)
#   - nix-instantiate (Debian package nix-bin), for `nix-instantiate --parse`
#     and the stub evaluation of flake.nix
# Run from anywhere; prints the kustomize location for IMAGE_SYNC_REQUIRE_TOOLS=1 runs.
set -euo pipefail

KUSTOMIZE_VERSION="v5.8.1"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# --- Python ---------------------------------------------------------------
req="$repo/tests/deploy/requirements.txt"
if ! python3 -m pip install --quiet --disable-pip-version-check -r "$req"; then
    # Debian's system Python refuses pip installs (PEP 668) unless told to.
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages -r "$req"
fi

# --- kustomize ------------------------------------------------------------
if ! command -v go >/dev/null 2>&1; then
    echo "install-tools: go not found; install Go >= 1.22 first" >&2
    exit 1
fi
gobin="$(go env GOPATH)/bin"
if [ -x "$gobin/kustomize" ] && [ "$("$gobin/kustomize" version 2>/dev/null)" = "$KUSTOMIZE_VERSION" ]; then
    echo "install-tools: kustomize $KUSTOMIZE_VERSION already in $gobin"
else
    # Outside the repo so no go.mod/go.work of ours can interfere.
    (cd /tmp && GOFLAGS=-mod=mod go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION")
    echo "install-tools: installed kustomize $("$gobin/kustomize" version) in $gobin"
fi

# --- nix-instantiate ------------------------------------------------------
if ! command -v nix-instantiate >/dev/null 2>&1; then
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq nix-bin
fi
echo "install-tools: $(nix-instantiate --version)"

case ":$PATH:" in
    *":$gobin:"*) ;;
    *) echo "install-tools: note: $gobin is not on PATH (tests/deploy also looks there)";;
esac
