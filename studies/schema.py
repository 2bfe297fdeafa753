"""The study file's schema as JSON Schema, for editors (VS Code's YAML extension completes and checks a
study as it is typed): `python -m studies.schema > search_spaces/schema.json`, and the README's table
of keys (`--markdown`). Both are built from the one declaration of the top-level keys (studies/space.py:
TOP, whose defaults `validate` and `Study` use) and from Config's fields, so none can drift from the
others unnoticed (tests/test_schema.py compares the committed files with this output). A parameter's
allowed values are its field's (iabf/config.py: Allowed), so the schema refuses `eps: 0.7` as the
validator does. The validator stays the authority on the rules that tie keys together (a parameter
fixed or searched, not both; seeds apart from search seeds; the size of a study), which JSON Schema
cannot say.
"""
from __future__ import annotations

import dataclasses
import json
import sys

from iabf import config as C
from iabf.datasets import NAME
from studies import space as S

TYPES = {"int": "integer", "float": "number", "str": "string", "bool": "boolean"}


def allowed_schema(f) -> dict:
    """A Config field's allowed values (its `Allowed`, declared beside it) as JSON Schema: the names
    of a setting, or a range with the values outside it that mean something (-1: as eps)."""
    allowed = f.metadata["allowed"]
    out = {"type": TYPES[f.type]}
    if f.type == "int":
        out.update(minimum=-C.INT_MAX, maximum=C.INT_MAX)
    if allowed is None:
        return out
    if allowed.choices:
        return {**out, "enum": list(allowed.choices)}
    span = {"exclusiveMinimum" if allowed.above else "minimum": allowed.lo,
            **({} if allowed.hi is None else {"maximum": allowed.hi}),
            **({} if allowed.study_below is None else {"exclusiveMaximum": allowed.study_below})}
    if not allowed.also:
        return {**out, **span}
    return {**out, "anyOf": [*({"const": v} for v in allowed.also), span]}


def field_schema(f) -> dict:
    if f.name == "dataset":   # a known dataset, or any <name>.npz of one's own
        return {"description": C.help_text(f), "default": f.default,
                "anyOf": [{"enum": list(C.DATASETS)}, {"type": "string", "pattern": f"^{NAME.pattern}$"}]}
    return {**allowed_schema(f), "description": C.help_text(f), "default": f.default}


def distribution(f) -> dict:
    """How one parameter is searched: a list of its allowed values, or a numeric range within them."""
    values = {k: v for k, v in field_schema(f).items() if k not in ("description", "default")}
    listed = {"type": "array", "minItems": 1, "items": values}
    pair = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
    kinds = {"grid": listed, "choice": listed}
    if f.type in ("int", "float"):
        kinds["randint" if f.type == "int" else "uniform"] = pair
        if f.type == "float":
            kinds["loguniform"] = pair
    return {"type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
            "properties": kinds}


def schema() -> dict:
    fields = {f.name: field_schema(f) for f in dataclasses.fields(C.Config)}
    preset = {"enum": sorted(C.PRESETS), "description": "paper (the defaults) or reference (the authors' code)"}
    values = {"type": "object", "properties": {**{k: v for k, v in fields.items() if k not in S.SET_BY_SEEDS},
                                               "preset": preset}, "additionalProperties": False}
    searchable = {k: v for k, v in fields.items() if k not in S.NOT_SEARCHABLE}
    search = {"type": "object", "additionalProperties": False,
              "properties": {k: {"$ref": f"#/$defs/distribution/{k}"} for k in searchable},
              "description": "searched parameters: {parameter: {grid|choice|uniform|loguniform|randint: values}}"}
    arm = {"type": "object", "additionalProperties": False,
           "properties": {**{k: v for k, v in fields.items() if k not in S.NOT_SEARCHABLE}, "preset": preset,
                          "name": {"type": "string", "pattern": f"^{S.ARM_NAME.pattern}$"},
                          "search": {"$ref": "#/$defs/search"}}}
    top = {k: key.full_schema for k, key in S.TOP.items()}   # the declaration (studies/space.py: TOP)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "IABF study (search_spaces/*.yaml)",
            "description": "Written by `python -m studies.schema`; the full rules: search_spaces/README.md",
            "type": "object", "required": ["study"], "additionalProperties": False, "properties": top,
            "$defs": {"values": values, "search": search,
                      "distribution": {f.name: distribution(f) for f in dataclasses.fields(C.Config) if f.name in searchable}, "arm": arm,
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
    C.exit_with(main())
