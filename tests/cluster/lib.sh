#!/usr/bin/env bash
# Shared by tests/cluster/up and tests/cluster/down: where the single-node cluster keeps its
# state and how its parts are found. Sourced, not run.
#
# Everything the cluster owns lives under $CLUSTER_DIR (IMAGE_SYNC_CLUSTER_DIR, default
# target/cluster): certificates, etcd's data, containerd's root/state/socket, the CNI
# config and IPAM state, the kubelet's root dir, logs, and `env` (ports and addresses of
# this run, written by `up`, read by `down` and tests/cluster/e2e.py). Outside it the
# cluster touches only: the address $HOST_ADDR on `lo`, the CNI bridge $BRIDGE, iptables
# chains the kubelet and the CNI plugins create (KUBE-*, CNI-*), the `kubepods` cgroups and
# its own mounts under $CLUSTER_DIR; `down` removes each of them.

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER_DIR="${IMAGE_SYNC_CLUSTER_DIR:-$repo/target/cluster}"
BIN_DIR="${IMAGE_SYNC_K8S_BIN_DIR:-$repo/target/k8s-bin}"
# An address on `lo` that pods on the CNI bridge reach through the node: the apiserver and
# the test's registries listen there (no kube-proxy, so no Service ClusterIPs).
HOST_ADDR="${IMAGE_SYNC_CLUSTER_HOST_ADDR:-10.213.0.1}"
POD_SUBNET="${IMAGE_SYNC_CLUSTER_POD_SUBNET:-10.213.16.0/24}"
SERVICE_CIDR="10.213.32.0/24"
BRIDGE="${IMAGE_SYNC_CLUSTER_BRIDGE:-isync0}"
CNI_NETWORK="image-sync-test"
CNI_BIN_DIR="${IMAGE_SYNC_CNI_BIN_DIR:-/usr/lib/cni}"
NODE_NAME="localhost"

say() { printf 'cluster [%s]: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { say "$*"; exit 1; }

# A free TCP port on 127.0.0.1 (the kernel picks it; other tests use random ports too).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Starts a daemon in its own process group, logging to $CLUSTER_DIR/logs/NAME.log, and
# records its PID in $CLUSTER_DIR/pids/NAME.
start_daemon() {
  local name="$1"; shift
  mkdir -p "$CLUSTER_DIR/logs" "$CLUSTER_DIR/pids"
  setsid "$@" </dev/null >"$CLUSTER_DIR/logs/$name.log" 2>&1 &
  echo $! >"$CLUSTER_DIR/pids/$name"
}

# Waits until CMD succeeds (up to SECS seconds), failing with the daemon's log tail.
wait_for() {
  local what="$1" secs="$2" log="$3"; shift 3
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      say "$what: not ready after ${secs}s; last lines of $log:"
      tail -n 30 "$log" >&2 || true
      return 1
    fi
    sleep 1
  done
}

kubectl_() { "$BIN_DIR/kubectl" --kubeconfig "$CLUSTER_DIR/admin.kubeconfig" "$@"; }
