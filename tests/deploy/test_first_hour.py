"""The README's way in, checked: "Try it" is two commands that exist, an Install section
comes before Usage, the demo shows its build, and the docs' ConfigMap check (README and
docs/src) runs as written with the binary alone (no yq); the README's minimal config
passes `image-sync --check`."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
DOCS = REPO / "docs/src"


def section(title: str) -> str:
    """The text of a `## title` section, up to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def test_try_it_is_two_commands_that_exist():
    block = re.search(r"```sh\n(.*?)```", section("Try it"), re.S)
    assert block, "Try it has a sh block"
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    commands = [c for c in commands if c]
    assert commands == ["scripts/demo", "scripts/test"]
    for command in commands:
        assert os.access(REPO / command, os.X_OK), f"{command} is not executable"


def test_install_comes_before_usage_and_names_every_route():
    assert README.index("\n## Install\n") < README.index("\n## Usage\n")
    install = section("Install")
    for route in ("cargo install --locked --path .", "target/release/image-sync", "nix build"):
        assert route in install, route


def test_the_demo_shows_its_build_and_installs_only_what_it_needs():
    demo = (REPO / "scripts/demo").read_text()
    build = [line for line in demo.splitlines() if line.strip().startswith("cargo build")]
    assert build and all("--quiet" not in line and " -q" not in line for line in build), build
    assert 'scripts/install-test-tools" --demo' in demo
    assert "binary: $image_sync" in demo


def test_the_docs_configmap_check_runs_as_written():
    binary = Path(os.environ.get("IMAGE_SYNC_BIN", REPO / "target/debug/image-sync"))
    deployment = (DOCS / "deployment.md").read_text()
    assert "yq " not in deployment
    texts = [README, *(path.read_text() for path in sorted(DOCS.rglob("*.md")))]
    commands = [c for text in texts
                for c in re.findall(r"`(image-sync --check --config [^`]*configmap\.yaml)`", text)]
    assert commands, "the docs show the ConfigMap check"
    assert re.search(r"`image-sync --check --config [^`]*configmap\.yaml`", deployment), \
        "docs/src/deployment.md (Adding an image) shows the ConfigMap check"
    for command in commands:
        argv = shlex.split(command)
        proc = subprocess.run([str(binary), *argv[1:]], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"{command}: exit {proc.returncode}\n{proc.stderr}"


def test_the_readmes_minimal_config_passes_check(tmp_path):
    binary = Path(os.environ.get("IMAGE_SYNC_BIN", REPO / "target/debug/image-sync"))
    block = re.search(r"```yaml\n(.*?)```", section("A minimal config"), re.S)
    assert block, "A minimal config has a yaml block"
    config = tmp_path / "config.yaml"
    config.write_text(block.group(1))
    proc = subprocess.run([str(binary), "--check", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr}"
    assert "library/nginx" in proc.stderr, proc.stderr
