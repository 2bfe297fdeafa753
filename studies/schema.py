"""The study file's schema as JSON Schema, for editors (VS Code's YAML extension completes and checks a
study as it is typed): `python -m studies.schema > search_spaces/schema.json`. Built from the same
names the validator (studies/space.py) and Config use, so it cannot drift from them unnoticed
(tests/test_schema.py compares the committed file with this output). The validator stays the
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
    seeds = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1, "uniqueItems": True}
    top = {
        "study": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$", "description": "the MLflow experiment"},
        "description": {"type": "string"},
        "dataset": fields["dataset"],
        "fixed": {"$ref": "#/$defs/values", "description": "held constant for every trial"},
        "by_dataset": {"type": "object", "additionalProperties": {"$ref": "#/$defs/values"},
                       "description": "values fixed per dataset, over fixed (a budget per dataset)"},
        "search": {"$ref": "#/$defs/search"},
        "variants": {"type": "array", "items": {"$ref": "#/$defs/arm"}, "description": "the arms: rows of the table"},
        "seeds": {**seeds, "description": "the confirmation seeds (n per table entry)"},
        "search_seeds": {**seeds, "description": "the search's seeds (a stack if several)"},
        "stack": {"anyOf": [{"const": "auto"}, {"type": "integer", "minimum": 1}]},
        "confirm": {"type": "boolean"},
        "cells": {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"enum": list(searchable)},
                  "description": "the parameters that make a table cell (default: dataset, channel, bits, test eps)"},
        "searcher": {"enum": list(S.SEARCHERS)},
        "scheduler": {"anyOf": [{"const": "none"}, {
            "type": "object", "additionalProperties": False,
            "properties": {"name": {"enum": ["asha", "none"]}, "max_t": {"type": "integer", "minimum": 1},
                           "grace_period": {"type": "integer", "minimum": 1},
                           "reduction_factor": {"type": "number", "minimum": 2}}}]},
        "metric": {"enum": list(S.METRICS)},
        "mode": {"enum": ["min", "max"]},
        "num_samples": {"type": "integer", "minimum": 1},
        "resources": {"type": "object", "additionalProperties": False,
                      "properties": {"cpu": {"type": "number", "exclusiveMinimum": 0}, "gpu": {"type": "number",
                                                                                        "minimum": 0}}},
        "max_concurrent": {"type": "integer", "minimum": 0},
        "chain_steps": {"type": "integer", "minimum": 1},
    }
    assert set(top) == set(S.TOP_KEYS), "the schema and the validator name different keys"
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "IABF study (search_spaces/*.yaml)",
            "description": "Written by `python -m studies.schema`; the full rules: search_spaces/README.md",
            "type": "object", "required": ["study"], "additionalProperties": False, "properties": top,
            "$defs": {"values": values, "distribution": distribution, "search": search, "arm": arm}}


def main() -> int:
    sys.stdout.write(json.dumps(schema(), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
