"""Offline checks of the deployment side: Kubernetes manifests, kustomize
rendering, the image-sync config shipped in the ConfigMap, and flake.nix.

External tools (kustomize, nix-instantiate, the image-sync binary) are skipped
when absent, unless IMAGE_SYNC_REQUIRE_TOOLS=1 (as in CI), where a missing
tool is a failure: a green run must mean the check actually ran.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "k8s/clusters/scale-test/infrastructure"
SYNC_DIR = INFRA / "image-sync"
CACHE_DIR = INFRA / "image-cache"
KUSTOMIZATIONS = [SYNC_DIR, CACHE_DIR]
MONITORING_COMPONENT = REPO / "k8s/components/image-sync-monitoring"
MONITORING_OVERLAY = REPO / "k8s/clusters/scale-test/monitoring"
ALERTS_TEST = Path(__file__).resolve().parent / "alerts-test.yaml"
FLAKE = REPO / "flake.nix"
ATTRS_FILE = REPO / "deploy/nixpkgs-attrs.txt"
GENERATOR = REPO / "deploy/gen-initial-sync.py"

# Kubernetes version whose schemas the manifests are checked against. It must
# be one kubernetes-validate ships (checked below, so a downgrade is noticed).
K8S_VERSION = "1.30"

CACHE_HOST = "image-cache.image-cache.svc.cluster.local:5000"
SCHEDULE_PERIOD_SECS = 600  # "*/10 * * * *"

# Files under k8s/ that are not Kubernetes objects.
NOT_K8S_OBJECTS = {"kustomization.yaml", ".sops.yaml"}


def require_tools() -> bool:
    return os.environ.get("IMAGE_SYNC_REQUIRE_TOOLS") == "1"


def missing_tool(message: str):
    if require_tools():
        pytest.fail(f"{message} (IMAGE_SYNC_REQUIRE_TOOLS=1)")
    pytest.skip(message)


def find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    # `go install` puts kustomize in $(go env GOPATH)/bin, often not on PATH.
    gopath = os.environ.get("GOPATH") or str(Path.home() / "go")
    candidate = Path(gopath) / "bin" / name
    return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def manifest_files() -> list[Path]:
    files = sorted(p for p in INFRA.rglob("*.yaml") if p.name not in NOT_K8S_OBJECTS)
    assert files, f"no manifests under {INFRA}"
    return files


def one(path: Path, kind: str) -> dict:
    docs = [d for d in load_docs(path) if d.get("kind") == kind]
    assert len(docs) == 1, f"{path.name}: expected one {kind}, found {len(docs)}"
    return docs[0]


def cargo_version() -> str:
    cargo = REPO / "Cargo.toml"
    assert cargo.is_file(), "Cargo.toml missing: the image tag is checked against it"
    return tomllib.loads(cargo.read_text())["package"]["version"]


@pytest.fixture(scope="module")
def cronjob() -> dict:
    return one(SYNC_DIR / "cronjob.yaml", "CronJob")


@pytest.fixture(scope="module")
def pod_spec(cronjob) -> dict:
    return cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def container(pod_spec) -> dict:
    containers = pod_spec["containers"]
    assert len(containers) == 1
    return containers[0]


def validate(obj: dict, where: str) -> None:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = "/".join(str(p) for p in e.path)
        raise AssertionError(f"{where}: {obj.get('kind')}/{obj['metadata'].get('name')}: "
                             f"{path}: {e.message}") from None


# --- schema validation -----------------------------------------------------

def test_validator_ships_chosen_kubernetes_version():
    from kubernetes_validate.utils import all_versions
    assert any(v.startswith(K8S_VERSION + ".") for v in all_versions())


def test_strict_validation_rejects_unknown_field():
    # Guards the guard: strict mode must catch a misspelt field.
    bad = {"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "x"}, "data": {}, "dta": {}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_manifest_validates_against_kubernetes_schema(path):
    docs = load_docs(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        validate(doc, str(path.relative_to(REPO)))


# --- kustomize -------------------------------------------------------------

def kustomize_build(directory: Path) -> list[dict]:
    exe = find_tool("kustomize")
    if exe is None:
        missing_tool("kustomize not found (deploy/install-tools.sh installs it)")
    proc = subprocess.run([exe, "build", str(directory)], capture_output=True, text=True)
    assert proc.returncode == 0, f"kustomize build {directory} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_kustomization_renders_and_validates(directory):
    objects = kustomize_build(directory)
    assert objects, f"{directory.name} rendered nothing"
    for obj in objects:
        validate(obj, f"kustomize build {directory.name}")
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "image-cache", obj["metadata"]["name"]
    # Every file listed is rendered, and every manifest in the directory is
    # either listed or deliberately left out.
    listed = set(yaml.safe_load((directory / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in directory.glob("*.yaml")} - NOT_K8S_OBJECTS
    assert on_disk - listed <= {"dockerhub-secret.template.yaml"}, on_disk - listed


def test_rendered_image_sync_has_no_secret():
    objects = kustomize_build(SYNC_DIR)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["ConfigMap", "CronJob", "Job", "Role", "RoleBinding", "ServiceAccount"], kinds
    # The only grant: the run Lease, namespaced, the verbs `--lease` uses; never Secrets.
    role = next(o for o in objects if o["kind"] == "Role")
    assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                              "verbs": ["get", "create", "update"]}]
    binding = next(o for o in objects if o["kind"] == "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "image-sync", "namespace": "image-cache"}]


def test_template_secret_not_in_kustomization():
    kustomization = yaml.safe_load((SYNC_DIR / "kustomization.yaml").read_text())
    referenced = [str(v) for key in ("resources", "components", "generators")
                  for v in kustomization.get(key) or []]
    assert referenced, "kustomization lists no resources"
    assert not [r for r in referenced if "template" in r or "secret" in r], referenced


def test_secret_template_has_placeholders_only_and_hub_key():
    secret = one(SYNC_DIR / "dockerhub-secret.template.yaml", "Secret")
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    assert secret["metadata"]["name"] == "dockerhub-auth"
    payload = json.loads(secret["stringData"][".dockerconfigjson"])
    assert list(payload["auths"]) == ["https://index.docker.io/v1/"]
    for entry in payload["auths"].values():
        assert set(entry) == {"auth"}
        assert entry["auth"].startswith("REPLACE_"), "template must hold placeholders only"


def test_sops_rules():
    rules = yaml.safe_load((SYNC_DIR / ".sops.yaml").read_text())["creation_rules"]
    assert rules
    for rule in rules:
        assert rule["encrypted_regex"] == "^(data|stringData)$"
        assert rule["age"].strip().startswith("age1")
    assert any(re.search(r["path_regex"], "dockerhub-secret.enc.yaml") for r in rules)
    assert not any(re.search(r["path_regex"], "dockerhub-secret.template.yaml") for r in rules)


# --- CronJob invariants ----------------------------------------------------

def test_cronjob_schedule_and_concurrency(cronjob):
    spec = cronjob["spec"]
    assert spec["schedule"] == "*/10 * * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert 0 < spec["startingDeadlineSeconds"] <= SCHEDULE_PERIOD_SECS
    assert spec["successfulJobsHistoryLimit"] >= 1
    assert spec["failedJobsHistoryLimit"] >= 1
    assert cronjob["metadata"]["name"] == "image-sync"


def test_job_deadline_shorter_than_period(cronjob):
    job = cronjob["spec"]["jobTemplate"]["spec"]
    # With Forbid, a run without a deadline could block all later runs.
    assert 0 < job["activeDeadlineSeconds"] < SCHEDULE_PERIOD_SECS
    assert 0 <= job["backoffLimit"] <= 2
    assert "ttlSecondsAfterFinished" not in job


def test_pod_restart_policy_and_security(pod_spec, container):
    assert pod_spec["restartPolicy"] == "Never"
    psc = pod_spec["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] == 65532
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    csc = container["securityContext"]
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["capabilities"]["drop"] == ["ALL"]
    assert not csc["capabilities"].get("add")
    assert "privileged" not in csc or csc["privileged"] is False
    for key in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][key]), key


def volume(pod_spec, name) -> dict:
    vols = {v["name"]: v for v in pod_spec["volumes"]}
    assert name in vols, f"volume {name} missing"
    return vols[name]


def mount_path(container, name) -> str:
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert name in mounts, f"volume {name} not mounted"
    return mounts[name]["mountPath"]


def secret_volume(pod_spec) -> dict:
    vols = [v for v in pod_spec["volumes"] if "secret" in v]
    assert len(vols) == 1, "expected exactly one Secret volume (Docker Hub auth)"
    return vols[0]


def test_docker_auth_secret_mount(pod_spec, container):
    vol = secret_volume(pod_spec)
    secret = vol["secret"]
    assert secret["secretName"] == "dockerhub-auth"
    assert secret["optional"] is True, "must run anonymously when the Secret is absent"
    assert secret["items"] == [{"key": ".dockerconfigjson", "path": "config.json"}]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DOCKER_CONFIG"] == mount_path(container, vol["name"])
    # The secret must not shadow the config or /tmp.
    assert env["DOCKER_CONFIG"] not in ("/tmp", "/etc/image-sync")


def test_tmp_is_writable_emptydir(pod_spec, container):
    tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert len(tmp) == 1
    assert "emptyDir" in volume(pod_spec, tmp[0]["name"])
    assert not tmp[0].get("readOnly")


def test_config_mount(pod_spec, container):
    config_vols = [v for v in pod_spec["volumes"] if "configMap" in v]
    assert len(config_vols) == 1
    vol = config_vols[0]
    assert vol["configMap"]["name"] == one(SYNC_DIR / "configmap.yaml", "ConfigMap")["metadata"]["name"]
    assert mount_path(container, vol["name"]) == "/etc/image-sync"
    args = container.get("args", [])
    if "--config" in args:
        assert args[args.index("--config") + 1] == "/etc/image-sync/config.yaml"


def test_image_tag_matches_cargo_version(container):
    image = container["image"]
    assert image == f"ghcr.io/pleme-io/image-sync:{cargo_version()}"


def test_initial_job_shares_cronjob_job_spec(cronjob):
    # The Job is the CronJob's, plus the shards: Indexed completion, one pod per shard,
    # the retries scaled, and `--shard-count` appended to the one container's args.
    job = one(SYNC_DIR / "job-initial-sync.yaml", "Job")
    shards = load_generator().SHARDS
    expected = copy.deepcopy(cronjob["spec"]["jobTemplate"]["spec"])
    expected["template"]["spec"]["containers"][0]["args"] += ["--shard-count", str(shards)]
    expected["backoffLimit"] *= shards
    expected.update(completionMode="Indexed", completions=shards, parallelism=shards)
    assert job["spec"] == expected


def test_initial_job_is_indexed_and_the_cronjob_stays_single(cronjob):
    job = one(SYNC_DIR / "job-initial-sync.yaml", "Job")
    shards = load_generator().SHARDS
    assert shards >= 2
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", shards, shards)
    args = spec["template"]["spec"]["containers"][0]["args"]
    # The pod is told the count; Kubernetes tells it its index (JOB_COMPLETION_INDEX).
    assert args[-2:] == ["--shard-count", str(shards)]
    cron_spec = cronjob["spec"]["jobTemplate"]["spec"]
    assert "completionMode" not in cron_spec and cron_spec.get("completions", 1) == 1
    cron_args = cron_spec["template"]["spec"]["containers"][0]["args"]
    assert not any(arg.startswith("--shard") for arg in cron_args)


def test_initial_job_args_are_accepted_by_the_binary(tmp_path):
    binary = Path(os.environ.get("IMAGE_SYNC_BIN", REPO / "target/debug/image-sync"))
    if not binary.is_file():
        missing_tool(f"image-sync binary not found at {binary} (cargo build, or set IMAGE_SYNC_BIN)")
    job = one(SYNC_DIR / "job-initial-sync.yaml", "Job")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    cm = one(SYNC_DIR / "configmap.yaml", "ConfigMap")
    config = tmp_path / "config.yaml"
    config.write_text(cm["data"]["config.yaml"])
    args = [str(config) if arg == "/etc/image-sync/config.yaml" else arg for arg in args]
    proc = subprocess.run([str(binary), "--check", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstderr:\n{proc.stderr}"
    assert "shards:" in proc.stderr and "balance" in proc.stderr, proc.stderr


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_initial_sync", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_initial_job_file_is_generator_output():
    gen = load_generator()
    expected = gen.render((SYNC_DIR / "cronjob.yaml").read_text())
    assert (SYNC_DIR / "job-initial-sync.yaml").read_text() == expected, \
        "run: python3 deploy/gen-initial-sync.py"
    proc = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_generator_follows_cronjob_changes():
    # The generator must carry pod-spec edits over, not emit a fixed file.
    gen = load_generator()
    text = (SYNC_DIR / "cronjob.yaml").read_text()
    changed = text.replace("ghcr.io/pleme-io/image-sync:", "example.invalid/other:")
    assert changed != text
    job = yaml.safe_load(gen.render(changed))
    assert job["spec"]["template"]["spec"]["containers"][0]["image"].startswith("example.invalid/other:")


# --- modes -----------------------------------------------------------------

def iter_modes(node, path=""):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("defaultMode", "mode"):
                yield f"{path}/{key}", value
            yield from iter_modes(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from iter_modes(value, f"{path}[{i}]")


def test_file_modes_are_decimal_ints():
    seen = 0
    for path in manifest_files():
        raw = path.read_text()
        # YAML 1.1 would read 0440 as octal; the convention here is decimal.
        assert not re.search(r"(?m)^\s*(default)?[mM]ode:\s*0[0-7]", raw), path
        for doc in load_docs(path):
            for where, mode in iter_modes(doc):
                seen += 1
                assert isinstance(mode, int) and not isinstance(mode, bool), (path, where, mode)
                assert 0 <= mode <= 511, (path, where, mode)
    assert seen >= 2


# --- image-sync configuration ----------------------------------------------

@pytest.fixture(scope="module")
def sync_config() -> dict:
    cm = one(SYNC_DIR / "configmap.yaml", "ConfigMap")
    return yaml.safe_load(cm["data"]["config.yaml"])


def test_sync_config_shape(sync_config):
    assert set(sync_config) == {"cache_registry", "images", "settings"}
    assert sync_config["cache_registry"] == CACHE_HOST
    assert CACHE_HOST in sync_config["settings"]["insecure_registries"]
    assert sync_config["images"]
    for image in sync_config["images"]:
        assert set(image) <= {"source", "tag", "cache_as"}
        assert "@" not in image["source"] and ":" not in image["source"].split("/")[-1]
    settings = sync_config["settings"]
    assert settings.get("check_timeout_secs", 0) <= settings["pull_timeout_secs"]
    # The Service the cache host points at exists, with that port.
    service = one(CACHE_DIR / "service.yaml", "Service")
    name, namespace = CACHE_HOST.split(".")[:2]
    assert service["metadata"]["name"] == name
    assert namespace == "image-cache"
    assert [p["port"] for p in service["spec"]["ports"]] == [int(CACHE_HOST.rsplit(":", 1)[1])]


def test_sync_config_passes_binary_check(tmp_path):
    binary = Path(os.environ.get("IMAGE_SYNC_BIN", REPO / "target/debug/image-sync"))
    if not binary.is_file():
        missing_tool(f"image-sync binary not found at {binary} (cargo build, or set IMAGE_SYNC_BIN)")
    cm = one(SYNC_DIR / "configmap.yaml", "ConfigMap")
    config = tmp_path / "config.yaml"
    config.write_text(cm["data"]["config.yaml"])
    proc = subprocess.run([str(binary), "--check", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    # The docs' command (docs/src/deployment.md): the binary reads the config out of the ConfigMap itself.
    proc = subprocess.run([str(binary), "--check", "--config", str(SYNC_DIR / "configmap.yaml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstderr:\n{proc.stderr}"
    # And the binary does reject a broken config, so exit 0 above means something.
    broken = tmp_path / "broken.yaml"
    broken.write_text(cm["data"]["config.yaml"] + "\nunknown_key: 1\n")
    proc = subprocess.run([str(binary), "--check", "--config", str(broken)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, f"expected usage/config error, got {proc.returncode}: {proc.stderr}"


# --- Zot -------------------------------------------------------------------

@pytest.fixture(scope="module")
def zot_config() -> dict:
    cm = one(CACHE_DIR / "zot-config.yaml", "ConfigMap")
    return json.loads(cm["data"]["config.json"])


def test_zot_http(zot_config):
    http = zot_config["http"]
    assert http["address"] == "0.0.0.0"
    assert str(http["port"]) == "5000"
    assert isinstance(http["compat"], list) and "docker2s2" in http["compat"]
    assert "tls" not in http  # plain HTTP, matching insecure_registries


def test_zot_storage_keeps_tagged_images(zot_config):
    storage = zot_config["storage"]
    deployment = one(CACHE_DIR / "deployment.yaml", "Deployment")
    mounts = {m["mountPath"]: m["name"] for m in deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    data_vol = mounts[storage["rootDirectory"]]
    vols = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "persistentVolumeClaim" in vols[data_vol]
    assert vols[data_vol]["persistentVolumeClaim"]["claimName"] == one(CACHE_DIR / "pvc.yaml", "PersistentVolumeClaim")["metadata"]["name"]
    # Retention policies are what can delete tagged images; plain GC only
    # removes untagged manifests and orphan blobs.
    assert "retention" not in storage
    if storage.get("gc"):
        assert storage.get("gcDelay"), "gc without a delay can race an in-progress push"


def parse_version(tag: str) -> tuple[int, ...]:
    m = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)", tag)
    assert m, tag
    return tuple(int(x) for x in m.groups())


def test_zot_deployment(zot_config):
    deployment = one(CACHE_DIR / "deployment.yaml", "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    repo, tag = c["image"].rsplit(":", 1)
    assert repo.startswith("ghcr.io/project-zot/zot") and "minimal" not in repo
    assert parse_version(tag) >= (2, 1, 2), "http.compat needs zot >= 2.1.2"
    assert [p["containerPort"] for p in c["ports"]] == [int(zot_config["http"]["port"])]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    config_vol = [v for v in pod["volumes"] if "configMap" in v][0]
    assert config_vol["configMap"]["name"] == one(CACHE_DIR / "zot-config.yaml", "ConfigMap")["metadata"]["name"]
    service = one(CACHE_DIR / "service.yaml", "Service")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_namespace_enforces_restricted():
    ns = one(CACHE_DIR / "namespace.yaml", "Namespace")
    assert ns["metadata"]["name"] == "image-cache"
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# --- flake.nix -------------------------------------------------------------

def nix_instantiate() -> str:
    exe = find_tool("nix-instantiate")
    if exe is None:
        missing_tool("nix-instantiate not found (Debian package nix-bin)")
    return exe


def test_flake_parses():
    proc = subprocess.run([nix_instantiate(), "--parse", str(FLAKE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_flake_pins_nixpkgs_release_branch():
    text = FLAKE.read_text()
    urls = re.findall(r'url\s*=\s*"([^"]+)"', text)
    assert urls == [u for u in urls if u.startswith("github:NixOS/nixpkgs/")], "nixpkgs is the only input"
    assert len(urls) == 1 and re.fullmatch(r"github:NixOS/nixpkgs/nixos-\d\d\.\d\d", urls[0]), urls


def read_attrs() -> list[str]:
    attrs = []
    for line in ATTRS_FILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            attr, _, where = line.partition("\t")
            assert where.strip(), f"{attr}: no nixpkgs path recorded"
            attrs.append(attr.strip())
    assert len(attrs) == len(set(attrs))
    return attrs


# Behaviour of the stub for the attributes that are functions; every other
# listed attribute is a plain package. Only what the flake needs to evaluate.
STUB_FUNCTIONS = {
    "lib.genAttrs": "names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names)",
    "lib.optionalAttrs": "c: a: if c then a else { }",
    "lib.optional": "c: x: if c then [ x ] else [ ]",
    "lib.makeBinPath": 'ps: builtins.concatStringsSep ":" (map (p: "${p}/bin") ps)',
    "lib.optionalString": 'c: s: if c then s else ""',
    "stdenv.buildPlatform.canExecute": "platform: true",
    "lib.cleanSource": 'p: "/nix/store/00000000000000000000000000000000-source"',
    "lib.platforms.unix": '[ "x86_64-linux" ]',
    "stdenv.hostPlatform.system": "system",
    "rustPlatform.buildRustPackage": "args: mkDrv args.pname args",
    "dockerTools.buildLayeredImage": "args: mkDrv \"image\" args",
    "writeTextDir": "path: text: mkDrv \"text\" { inherit path text; }",
    "writeShellApplication": "args: mkDrv args.name args",
    "runCommand": "name: env: script: mkDrv name (env // { inherit script; })",
    "mkShell": "args: mkDrv \"shell\" args",
}


def stub_nixpkgs(attrs: list[str]) -> str:
    tree: dict = {}
    for attr in attrs:
        node = tree
        *parents, leaf = attr.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = STUB_FUNCTIONS.get(attr, f'mkDrv "{leaf}" {{ }}')

    def render(node) -> str:
        if isinstance(node, str):
            return node
        return "{ " + " ".join(f'"{k}" = {render(v)};' for k, v in node.items()) + " }"

    lib = render(tree.pop("lib", {}))
    pkgs = render(tree)
    return f"""
let
  mkDrv = name: args: args // {{
    type = "derivation";
    outPath = "/nix/store/00000000000000000000000000000000-${{name}}";
    stubArgs = args;
    overrideAttrs = f: mkDrv name (args // f args);
  }};
  lib = {lib};
  pkgsFor = system: {pkgs};
  systems = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
in {{
  inherit lib;
  legacyPackages = builtins.listToAttrs (map (system: {{ name = system; value = pkgsFor system; }}) systems);
}}
"""


EVAL_EXPR = """
let
  flake = import {flake};
  nixpkgs = import {stub};
  out = flake.outputs {{ self = out; inherit nixpkgs; }};
  sys = "x86_64-linux";
  img = out.packages.${{sys}}.image.stubArgs;
  pkg = out.packages.${{sys}}.default.stubArgs;
in {{
  image = {{
    inherit (img) name tag;
    config = img.config;
    contents = map (c: c.outPath) img.contents;
    policy = builtins.concatStringsSep "" (map (c: if c ? path && c.path == "etc/containers/policy.json" then c.text else "") img.contents);
  }};
  package = {{
    inherit (pkg) pname version postInstall;
    lockIsPath = builtins.isPath pkg.cargoLock.lockFile;
    lockName = baseNameOf (toString pkg.cargoLock.lockFile);
    nativeBuildInputs = map (p: p.outPath) pkg.nativeBuildInputs;
  }};
  release = out.apps.${{sys}}.release.program;
  apps = builtins.attrNames out.apps.${{sys}};
  darwinApps = builtins.attrNames out.apps.aarch64-darwin;
  darwinPackages = builtins.attrNames out.packages.aarch64-darwin;
  shell = map (p: p.outPath) out.devShells.${{sys}}.default.stubArgs.packages;
  checks = builtins.mapAttrs (n: c: c.outPath) out.checks.${{sys}};
  clippyBuild = out.checks.${{sys}}.clippy.stubArgs.buildPhase;
  fmtScript = out.checks.${{sys}}.fmt.stubArgs.script;
}}
"""


def eval_flake(directory: Path, attrs: list[str]) -> subprocess.CompletedProcess:
    stub = directory / "stub-nixpkgs.nix"
    stub.write_text(stub_nixpkgs(attrs))
    expr = EVAL_EXPR.format(flake=FLAKE, stub=stub)
    return subprocess.run([nix_instantiate(), "--eval", "--strict", "--json", "--expr", expr],
                          capture_output=True, text=True, cwd=REPO)


@pytest.fixture(scope="module")
def flake_eval(tmp_path_factory) -> dict:
    proc = eval_flake(tmp_path_factory.mktemp("nix"), read_attrs())
    assert proc.returncode == 0, f"flake.nix does not evaluate against the listed attributes:\n{proc.stderr}"
    return json.loads(proc.stdout)


def drv_name(out_path: str) -> str:
    return out_path.rsplit("/", 1)[-1].split("-", 1)[1]


def test_flake_uses_only_listed_nixpkgs_attrs(flake_eval, tmp_path):
    # flake_eval succeeding is the check: the stub nixpkgs has only the
    # attributes recorded in deploy/nixpkgs-attrs.txt. Control: without one
    # of them, evaluation must fail.
    assert flake_eval["package"]["pname"] == "image-sync"
    attrs = [a for a in read_attrs() if a != "skopeo"]
    proc = eval_flake(tmp_path, attrs)
    assert proc.returncode != 0 and "skopeo" in proc.stderr, proc.stderr


def test_every_listed_attr_is_used_by_flake():
    text = FLAKE.read_text()
    for attr in read_attrs():
        head, *rest = attr.split(".")
        if head == "lib":
            needle = "lib." + ".".join(rest)
        elif head == "stdenv":
            needle = "stdenv." + ".".join(rest)
        else:
            needle = "pkgs." + attr
        assert needle in text, f"{attr} listed in {ATTRS_FILE.name} but flake.nix does not use {needle}"


def test_flake_image(flake_eval):
    image = flake_eval["image"]
    assert image["name"] == "ghcr.io/pleme-io/image-sync"
    assert image["tag"] == cargo_version()
    config = image["config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"][0].endswith("/bin/image-sync")
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["SSL_CERT_FILE"].endswith("-cacert/etc/ssl/certs/ca-bundle.crt")
    assert env["HOME"] == "/tmp"
    names = {drv_name(p) for p in image["contents"]}
    assert {"image-sync", "crane", "skopeo", "cacert"} <= names
    assert json.loads(image["policy"]) == {"default": [{"type": "insecureAcceptAnything"}]}


def test_flake_tag_not_hardcoded():
    text = FLAKE.read_text()
    assert "builtins.fromTOML" in text and "./Cargo.toml" in text
    assert f'"{cargo_version()}"' not in text, "version must come from Cargo.toml, not a literal"


def test_flake_package(flake_eval):
    pkg = flake_eval["package"]
    assert pkg["version"] == cargo_version()
    assert pkg["lockIsPath"] and pkg["lockName"] == "Cargo.lock"
    assert (REPO / "Cargo.lock").is_file(), "cargoLock.lockFile needs a committed Cargo.lock"
    assert {"makeWrapper", "installShellFiles"} <= {drv_name(p) for p in pkg["nativeBuildInputs"]}
    # Completions and the man page, generated by the binary's own subcommands.
    for shell in ("bash", "zsh", "fish"):
        assert f"--{shell} <($out/bin/image-sync completions {shell})" in pkg["postInstall"]
    assert "$out/bin/image-sync man > image-sync.1" in pkg["postInstall"]
    assert "installManPage image-sync.1" in pkg["postInstall"]
    assert "wrapProgram $out/bin/image-sync" in pkg["postInstall"]
    assert "-crane/bin" in pkg["postInstall"] and "-skopeo/bin" in pkg["postInstall"]


def test_flake_apps_shell_checks(flake_eval):
    assert set(flake_eval["apps"]) == {"default", "release"}
    assert flake_eval["darwinApps"] == ["default"]
    assert "image" not in flake_eval["darwinPackages"]
    shell = {drv_name(p) for p in flake_eval["shell"]}
    assert {"cargo", "rustc", "crane", "skopeo"} <= shell
    assert {"build", "clippy", "fmt"} <= set(flake_eval["checks"])
    assert "cargo clippy" in flake_eval["clippyBuild"]
    assert "rustfmt --check" in flake_eval["fmtScript"]


def test_flake_release_script():
    text = FLAKE.read_text()
    release = text[text.index("writeShellApplication"):]
    for arch in ("amd64", "arm64"):
        assert f'"$repo:$version-{arch}"' in release
    assert "crane index append" in release
    assert '--tag "$repo:$version"' in release
    assert "self.packages.x86_64-linux.image" in release and "self.packages.aarch64-linux.image" in release


# --- monitoring (optional component) -----------------------------------------

def promtool() -> str:
    exe = find_tool("promtool")
    if exe is None:
        missing_tool("promtool not found (Debian package prometheus; scripts/install-test-tools)")
    return exe


def rules_file(tmp_path: Path) -> Path:
    rule = one(MONITORING_COMPONENT / "prometheusrule.yaml", "PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    return path


def test_alert_rules_pass_promtool_check(tmp_path):
    proc = subprocess.run([promtool(), "check", "rules", str(rules_file(tmp_path))],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 rules found" in proc.stdout


def test_alert_rules_pass_promtool_unit_tests(tmp_path):
    rules_file(tmp_path)
    shutil.copy(ALERTS_TEST, tmp_path / ALERTS_TEST.name)
    proc = subprocess.run([promtool(), "test", "rules", str(tmp_path / ALERTS_TEST.name)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rule = one(MONITORING_COMPONENT / "prometheusrule.yaml", "PrometheusRule")
    names = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert names == {"ImageSyncFailed", "ImageSyncStale", "ImageSyncQuotaLow",
                     "ImageSyncUncoveredImages", "ImageSyncCoverageUnknown"}
    tested = set(re.findall(r"alertname: (\w+)", ALERTS_TEST.read_text()))
    assert tested == names, "every alert has a unit test"


def test_monitoring_overlay_renders_and_feeds_the_cronjob():
    objects = kustomize_build(MONITORING_OVERLAY)
    kinds = {o["kind"] for o in objects}
    assert {"CronJob", "Job", "ConfigMap", "PrometheusRule"} <= kinds, kinds
    for obj in objects:
        if obj["kind"] != "PrometheusRule":  # a CRD: no schema in kubernetes-validate
            validate(obj, "kustomize build monitoring")
    configmaps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    cronjob = next(o for o in objects if o["kind"] == "CronJob")
    env = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"]
    ref = next(e for e in env if e["name"] == "IMAGE_SYNC_PUSHGATEWAY")["valueFrom"]["configMapKeyRef"]
    assert ref["optional"] is True, "without the component the CronJob must still start"
    assert ref["key"] in configmaps[ref["name"]]["data"]
    assert configmaps[ref["name"]]["data"][ref["key"]].startswith("http")


def test_default_kustomization_has_no_monitoring():
    objects = kustomize_build(SYNC_DIR)
    assert not [o for o in objects if o["kind"] == "PrometheusRule"]


def test_coverage_component_grants_read_only_workload_access_and_mounts_the_token(tmp_path):
    """k8s/components/image-sync-coverage in an overlay of infrastructure/image-sync: the
    ClusterRole reads exactly the workload kinds (no Secrets, no write verb), is bound to the
    image-sync ServiceAccount, and the CronJob's and the initial Job's pods get the token."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(SYNC_DIR, overlay)],
        "components": [os.path.relpath(REPO / "k8s/components/image-sync-coverage", overlay)],
    }))
    objects = kustomize_build(overlay)
    for obj in objects:
        validate(obj, "kustomize build coverage overlay")
    role = next(o for o in objects if o["kind"] == "ClusterRole")
    granted = {(rule["apiGroups"][0], resource, verb)
               for rule in role["rules"] for resource in rule["resources"] for verb in rule["verbs"]}
    kinds = {("", "pods"), ("", "replicationcontrollers"), ("", "podtemplates"),
             ("apps", "deployments"), ("apps", "replicasets"), ("apps", "statefulsets"),
             ("apps", "daemonsets"), ("batch", "jobs"), ("batch", "cronjobs")}
    assert granted == {(g, r, v) for g, r in kinds for v in ("get", "list", "watch")}
    binding = next(o for o in objects if o["kind"] == "ClusterRoleBinding")
    account = next(o for o in objects if o["kind"] == "ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": account["metadata"]["namespace"]}]
    cronjob = next(o for o in objects if o["kind"] == "CronJob")
    job = next(o for o in objects if o["kind"] == "Job")
    assert cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    assert job["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    # Without the component: no cluster-wide grant; the token is mounted in image-sync's pods
    # for the run Lease only (a namespaced Role), and the ServiceAccount mounts none itself.
    base = kustomize_build(SYNC_DIR)
    assert not [o for o in base if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    assert [r["resources"] for o in base if o["kind"] == "Role" for r in o["rules"]] == [["leases"]]
    assert next(o for o in base if o["kind"] == "ServiceAccount")["automountServiceAccountToken"] is False
    assert next(o for o in base if o["kind"] == "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"][
        "automountServiceAccountToken"] is True
