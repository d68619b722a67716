"""The config's JSON Schema (`image-sync config-schema`, draft 2020-12) against every
example config in the repository: the YAML blocks of the README and the book (docs/), the k8s/ ConfigMaps,
the Helm chart's values and examples/. The schema comes from the binary built from this
commit (the same types the config is read into); the published copies must equal it.

An unknown key and a wrong type must fail the schema, and image-sync itself must refuse
the same configs (exit 2), so the schema never promises more than the binary accepts.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from test_deploy import REPO, missing_tool

PUBLISHED = REPO / "docs/config.schema.json"
REFERENCE = REPO / "docs/src/config-reference.md"
CHART = REPO / "charts/image-sync"
EXAMPLES = REPO / "examples"
MODELINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)$")
# Top-level keys that make a YAML block an image-sync config (or a fragment of one).
CONFIG_KEYS = {"cache_registry", "images", "settings"}


def binary() -> Path:
    path = Path(os.environ.get("IMAGE_SYNC_BIN", REPO / "target/debug/image-sync"))
    if not path.is_file():
        missing_tool(f"image-sync binary not found at {path} (cargo build, or set IMAGE_SYNC_BIN)")
    return path


@pytest.fixture(scope="module")
def schema() -> dict:
    out = subprocess.run([binary(), "config-schema"], capture_output=True, text=True, check=True)
    schema = json.loads(out.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def validator(schema: dict) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema)


def fragment_validator(schema: dict) -> jsonschema.Draft202012Validator:
    """For a block that shows part of a config (only `settings:`, or one image): the same
    definitions without the top-level requirements."""
    relaxed = copy.deepcopy(schema)
    relaxed.pop("required", None)
    relaxed["properties"]["images"].pop("minItems", None)
    return jsonschema.Draft202012Validator(relaxed)


def errors(check: jsonschema.Draft202012Validator, config) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<top>'}: {e.message}" for e in check.iter_errors(config)]


# --- where example configs live --------------------------------------------------------

def markdown_files() -> list[Path]:
    files = [REPO / "README.md"]
    docs = REPO / "docs"
    if docs.is_dir():
        files += sorted(docs.rglob("*.md"))
    return files


def yaml_blocks(path: Path) -> list[tuple[str, object]]:
    """(where, parsed) for each ```yaml block of a Markdown file that is an image-sync
    config or a fragment of one (a mapping whose keys are config keys)."""
    found = []
    text = path.read_text()
    for match in re.finditer(r"^```ya?ml\n(.*?)^```", text, re.S | re.M):
        line = text.count("\n", 0, match.start()) + 1
        try:
            parsed = yaml.safe_load(match.group(1))
        except yaml.YAMLError:
            continue
        if isinstance(parsed, list) and parsed and all(isinstance(i, dict) and "source" in i for i in parsed):
            parsed = {"images": parsed}  # entries to add under `images:`
        if isinstance(parsed, dict) and parsed and set(parsed) <= CONFIG_KEYS:
            found.append((f"{path.relative_to(REPO)}:{line}", parsed))
    return found


def configmap_configs() -> list[tuple[str, object]]:
    found = []
    for path in sorted((REPO / "k8s").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "ConfigMap" and "config.yaml" in doc.get("data", {}):
                found.append((str(path.relative_to(REPO)), yaml.safe_load(doc["data"]["config.yaml"])))
    return found


def example_files() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml")) + sorted(EXAMPLES.glob("*.yml"))


# --- the published copies --------------------------------------------------------------

def test_the_published_schema_is_the_binarys(schema):
    assert json.loads(PUBLISHED.read_text()) == schema, (
        "docs/config.schema.json is stale: run `python3 deploy/gen-schemas.py`")


def test_the_chart_checks_its_config_value_with_the_same_schema(schema):
    spec = importlib.util.spec_from_file_location("gen_schemas", REPO / "deploy/gen-schemas.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    current = json.loads((CHART / "values.schema.json").read_text())
    assert current == gen.chart_schema(current, schema), (
        "charts/image-sync/values.schema.json is stale: run `python3 deploy/gen-schemas.py`")


def gen_schemas():
    spec = importlib.util.spec_from_file_location("gen_schemas", REPO / "deploy/gen-schemas.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    return gen


def schema_keys(schema: dict) -> set[str]:
    """Every key path of the config (`settings.retries`, `images[].tags.semver`)."""
    gen = gen_schemas()
    return {f"{path}.{name}" if path else name
            for path, node in gen.objects(schema, schema, "") for name in node["properties"]}


def test_the_config_reference_is_generated_from_the_schema(schema):
    assert REFERENCE.read_text() == gen_schemas().reference_markdown(schema), (
        "docs/src/config-reference.md is stale: run `python3 deploy/gen-schemas.py`")


def test_the_config_reference_documents_every_key_and_no_other(schema):
    documented = set(re.findall(r"^\| `([a-z_\[\].]+)` \|", REFERENCE.read_text(), re.M))
    keys = schema_keys(schema)
    assert {"cache_registry", "images[].source", "images[].tags.semver", "settings.retries"} <= keys
    assert keys - documented == set(), "schema keys the reference does not document"
    assert documented - keys == set(), "documented keys the schema does not have"


def test_every_key_the_book_names_is_in_the_schema(schema):
    # `settings.x` and `images[].x` in any chapter (prose, tables, code spans) must exist.
    keys = schema_keys(schema)
    named = {}
    for path in [REPO / "README.md", *sorted((REPO / "docs/src").rglob("*.md"))]:
        for key in re.findall(r"`((?:settings|images\[\])(?:\.[a-z_]+)+)", path.read_text()):
            named.setdefault(key, str(path.relative_to(REPO)))
    assert named, "the docs name config keys"
    unknown = {key: where for key, where in named.items() if key not in keys}
    assert not unknown, f"the docs name keys the config does not have: {unknown}"


# --- every example validates -----------------------------------------------------------

def test_every_full_example_in_the_docs_validates(schema):
    full = [(where, c) for path in markdown_files() for where, c in yaml_blocks(path) if "cache_registry" in c]
    assert len(full) >= 2, "expected at least the README's minimal config and the Configuration chapter's"
    check = validator(schema)
    for where, config in full:
        assert not errors(check, config), f"{where}: {errors(check, config)}"


def test_every_fragment_in_the_docs_validates(schema):
    fragments = [(where, c) for path in markdown_files() for where, c in yaml_blocks(path) if "cache_registry" not in c]
    assert fragments, "the docs show settings fragments (referrers, tag rules, ...)"
    check = fragment_validator(schema)
    for where, config in fragments:
        assert not errors(check, config), f"{where}: {errors(check, config)}"


def test_every_configmap_config_validates(schema):
    found = configmap_configs()
    assert found, "k8s/ has the image-sync ConfigMap"
    check = validator(schema)
    for where, config in found:
        assert not errors(check, config), f"{where}: {errors(check, config)}"


def test_the_chart_default_config_validates(schema):
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert not errors(validator(schema), values["config"])


def test_example_files_validate_and_name_the_schema(schema):
    files = example_files()
    assert files, "examples/ holds at least one config"
    check = validator(schema)
    for path in files:
        first = path.read_text().splitlines()[0]
        match = MODELINE.match(first)
        assert match, f"{path.name}: the first line must be `# yaml-language-server: $schema=...`"
        assert (path.parent / match.group(1)).resolve() == PUBLISHED.resolve(), f"{path.name}: {first}"
        config = yaml.safe_load(path.read_text())
        assert not errors(check, config), f"{path.name}: {errors(check, config)}"
        proc = subprocess.run([binary(), "--check", "--config", path], capture_output=True, text=True)
        assert proc.returncode == 0, f"{path.name}: image-sync --check refused it:\n{proc.stderr}"


# --- mistakes fail, in the schema and in image-sync ------------------------------------

BASE = {
    "cache_registry": "cache:5000",
    "images": [{"source": "docker.io/library/nginx", "tag": "1.27-alpine"}],
}


def mistakes() -> list[tuple[str, dict]]:
    def edit(f):
        config = copy.deepcopy(BASE)
        f(config)
        return config
    return [
        ("unknown top-level key", edit(lambda c: c.update(cache_registy="x"))),
        ("unknown image key", edit(lambda c: c["images"][0].update(cache_ass="x"))),
        ("unknown setting", edit(lambda c: c.update(settings={"concurrenc": 2}))),
        ("unknown tag rule", edit(lambda c: c["images"].append({"source": "redis", "tags": {"semvr": "^7"}}))),
        ("string for a number", edit(lambda c: c.update(settings={"concurrency": "two"}))),
        ("number for a list", edit(lambda c: c.update(settings={"insecure_registries": 5}))),
        ("list for a string", edit(lambda c: c["images"][0].update(tag=["1"]))),
        ("out of range", edit(lambda c: c.update(settings={"concurrency": 65}))),
        ("unknown digest_check", edit(lambda c: c.update(settings={"digest_check": "skopeo"}))),
        ("bad reserve", edit(lambda c: c.update(settings={"quota_reserve": "ten"}))),
        ("no tag nor tags", edit(lambda c: c["images"][0].pop("tag"))),
        ("no images", edit(lambda c: c.update(images=[]))),
        ("option-like tag", edit(lambda c: c["images"][0].update(tag="--privileged"))),
    ]


@pytest.mark.parametrize("name,config", mistakes(), ids=[m[0] for m in mistakes()])
def test_a_mistake_fails_the_schema_and_the_binary(schema, name, config, tmp_path):
    assert errors(validator(schema), config), f"{name}: the schema accepted {config}"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run([binary(), "--check", "--config", path], capture_output=True, text=True)
    assert proc.returncode == 2, f"{name}: image-sync --check exited {proc.returncode}:\n{proc.stderr}"


def test_the_base_config_passes_both(schema, tmp_path):
    # The control for the mistakes above.
    assert not errors(validator(schema), BASE)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(BASE))
    proc = subprocess.run([binary(), "--check", "--config", path], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
