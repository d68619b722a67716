"""The cluster test's image (tests/cluster/image.py) against the flake's (flake.nix, mkImage):
the same contents, item by item, and the same config, where flake.nix can be read.

flake.nix's `contents = [ ... ];` list is read as text (its names); the rest (the text of the
files it writes, `config`, `extraCommands`) comes from evaluating flake.nix with
nix-instantiate against the stub nixpkgs of test_deploy.py. The image's layer is built the
way tests/cluster/image.py builds it, from the binary under test (IMAGE_SYNC_BIN), Debian's
skopeo and the static crane. Every difference that remains is named in
docs/src/cluster.md, which this checks too. A missing tool skips a test, or fails it with
IMAGE_SYNC_REQUIRE_TOOLS=1 (CI).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from test_deploy import FLAKE, REPO, find_tool, missing_tool, nix_instantiate, read_attrs, stub_nixpkgs

sys.path.insert(0, str(REPO / "tests/cluster"))
import image  # noqa: E402

CLUSTER_DOC = REPO / "docs/src/cluster.md"
# Where the flake's packages put what the image needs (their store path's `bin/...` or the
# CA bundle): the path inside the test's image for each package of flake.nix's contents.
PACKAGE_PATHS = {
    "image-sync": "/bin/image-sync",
    "pkgs.crane": "/bin/crane",
    "pkgs.skopeo": "/bin/skopeo",
    "pkgs.cacert": "/etc/ssl/certs/ca-bundle.crt",
}

EVAL_IMAGE = """
let
  flake = import {flake};
  nixpkgs = import {stub};
  out = flake.outputs {{ self = out; inherit nixpkgs; }};
  img = out.packages.x86_64-linux.image.stubArgs;
in {{
  config = img.config;
  extraCommands = img.extraCommands;
  contents = map (c: {{
    name = c.outPath;
    path = if c ? path then c.path else null;
    text = if c ? text then c.text else null;
  }}) img.contents;
}}
"""


def flake_contents_names() -> list[str]:
    """The names in mkImage's `contents = [ ... ];`, as flake.nix spells them."""
    text = FLAKE.read_text()
    mk_image = text[text.index("mkImage ="):]
    match = re.search(r"\bcontents\s*=\s*\[(.*?)\];", mk_image, re.S)
    assert match, "flake.nix: no `contents = [ ... ];` in mkImage"
    return match.group(1).split()


@pytest.fixture(scope="module")
def flake_image(tmp_path_factory) -> dict:
    directory = tmp_path_factory.mktemp("nix-image")
    stub = directory / "stub-nixpkgs.nix"
    stub.write_text(stub_nixpkgs(read_attrs()))
    proc = subprocess.run([nix_instantiate(), "--eval", "--strict", "--json", "--expr",
                           EVAL_IMAGE.format(flake=FLAKE, stub=stub)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, f"flake.nix's image does not evaluate:\n{proc.stderr}"
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def layer():
    """The test image's layer, as tests/cluster/image.py builds it: {path: (kind, mode, data)}."""
    image_sync = os.environ.get("IMAGE_SYNC_BIN") or str(REPO / "target/debug/image-sync")
    if not os.path.exists(image_sync):
        missing_tool(f"{image_sync} does not exist (cargo build, or set IMAGE_SYNC_BIN)")
    skopeo = find_tool("skopeo")
    if skopeo is None:
        missing_tool("skopeo not found (apt-get install skopeo)")
    for tool in ("strip", "ldd", "go"):
        if find_tool(tool) is None:
            missing_tool(f"{tool} not found (scripts/install-test-tools)")
    built = image.image_sync_layer(image_sync, skopeo, image.static_crane())
    return {"/" + path: (kind, mode, data) for kind, path, mode, data in built.entries}


def test_contents_names_are_the_flakes():
    # One entry of image.py's CONTENTS per item of the flake's contents, in the same order.
    assert list(image.CONTENTS) == flake_contents_names()


def test_every_flake_item_is_in_the_layer(layer):
    for name, path in image.CONTENTS.items():
        assert path in layer, f"{name}: {path} is not in the test image"
        kind, mode, data = layer[path]
        assert kind == "file" and data, f"{name}: {path} is {kind}, {len(data or b'')} bytes"
        if name in PACKAGE_PATHS:
            assert PACKAGE_PATHS[name] == path
            if path.startswith("/bin/"):
                assert mode & 0o111 and data[:4] == b"\x7fELF", f"{path} is not an executable"


def test_written_files_have_the_flakes_text(flake_image, layer):
    written = {c["path"]: c["text"] for c in flake_image["contents"] if c["path"]}
    assert set(written) == {"etc/containers/policy.json", "etc/passwd", "etc/group"}, written
    for path, text in written.items():
        _, _, data = layer["/" + path]
        if path.endswith(".json"):
            assert json.loads(data) == json.loads(text), path
        else:
            assert data.decode() == text, path
    # The packages: the flake's derivations, by name.
    packages = {c["name"].rsplit("/", 1)[-1].split("-", 1)[1] for c in flake_image["contents"] if not c["path"]}
    assert packages == {"image-sync", "crane", "skopeo", "cacert"}
    assert {"pkgs." + p if p != "image-sync" else p for p in packages} == set(PACKAGE_PATHS)


def test_config_matches_the_flakes(flake_image):
    flake, ours = flake_image["config"], image.CONFIG
    assert set(flake) == set(ours)
    for key in ("User", "WorkingDir"):
        assert ours[key] == flake[key], key
    # The flake's entrypoint and CA bundle are store paths; the test image's are the same
    # files at /bin and /etc (a difference docs/src/cluster.md names).
    assert len(ours["Entrypoint"]) == len(flake["Entrypoint"]) == 1
    assert flake["Entrypoint"][0].endswith(ours["Entrypoint"][0])
    flake_env = dict(e.split("=", 1) for e in flake["Env"])
    our_env = dict(e.split("=", 1) for e in ours["Env"])
    assert set(flake_env) == set(our_env)
    assert flake_env["SSL_CERT_FILE"].endswith("-cacert" + our_env["SSL_CERT_FILE"])
    assert {k: v for k, v in flake_env.items() if k != "SSL_CERT_FILE"} == \
        {k: v for k, v in our_env.items() if k != "SSL_CERT_FILE"}
    assert set(flake["Labels"]) == set(ours["Labels"])
    assert flake["Labels"]["org.opencontainers.image.source"] == ours["Labels"]["org.opencontainers.image.source"]


def test_writable_directories_match_extra_commands(flake_image, layer):
    commands = flake_image["extraCommands"]
    made = re.search(r"mkdir -p ([^\n]+)", commands).group(1).split()
    chmod = re.search(r"chmod (\d+) ([^\n]+)", commands)
    assert sorted(made) == sorted(chmod.group(2).split()) == ["tmp", "var/tmp"]
    for directory in made:
        kind, mode, _ = layer["/" + directory]
        assert kind == "dir" and mode == int(chmod.group(1), 8), (directory, kind, oct(mode))


def test_the_chapter_names_every_item_and_difference():
    text = CLUSTER_DOC.read_text()
    table = text[text.index("## The image"):]
    for name, path in image.CONTENTS.items():
        assert f"`{name}`" in table and f"`{path}`" in table, name
    for difference in ("Libraries", "The entrypoint", "Versions and build"):
        assert f"**{difference}.**" in table, difference
