"""Search-space files: every shipped file is valid, and every kind of bad input is one clear error."""
from pathlib import Path

import pytest
import yaml

from studies.space import SpaceError, load_study, param_space, smoke, validate

SPACES = sorted((Path(__file__).resolve().parents[1] / "search_spaces").glob("*.yaml"))
GOOD = {"study": "t", "dataset": "digits", "fixed": {"epochs": 3}, "search": {"eps": {"grid": [0.1, 0.2]}}}


def test_every_shipped_space_is_valid_and_has_a_header():
    assert {p.stem for p in SPACES} >= {"quick", "table1", "ablation_k_flip", "lam_optuna"}
    for p in SPACES:
        study = load_study(p)
        lines = p.read_text().splitlines()
        header = " ".join(l for l in lines[:next(i for i, l in enumerate(lines) if not l.startswith("#"))]).lower()
        assert all(w in header for w in ("scientific", "nuisance", "fixed")), p


def test_table1_is_the_papers_grid():
    s = load_study(next(p for p in SPACES if p.stem == "table1"))
    assert s.search["dataset"]["grid"] == ["binary_mnist", "mnist", "omniglot", "cifar10"]
    assert s.search["eps"]["grid"] == [0.1, 0.2, 0.3, 0.4]
    assert {v.get("lam") for v in s.variants if v["method"] == "iabf"} == {0.1, 0.01, 0.001}
    assert {v["method"] for v in s.variants} == {"necst", "abf", "iabf"} and s.fixed["K"] == 5
    assert s.n_trials() == 4 * 4 * 5 * len(s.seeds) and 0 < s.resources["gpu"] < 1


def test_optuna_space_is_continuous_under_asha():
    s = load_study(next(p for p in SPACES if p.stem == "lam_optuna"))
    assert s.searcher == "optuna" and s.scheduler is not None
    assert "loguniform" in s.search["lam"] and s.n_trials() is None


def write(tmp_path, obj, name="space.yaml"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else yaml.safe_dump(obj))
    return p


def with_(**over):
    d = yaml.safe_load(yaml.safe_dump(GOOD))
    for k, v in over.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    return d


BAD = [
    ("study: [unclosed", "not valid YAML (line 1"),
    ("", "top level: the file is empty"),
    (with_(study=None), "study: missing"),
    (with_(study="has space"), "study: 'has space' is not allowed"),
    (with_(colour="red"), "colour: unknown key; allowed: study, description"),
    (with_(fixed={"lamda": 0.1}), "fixed.lamda: unknown parameter 'lamda'"),
    (with_(fixed={"K": "five"}), "fixed.K: K='five' is not allowed: expected int"),
    (with_(fixed={"K": 0}), "fixed.K: K=0 is not allowed: an integer >= 1"),
    (with_(fixed={"lam": -0.1}), "fixed.lam: lam=-0.1 is not allowed: a number >= 0"),
    (with_(dataset="svhn"), "fixed.dataset: dataset='svhn' is not allowed: one of digits"),
    (with_(search={"eps": {"grid": [0.1, 0.7]}}), "search.eps.grid[1]: eps=0.7 is not allowed"),
    (with_(search={"eps": {"grid": [0.1, 0.5]}}), "search.eps.grid[1]: eps=0.5 is not allowed in a study"),
    (with_(search={"eps": {"grid": []}}), "search.eps.grid: expected a non-empty list"),
    (with_(search={"eps": {"normal": [0, 1]}}), "search.eps: unknown distribution 'normal'"),
    (with_(search={"eps": {"uniform": [0.3, 0.1]}}), "search.eps.uniform: low 0.3 must be below high 0.1"),
    (with_(search={"eps": {"uniform": [0.1, 0.6]}}), "search.eps.uniform: eps=0.6 is not allowed"),
    (with_(search={"lam": {"loguniform": [0, 1]}}), "search.lam.loguniform: loguniform needs low > 0"),
    (with_(search={"K": {"uniform": [1, 5]}}), "search.K.uniform: uniform is for float parameters"),
    (with_(search={"method": {"grid": ["necst", "gan"]}}), "search.method.grid[1]: method='gan' is not allowed"),
    (with_(search={"seed": {"grid": [1, 2]}}), "search.seed.grid[0]: seed is set by `seeds`"),
    (with_(search={"epochs": {"grid": [1]}}), "search.epochs: also set in fixed"),
    (with_(searcher="optuna"), "search.eps.grid: grid is not allowed with the optuna searcher"),
    (with_(searcher="bayes"), "searcher: 'bayes' is not allowed: one of grid, random, optuna"),
    (with_(scheduler={"name": "hyperband"}), "scheduler.name: 'hyperband' is not allowed: asha or none"),
    (with_(scheduler={"name": "asha", "grace": 1}), "scheduler.grace: unknown key"),
    (with_(scheduler={"name": "asha", "max_t": 2, "grace_period": 5}), "scheduler.grace_period: 5 exceeds max_t 2"),
    (with_(metric="val/accuracy"), "metric: 'val/accuracy' is not a reported metric"),
    (with_(mode="lowest"), "mode: 'lowest' is not allowed: min or max"),
    (with_(num_samples=0), "num_samples: expected an integer >= 1"),
    (with_(seeds=[]), "seeds: expected a non-empty list"),
    (with_(seeds=[1, 1]), "seeds: repeated seeds"),
    (with_(stack=0), "stack: expected an integer >= 1"),
    (with_(stack=2, seeds=[0, 1, 2]), "stack: 2 needs the seeds in runs of 2 consecutive integers"),
    (with_(stack=2, seeds=[0, 2]), "stack: 2 needs the seeds in runs of 2 consecutive integers"),
    (with_(stack=2, seeds=[0, 1], dataset="cifar10"), "stack: stack=2 is not allowed: 1 for cifar10"),
    (with_(fixed={"stack": 2}), "fixed.stack: stack is set by `stack`, not here"),
    (with_(resources={"cpu": 0}), "resources.cpu: expected a number > 0"),
    (with_(resources={"gpu": -1}), "resources.gpu: expected a number >= 0"),
    (with_(resources={"tpu": 1}), "resources.tpu: unknown key"),
    (with_(variants=[{"method": "iabf", "lamb": 1}]), "variants[0].lamb: unknown key"),
    (with_(variants=[{"method": "iabf"}, {"method": "iabf"}]), "variants: two arms are the same"),
    (with_(variants=[{"eps": 0.1}]), "variants[0].eps: also searched"),
]


@pytest.mark.parametrize("content, message", BAD, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_space_is_one_error_naming_file_key_and_allowed(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(SpaceError) as e:
        load_study(path)
    text = str(e.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_optuna_with_several_seeds_is_refused(tmp_path):
    d = with_(searcher="optuna", search={"lam": {"loguniform": [1e-3, 1]}}, seeds=[0, 1])
    with pytest.raises(SpaceError, match="seeds: the optuna searcher takes one seed"):
        load_study(write(tmp_path, d))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(SpaceError, match="no such search-space file"):
        load_study(tmp_path / "nope.yaml")


def test_smoke_shrinks_any_space_to_two_tiny_cpu_trials():
    for p in SPACES:
        s = smoke(load_study(p))
        n = s.n_trials() or s.num_samples
        assert n == 2, p
        assert s.fixed["epochs"] == 2 and s.resources == {"cpu": 1, "gpu": 0} and s.name.endswith("-smoke")


def test_param_space_uses_tunes_samplers_and_json_arms():
    s = load_study(next(p for p in SPACES if p.stem == "quick"))
    space = param_space(s)
    assert space["dataset"] == "digits" and space["epochs"] == 40
    assert len(space["variant"]["grid_search"]) == 5 and space["seed"] == {"grid_search": [0, 1, 2]}


def test_stack_groups_consecutive_seeds_into_trials():
    s = validate(with_(seeds=[0, 1, 2, 3, 4, 5], stack=3), "space.yaml")
    assert s.n_trials() == 2 * 2                             # 2 eps x 2 stacks of 3 seeds
    space = param_space(s)
    assert space["seed"] == {"grid_search": [0, 3]} and space["stack"] == 3
    tiny = smoke(s)
    assert tiny.seeds == [0, 1, 2] and tiny.stack == 3 and (tiny.n_trials() or tiny.num_samples) == 2
    # optuna takes one stack of seeds: every sampled point averaged over it
    o = validate(with_(searcher="optuna", search={"lam": {"loguniform": [1e-3, 1]}}, seeds=[0, 1], stack=2), "s.yaml")
    assert param_space(o)["seed"] == 0 and param_space(o)["stack"] == 2
