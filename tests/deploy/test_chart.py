"""The Helm chart (charts/image-sync) and the Grafana dashboard, checked offline with the
real tools: helm (lint, template, the values schema, package and push to a real
Distribution registry as an OCI artifact and back), kustomize (the chart's defaults render
the same CronJob, Job, config and Zot as k8s/), kubernetes-validate, promtool (every
dashboard query parses) and the image-sync binary (the chart's config passes --check;
real runs against real registries write every metric the dashboard queries, and every
query answers from a real Prometheus that scraped what they pushed to a real Pushgateway).

A missing tool skips a test, or fails it with IMAGE_SYNC_REQUIRE_TOOLS=1 (CI).
"""
from __future__ import annotations

import copy
import dataclasses
import http.client
import http.server
import json
import os
import re
import socket
import subprocess
import tarfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from test_deploy import (
    CACHE_DIR,
    MONITORING_COMPONENT,
    MONITORING_OVERLAY,
    REPO,
    SYNC_DIR,
    cargo_version,
    find_tool,
    kustomize_build,
    missing_tool,
    promtool,
    validate,
)

CHART = REPO / "charts/image-sync"
RELEASE = "image-sync"
NAMESPACE = "image-cache"
DASHBOARD = "image-sync-dashboard.json"
RULE = "prometheusrule.yaml"
# Files the chart holds as byte copies of the monitoring component's (one source: edit
# the component's, then copy).
CHART_COPIES = (DASHBOARD, RULE)
HELM_VERSION = "v4.3.2"
# Every optional part of the chart turned on.
ALL_FEATURES = [
    "--set", "cache.enabled=true",
    "--set", "monitoring.pushgateway.url=http://pushgateway.monitoring.svc:9091",
    "--set", "monitoring.prometheusRule.enabled=true",
    "--set", "monitoring.dashboard.enabled=true",
    "--set", "rbac.leases.enabled=true",
    "--set", "rbac.coverage.enabled=true",
    "--set-json", 'extraArgs=["--deadline", "200"]',
    "--set-json", 'extraEnv=[{"name": "RUST_LOG", "value": "debug"}]',
    "--set-json", 'imagePullSecrets=[{"name": "ghcr-pull"}]',
    "--set-json", 'tolerations=[{"key": "infra", "operator": "Exists", "effect": "NoSchedule"}]',
    "--set", "nodeSelector.pool=infra",
    "--set", "podAnnotations.team=platform",
    "--set", "image.digest=sha256:" + "a" * 64,
]
# CRDs: no schema in kubernetes-validate.
CUSTOM_KINDS = {"PrometheusRule"}


# --- tools -------------------------------------------------------------------

def binary() -> Path:
    path = Path(os.environ.get("IMAGE_SYNC_BIN", REPO / "target/debug/image-sync"))
    if not path.is_file():
        missing_tool(f"image-sync binary not found at {path} (cargo build, or set IMAGE_SYNC_BIN)")
    return path


def tool(name: str, hint: str) -> str:
    exe = find_tool(name)
    if exe is None:
        missing_tool(f"{name} not found ({hint})")
    return exe


@dataclasses.dataclass(frozen=True)
class Helm:
    exe: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def helm(tmp_path_factory) -> Helm:
    """helm, with its config, cache, data and registry logins in a directory of its own."""
    exe = tool("helm", f"scripts/install-test-tools installs helm {HELM_VERSION}")
    home = tmp_path_factory.mktemp("helm-home")
    env = dict(os.environ, HELM_REGISTRY_CONFIG=str(home / "registry.json"))
    for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[var] = str(home / var.lower())
    version = subprocess.run([exe, "version", "--template", "{{.Version}}"],
                             capture_output=True, text=True, env=env).stdout.strip()
    if re.fullmatch(r"v\d+\.\d+\.\d+", version):  # a release build
        assert version == HELM_VERSION, f"helm {version}, the tests pin {HELM_VERSION}"
    else:
        # A `go install` build reports major.minor only ("v4.3"); its module version is exact.
        assert version.startswith("v4.") and HELM_VERSION.startswith(version), version
        build = subprocess.run([tool("go", "Go >= 1.21"), "version", "-m", exe],
                               capture_output=True, text=True).stdout
        modules = re.findall(r"^\s+mod\s+helm\.sh/helm/v4\s+(\S+)", build, re.M)
        assert modules == [HELM_VERSION], f"helm {modules}, the tests pin {HELM_VERSION}"
    return Helm(exe, env)


def run_helm(helm: Helm, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([helm.exe, *args], capture_output=True, text=True, timeout=120, env=helm.env)
    if check:
        assert proc.returncode == 0, f"helm {' '.join(args)}: exit {proc.returncode}\n{proc.stderr}"
    return proc


def render(helm, *args: str, release: str = RELEASE, namespace: str = NAMESPACE,
           chart: str = str(CHART)) -> list[dict]:
    proc = run_helm(helm, "template", release, chart, "--namespace", namespace, *args)
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def single(objects: list[dict], kind: str) -> dict:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod(objects: list[dict], kind: str = "CronJob") -> dict:
    obj = single(objects, kind)
    spec = obj["spec"]["jobTemplate"]["spec"] if kind == "CronJob" else obj["spec"]
    return spec["template"]["spec"]


@pytest.fixture(scope="module")
def default_render(helm) -> list[dict]:
    return render(helm)


@pytest.fixture(scope="module")
def kustomize_render() -> list[dict]:
    return kustomize_build(SYNC_DIR)


# --- the chart's identity ----------------------------------------------------

def test_chart_version_follows_cargo():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["version"] == cargo_version()
    assert chart["appVersion"] == cargo_version()


def test_helm_lint_strict(helm):
    run_helm(helm, "lint", "--strict", str(CHART))
    run_helm(helm, "lint", "--strict", str(CHART), *ALL_FEATURES)


# --- one source of truth: the chart's defaults are the kustomize base ---------

def without_template_metadata(spec: dict) -> dict:
    """A Job spec without its pod template's metadata (labels differ by the release's)."""
    spec = copy.deepcopy(spec)
    template_metadata = spec["template"].pop("metadata", {})
    assert template_metadata.get("labels"), "pod template without labels"
    return spec


def assert_labels_include(chart_obj: dict, kustomize_obj: dict, path: tuple[str, ...]):
    def labels(obj):
        for key in path:
            obj = obj[key]
        return obj.get("labels", {})
    want, have = labels(kustomize_obj), labels(chart_obj)
    assert want.items() <= have.items(), f"{'/'.join(path)}: kustomize {want} not in chart {have}"


def test_cronjob_matches_kustomize(default_render, kustomize_render):
    chart, base = single(default_render, "CronJob"), single(kustomize_render, "CronJob")
    assert chart["metadata"]["name"] == base["metadata"]["name"]
    chart_spec, base_spec = copy.deepcopy(chart["spec"]), copy.deepcopy(base["spec"])
    for spec in (chart_spec, base_spec):
        spec["jobTemplate"].pop("metadata")
        spec["jobTemplate"]["spec"] = without_template_metadata(spec["jobTemplate"]["spec"])
    # The whole spec: schedule, time zone, Forbid, deadlines, history, backoff, and the pod
    # (image, args, env, securityContexts, resources, mounts, volumes, account, token).
    assert chart_spec == base_spec
    assert chart_spec["concurrencyPolicy"] == "Forbid"
    assert_labels_include(chart, base, ("metadata",))
    assert_labels_include(chart, base, ("spec", "jobTemplate", "metadata"))
    assert_labels_include(chart, base, ("spec", "jobTemplate", "spec", "template", "metadata"))


def test_initial_job_matches_kustomize(default_render, kustomize_render):
    chart, base = single(default_render, "Job"), single(kustomize_render, "Job")
    # Jobs are immutable: the chart's name carries a hash of its spec (see the template).
    assert re.fullmatch(rf"{re.escape(base['metadata']['name'])}-[0-9a-f]{{8}}", chart["metadata"]["name"])
    assert without_template_metadata(chart["spec"]) == without_template_metadata(base["spec"])
    assert_labels_include(chart, base, ("metadata",))
    assert_labels_include(chart, base, ("spec", "template", "metadata"))


def test_config_and_account_match_kustomize(default_render, kustomize_render):
    chart_cm, base_cm = single(default_render, "ConfigMap"), single(kustomize_render, "ConfigMap")
    assert chart_cm["metadata"]["name"] == base_cm["metadata"]["name"]
    assert yaml.safe_load(chart_cm["data"]["config.yaml"]) == yaml.safe_load(base_cm["data"]["config.yaml"])
    chart_sa, base_sa = single(default_render, "ServiceAccount"), single(kustomize_render, "ServiceAccount")
    assert chart_sa["metadata"]["name"] == base_sa["metadata"]["name"]
    assert chart_sa["automountServiceAccountToken"] is base_sa["automountServiceAccountToken"] is False


def test_comparison_sees_a_drift(helm, kustomize_render):
    # Guards the guard: a changed value must make the CronJob differ from the base.
    changed = render(helm, "--set", "resources.limits.memory=1Gi")
    chart, base = single(changed, "CronJob"), single(kustomize_render, "CronJob")
    assert without_template_metadata(chart["spec"]["jobTemplate"]["spec"]) != \
        without_template_metadata(base["spec"]["jobTemplate"]["spec"])


def test_default_render_has_no_optional_parts(default_render):
    # No cache, monitoring or coverage; the run Lease's Role and RoleBinding are not
    # optional (k8s/ renders them too, test_rbac_is_the_run_lease_only_unless_asked_for).
    kinds = sorted(o["kind"] for o in default_render)
    assert kinds == ["ConfigMap", "CronJob", "Job", "Role", "RoleBinding", "ServiceAccount"], kinds


def test_cache_matches_kustomize(helm):
    chart = render(helm, "--set", "cache.enabled=true")
    base = kustomize_build(CACHE_DIR)

    def zot_config(objects):
        cm = next(o for o in by_kind(objects, "ConfigMap") if "config.json" in o["data"])
        return cm["metadata"]["name"], json.loads(cm["data"]["config.json"])

    chart_cm_name, chart_zot = zot_config(chart)
    base_cm_name, base_zot = zot_config(base)
    assert chart_zot == base_zot
    assert chart_zot["http"]["address"] == "0.0.0.0" and "docker2s2" in chart_zot["http"]["compat"]

    def pod_spec(objects, cm_name, claim_name):
        deployment = single(objects, "Deployment")
        spec = copy.deepcopy(deployment["spec"]["template"]["spec"])
        for vol in spec["volumes"]:
            if vol.get("configMap", {}).get("name") == cm_name:
                vol["configMap"]["name"] = "<zot config>"
            if vol.get("persistentVolumeClaim", {}).get("claimName") == claim_name:
                vol["persistentVolumeClaim"]["claimName"] = "<zot data>"
        rest = {k: v for k, v in deployment["spec"].items() if k not in ("template", "selector")}
        return spec, rest

    chart_pvc, base_pvc = single(chart, "PersistentVolumeClaim"), single(base, "PersistentVolumeClaim")
    assert chart_pvc["spec"] == base_pvc["spec"]
    assert pod_spec(chart, chart_cm_name, chart_pvc["metadata"]["name"]) == \
        pod_spec(base, base_cm_name, base_pvc["metadata"]["name"])

    chart_svc, base_svc = single(chart, "Service"), single(base, "Service")
    assert chart_svc["metadata"]["name"] == base_svc["metadata"]["name"]
    assert {k: v for k, v in chart_svc["spec"].items() if k != "selector"} == \
        {k: v for k, v in base_svc["spec"].items() if k != "selector"}
    # The Service selects Zot's pods, and not image-sync's.
    selector = chart_svc["spec"]["selector"].items()
    assert selector <= single(chart, "Deployment")["spec"]["template"]["metadata"]["labels"].items()
    assert not selector <= single(chart, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"].items()
    # The default config points at this Service, in the release's namespace image-cache.
    config = yaml.safe_load(next(o for o in by_kind(chart, "ConfigMap") if "config.yaml" in o["data"])["data"]["config.yaml"])
    host = f"{chart_svc['metadata']['name']}.{NAMESPACE}.svc.cluster.local:{chart_svc['spec']['ports'][0]['port']}"
    assert config["cache_registry"] == host and host in config["settings"]["insecure_registries"]


# --- Kubernetes schemas and the restricted Pod Security profile ---------------

# The restricted profile (https://kubernetes.io/docs/concepts/security/pod-security-standards/),
# baseline included, as far as these pods can express it.
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                           "persistentVolumeClaim", "projected", "secret", "image"}


def restricted_violations(pod: dict) -> list[str]:
    problems = []
    psc = pod.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key) is True:
            problems.append(f"{key}: true")
    for vol in pod.get("volumes") or []:
        kinds = set(vol) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {vol['name']}: {sorted(kinds)}")
    if psc.get("sysctls"):
        problems.append("sysctls")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    containers = (pod.get("initContainers") or []) + pod["containers"]
    for c in containers:
        sc = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            problems.append(f"{name}: runAsNonRoot must be true")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile {seccomp}")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{name}: capabilities must drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: capabilities.add {caps['add']}")
        if (sc.get("procMount") or "Default") != "Default":
            problems.append(f"{name}: procMount")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            problems.append(f"{name}: hostPort")
    return problems


def pod_specs(objects: list[dict]) -> list[tuple[str, dict]]:
    pods = []
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] == "CronJob":
            pods.append((where, obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
        elif obj["kind"] in ("Job", "Deployment", "StatefulSet", "DaemonSet"):
            pods.append((where, obj["spec"]["template"]["spec"]))
    return pods


def test_restricted_check_catches_a_violation(default_render):
    # Guards the guard: the checker must flag what the restricted profile rejects.
    (where, pod), *_ = pod_specs(default_render)
    assert restricted_violations(pod) == [], where
    bad = copy.deepcopy(pod)
    bad["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    bad["securityContext"].pop("seccompProfile")
    bad["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    assert len(restricted_violations(bad)) == 3, restricted_violations(bad)


@pytest.mark.parametrize("features", ["defaults", "all features"])
def test_chart_renders_valid_restricted_objects(helm, features):
    objects = render(helm, *(ALL_FEATURES if features == "all features" else []))
    for obj in objects:
        if obj["kind"] not in CUSTOM_KINDS:
            validate(obj, f"helm template ({features})")
        if "ClusterRole" not in obj["kind"]:
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]
    pods = pod_specs(objects)
    assert len(pods) == (3 if features == "all features" else 2), [w for w, _ in pods]
    for where, pod in pods:
        assert restricted_violations(pod) == [], where


def test_kustomize_pods_are_restricted():
    objects = kustomize_build(SYNC_DIR) + kustomize_build(CACHE_DIR)
    pods = pod_specs(objects)
    assert len(pods) == 3
    for where, pod in pods:
        assert restricted_violations(pod) == [], where


# --- values ---------------------------------------------------------------------

def config_manifest(helm: Helm, tmp_path: Path, *values: str) -> Path:
    """The ConfigMap manifest as docs/src/deployment.md shows it: `helm template --show-only`."""
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                    "--show-only", "templates/configmap.yaml", *values)
    path = tmp_path / "configmap.yaml"
    path.write_text(proc.stdout)
    return path


def check(*args: str) -> subprocess.CompletedProcess:
    """`image-sync --check ARGS` with the real binary."""
    return subprocess.run([str(binary()), "--check", *args], capture_output=True, text=True, timeout=60)


def test_rendered_config_passes_binary_check(helm, tmp_path):
    # The binary reads the ConfigMap manifest itself (docs/src/usage.md).
    manifest = config_manifest(helm, tmp_path)
    proc = check("--config", str(manifest))
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr}"
    # The pods' arguments (the Job's shards and extraArgs included) are the binary's.
    objects = render(helm, "--set-json", 'extraArgs=["--deadline", "200"]')
    for kind in ("CronJob", "Job"):
        args = pod(objects, kind)["containers"][0]["args"]
        proc = check(*[str(manifest) if arg == "/etc/image-sync/config.yaml" else arg for arg in args])
        assert proc.returncode == 0, f"{kind} {args}: exit {proc.returncode}\n{proc.stderr}"
    # What no schema can say (one field against another) is left to the binary: a check
    # timeout above the pull timeout renders, and image-sync refuses it.
    proc = check("--config", str(config_manifest(helm, tmp_path, "--set", "config.settings.check_timeout_secs=600")))
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr}"
    assert "check_timeout_secs" in proc.stderr, proc.stderr


# (values, what the error must name)
BAD_VALUES = [
    (["--set", "initialSync.shards=0"], "shards"),
    (["--set", "schedule=every ten minutes"], "schedule"),
    (["--set", "scheduel=*/5 * * * *"], "scheduel"),
    (["--set", "activeDeadlineSeconds=-1"], "activeDeadlineSeconds"),
    (["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
    (["--set", "securityContext.allowPrivilegeEscalation=true"], "allowPrivilegeEscalation"),
    (["--set", "podSecurityContext.runAsNonRoot=false"], "runAsNonRoot"),
    (["--set", "securityContext.capabilities.drop={NET_RAW}"], "drop"),
    (["--set", "cache.config.http.address=127.0.0.1"], "address"),
    (["--set", "cache.config.http.compat={}"], "compat"),
    (["--set", "monitoring.pushgateway.url=pushgateway:9091"], "url"),
    (["--set", "config.images=nginx"], "images"),
    # The config itself, by the schema `image-sync config-schema` prints.
    (["--set-string", "config.settings.concurrency=two"], "concurrency"),
    (["--set", "config.settings.concurrenc=2"], "concurrenc"),
    (["--set", "config.images[0].tag=--privileged"], "tag"),
    (["--set", "image.digest=sha256:abc"], "digest"),
]


@pytest.mark.parametrize("values,field", BAD_VALUES, ids=[f for _, f in BAD_VALUES])
def test_schema_rejects_bad_values(helm, values, field):
    proc = run_helm(helm, "template", RELEASE, str(CHART), *values, check=False)
    assert proc.returncode != 0, f"{values} was accepted"
    assert "schema" in proc.stderr and field in proc.stderr, proc.stderr


def test_install_rejects_bad_values(helm):
    proc = run_helm(helm, "install", "--dry-run=client", RELEASE, str(CHART),
                    "--namespace", NAMESPACE, "--set", "initialSync.shards=0", check=False)
    assert proc.returncode != 0 and "shards" in proc.stderr, proc.stderr
    # And the same command with good values installs (client-side dry run).
    run_helm(helm, "install", "--dry-run=client", RELEASE, str(CHART), "--namespace", NAMESPACE)


def test_existing_configmap_and_secret(helm):
    objects = render(helm, "--set", "existingConfigMap=team-images", "--set", "dockerHub.existingSecret=hub-pull")
    assert not by_kind(objects, "ConfigMap")
    for kind in ("CronJob", "Job"):
        volumes = {v["name"]: v for v in pod(objects, kind)["volumes"]}
        assert volumes["config"]["configMap"]["name"] == "team-images"
        assert volumes["docker-auth"]["secret"]["secretName"] == "hub-pull"
        assert volumes["docker-auth"]["secret"]["optional"] is True
    # No Secret: nothing mounted, DOCKER_CONFIG unset (crane's default search).
    objects = render(helm, "--set", "dockerHub.existingSecret=")
    spec = pod(objects)
    assert "docker-auth" not in {v["name"] for v in spec["volumes"]}
    assert "DOCKER_CONFIG" not in {e["name"] for e in spec["containers"][0]["env"]}
    assert not [o for o in objects if o["kind"] == "Secret"]


def test_initial_sync_shards_and_name(helm, default_render):
    objects = render(helm, "--set", "initialSync.shards=2")
    job = single(objects, "Job")["spec"]
    assert (job["completionMode"], job["completions"], job["parallelism"]) == ("Indexed", 2, 2)
    assert job["template"]["spec"]["containers"][0]["args"][-2:] == ["--shard-count", "2"]
    assert job["backoffLimit"] == 2
    # A changed spec is a new Job; an unchanged one keeps its name.
    assert single(objects, "Job")["metadata"]["name"] != single(default_render, "Job")["metadata"]["name"]
    assert single(render(helm), "Job")["metadata"]["name"] == single(default_render, "Job")["metadata"]["name"]
    assert not by_kind(render(helm, "--set", "initialSync.enabled=false"), "Job")


def test_rbac_is_the_run_lease_only_unless_asked_for(helm, default_render):
    assert not [o for o in default_render if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    off = render(helm, "--set", "rbac.leases.enabled=false")
    assert not [o for o in off if o["kind"] in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")]
    assert pod(off)["automountServiceAccountToken"] is False
    assert "--lease" not in pod(off)["containers"][0]["args"]

    leases = default_render
    assert pod(leases)["containers"][0]["args"][-2:] == ["--lease", "image-sync"]
    role = single(leases, "Role")
    assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                              "verbs": ["get", "create", "update"]}]
    binding = single(leases, "RoleBinding")
    account = single(leases, "ServiceAccount")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert not by_kind(leases, "ClusterRole")
    assert pod(leases)["serviceAccountName"] == account
    assert pod(leases)["automountServiceAccountToken"] is True

    coverage = render(helm, "--set", "rbac.coverage.enabled=true")
    cluster_role = single(coverage, "ClusterRole")
    for rule in cluster_role["rules"]:
        assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
        assert "secrets" not in rule["resources"] and "*" not in rule["resources"], rule
    assert single(coverage, "ClusterRoleBinding")["subjects"][0]["name"] == account
    # The run Lease's Role stays as it is; coverage adds no namespaced grant.
    assert by_kind(coverage, "Role") == [role]
    only_coverage = render(helm, "--set", "rbac.coverage.enabled=true", "--set", "rbac.leases.enabled=false")
    assert not by_kind(only_coverage, "Role") and not by_kind(only_coverage, "RoleBinding")
    assert "--lease" not in pod(only_coverage)["containers"][0]["args"]
    assert pod(only_coverage)["automountServiceAccountToken"] is True
    # Exactly the kinds `image-sync discover --cluster` lists, the same rules as the
    # kustomize component k8s/components/image-sync-coverage.
    component = yaml.safe_load((REPO / "k8s/components/image-sync-coverage/clusterrole.yaml").read_text())
    assert cluster_role["rules"] == component["rules"]
    assert {(rule["apiGroups"][0], res) for rule in component["rules"] for res in rule["resources"]} == {
        ("", "pods"), ("", "replicationcontrollers"), ("", "podtemplates"),
        ("apps", "deployments"), ("apps", "replicasets"), ("apps", "statefulsets"), ("apps", "daemonsets"),
        ("batch", "jobs"), ("batch", "cronjobs")}
    assert pod(coverage)["automountServiceAccountToken"] is True


def test_pushgateway_url_feeds_the_pods(helm, default_render):
    url = "http://pushgateway.monitoring.svc:9091"
    objects = render(helm, "--set", f"monitoring.pushgateway.url={url}")
    for kind in ("CronJob", "Job"):
        env = {e["name"]: e for e in pod(objects, kind)["containers"][0]["env"]}
        ref = env["IMAGE_SYNC_PUSHGATEWAY"]["valueFrom"]["configMapKeyRef"]
        configmaps = {o["metadata"]["name"]: o for o in by_kind(objects, "ConfigMap")}
        assert configmaps[ref["name"]]["data"][ref["key"]] == url
    # Without the URL, the reference stays (optional) and no ConfigMap answers it.
    ref = {e["name"]: e for e in pod(default_render)["containers"][0]["env"]}["IMAGE_SYNC_PUSHGATEWAY"]
    assert ref["valueFrom"]["configMapKeyRef"]["optional"] is True
    assert ref["valueFrom"]["configMapKeyRef"]["name"] not in {o["metadata"]["name"] for o in default_render}


# --- monitoring: one source for the rules and the dashboard ---------------------

@pytest.mark.parametrize("name", CHART_COPIES)
def test_chart_files_are_copies_of_the_component(name):
    source = MONITORING_COMPONENT / name
    copy_path = CHART / "files" / name
    assert copy_path.read_bytes() == source.read_bytes(), \
        f"cp {source.relative_to(REPO)} {copy_path.relative_to(REPO)}"


def test_chart_prometheus_rule_is_the_component_rule(helm):
    objects = render(helm, "--set", "monitoring.prometheusRule.enabled=true",
                     "--set", "monitoring.prometheusRule.labels.release=kube-prometheus-stack")
    rule = single(objects, "PrometheusRule")
    component = yaml.safe_load((MONITORING_COMPONENT / RULE).read_text())
    assert rule["spec"] == component["spec"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # In another namespace the hints name it, and the release's CronJob.
    other = single(render(helm, "--set", "monitoring.prometheusRule.enabled=true",
                          release="sync", namespace="caches"), "PrometheusRule")
    text = json.dumps(other["spec"])
    assert "kubectl -n caches " in text and "-n image-cache" not in text
    assert "cronjob sync-image-sync;" in text
    assert [r["expr"] for g in other["spec"]["groups"] for r in g["rules"]] == \
        [r["expr"] for g in component["spec"]["groups"] for r in g["rules"]]


def dashboard() -> dict:
    return json.loads((MONITORING_COMPONENT / DASHBOARD).read_text())


def test_dashboard_configmaps_for_the_grafana_sidecar(helm):
    expected = dashboard()
    objects = render(helm, "--set", "monitoring.dashboard.enabled=true",
                     "--set", "monitoring.dashboard.namespace=monitoring")
    chart_cm = next(o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"].endswith("-dashboard"))
    assert chart_cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert chart_cm["metadata"]["namespace"] == "monitoring"
    assert json.loads(chart_cm["data"]["image-sync.json"]) == expected
    overlay = kustomize_build(MONITORING_OVERLAY)
    component_cm = next(o for o in by_kind(overlay, "ConfigMap") if o["metadata"]["name"] == "image-sync-dashboard")
    assert component_cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert component_cm["metadata"]["namespace"] == NAMESPACE
    assert json.loads(component_cm["data"]["image-sync.json"]) == expected


def panel_targets() -> list[tuple[str, str]]:
    targets = []
    for panel in dashboard()["panels"]:
        assert panel.get("targets"), f"panel {panel['title']} queries nothing"
        for target in panel["targets"]:
            targets.append((panel["title"], target["expr"]))
    return targets


def queried_metrics() -> set[str]:
    return {name for _, expr in panel_targets() for name in re.findall(r"\bimage_sync_[a-z_]+\b", expr)}


def test_dashboard_covers_the_runs_story():
    board = dashboard()
    assert board["uid"] == "image-sync"
    assert all(p["datasource"]["uid"] == "${datasource}" for p in board["panels"])
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    # Last success age, images by action, pulls and quota per registry, failures by class
    # and host, run duration, tag moves.
    assert {"image_sync_last_success_timestamp_seconds", "image_sync_images", "image_sync_failures",
            "image_sync_manifest_requests", "image_sync_ratelimit_remaining",
            "image_sync_ratelimit_limit", "image_sync_exit_code",
            "image_sync_run_duration_seconds", "image_sync_tag_moved"} <= queried_metrics()
    titles = [p["title"] for p in board["panels"]]
    assert len(titles) == len(set(titles))
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_queries_parse(tmp_path):
    # Grafana variables would not parse; the queries use none.
    targets = panel_targets()
    assert not [expr for _, expr in targets if "$" in expr]
    rules = {"groups": [{"name": "image-sync-dashboard", "rules": [
        {"record": f"image_sync_dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(targets)]}]}
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    proc = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(targets)} rules found" in proc.stdout
    # Guards the guard: a broken query fails the same check.
    rules["groups"][0]["rules"].append({"record": "image_sync_dashboard:broken", "expr": "sum by (action (image_sync_images)"})
    path.write_text(yaml.safe_dump(rules))
    assert subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True).returncode != 0


# --- real servers on free loopback ports ---------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackServer:
    """A real server (registry, Pushgateway, Prometheus) on a free loopback port, polled
    until `ready_path` answers (bounded), stopped and reaped on exit."""

    ready_path = "/"

    def __init__(self, exe: str, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.log = directory / "server.log"
        for _ in range(5):
            self.port = free_port()
            with self.log.open("w") as log:
                self.process = subprocess.Popen([exe, *self.arguments()], stdout=log, stderr=log,
                                                stdin=subprocess.DEVNULL)
            if self._ready():
                return
            self.stop()  # the port was taken between free_port() and the start: try another
        raise AssertionError(f"{exe} did not start: {self.log.read_text()[-2000:]}")

    def arguments(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                urllib.request.urlopen(f"{self.url}{self.ready_path}", timeout=1)
                return True
            except OSError:
                time.sleep(0.1)
        return False

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class Registry(LoopbackServer):
    """Distribution (`docker-registry serve`), with its access log."""

    ready_path = "/v2/"

    def __init__(self, directory: Path):
        super().__init__(tool("docker-registry", "apt-get install docker-registry; scripts/install-test-tools"),
                         directory)

    def arguments(self) -> list[str]:
        config = self.directory / "config.yml"
        config.write_text(yaml.safe_dump({
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(self.directory / "data")}},
            "http": {"addr": self.host},
        }))
        return ["serve", str(config)]


class Pushgateway(LoopbackServer):
    ready_path = "/metrics"

    def __init__(self, directory: Path):
        super().__init__(tool("prometheus-pushgateway", "apt-get install prometheus-pushgateway"), directory)

    def arguments(self) -> list[str]:
        return [f"--web.listen-address={self.host}"]


class Prometheus(LoopbackServer):
    """A Prometheus that scrapes one Pushgateway every second, as a cluster's would
    (honor_labels: the pushed job and shard labels stay)."""

    ready_path = "/-/ready"

    def __init__(self, directory: Path, pushgateway: Pushgateway):
        self.pushgateway = pushgateway
        super().__init__(tool("prometheus", "apt-get install prometheus (scripts/install-test-tools)"), directory)

    def arguments(self) -> list[str]:
        config = self.directory / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "pushgateway", "honor_labels": True,
                                "static_configs": [{"targets": [self.pushgateway.host]}]}],
        }))
        return [f"--config.file={config}", f"--storage.tsdb.path={self.directory / 'data'}",
                f"--web.listen-address={self.host}"]

    def query(self, expr: str) -> list[dict]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = json.load(answer)
        assert body["status"] == "success", body
        return body["data"]["result"]


def test_chart_as_oci_artifact_round_trip(helm, default_render, tmp_path):
    version = cargo_version()
    run_helm(helm, "package", str(CHART), "--destination", str(tmp_path))
    package = tmp_path / f"image-sync-{version}.tgz"
    assert package.is_file()
    with tarfile.open(package) as tar:
        names = set(tar.getnames())
    for name in ("Chart.yaml", "values.yaml", "values.schema.json", f"files/{DASHBOARD}", f"files/{RULE}"):
        assert f"image-sync/{name}" in names, name
    with Registry(tmp_path / "registry") as registry:
        proc = run_helm(helm, "push", str(package), f"oci://{registry.host}/charts", "--plain-http")
        assert f"{registry.host}/charts/image-sync:{version}" in proc.stdout + proc.stderr
        # It is an OCI artifact of the Helm chart media types, in a real registry.
        request = urllib.request.Request(
            f"http://{registry.host}/v2/charts/image-sync/manifests/{version}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            manifest = json.load(answer)
        assert manifest["config"]["mediaType"] == "application/vnd.cncf.helm.config.v1+json"
        assert [layer["mediaType"] for layer in manifest["layers"]] == \
            ["application/vnd.cncf.helm.chart.content.v1.tar+gzip"]
        # And back: the pulled chart renders what the working tree renders.
        pulled = render(helm, "--version", version, "--plain-http",
                        chart=f"oci://{registry.host}/charts/image-sync")
    assert pulled == default_render


# --- the dashboard's metrics are the binary's --------------------------------------

def crane_push(crane: str, ref: str, content: str, tmp_path: Path) -> str:
    """Pushes a one-layer image made here (its content decides its digest); returns the digest."""
    layer = tmp_path / f"layer-{content}.tar"
    payload = tmp_path / "payload.txt"
    payload.write_text(content)
    with tarfile.open(layer, "w") as tar:
        tar.add(payload, arcname="payload.txt")
    subprocess.run([crane, "append", "--oci-empty-base", "-f", str(layer), "-t", ref],
                   check=True, capture_output=True, text=True, timeout=60)
    return subprocess.run([crane, "digest", ref], check=True, capture_output=True,
                          text=True, timeout=60).stdout.strip()


def metric_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


class QuotaHeaders:
    """A proxy in front of a real registry that answers manifest requests with Docker Hub's
    quota headers (ratelimit-limit, ratelimit-remaining; a GET spends one), which
    Distribution does not send. Everything else passes through unchanged."""

    LIMIT = 100

    def __init__(self, upstream: Registry):
        proxy = self
        self.remaining = self.LIMIT

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                connection = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                connection.request(self.command, self.path, body=body, headers=headers)
                answer = connection.getresponse()
                payload = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding"):
                        self.send_header(key, value)
                if "/manifests/" in self.path:
                    if self.command == "GET":
                        proxy.remaining -= 1
                    self.send_header("ratelimit-limit", f"{proxy.LIMIT};w=21600")
                    self.send_header("ratelimit-remaining", f"{proxy.remaining};w=21600")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                connection.close()

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _forward

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def run_image_sync(config: dict, tmp_path: Path, name: str, *args: str) -> tuple[int, dict, str]:
    """One real run with --metrics-file: (exit code, report, metrics text)."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    metrics = tmp_path / f"{name}.prom"
    proc = subprocess.run([str(binary()), "--config", str(path), "--metrics-file", str(metrics), *args],
                          capture_output=True, text=True, timeout=300)
    assert metrics.is_file(), f"{name}: no metrics file\n{proc.stderr}"
    return proc.returncode, json.loads(proc.stdout), metrics.read_text()


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """Real runs against real registries, written to files and pushed to a real
    Pushgateway that a real Prometheus scrapes: a failed run, a shard of an initial sync,
    a successful run, and the failed run again (the last three pushed: the CronJob's group
    ends as a failed run that kept the last success)."""
    crane = tool("crane", "scripts/install-test-tools")
    tmp_path = tmp_path_factory.mktemp("runs")
    with Registry(tmp_path / "upstream") as upstream, Registry(tmp_path / "cache") as cache, \
            QuotaHeaders(upstream) as metered, Pushgateway(tmp_path / "pushgateway") as pushgateway, \
            Prometheus(tmp_path / "prometheus", pushgateway) as prometheus:
        plain = crane_push(crane, f"{upstream.host}/demo/hello:1.0", "hello", tmp_path)
        pinned = crane_push(crane, f"{upstream.host}/demo/pinned:moving", "first", tmp_path)
        moved = crane_push(crane, f"{upstream.host}/demo/pinned:moving", "second", tmp_path)
        assert len({plain, pinned, moved}) == 3
        images = [
            {"source": f"{metered.host}/demo/hello", "tag": "1.0"},
            # A pin whose watched tag moved upstream: image_sync_tag_moved 1.
            {"source": f"{metered.host}/demo/pinned", "tag": "moving", "digest": pinned},
        ]
        # A tag the upstream does not have fails the first run; the later runs succeed
        # (image_sync_last_success_timestamp_seconds is written by a success only).
        missing = {"source": f"{metered.host}/demo/hello", "tag": "missing"}
        config = {"cache_registry": cache.host, "settings": {"pull_timeout_secs": 60}}
        runs = {
            "failed": run_image_sync({**config, "images": [*images, missing]}, tmp_path, "failed"),
            "shard": run_image_sync({**config, "images": images}, tmp_path, "shard",
                                    "--shard", "0/1", "--pushgateway", pushgateway.url),
            "ok": run_image_sync({**config, "images": images}, tmp_path, "ok",
                                 "--pushgateway", pushgateway.url),
            "failed again": run_image_sync({**config, "images": [*images, missing]}, tmp_path, "failed-again",
                                           "--pushgateway", pushgateway.url),
        }
        # Until Prometheus has scraped both pushed groups (bounded).
        deadline = time.monotonic() + 60
        while len(prometheus.query('image_sync_last_success_timestamp_seconds{job="image_sync"}')) < 2 \
                or not prometheus.query('image_sync_failures{job="image_sync"}'):
            assert time.monotonic() < deadline, f"Prometheus never scraped the pushes: {prometheus.log.read_text()[-2000:]}"
            time.sleep(0.5)
        yield runs, prometheus


def test_real_runs_write_every_metric_the_dashboard_queries(real_runs):
    runs, _ = real_runs
    assert [code for code, _, _ in runs.values()] == [1, 0, 0, 1], {k: r for k, (_, r, _) in runs.items()}
    assert [r["action"] for r in runs["failed"][1]["results"]] == ["pulled", "pulled", "failed"]
    assert [r["action"] for r in runs["ok"][1]["results"]] == ["already_cached", "already_cached"]
    assert [r["action"] for r in runs["failed again"][1]["results"]] == ["already_cached", "already_cached", "failed"]
    failed_text, ok_text = runs["failed"][2], runs["ok"][2]
    # The missing tag, by its typed failure: the upstream (the metered proxy) lacks it.
    upstream_host = runs["failed"][1]["results"][2]["image"].split("/")[0]
    assert re.findall(r'^image_sync_failures\{(.*)\} (\S+)$', failed_text, re.M) == \
        [(f'class="manifest_unknown",side="upstream",host="{upstream_host}"', "1.0")], failed_text
    assert "image_sync_failures" not in ok_text, ok_text
    assert re.search(r'^image_sync_tag_moved\{image="[^"]*demo/pinned",tag="moving"\} 1', ok_text, re.M), ok_text
    assert re.search(r'^image_sync_images\{action="failed"\} 1', failed_text, re.M), failed_text
    assert re.search(r'^image_sync_ratelimit_limit\{registry="[^"]+"\} 100', ok_text, re.M), ok_text
    assert re.search(r'^image_sync_last_success_timestamp_seconds ', ok_text, re.M), ok_text
    written = set().union(*(metric_names(text) for _, _, text in runs.values()))
    not_written = queried_metrics() - written
    assert not not_written, f"the dashboard queries metrics the binary does not write: {not_written}\n{ok_text}"
    # Guards the guard: the names come from the files, not from the dashboard.
    assert "image_sync_no_such_metric" not in written and "image_sync_run_duration_seconds" in written


@pytest.mark.parametrize("title,expr", panel_targets(), ids=[f"{t}: {e[:40]}" for t, e in panel_targets()])
def test_dashboard_query_answers_from_pushed_runs(real_runs, title, expr):
    # Metric names, label names and values (action, method, registry, image, tag, shard):
    # every query finds the series a real CronJob run and a real shard pushed.
    _, prometheus = real_runs
    assert prometheus.query(expr), f"{title}: {expr} returns nothing"


def test_pushed_runs_answer_the_panels_as_expected(real_runs):
    _, prometheus = real_runs

    def value(expr):
        (sample,) = prometheus.query(expr)
        return float(sample["value"][1])

    age = value('time() - max(image_sync_last_success_timestamp_seconds{job="image_sync"})')
    assert 0 <= age < 300
    # The CronJob's group (no shard label) and the shard's are told apart.
    # The CronJob's last run failed; the POST kept the success before it.
    assert value('max(image_sync_exit_code{job="image_sync",shard=""})') == 1
    assert value('sum(image_sync_images{job="image_sync",shard="",action="failed"})') == 1
    (failure,) = prometheus.query('sum by (class, side, host) (image_sync_failures{job="image_sync",shard=""})')
    assert (failure["metric"]["class"], failure["metric"]["side"]) == ("manifest_unknown", "upstream")
    assert failure["metric"]["host"].startswith("127.0.0.1:") and float(failure["value"][1]) == 1
    assert [s["metric"]["shard"] for s in prometheus.query('max by (shard) (image_sync_exit_code{job="image_sync",shard!=""})')] == ["0"]
    assert value('count(max by (image, tag) (image_sync_tag_moved{job="image_sync"}) == 1) or vector(0)') == 1
    remaining = prometheus.query('min by (registry) (image_sync_ratelimit_remaining{job="image_sync"})')
    assert len(remaining) == 1 and 0 < float(remaining[0]["value"][1]) < QuotaHeaders.LIMIT
