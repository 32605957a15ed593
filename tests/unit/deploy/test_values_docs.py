"""``values.yaml`` documents every key, and ``values.schema.json`` knows every key.

A key counts as documented when a comment sits on the line above it (or on its own line).
Entries inside free-form maps or Kubernetes objects whose key is itself documented (resource
quantities, annotations, labels, topology spread constraints) are example content, not chart
keys, and are exempt.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[3] / "charts" / "loraplex"
FREE_FORM = {
    "resources",
    "annotations",
    "labels",
    "ingressNamespaceLabels",
    "topologySpreadConstraints",
}
KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z0-9_.\-/]+):")


def undocumented_keys(text: str) -> list[str]:
    lines = text.splitlines()
    parents: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    missing = []
    for n, line in enumerate(lines):
        match = KEY.match(line)
        if not match:
            continue
        indent = len(match["indent"])
        parents = [(i, k) for i, k in parents if i < indent]
        exempt = any(k in FREE_FORM for _, k in parents)
        documented = "#" in line or (n > 0 and lines[n - 1].lstrip().startswith("#"))
        if not documented and not exempt:
            missing.append(f"line {n + 1}: {'.'.join([*(k for _, k in parents), match['key']])}")
        parents.append((indent, match["key"]))
    return missing


def test_every_values_key_has_a_comment() -> None:
    missing = undocumented_keys((CHART / "values.yaml").read_text())
    assert not missing, "undocumented values: " + ", ".join(missing)


def test_the_comment_check_can_fail() -> None:
    assert undocumented_keys("# documented\na: 1\nb: 2\nresources:\n  requests: {}\n") == [
        "line 3: b",
        "line 4: resources",
    ]


def schema_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for key, sub in schema.get("properties", {}).items():
        paths.add(prefix + key)
        if sub.get("additionalProperties") is False:
            paths |= schema_paths(sub, f"{prefix}{key}.")
    return paths


def value_paths(values: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for key, value in values.items():
        paths.add(prefix + key)
        sub = schema.get("properties", {}).get(key, {})
        if isinstance(value, dict) and sub.get("additionalProperties") is False:
            paths |= value_paths(value, sub, f"{prefix}{key}.")
    return paths


def test_schema_and_values_have_the_same_keys() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    in_schema = schema_paths(schema) - {"global"}
    in_values = value_paths(values, schema)
    assert in_values == in_schema, (
        f"only in values.yaml: {sorted(in_values - in_schema)}; "
        f"only in the schema: {sorted(in_schema - in_values)}"
    )
