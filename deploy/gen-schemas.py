#!/usr/bin/env python3
"""Writes the config's JSON Schema, as `image-sync config-schema` prints it, where it is
published:

- docs/config.schema.json: what example files name in their first line
  (`# yaml-language-server: $schema=...`), so editors check them;
- charts/image-sync/values.schema.json: the chart's `config` value is checked against the
  same definitions (under `$defs`), so `helm install` refuses a bad config;
- docs/src/config-reference.md: the book's configuration reference, one table per object
  of the config (every key, its type, default, bounds and description), so the reference
  can neither miss a key nor document one that does not exist.

The binary is the only source: run this after changing a config type, then commit the three
files. tests/deploy/test_schema.py fails while any is stale.

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
REFERENCE = REPO / "docs/src/config-reference.md"
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


def resolve(schema: dict, node: dict) -> dict:
    """`node` with a `$ref`, or an `anyOf` of one definition and null, replaced by the
    definition it names (its own description kept)."""
    if "$ref" in node:
        target = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
        return {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    options = [o for o in node.get("anyOf", []) if o.get("type") != "null"]
    if len(options) == 1 and len(node.get("anyOf", [])) == 2:
        merged = resolve(schema, options[0])
        return {**merged, **{k: v for k, v in node.items() if k != "anyOf"}}
    return node


def type_name(schema: dict, node: dict) -> str:
    node = resolve(schema, node)
    # An `anyOf` of bare `required` lists (an image's `tag` or `tags`) is no type choice.
    choices = node.get("oneOf") or [c for c in node.get("anyOf", []) if set(c) != {"required"}]
    if choices:
        if all("const" in c for c in choices):
            return " or ".join(f"`{json.dumps(c['const'])}`" for c in choices)
        return " or ".join(type_name(schema, c) for c in choices if c.get("type") != "null")
    kinds = node.get("type", "any")
    kinds = [k for k in ([kinds] if isinstance(kinds, str) else kinds) if k != "null"]
    if kinds == ["array"]:
        return f"list of {type_name(schema, node.get('items', {}))}"
    if kinds == ["object"]:
        return "mapping"
    return " or ".join(kinds)


def bounds(schema: dict, node: dict) -> str:
    node = resolve(schema, node)
    parts = []
    if "minimum" in node and "maximum" in node:
        parts.append(f"{node['minimum']}..{node['maximum']}")
    elif "minimum" in node and node["minimum"] != 0:
        parts.append(f">= {node['minimum']}")
    elif "maximum" in node:
        parts.append(f"<= {node['maximum']}")
    if "minItems" in node:
        parts.append(f"at least {node['minItems']}")
    if "pattern" in node:
        parts.append(f"`{node['pattern']}`")
    for choice in node.get("oneOf", []):
        if "pattern" in choice:
            parts.append(f"`{choice['pattern']}`")
    return ", ".join(parts)


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def objects(schema: dict, node: dict, path: str) -> list[tuple[str, dict]]:
    """(path, object schema) for the config and every object inside it, depth first."""
    node = resolve(schema, node)
    if "items" in node and node.get("type") in ("array", ["array", "null"]):
        return objects(schema, node["items"], f"{path}[]")
    if "properties" not in node:
        return []
    found = [(path, node)]
    for name, child in sorted(node["properties"].items()):
        found += objects(schema, child, f"{path}.{name}" if path else name)
    return found


def reference_markdown(schema: dict) -> str:
    """The configuration reference chapter: one table per object of the config, one row
    per key (its full path in the first column, which tests/deploy/test_schema.py reads)."""
    lines = [
        "<!-- Written by deploy/gen-schemas.py from `image-sync config-schema`; do not edit. -->",
        "# Configuration reference",
        "",
        "Every key of the config file, generated from its JSON Schema",
        "(`image-sync config-schema`, published as `docs/config.schema.json`), which is",
        "generated from the types the config is read into. Unknown keys are errors; the",
        "descriptions say each default. The [Configuration](configuration.md) chapter",
        "explains the keys with examples.",
    ]
    for path, node in objects(schema, schema, ""):
        title = f"`{path}`" if path else "Top level"
        required = set(node.get("required", []))
        # An image names `tag` or `tags` (an anyOf of two requirements).
        alternatives = [set(o.get("required", [])) for o in node.get("anyOf", [])]
        lines += ["", f"## {title}", ""]
        if node.get("description"):
            lines += [cell(node["description"]), ""]
        lines += ["| key | type | required | bounds | description |",
                  "|-----|------|----------|--------|-------------|"]
        for name, child in sorted(node["properties"].items()):
            key = f"{path}.{name}" if path else name
            if name in required:
                needed = "yes"
            elif any(name in a for a in alternatives):
                needed = "or " + ", ".join(f"`{n}`" for a in alternatives for n in a if n != name)
            else:
                needed = "no"
            lines.append(f"| `{key}` | {cell(type_name(schema, child))} | {needed} "
                         f"| {cell(bounds(schema, child))} | {cell(child.get('description', ''))} |")
    return "\n".join(lines) + "\n"


def render(value: dict) -> str:
    return json.dumps(value, indent=2) + "\n"


def main() -> int:
    binary = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "target/debug/image-sync"
    schema = config_schema(binary)
    PUBLISHED.write_text(render(schema))
    CHART_SCHEMA.write_text(render(chart_schema(json.loads(CHART_SCHEMA.read_text()), schema)))
    REFERENCE.write_text(reference_markdown(schema))
    print(f"wrote {PUBLISHED.relative_to(REPO)}, {CHART_SCHEMA.relative_to(REPO)} and {REFERENCE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
