#!/usr/bin/env python3
"""Writes the config's JSON Schema, as `image-sync config-schema` prints it, where it is
published:

- docs/config.schema.json: what example files name in their first line
  (`# yaml-language-server: $schema=...`), so editors check them;
- charts/image-sync/values.schema.json: the chart's `config` value is checked against the
  same definitions (under `$defs`), so `helm install` refuses a bad config.

The binary is the only source: run this after changing a config type, then commit both
files. `cargo test` (docs/) and tests/deploy/test_schema.py (the chart) fail while either
is stale.

usage: python3 deploy/gen-schemas.py [PATH-TO-IMAGE-SYNC]   (default: target/debug/image-sync)
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "docs/config.schema.json"
CHART_SCHEMA = REPO / "charts/image-sync/values.schema.json"
# The name of the whole config among the chart schema's $defs.
CONFIG_DEF = "ImageSyncConfig"


def config_schema(binary: Path) -> dict:
    out = subprocess.run([str(binary), "config-schema"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def chart_schema(current: dict, schema: dict) -> dict:
    """The chart's values schema with its `config` property replaced by the config schema."""
    defs = dict(schema["$defs"])
    defs[CONFIG_DEF] = {k: v for k, v in schema.items() if k not in ("$schema", "$id", "$defs", "title")}
    updated = dict(current)
    updated["$schema"] = schema["$schema"]
    updated["properties"] = dict(current["properties"])
    updated["properties"]["config"] = {
        "$ref": f"#/$defs/{CONFIG_DEF}",
        "description": "image-sync's config.yaml (ignored with existingConfigMap); the schema "
        "`image-sync config-schema` prints.",
    }
    updated["$defs"] = defs
    return updated


def render(value: dict) -> str:
    return json.dumps(value, indent=2) + "\n"


def main() -> int:
    binary = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "target/debug/image-sync"
    schema = config_schema(binary)
    PUBLISHED.write_text(render(schema))
    CHART_SCHEMA.write_text(render(chart_schema(json.loads(CHART_SCHEMA.read_text()), schema)))
    print(f"wrote {PUBLISHED.relative_to(REPO)} and {CHART_SCHEMA.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
