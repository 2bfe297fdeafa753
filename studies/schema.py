"""The study file's schema as JSON Schema, for editors (VS Code's YAML extension completes and checks a
study as it is typed): `python -m studies.schema > search_spaces/schema.json`, and the README's table
of keys (`--markdown`). Both are built from the one declaration of the top-level keys (studies/space.py:
TOP, whose defaults `validate` and `Study` use) and from Config's fields, so none can drift from the
others unnoticed (tests/test_schema.py compares the committed files with this output). The validator stays the
authority: it also checks ranges and the rules that tie keys together (a parameter fixed or searched,
not both; seeds apart from search seeds; the size of a study), which JSON Schema cannot say.
"""
from __future__ import annotations

import dataclasses
import json
import sys

from iabf import config as C
from iabf.datasets import NAME
from studies import space as S

ENUMS = {"method": C.METHODS, "channel": C.CHANNELS, "channel_code": C.CHANNEL_CODES, "flip": C.FLIPS, "tc_input": C.TC_INPUTS,
         "vimco_signal": C.VIMCO_SIGNALS, "device": C.DEVICES, "compile": C.COMPILE_MODES,
         "precision": C.PRECISIONS}
TYPES = {"int": "integer", "float": "number", "str": "string", "bool": "boolean"}


def field_schema(f) -> dict:
    out = {"type": TYPES[f.type], "description": f.metadata["help"], "default": f.default}
    if f.name in ENUMS:
        out["enum"] = list(ENUMS[f.name])
    if f.name == "dataset":
        out = {"description": f.metadata["help"], "default": f.default,
               "anyOf": [{"enum": list(C.DATASETS)}, {"type": "string", "pattern": f"^{NAME.pattern}$"}]}
    return out


def schema() -> dict:
    fields = {f.name: field_schema(f) for f in dataclasses.fields(C.Config)}
    preset = {"enum": sorted(C.PRESETS), "description": "paper (the defaults) or reference (the authors' code)"}
    values = {"type": "object", "properties": {**fields, "preset": preset}, "additionalProperties": False}
    searchable = {k: v for k, v in fields.items() if k not in S.NOT_SEARCHABLE}
    listed = {"type": "array", "minItems": 1}
    pair = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
    distribution = {"type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
                    "properties": {"grid": listed, "choice": listed, "uniform": pair, "loguniform": pair,
                                   "randint": pair}}
    search = {"type": "object", "propertyNames": {"enum": list(searchable)},
              "additionalProperties": {"$ref": "#/$defs/distribution"},
              "description": "searched parameters: {parameter: {grid|choice|uniform|loguniform|randint: values}}"}
    arm = {"type": "object", "additionalProperties": False,
           "properties": {**{k: v for k, v in fields.items() if k not in S.NOT_SEARCHABLE}, "preset": preset,
                          "name": {"type": "string", "pattern": r"^[\w .=+-]{1,40}$"},
                          "search": {"$ref": "#/$defs/search"}}}
    top = {k: key.schema for k, key in S.TOP.items()}   # the declaration (studies/space.py: TOP)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "IABF study (search_spaces/*.yaml)",
            "description": "Written by `python -m studies.schema`; the full rules: search_spaces/README.md",
            "type": "object", "required": ["study"], "additionalProperties": False, "properties": top,
            "$defs": {"values": values, "distribution": distribution, "search": search, "arm": arm,
                      "searchable": {"enum": list(searchable)}}}


def markdown() -> str:
    """search_spaces/README.md's table of top-level keys, from the same declaration."""
    def shown(key) -> str:
        if key.shown:
            return key.shown
        v = key.default
        if isinstance(v, (list, bool)):
            return f"`{json.dumps(v)}`"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k}: {x}" for k, x in v.items()) + "}"
        return f"`{v}`" if isinstance(v, str) else str(v)

    rows = [f"| `{k}` | {key.kind} | {shown(key)} | {key.doc} |" for k, key in S.TOP.items()]
    return "\n".join(["| key | type | default | meaning |", "|---|---|---|---|", *rows]) + "\n"


def main(argv=None) -> int:
    """`python -m studies.schema`: the JSON Schema; `--markdown`: the README's table of keys."""
    argv = sys.argv[1:] if argv is None else argv
    sys.stdout.write(markdown() if argv == ["--markdown"] else json.dumps(schema(), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
