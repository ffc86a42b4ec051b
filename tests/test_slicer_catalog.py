"""The Slicer ExtensionsIndex entry (`MedSADSlicer/ExtensionsIndex/MedSAD.json`) against the
catalog-entry schema v1.0.1 and the extension's own CMakeLists.txt.

The schema cannot be downloaded here, so its rules are spelled out below (Slicer's
`Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json`: required `$schema`, `category`,
`scm_url`; no other keys than those listed; `tier` one of 1, 3, 5; `build_dependencies` a list of
extension names) and checked with `jsonschema`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY = ROOT / "MedSADSlicer" / "ExtensionsIndex" / "MedSAD.json"
SCHEMA_ID = (
    "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json#"
)
SCHEMA = {
    "type": "object",
    "required": ["$schema", "category", "scm_url"],
    "additionalProperties": False,
    "properties": {
        "$schema": {"type": "string"},
        "category": {"type": "string"},
        "scm_url": {"type": "string"},
        "scm_revision": {"type": "string"},
        "scm_type": {"type": "string", "enum": ["git", "local"]},
        "build_dependencies": {"type": "array", "items": {"type": "string"}},
        "build_subdirectory": {"type": "string"},
        "enabled": {"type": "boolean"},
        "tier": {"type": "integer", "enum": [1, 3, 5]},
    },
}


def _cmake(name: str) -> str:
    text = (ROOT / "CMakeLists.txt").read_text()
    match = re.search(rf'set\({name} "([^"]*)"\)', text)
    assert match, f"{name} not set in CMakeLists.txt"
    return match.group(1)


def test_catalog_entry_follows_the_schema_and_the_extension() -> None:
    entry = json.loads(ENTRY.read_text())
    jsonschema.validate(entry, SCHEMA)
    assert entry["$schema"] == SCHEMA_ID
    assert ENTRY.stem == re.search(r"project\((\w+)\)", (ROOT / "CMakeLists.txt").read_text()).group(1)
    assert entry["category"] == _cmake("EXTENSION_CATEGORY")
    assert entry["scm_url"].removesuffix(".git") == _cmake("EXTENSION_HOMEPAGE")
    depends = _cmake("EXTENSION_DEPENDS")
    assert entry["build_dependencies"] == ([] if depends == "NA" else depends.split(";"))
    assert entry.get("build_subdirectory", ".") == "."  # not a superbuild


@pytest.mark.parametrize("bad", [{"tier": 2}, {"scm_url": None}, {"homepage": "x"}, {"build_dependencies": "PyTorch"}])
def test_the_schema_check_rejects_what_the_catalog_would(bad: dict) -> None:
    entry = {**json.loads(ENTRY.read_text()), **bad}
    if bad.get("scm_url", "") is None:
        del entry["scm_url"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(entry, SCHEMA)
