"""The cluster test: image-sync's k8s/ base in a real single-node Kubernetes v1.37.2
(tests/cluster/up), with real Distribution registries on the node's host address as the
upstream and the cache, a real Pushgateway, and image-sync's image assembled by
tests/cluster/image.py. What it proves is in docs/src/cluster.md. Steps:

1. `kubectl apply --server-side -k` of the overlay (k8s/ base, Zot manifests included) into
   the `image-cache` namespace, which enforces PodSecurity `restricted`: every object is
   admitted.
2. The initial-sync Indexed Job (4 shards) completes; the cache holds every image with its
   upstream digest (OCI index, Docker manifest list, OCI image, a signed image) and the
   signatures (`referrers: true`): an OCI 1.1 referrer and a cosign signature made in the
   test (offline key, no transparency log), which `cosign verify` accepts from the cache.
3. A CronJob run (every minute) is a no-op: 0 upstream manifest GETs from its pod (the
   upstream's access log, by the pod's IP); its report, read from `kubectl logs` with the
   README's jq recipe, says so; its metrics are in the Pushgateway.
4. `image-sync hosts-toml` is the node's containerd certs.d; with the upstream stopped, a
   Deployment naming the upstream starts from the cache. With `--fail-closed`, an image the
   cache lacks fails to start and the upstream sees no request.
5. A changed upstream tag is copied by the next CronJob run and the rollout's new pod runs
   the new digest.
6. A run started while the initial sync holds the run Lease copies nothing, succeeds and
   sends the upstream nothing.
7. Every report is read from `kubectl logs` with the README's jq recipe (one per pod).
8. `image-sync discover --cluster` as image-sync's ServiceAccount (with the coverage
   component's ClusterRole) lists the Deployment's image, from the host and from a pod;
   that ServiceAccount cannot read Secrets.

  IMAGE_SYNC_BIN=target/debug/image-sync python3 tests/cluster/e2e.py

Needs root, the Debian tools of scripts/install-test-tools and Go (binaries are built on
the first run). Always tears the cluster down (tests/cluster/down); a failure prints the
pods, the events and the image-sync pods' logs first."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import image  # noqa: E402
import oci  # noqa: E402

NS = "image-cache"
WORKLOADS = "workloads"
STARTED = time.monotonic()


def phase(text):
    print(f"\n== cluster e2e [{time.monotonic() - STARTED:.0f}s]: {text}", file=sys.stderr, flush=True)


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool(name):
    path = shutil.which(name) or shutil.which(os.path.join(os.path.expanduser("~/go/bin"), name))
    if not path:
        raise SystemExit(f"{name} is not installed (scripts/install-test-tools)")
    return path


class Env:
    def __init__(self):
        self.cluster_dir = os.environ.get("IMAGE_SYNC_CLUSTER_DIR", os.path.join(REPO, "target", "cluster"))
        self.bin_dir = os.environ.get("IMAGE_SYNC_K8S_BIN_DIR", os.path.join(REPO, "target", "k8s-bin"))
        self.image_sync = os.path.abspath(os.environ.get("IMAGE_SYNC_BIN", os.path.join(REPO, "target", "debug", "image-sync")))
        self.work = tempfile.mkdtemp(prefix="image-sync-cluster-e2e.")
        self.values = {}

    def load(self):
        with open(os.path.join(self.cluster_dir, "env")) as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                self.values[key] = value
        self.host = self.values["HOST_ADDR"]
        self.kubeconfig = self.values["KUBECONFIG"]
        self.certs_d = self.values["CERTS_D"]


ENV = Env()


def kubectl(*args, check=True, input=None):
    cmd = [os.path.join(ENV.bin_dir, "kubectl"), "--kubeconfig", ENV.kubeconfig, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, input=input)
    if check and out.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def kubectl_json(*args):
    return json.loads(kubectl(*args, "-o", "json"))


def wait(what, secs, probe, interval=2):
    deadline = time.monotonic() + secs
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached after {secs}s")
        time.sleep(interval)


class Registry:
    """A Distribution registry (`docker-registry serve`) on the node's host address, with
    its access log (one line per request, the client's address first)."""

    def __init__(self, name, host, port=None):
        self.name, self.host, self.port = name, host, port or free_port()
        self.address = f"{host}:{self.port}"
        self.dir = os.path.join(ENV.work, name)
        os.makedirs(os.path.join(self.dir, "data"))
        self.config = os.path.join(self.dir, "config.yml")
        with open(self.config, "w") as f:
            f.write(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: false\n"
                f"storage:\n  filesystem:\n    rootdirectory: {self.dir}/data\n  delete:\n    enabled: true\n"
                f"http:\n  addr: {self.address}\n"
            )
        self.log = os.path.join(self.dir, "access.log")
        self.proc = None
        self.start()

    def start(self):
        log = open(self.log, "a")
        self.proc = subprocess.Popen([tool("docker-registry"), "serve", self.config], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        wait(f"registry {self.name}", 20, self.up, interval=0.2)

    def up(self):
        try:
            with urllib.request.urlopen(f"http://{self.address}/v2/", timeout=2):
                return True
        except Exception:
            return False

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.proc = None

    def requests(self, client=None):
        """(client address, method, path, status) of every request so far."""
        found = []
        pattern = re.compile(r'^(\S+) \S+ \S+ \[[^\]]*\] "(\w+) (\S+) [^"]*" (\d+)')
        with open(self.log, errors="replace") as f:
            for line in f:
                m = pattern.match(line)
                if m and (client is None or m.group(1) == client):
                    found.append((m.group(1), m.group(2), m.group(3), int(m.group(4))))
        return found

    def manifest_gets(self, client=None, repo=None):
        return [
            r for r in self.requests(client)
            if r[1] == "GET" and "/manifests/" in r[2] and (repo is None or r[2].startswith(f"/v2/{repo}/"))
        ]

    def head_digest(self, repo, ref):
        req = urllib.request.Request(
            f"http://{self.address}/v2/{repo}/manifests/{ref}",
            method="HEAD",
            headers={"Accept": oci.MANIFEST_ACCEPT},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.headers["Docker-Content-Digest"]
        except urllib.error.HTTPError:
            return None


def busybox_layer(marker):
    busybox = shutil.which("busybox") or "/bin/busybox"
    layer = oci.Layer().file("/bin/busybox", src=busybox, mode=0o755).symlink("/bin/sh", "busybox")
    return layer.file("/etc/marker", marker.encode())


# The images the config lists (cache_as), each with its tag v1.
IMAGES = ("library/app", "legacy/list", "single/oci", "signed/app", "cosigned/app")
APP_CONFIG = {"Entrypoint": ["/bin/busybox", "sleep", "3600"], "User": "65532:65532"}


def push_upstream_images(upstream):
    """The images the config lists: an OCI index, a Docker manifest list, an OCI image, a
    signed image (an OCI image with an OCI 1.1 referrer, found by the referrers tag schema
    on Distribution 2.8, which has no referrers API) and an image signed by cosign. Returns
    {repo: digest}, {"signed/app@sig": digest} and {"cosigned/app@sig": (tag, digest)}."""
    reg = oci.Registry(upstream.address)
    digests = {}
    amd, amd_desc = oci.image(reg, "library/app", "v1-amd64", [busybox_layer("app v1")], config=APP_CONFIG)
    arm, arm_desc = oci.image(reg, "library/app", "v1-arm64", [busybox_layer("app v1 arm64")], config=APP_CONFIG, arch="arm64")
    digests["library/app"] = oci.index(reg, "library/app", "v1", [amd_desc, arm_desc])
    d1, desc1 = oci.image(reg, "legacy/list", "v1-amd64", [busybox_layer("list")], config=APP_CONFIG, docker=True)
    digests["legacy/list"] = oci.index(reg, "legacy/list", "v1", [desc1], docker=True)
    digests["single/oci"], _ = oci.image(reg, "single/oci", "v1", [busybox_layer("single")], config=APP_CONFIG)
    signed, signed_desc = oci.image(reg, "signed/app", "v1", [busybox_layer("signed")], config=APP_CONFIG)
    digests["signed/app"] = signed
    # The signature: an artifact manifest whose subject is the image, listed under the
    # referrers tag schema (sha256-<hex>) as an index, the way cosign/oras do without the API.
    empty = b"{}"
    sig_layer = b"signature-for-" + signed.encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "artifactType": "application/vnd.dev.cosign.simplesigning.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": reg.push_blob("signed/app", empty), "size": 2},
        "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "digest": reg.push_blob("signed/app", sig_layer), "size": len(sig_layer)}],
        "subject": {"mediaType": signed_desc["mediaType"], "digest": signed, "size": signed_desc["size"]},
    }
    body = json.dumps(manifest, sort_keys=True).encode()
    sig = reg.push_manifest("signed/app", oci.digest(body), body, oci.OCI_MANIFEST)
    referrers = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_INDEX,
        "manifests": [{"mediaType": oci.OCI_MANIFEST, "digest": sig, "size": len(body), "artifactType": manifest["artifactType"]}],
    }
    ref_body = json.dumps(referrers, sort_keys=True).encode()
    reg.push_manifest("signed/app", signed.replace(":", "-"), ref_body, oci.OCI_INDEX)
    digests["signed/app@sig"] = sig
    # A cosign signature (cosign v2: the legacy `sha256-<hex>.sig` tag), signed offline
    # with a key pair made here, no transparency log.
    digests["cosigned/app"], _ = oci.image(reg, "cosigned/app", "v1", [busybox_layer("cosigned")], config=APP_CONFIG)
    cosign("generate-key-pair")
    cosign("sign", "--key", "cosign.key", "--tlog-upload=false", "--allow-http-registry",
           f"{upstream.address}/cosigned/app@{digests['cosigned/app']}")
    sig_tag = digests["cosigned/app"].replace(":", "-") + ".sig"
    digests["cosigned/app@sig"] = (sig_tag, upstream.head_digest("cosigned/app", sig_tag))
    assert digests["cosigned/app@sig"][1], f"cosign wrote no {sig_tag} upstream"
    return digests


def cosign(*args, check=True):
    """cosign offline, in its own directory (the key pair lives there)."""
    home = os.path.join(ENV.work, "cosign")
    os.makedirs(home, exist_ok=True)
    env = dict(os.environ, COSIGN_PASSWORD="", COSIGN_YES="true", SIGSTORE_NO_CACHE="true",
               TUF_ROOT=os.path.join(home, "tuf"), HOME=home)
    out = subprocess.run([tool("cosign"), *args], cwd=home, env=env, capture_output=True, text=True, timeout=120)
    if check and out.returncode != 0:
        raise AssertionError(f"cosign {' '.join(args)} exited {out.returncode}:\n{out.stderr}")
    return out


def config_yaml(upstream, cache):
    return f"""cache_registry: "{cache.address}"
images:
  - source: "{upstream.address}/library/app"
    tag: "v1"
    cache_as: "library/app"
  - source: "{upstream.address}/legacy/list"
    tag: "v1"
    cache_as: "legacy/list"
  - source: "{upstream.address}/single/oci"
    tag: "v1"
    cache_as: "single/oci"
  - source: "{upstream.address}/signed/app"
    tag: "v1"
    cache_as: "signed/app"
    referrers: true
  - source: "{upstream.address}/cosigned/app"
    tag: "v1"
    cache_as: "cosigned/app"
    referrers: true
settings:
  concurrency: 2
  pull_timeout_secs: 120
  check_timeout_secs: 20
  run_deadline_secs: 210
  skip_on_error: false
  insecure_registries:
    - "{cache.address}"
    - "{upstream.address}"
"""


def api_env_patch(path):
    """No kube-proxy here, so the kubernetes Service's ClusterIP leads nowhere: the pods
    reach the apiserver at the node's address instead (its certificate names it)."""
    ops = [
        {"op": "add", "path": f"{path}/-", "value": {"name": "KUBERNETES_SERVICE_HOST", "value": ENV.host}},
        {"op": "add", "path": f"{path}/-", "value": {"name": "KUBERNETES_SERVICE_PORT", "value": ENV.values["API_PORT"]}},
    ]
    return json.dumps(ops)


def write_overlay(image_ref, config, pushgateway):
    """The run's kustomization on top of tests/cluster/overlay: addresses, image, config."""
    overlay = os.path.join(ENV.work, "overlay")
    os.makedirs(overlay)
    with open(os.path.join(overlay, "config.yaml"), "w") as f:
        f.write(config)
    name, _, tag = image_ref.rpartition(":")
    base = os.path.relpath(os.path.join(HERE, "overlay"), overlay)
    with open(os.path.join(overlay, "kustomization.yaml"), "w") as f:
        f.write(
            f"""apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: {NS}
resources:
  - {base}
images:
  - name: ghcr.io/pleme-io/image-sync
    newName: {name}
    newTag: "{tag}"
configMapGenerator:
  - name: image-sync-config
    behavior: replace
    files: [config.yaml]
    options: {{disableNameSuffixHash: true, labels: {{app.kubernetes.io/name: image-sync, app.kubernetes.io/part-of: image-cache}}}}
  - name: image-sync-monitoring
    literals: ["pushgateway=http://{pushgateway}"]
    options: {{disableNameSuffixHash: true}}
patches:
  - target: {{kind: CronJob, name: image-sync}}
    patch: '{api_env_patch("/spec/jobTemplate/spec/template/spec/containers/0/env")}'
  - target: {{kind: Job, name: image-sync-initial}}
    patch: '{api_env_patch("/spec/template/spec/containers/0/env")}'
"""
        )
    return overlay


def pod_ip_and_report(pod):
    """The pod's IP and its report, read from `kubectl logs` the README's way."""
    ip = kubectl("-n", NS, "get", "pod", pod, "-o", "jsonpath={.status.podIP}")
    logs = kubectl("-n", NS, "logs", pod)
    jq = subprocess.run(["jq", "-c", 'select(type == "object" and has("summary"))'], input=logs, capture_output=True, text=True)
    assert jq.returncode == 0, f"the README's jq recipe failed on {pod}'s logs:\n{jq.stderr}\n{logs}"
    reports = [json.loads(line) for line in jq.stdout.splitlines() if line.strip()]
    assert len(reports) == 1, f"{pod}: {len(reports)} reports in its logs:\n{logs}"
    return ip, reports[0]


def job_pods(job):
    pods = kubectl_json("-n", NS, "get", "pods", "-l", f"batch.kubernetes.io/job-name={job}")["items"]
    return [p["metadata"]["name"] for p in pods]


def job_complete(job):
    status = kubectl_json("-n", NS, "get", "job", job).get("status", {})
    conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
    if conditions.get("Failed") == "True":
        raise AssertionError(f"job {job} failed: {status}")
    return conditions.get("Complete") == "True"


def cronjob_jobs():
    jobs = kubectl_json("-n", NS, "get", "jobs")["items"]
    return sorted(
        (j for j in jobs if any(o.get("kind") == "CronJob" for o in j["metadata"].get("ownerReferences", []))),
        key=lambda j: j["metadata"]["creationTimestamp"],
    )


def next_cronjob_run(after_names, secs=150):
    """Waits for a CronJob-created Job not in AFTER_NAMES to complete; returns its name."""

    def probe():
        for job in cronjob_jobs():
            name = job["metadata"]["name"]
            if name not in after_names and job_complete(name):
                return name
        return None

    return wait("a new CronJob run", secs, probe, interval=3)


SERVICE_ACCOUNT = f"system:serviceaccount:{NS}:image-sync"
COVERAGE = os.path.join(REPO, "k8s", "components", "image-sync-coverage")


def can_i(*args):
    """`kubectl auth can-i ARGS` as image-sync's ServiceAccount: "yes" or "no"."""
    return kubectl("auth", "can-i", *args, f"--as={SERVICE_ACCOUNT}", check=False).strip()


def service_account_kubeconfig():
    """A kubeconfig holding a token of the `image-sync` ServiceAccount (kubectl create token)."""
    token = kubectl("-n", NS, "create", "token", "image-sync", "--duration=10m").strip()
    path = os.path.join(ENV.work, "image-sync-sa.kubeconfig")
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {
            "server": f"https://127.0.0.1:{ENV.values['API_PORT']}",
            "certificate-authority": os.path.join(ENV.cluster_dir, "pki", "ca.crt")}}],
        "users": [{"name": "image-sync", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "image-sync"}}],
        "current-context": "test",
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(config, f)
    return path


def discover_in_a_pod():
    """`image-sync discover --cluster` in a Job of the CronJob's pod template (image-sync's
    image, its ServiceAccount, the mounted token: the in-cluster path); its stdout lines."""
    cronjob = kubectl_json("-n", NS, "get", "cronjob", "image-sync")
    spec = cronjob["spec"]["jobTemplate"]["spec"]
    spec["template"]["spec"]["containers"][0]["args"] = ["discover", "--cluster", "--format", "list"]
    spec.pop("activeDeadlineSeconds", None)
    spec["backoffLimit"] = 0
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "image-sync-discover", "namespace": NS}, "spec": spec}
    kubectl("apply", "-f", "-", input=json.dumps(job))
    wait("job image-sync-discover Complete", 120, lambda: job_complete("image-sync-discover"))
    (pod,) = job_pods("image-sync-discover")
    return kubectl("-n", NS, "logs", pod).splitlines()


def discover_cluster(upstream):
    """Item 8 of issue 19: `image-sync discover --cluster` with the ServiceAccount of k8s/
    (and the coverage component's read-only ClusterRole) lists the Deployment's image, and
    that ServiceAccount cannot read Secrets."""
    # The base alone: the run Lease, nothing else.
    assert can_i("update", "leases", "-n", NS) == "yes"
    assert can_i("list", "deployments", "-A") == "no"
    assert can_i("get", "secrets", "-n", NS) == "no"
    kubectl("apply", "-f", os.path.join(COVERAGE, "clusterrole.yaml"), "-f", os.path.join(COVERAGE, "clusterrolebinding.yaml"))
    wait("the coverage ClusterRole is in force", 30, lambda: can_i("list", "deployments", "-A") == "yes", interval=1)
    for args in (("get", "secrets", "-n", NS), ("list", "secrets", "-A"), ("get", "secrets", "-n", WORKLOADS),
                 ("update", "deployments", "-n", WORKLOADS), ("create", "leases", "-n", WORKLOADS)):
        assert can_i(*args) == "no", f"image-sync's ServiceAccount can {' '.join(args)}"
    expected = f"{upstream.address}/library/app:v1"
    out = subprocess.run(
        [ENV.image_sync, "discover", "--cluster", "--kubeconfig", service_account_kubeconfig(), "--format", "json"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, f"discover --cluster (ServiceAccount kubeconfig) exited {out.returncode}:\n{out.stderr}"
    found = {entry["image"]: entry["found_in"] for entry in json.loads(out.stdout)}
    assert expected in found, f"discover --cluster did not list {expected}: {sorted(found)}"
    assert {"kind": "Deployment", "namespace": WORKLOADS, "name": "app", "container": "app"} in found[expected], found[expected]
    lines = discover_in_a_pod()
    assert expected in lines, f"discover --cluster in a pod did not list {expected}:\n" + "\n".join(lines)
    print(f"cluster e2e: discover --cluster as image-sync's ServiceAccount listed {len(found)} images, {expected} among them; it cannot read Secrets", file=sys.stderr)


def apply_workload(name, image_ref, ns=WORKLOADS):
    manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 1,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [
                        {
                            "name": "app",
                            "image": image_ref,
                            "imagePullPolicy": "Always",
                            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True},
                        }
                    ],
                },
            },
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(manifest))


def workload_pods(name, ns=WORKLOADS):
    return kubectl_json("-n", ns, "get", "pods", "-l", f"app={name}")["items"]


def running_image_id(name):
    for pod in workload_pods(name):
        if pod.get("metadata", {}).get("deletionTimestamp"):
            continue
        for cs in pod.get("status", {}).get("containerStatuses", []):
            if cs.get("state", {}).get("running"):
                return cs.get("imageID")
    return None


def pull_failure(name):
    for pod in workload_pods(name):
        for cs in pod.get("status", {}).get("containerStatuses", []):
            reason = cs.get("state", {}).get("waiting", {}).get("reason")
            if reason in ("ErrImagePull", "ImagePullBackOff"):
                return reason
    return None


def hosts_toml(config_path, cache, fail_closed):
    args = [ENV.image_sync, "--config", config_path, "hosts-toml", "--mirror", f"http://{cache.address}", "--dir", ENV.certs_d]
    if fail_closed:
        args.append("--fail-closed")
    subprocess.run(args, check=True, capture_output=True)


def dump_state():
    print("\n== cluster e2e: state at the failure", file=sys.stderr)
    for args in (
        ("get", "nodes", "-o", "wide"),
        ("get", "all", "-A", "-o", "wide"),
        ("get", "events", "-A", "--sort-by=.lastTimestamp"),
    ):
        print(f"-- kubectl {' '.join(args)}", file=sys.stderr)
        print(kubectl(*args, check=False), file=sys.stderr)
    for ns in (NS, WORKLOADS):
        for pod in kubectl("-n", ns, "get", "pods", "-o", "name", check=False).split():
            print(f"-- logs {ns}/{pod}", file=sys.stderr)
            print(kubectl("-n", ns, "logs", pod, "--all-containers", check=False)[-4000:], file=sys.stderr)
    for name in ("kubelet", "containerd"):
        log = os.path.join(ENV.cluster_dir, "logs", f"{name}.log")
        if os.path.exists(log):
            print(f"-- last lines of {log}", file=sys.stderr)
            with open(log, errors="replace") as f:
                print("".join(f.readlines()[-40:]), file=sys.stderr)


# What the test runs on the host (scripts/install-test-tools installs each of them).
HOST_TOOLS = ("containerd", "runc", "iptables", "ip", "openssl", "jq", "busybox", "strip", "ldd",
              "docker-registry", "prometheus-pushgateway", "skopeo", "go", "cosign")
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")


def missing_prerequisites():
    """What keeps the test from running here, as sentences (empty when nothing does)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("the cluster test needs root (containerd, kubelet, iptables)")
    for name in HOST_TOOLS:
        path = shutil.which(name) or shutil.which(os.path.join(os.path.expanduser("~/go/bin"), name))
        if not path:
            missing.append(f"{name} is not installed")
    busybox = shutil.which("busybox")
    if busybox and subprocess.run(["ldd", busybox], capture_output=True).returncode == 0:
        missing.append(f"{busybox} is not static (the test's workload images hold it alone): apt-get install busybox-static")
    cni = os.environ.get("IMAGE_SYNC_CNI_BIN_DIR", "/usr/lib/cni")
    for plugin in CNI_PLUGINS:
        if not os.access(os.path.join(cni, plugin), os.X_OK):
            missing.append(f"CNI plugin {cni}/{plugin} is missing (containernetworking-plugins)")
    if not os.path.exists(ENV.image_sync):
        missing.append(f"{ENV.image_sync} does not exist (cargo build)")
    return missing


def main():
    missing = missing_prerequisites()
    if missing:
        for line in missing:
            print(f"cluster e2e: {line}", file=sys.stderr)
        if os.environ.get("IMAGE_SYNC_REQUIRE_TOOLS") == "1":
            raise SystemExit("cluster e2e: FAILED, prerequisites missing (IMAGE_SYNC_REQUIRE_TOOLS=1; scripts/install-test-tools installs them)")
        print("cluster e2e: SKIPPED (set IMAGE_SYNC_REQUIRE_TOOLS=1 to make this a failure)", file=sys.stderr)
        return
    phase("build the Kubernetes binaries if not cached (tests/cluster/build-binaries)")
    subprocess.run([os.path.join(HERE, "build-binaries")], check=True)
    images_port = free_port()
    host = os.environ.get("IMAGE_SYNC_CLUSTER_HOST_ADDR", "10.213.0.1")
    processes = []
    try:
        phase("start the cluster (tests/cluster/up)")
        env = dict(os.environ, IMAGE_SYNC_CLUSTER_SANDBOX_IMAGE=f"{host}:{images_port}/pause:1")
        subprocess.run([os.path.join(HERE, "up")], check=True, env=env)
        ENV.load()
        try:
            run_steps(images_port, processes)
        except BaseException:
            dump_state()
            raise
    finally:
        for proc in processes:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=20)
        phase("tear down (tests/cluster/down)")
        subprocess.run([os.path.join(HERE, "down")], check=False)
        shutil.rmtree(ENV.work, ignore_errors=True)
    phase("all cluster steps passed")


def run_steps(images_port, processes):
    host = ENV.host
    phase("registries (images, upstream, cache) and a Pushgateway on the node's address")
    # On the port promised to `up` for the sandbox image.
    images = Registry("images", host, images_port)
    upstream = Registry("upstream", host)
    cache = Registry("cache", host)
    registries = [images, upstream, cache]
    processes.extend(r.proc for r in registries)
    pg_port = free_port()
    pushgateway = subprocess.Popen(
        [tool("prometheus-pushgateway"), f"--web.listen-address={host}:{pg_port}", "--persistence.file="],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    processes.append(pushgateway)

    phase("image-sync's image and the pause image (tests/cluster/image.py)")
    image_ref, image_digest, _ = image.push_image_sync(images.address, ENV.image_sync)
    image.push_pause(images.address)
    upstream_digests = push_upstream_images(upstream)
    config = config_yaml(upstream, cache)
    config_path = os.path.join(ENV.work, "config.yaml")
    with open(config_path, "w") as f:
        f.write(config)

    phase("1. kubectl apply --server-side -k (the k8s/ base, Zot included) into a restricted namespace")
    overlay = write_overlay(image_ref, config, f"{host}:{pg_port}")
    rendered = kubectl("kustomize", overlay)
    applied = kubectl("apply", "--server-side", "-k", overlay)
    objects = [line.split()[0] for line in applied.splitlines() if line.strip()]
    expected = [
        "namespace/image-cache", "serviceaccount/image-sync", "configmap/image-sync-config",
        "configmap/image-sync-monitoring", "configmap/zot-config", "service/image-cache",
        "persistentvolumeclaim/zot-data", "deployment.apps/zot", "cronjob.batch/image-sync",
        "job.batch/image-sync-initial", "role.rbac.authorization.k8s.io/image-sync-leases",
        "rolebinding.rbac.authorization.k8s.io/image-sync-leases",
    ]
    for name in expected:
        assert name in objects, f"{name} not applied; kubectl said:\n{applied}"
        kubectl("-n", NS, "get", name)
    labels = kubectl_json("get", "namespace", NS)["metadata"]["labels"]
    assert labels.get("pod-security.kubernetes.io/enforce") == "restricted", labels
    assert "kind: Job" in rendered

    phase("6. a run started while the initial sync holds the Lease copies nothing")
    initial_uid = kubectl("-n", NS, "get", "job", "image-sync-initial", "-o", "jsonpath={.metadata.uid}")
    wait(
        "the initial sync's shards hold the Lease",
        240,
        lambda: kubectl("-n", NS, "get", "lease", "image-sync", "-o", "jsonpath={.spec.holderIdentity}", check=False) == initial_uid,
        interval=0.5,
    )
    # A Job from the CronJob's own template, as the CronJob creates it on schedule.
    kubectl("-n", NS, "create", "job", "--from=cronjob/image-sync", "image-sync-overlap")
    overlap_running_with_initial = not job_complete("image-sync-initial")

    phase("2. the initial-sync Indexed Job (4 shards) completes; the cache holds the upstream digests")
    wait("job image-sync-initial Complete", 300, lambda: job_complete("image-sync-initial"))
    pods = job_pods("image-sync-initial")
    assert len(pods) == 4, pods
    pulled = 0
    for pod in pods:
        _, report = pod_ip_and_report(pod)
        assert report["summary"]["failed"] == 0, report
        assert report["lease"]["outcome"] == "acquired" and report["lease"]["holder"] == initial_uid, report
        pulled += report["summary"]["pulled"]
    assert pulled == len(IMAGES), f"the 4 shards pulled {pulled} images"
    wait("job image-sync-overlap Complete", 120, lambda: job_complete("image-sync-overlap"))
    (pod,) = job_pods("image-sync-overlap")
    ip, report = pod_ip_and_report(pod)
    assert report["lease"]["outcome"] == "held" and report["lease"]["held_by"] == initial_uid, report
    assert report["results"] == [] and report["summary"]["pulled"] == 0, report
    assert upstream.requests(ip) == [], f"the overlapping run asked the upstream: {upstream.requests(ip)}"
    print(f"cluster e2e: the overlapping run started while the initial Job was {'running' if overlap_running_with_initial else 'done but holding the Lease'}; 0 upstream requests", file=sys.stderr)
    for repo in IMAGES:
        got = cache.head_digest(repo, "v1")
        assert got == upstream_digests[repo], f"cache {repo}:v1 is {got}, upstream {upstream_digests[repo]}"
    sig = upstream_digests["signed/app@sig"]
    assert cache.head_digest("signed/app", sig) == sig, "the signature was not copied"
    sig_tag, sig_digest = upstream_digests["cosigned/app@sig"]
    got = cache.head_digest("cosigned/app", sig_tag)
    assert got == sig_digest, f"cache cosigned/app:{sig_tag} is {got}, upstream {sig_digest}"
    verified = cosign("verify", "--key", "cosign.pub", "--insecure-ignore-tlog=true", "--allow-http-registry",
                      f"{cache.address}/cosigned/app@{upstream_digests['cosigned/app']}", check=False)
    assert verified.returncode == 0, f"cosign verify against the cache failed:\n{verified.stderr}"
    print(f"cluster e2e: the cache holds cosigned/app:{sig_tag} ({sig_digest}); cosign verify accepts the cache's copy", file=sys.stderr)
    initial_done = {j["metadata"]["name"] for j in cronjob_jobs()} - {"image-sync-overlap"}

    phase("3. a CronJob run is a no-op: 0 upstream manifest GETs from its pod, metrics pushed")
    seen = set(initial_done) | {"image-sync-overlap"}
    while True:
        job = next_cronjob_run(seen)
        seen.add(job)
        (pod,) = job_pods(job)
        ip, report = pod_ip_and_report(pod)
        if report["lease"]["outcome"] == "acquired":
            break
        # A scheduled run that found the initial sync's Lease not yet expired: it too
        # copies nothing and asks the upstream nothing.
        assert report["lease"]["outcome"] == "held" and upstream.requests(ip) == [], report
    assert report["summary"] == {**report["summary"], "already_cached": len(IMAGES), "pulled": 0, "failed": 0}, report
    assert upstream.requests(ip), f"no upstream request from the CronJob pod's address {ip} in the access log"
    gets = upstream.manifest_gets(ip)
    assert gets == [], f"the no-op run GET {len(gets)} upstream manifests: {gets}"
    with urllib.request.urlopen(f"http://{host}:{pg_port}/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    assert re.search(r'image_sync_exit_code\{[^}]*job="image_sync"', metrics), "no image_sync metrics in the Pushgateway"
    seen_jobs = {j["metadata"]["name"] for j in cronjob_jobs()}

    phase("4. hosts-toml as the node's certs.d; upstream stopped; a Deployment starts from the cache")
    kubectl("create", "namespace", WORKLOADS)
    kubectl("label", "namespace", WORKLOADS, "pod-security.kubernetes.io/enforce=restricted")
    hosts_toml(config_path, cache, fail_closed=False)
    upstream.stop()
    before = len(cache.requests())
    apply_workload("app", f"{upstream.address}/library/app:v1")
    image_id = wait("the Deployment's pod Running from the cache", 120, lambda: running_image_id("app"))
    assert image_id.endswith(upstream_digests["library/app"]), image_id
    assert any("/v2/library/app/manifests/" in r[2] for r in cache.requests()[before:]), "the node did not ask the cache"
    upstream.start()
    processes.append(upstream.proc)
    hosts_toml(config_path, cache, fail_closed=True)
    reg = oci.Registry(upstream.address)
    oci.image(reg, "library/uncached", "v1", [busybox_layer("uncached")], config=APP_CONFIG)
    upstream_before = len(upstream.requests())
    apply_workload("uncached", f"{upstream.address}/library/uncached:v1")
    wait("the uncached image fails to pull (fail-closed)", 90, lambda: pull_failure("uncached"))
    after = upstream.requests()[upstream_before:]
    assert after == [], f"fail-closed: the upstream got {after}"
    kubectl("-n", WORKLOADS, "delete", "deployment", "uncached", "--wait=false")

    phase("5. a changed upstream tag: the next CronJob run copies it; the rollout's pod gets it")
    amd, amd_desc = oci.image(reg, "library/app", "v2-amd64", [busybox_layer("app v2")], config=APP_CONFIG)
    new_digest = oci.index(reg, "library/app", "v1", [amd_desc])
    assert new_digest != upstream_digests["library/app"]
    while True:
        job = next_cronjob_run(seen_jobs)
        seen_jobs.add(job)
        (pod,) = job_pods(job)
        ip, report = pod_ip_and_report(pod)
        if report["lease"]["outcome"] == "acquired":
            break
    assert report["summary"]["pulled"] == 1 and report["summary"]["failed"] == 0, report
    assert cache.head_digest("library/app", "v1") == new_digest
    kubectl("-n", WORKLOADS, "rollout", "restart", "deployment/app")
    kubectl("-n", WORKLOADS, "rollout", "status", "deployment/app", "--timeout=120s")
    wait("the new pod runs the new digest", 60, lambda: (running_image_id("app") or "").endswith(new_digest))

    phase("8. discover --cluster as image-sync's ServiceAccount lists the Deployment's image; no Secrets")
    discover_cluster(upstream)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
