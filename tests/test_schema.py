"""search_spaces/schema.json: the study file's JSON Schema, for editors. It is what
`python -m studies.schema` writes (so it follows Config and the validator), every shipped study
declares and satisfies it, and bad studies the validator refuses are refused by it too (where JSON
Schema can say so: keys, types, names, distributions)."""
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from studies.schema import markdown, schema
from studies.space import TOP, SpaceError, Study, default, validate

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
