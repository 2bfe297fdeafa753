"""search_spaces/schema.json: the study file's JSON Schema, for editors. It is what
`python -m studies.schema` writes (so it follows Config and the validator), every shipped study
declares and satisfies it, and bad studies the validator refuses are refused by it too (where JSON
Schema can say so: keys, types, names, distributions)."""
import dataclasses
import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from iabf.config import ALONE, Config, ConfigError

from studies.schema import markdown, schema
from studies.space import NOT_SEARCHABLE, TOP, SpaceError, Study, default
from studies.validation import validate

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "search_spaces" / "schema.json").read_text())
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))


def test_the_committed_schema_is_what_the_code_writes():
    assert SCHEMA == json.loads(json.dumps(schema())), "run: python -m studies.schema > search_spaces/schema.json"
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    readme = (ROOT / "search_spaces" / "README.md").read_text()
    assert markdown() in readme, "the README's table of keys is `python -m studies.schema --markdown`"


def test_the_defaults_are_declared_once_and_used_by_the_validator_and_study():
    """An absent key takes TOP's default, in the validator and in a Study built by hand alike."""
    study = validate({"study": "s"}, "s.yaml")
    plain = Study(name="s", path="s.yaml")
    for key, attr in (("seeds", "seeds"), ("searcher", "searcher"), ("metric", "metric"), ("mode", "mode"),
                      ("num_samples", "num_samples"), ("resources", "resources"), ("chain_steps", "chain_steps"),
                      ("confirm", "confirm"), ("stack", "stack"), ("description", "description"), ("cells", "cells")):
        assert getattr(study, attr) == getattr(plain, attr) == TOP[key].default, key
    assert study.search_seeds == plain.search_seeds == [max(TOP["seeds"].default) + 1]
    assert study.scheduler is None and default("scheduler") == "none"
    default("resources")["cpu"] = 99                        # a copy: the declaration is never changed
    assert TOP["resources"].default == {"cpu": 1, "gpu": 0}


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_every_shipped_study_declares_and_satisfies_the_schema(path):
    text = path.read_text()
    assert text.splitlines()[0] == "# yaml-language-server: $schema=./schema.json"
    jsonschema.validate(yaml.safe_load(text), SCHEMA)


BAD = [
    {"study": "s", "serch": {}},                                           # a misspelt key
    {"study": "s", "fixed": {"epoch": 3}},                                 # a misspelt parameter
    {"study": "s", "fixed": {"channel": "awgn"}},                          # no such channel
    {"study": "s", "fixed": {"method": "vq"}},
    {"study": "s", "fixed": {"K": "five"}},                                # wrong type
    {"study": "s", "search": {"lam": {"normal": [0, 1]}}},                 # no such distribution
    {"study": "s", "search": {"lam": {"uniform": [0.1]}}},                 # [low, high]
    {"study": "s", "search": {"seed": {"grid": [0, 1]}}},                  # set by seeds
    {"study": "s", "variants": [{"method": "abf", "colour": 1}]},
    {"study": "s", "scheduler": {"name": "asha", "rungs": 3}},
    {"study": "s", "searcher": "bayes"},
    {"study": "s", "seeds": [0, 0]},
    {"study": "bad name!"},
    {"description": "no study"},
    {"study": "s", "dataset": "a b"},
]


@pytest.mark.parametrize("raw", BAD, ids=range(len(BAD)))
def test_studies_the_validator_refuses_the_schema_refuses_too(raw):
    with pytest.raises(SpaceError):
        validate(raw, "s.yaml")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(raw, SCHEMA)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
RANGED = sorted(k for k, f in FIELDS.items() if f.metadata["allowed"] is not None)


def near_bounds(f):
    """Values around a field's declared bounds and its special values, and anything else of its type."""
    allowed = f.metadata["allowed"]
    marks = [v for v in (allowed.lo, allowed.hi, *allowed.also) if v is not None]
    if f.type == "str":
        return st.one_of(st.sampled_from(list(allowed.choices)), st.text(max_size=12))
    if f.type == "int":
        return st.one_of(st.sampled_from([int(m) + d for m in marks for d in (-1, 0, 1)]), st.integers(-10**6, 10**6))
    return st.one_of(st.sampled_from([m + d for m in marks for d in (-1e-9, 0.0, 1e-9)]),
                     st.floats(-2, 2, allow_nan=False), st.integers(-3, 3))


@settings(max_examples=400, deadline=None)
@given(data=st.data(), name=st.sampled_from(RANGED))
def test_the_schema_and_the_validator_agree_on_every_fields_allowed_values(data, name):
    """One declaration (Allowed, beside the field): whatever one value of one field is, the editor's
    schema accepts it exactly when the study validator does, fixed or in a grid (eps: 0.7 is refused by
    both, and so is eps: 0.5, which iabf.train accepts and a study does not: Allowed.study_below)."""
    value = data.draw(near_bounds(FIELDS[name]), label=name)
    checker = jsonschema.Draft202012Validator(SCHEMA)
    for raw in ({"study": "s", "fixed": {name: value, **ALONE.get(name, {})}},
                *([{"study": "s", "search": {name: {"grid": [value]}}, "fixed": ALONE.get(name, {})}]
                  if name not in NOT_SEARCHABLE else [])):
        try:
            validate(raw, "s.yaml")
            accepted = True
        except SpaceError:
            accepted = False
        assert checker.is_valid(raw) == accepted, raw
