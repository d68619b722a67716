#!/usr/bin/env bash
# Installs what tests/deploy needs on a fresh Debian machine, and nothing that
# is already there (safe to run on every CI run), printing each step:
#   - a Python venv at target/deploy-venv with tests/deploy/requirements.txt
#     (pinned), so nothing is installed into the system Python (Debian's refuses
#     pip installs, and may not have pip at all); run the checks with
#     target/deploy-venv/bin/python -m pytest tests/deploy
#   - kustomize, built from source with `go install` (needs Go >= 1.22)
#   - helm, built from source with `go install` (the chart's lint, render, package, push)
#   - nix-instantiate (Debian package nix-bin), for `nix-instantiate --parse`
#     and the stub evaluation of flake.nix
# Run from anywhere; prints the kustomize and helm locations for IMAGE_SYNC_REQUIRE_TOOLS=1 runs.
set -euo pipefail

KUSTOMIZE_VERSION="v5.8.1"
# Helm 4 (OCI charts, values.schema.json); a `go install` build reports only "v4.3" from
# `helm version`, so the exact version is read from the binary's module information.
HELM_VERSION="v4.3.2"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
apt_install() {
    echo "install-tools: apt-get install $*"
    "${sudo_cmd[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q "$@"
}

# --- Python ---------------------------------------------------------------
req="$repo/tests/deploy/requirements.txt"
venv="$repo/target/deploy-venv"
if ! cmp -s "$req" "$venv/requirements.txt" 2>/dev/null; then
    echo "install-tools: Python venv $venv with $(grep -c '^[^#]' "$req") pinned packages"
    if ! python3 -m venv --clear "$venv" 2>/dev/null; then
        # Debian ships venv (and ensurepip) separately from python3.
        apt_install python3-venv
        python3 -m venv --clear "$venv"
    fi
    "$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar off -r "$req"
    cp "$req" "$venv/requirements.txt"
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
    echo "install-tools: go install kustomize $KUSTOMIZE_VERSION (downloads and compiles: a few minutes)"
    # Outside the repo so no go.mod/go.work of ours can interfere.
    (cd /tmp && GOFLAGS=-mod=mod go install -v "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION")
    echo "install-tools: installed kustomize $("$gobin/kustomize" version) in $gobin"
fi

# --- helm -----------------------------------------------------------------
helm_module_version() {
    go version -m "$gobin/helm" 2>/dev/null | awk '$1 == "mod" && $2 == "helm.sh/helm/v4" {print $3}'
}
if [ -x "$gobin/helm" ] && [ "$(helm_module_version)" = "$HELM_VERSION" ]; then
    echo "install-tools: helm $HELM_VERSION already in $gobin"
else
    echo "install-tools: go install helm $HELM_VERSION (downloads and compiles: a few minutes)"
    (cd /tmp && go install "helm.sh/helm/v4/cmd/helm@$HELM_VERSION")
    echo "install-tools: installed helm $(helm_module_version) in $gobin"
fi

# --- nix-instantiate ------------------------------------------------------
if ! command -v nix-instantiate >/dev/null 2>&1; then
    apt_install nix-bin
fi
echo "install-tools: $(nix-instantiate --version)"

case ":$PATH:" in
    *":$gobin:"*) ;;
    *) echo "install-tools: note: $gobin is not on PATH (tests/deploy also looks there)";;
esac
