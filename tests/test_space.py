"""Search-space files: every shipped file is valid, and every kind of bad input is one clear error."""
from pathlib import Path

import pytest
import yaml

from studies.plan import groups, plan
from studies.space import SpaceError, smoke, table_columns
from studies.validation import load_study, validate

SPACES = sorted((Path(__file__).resolve().parents[1] / "search_spaces").glob("*.yaml"))
GOOD = {"study": "t", "dataset": "digits", "fixed": {"epochs": 3}, "search": {"eps": {"grid": [0.1, 0.2]}}}


def test_every_shipped_space_is_valid_and_has_a_header():
    assert {p.stem for p in SPACES} >= {"quick", "table1", "ablation", "ablation_k_flip", "lam_optuna"}
    for p in SPACES:
        study = load_study(p)
        lines = p.read_text().splitlines()
        header = " ".join(l for l in lines[:next(i for i, l in enumerate(lines) if not l.startswith("#"))]).lower()
        assert all(w in header for w in ("scientific", "nuisance", "fixed")), p


def space_named(stem):
    return load_study(next(p for p in SPACES if p.stem == stem))


def test_table1_is_the_papers_grid_searched_per_cell_and_confirmed():
    s = space_named("table1")
    assert s.search["dataset"]["grid"] == ["binary_mnist", "mnist", "omniglot", "cifar10"]
    assert s.search["eps"]["grid"] == [0.1, 0.2, 0.3, 0.4]
    # both versions side by side (the paper's equations, the authors' code), the code's top-k flips alone,
    # and separation (5G LDPC), its capacity bound and uncoded
    assert [a.name for a in s.arms] == ["necst", "abf", "iabf", "abf topk", "iabf topk",
                                        "necst reference", "abf reference", "iabf reference",
                                        "separation ldpc", "separation bound", "separation uncoded"]
    ldpc = next(a for a in s.arms if a.name == "separation ldpc")
    assert ldpc.search == {"code_rate": {"grid": [0.2, 0.3, 0.4, 0.5]}} and ldpc.fixed["channel_code"] == "ldpc"
    iabfs = [a for a in s.arms if a.fixed["method"] == "iabf"]
    assert all(a.search == {"lam": {"grid": [0.1, 0.01, 0.001]}} for a in iabfs) and len(iabfs) == 3
    from iabf.config import PRESETS
    assert all(PRESETS["reference"].items() <= a.fixed.items() for a in s.arms if a.name.endswith("reference"))
    assert s.fixed["K"] == 5 and s.confirm and s.scheduler is not None and 0 < s.resources["gpu"] < 1
    g = groups(s)
    assert len(g) == 16 * 11 and len({x.key for x in g}) == 176                 # 16 cells x 11 arms
    assert {x.cell["eps"] for x in g} == {0.1, 0.2, 0.3, 0.4} and {x.cell["bits"] for x in g} == {100, 200, 500}
    p = plan(s)
    assert p["search_trials"] == 16 * 3 * 3 + 16 * 4             # lambda per IABF arm, the code rate, per cell
    assert p["confirm_trials"] == 12 * 11 + 4 * 11 * 3    # MLP cells: 3 seeds stacked; CIFAR10: one per seed
    assert p["full_grid_epochs"] == 16 * (7 + 9 + 4) * 3 * 200


def test_table1_cpu_is_the_whole_table_with_one_budget_per_dataset_for_every_arm():
    s = space_named("table1_cpu")
    assert s.search["dataset"]["grid"] == ["binary_mnist", "mnist", "omniglot", "cifar10"]
    assert s.search["eps"]["grid"] == [0.1, 0.2, 0.3, 0.4] and s.seeds == [0, 1, 2] and s.confirm
    assert [a.name for a in s.arms] == ["necst", "abf", "iabf", "abf topk", "iabf topk"]
    g = groups(s)
    assert len(g) == 16 * 5
    budget = ("max_train_examples", "epochs", "val_subset")
    for cell in {x.key.split(" | ")[0] for x in g}:
        budgets = {tuple(x.base.get(k) for k in budget) for x in g if x.key.startswith(cell + " | ")}
        assert len(budgets) == 1, cell                       # every arm of a cell: the same budget
    by = {x.dataset: tuple(x.base.get(k) for k in budget) for x in g}
    assert by["cifar10"] == (2000, 8, 2000) and by["mnist"][:2] == (5000, 10)
    assert s.scheduler["max_t"] == 10                        # the longest dataset's epochs
    p = plan(s)
    assert p["search_trials"] == 16 * 2 * 3                  # lambda, per IABF arm and cell
    assert p["confirm_trials"] == 12 * 5 + 4 * 5 * 3         # MLP cells: 3 seeds stacked; CIFAR10: one per seed
    assert p["confirm_epochs"] == 12 * 5 * 3 * 10 + 4 * 5 * 3 * 8


def test_by_dataset_values_override_fixed_for_that_dataset_only():
    s = validate(with_(fixed={"epochs": 3, "K": 2}, dataset=None, search={"dataset": {"grid": ["digits", "mnist"]}},
                       by_dataset={"mnist": {"epochs": 7, "val_subset": 100}}), "s.yaml")
    base = {x.dataset: x.base for x in groups(s)}
    assert base["digits"]["epochs"] == 3 and "val_subset" not in base["digits"]
    assert base["mnist"]["epochs"] == 7 and base["mnist"]["val_subset"] == 100 and base["mnist"]["K"] == 2
    # --smoke keeps its tiny budget everywhere
    assert all(x.base["epochs"] == 2 for x in groups(smoke(s)))


def test_the_missions_ablation_searches_k_and_lambda_per_cell_and_method():
    s = space_named("ablation")
    assert s.fixed["dataset"] == "mnist" and s.search["eps"]["grid"] == [0.1, 0.2, 0.3, 0.4]
    assert s.search["K"]["grid"] == [1, 5, 10] and s.seeds == [0, 1, 2] and s.confirm and s.scheduler
    g = groups(s)
    assert len(g) == 4 * 3
    sizes = {x.arm: len([1 for _ in __import__("itertools").product(*(v["grid"] for v in x.space.values()))]) for x in g}
    assert sizes == {"necst": 3, "abf": 3, "iabf": 9}


def test_optuna_space_is_continuous_under_asha():
    s = space_named("lam_optuna")
    assert s.searcher == "optuna" and s.scheduler is not None
    assert "loguniform" in s.search["lam"] and plan(s)["search_trials"] == s.num_samples


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
    (with_(dataset="sv hn"), "fixed.dataset: dataset='sv hn' is not allowed: one of digits"),
    (with_(search={"eps": {"grid": [0.1, 0.7]}}), "search.eps.grid[1]: eps=0.7 is not allowed"),
    (with_(search={"eps": {"grid": [0.1, 0.5]}}), "search.eps.grid[1]: eps=0.5 is not allowed in a study"),
    (with_(search={"eps": {"grid": []}}), "search.eps.grid: expected a non-empty list"),
    (with_(search={"eps": {"normal": [0, 1]}}), "search.eps: unknown distribution 'normal'"),
    (with_(searcher="random", search={"lam": {"uniform": [0.3, 0.1]}}), "search.lam.uniform: low 0.3 must be below high 0.1"),
    (with_(searcher="random", search={"flip_budget": {"uniform": [0.1, 0.6]}}), "search.flip_budget.uniform: flip_budget=0.6 is not allowed"),
    (with_(searcher="random", search={"lam": {"loguniform": [0, 1]}}), "search.lam.loguniform: loguniform needs low > 0"),
    (with_(searcher="random", search={"K": {"uniform": [1, 5]}}), "search.K.uniform: uniform is for float parameters"),
    (with_(search={"method": {"grid": ["necst", "gan"]}}), "search.method.grid[1]: method='gan' is not allowed"),
    (with_(search={"seed": {"grid": [1, 2]}}), "search.seed.grid[0]: seed is set by `seeds`"),
    (with_(search={"epochs": {"grid": [1]}}), "search.epochs: also set in fixed"),
    (with_(searcher="optuna", search={"lam": {"grid": [0.1, 0.2]}}), "search.lam.grid: grid is not allowed with the optuna searcher"),
    (with_(search={"lam": {"uniform": [0.1, 0.2]}}), "search.lam.uniform: uniform is sampled: use searcher: random or optuna"),
    (with_(search={"eps": {"uniform": [0.1, 0.2]}}, searcher="optuna"), "search.eps.uniform: eps decides the table cell"),
    (with_(variants=[{"method": "iabf", "dataset": "mnist"}]), "variants[0].dataset: dataset decides the table cell"),
    (with_(variants=[{"method": "iabf", "search": {"lam": {"grid": []}}}]), "variants[0].search.lam.grid: expected a non-empty list"),
    (with_(variants=[{"method": "iabf", "lam": 0.1, "search": {"lam": {"grid": [0.1]}}}]), "variants[0].search.lam: already fixed"),
    (with_(variants=[{"method": "iabf", "name": "a\nb"}]), "variants[0].name: 'a\\nb' is not allowed"),
    (with_(variants=[{"method": "iabf", "name": "x"}, {"method": "abf", "name": "x"}]), "two arms have the same name"),
    (with_(search_seeds=[0]), "search_seeds: [0] overlaps seeds [0]"),
    (with_(variants=[{"method": "iabf", "preset": "code"}]), "variants[0].preset: preset='code' is not allowed: one of paper, reference"),
    (with_(fixed={"preset": 1}), "fixed.preset: preset=1 is not allowed"),
    (with_(confirm="yes"), "confirm: expected true or false"),
    (with_(cells=["dataset", "nope"]), "cells: expected a list of distinct parameters"),
    (with_(num_samples=3), "num_samples: a grid is run once"),
    (with_(confirm=False, seeds=[0, 2], scheduler={"name": "asha"}), "scheduler: ASHA would stop some seeds of a configuration"),
    (with_(searcher="bayes"), "searcher: 'bayes' is not allowed: one of grid, random, optuna"),
    (with_(scheduler={"name": "hyperband"}), "scheduler.name: 'hyperband' is not allowed: asha or none"),
    (with_(scheduler={"name": "asha", "grace": 1}), "scheduler.grace: unknown key"),
    (with_(scheduler={"name": "asha", "max_t": 2, "grace_period": 5}), "scheduler.grace_period: 5 exceeds max_t 2"),
    (with_(metric="val/accuracy"), "metric: 'val/accuracy' is not a reported metric"),
    (with_(mode="lowest"), "mode: 'lowest' is not allowed: min or max"),
    (with_(num_samples=0), "num_samples: expected an integer >= 1"),
    (with_(seeds=[]), "seeds: expected a non-empty list"),
    (with_(seeds=[1, 1]), "seeds: repeated seeds"),
    (with_(stack=0), "stack: expected auto or an integer >= 1"),
    (with_(stack=2, seeds=[0, 1, 2]), "stack: 2 seeds per trial need the seeds in runs of 2 consecutive integers"),
    (with_(stack=2, seeds=[0, 2]), "stack: 2 seeds per trial need the seeds in runs of 2 consecutive integers"),
    (with_(search_seeds=[5, 7]), "search_seeds: 2 seeds per trial need the seeds in runs of 2 consecutive"),
    (with_(stack=2, seeds=[0, 1], dataset="cifar10"), "stack: stack=2 is not allowed: 1 for cifar10"),
    (with_(fixed={"stack": 2}), "fixed.stack: stack is set by `stack`, not here"),
    (with_(resources={"cpu": 0}), "resources.cpu: expected a number > 0"),
    (with_(resources={"gpu": -1}), "resources.gpu: expected a number >= 0"),
    (with_(resources={"tpu": 1}), "resources.tpu: unknown key"),
    (with_(variants=[{"method": "iabf", "lamb": 1}]), "variants[0].lamb: unknown key"),
    (with_(variants=[{"method": "iabf"}, {"method": "iabf"}]), "variants: two arms are the same"),
    (with_(variants=[{"eps": 0.1}]), "variants[0].eps: also searched"),
    (with_(by_dataset={"svhn": {"epochs": 2}}), "by_dataset.svhn: not a dataset of this study; its datasets: digits"),
    (with_(by_dataset={"mnist": {"epochs": 2}}), "by_dataset.mnist: not a dataset of this study"),
    (with_(by_dataset={"digits": 3}), "by_dataset.digits: expected a mapping of parameter: value"),
    (with_(by_dataset={"digits": {"epochs": 0}}), "by_dataset.digits.epochs: epochs=0 is not allowed"),
    (with_(by_dataset={"digits": {"eps": 0.1}}), "by_dataset.digits.eps: searched or a cell parameter"),
    (with_(by_dataset={"digits": {"seed": 1}}), "by_dataset.digits.seed: seed is set by `seeds`"),
    (with_(by_dataset={"digits": {"lam": 0.1}}, variants=[{"method": "iabf", "search": {"lam": {"grid": [0.1, 1.0]}}}]),
     "variants[0].search.lam: already fixed or searched"),
    (with_(chain_steps=0), "chain_steps: expected an integer >= 1"),
]


@pytest.mark.parametrize("content, message", BAD, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_space_is_one_error_naming_file_key_and_allowed(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(SpaceError) as e:
        load_study(path)
    text = str(e.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_optuna_without_confirmation_takes_one_trial_per_point(tmp_path):
    d = with_(searcher="optuna", search={"lam": {"loguniform": [1e-3, 1]}}, seeds=[0, 2], confirm=False)
    with pytest.raises(SpaceError, match="seeds: the optuna searcher judges a sampled point on one trial"):
        load_study(write(tmp_path, d))
    d["seeds"] = [0, 1]                                       # one stacked trial of both seeds: fine
    assert load_study(write(tmp_path, d)).stack_for("digits") == 2


def test_missing_file_is_named(tmp_path):
    with pytest.raises(SpaceError, match="no such search-space file"):
        load_study(tmp_path / "nope.yaml")


def test_smoke_shrinks_any_space_to_a_few_tiny_cpu_trials_through_both_phases():
    for p in SPACES:
        s = smoke(load_study(p))
        planned = plan(s)
        assert 1 <= planned["trials"] <= 3 and len({tuple(sorted(g.cell.items())) for g in groups(s)}) == 1, p   # one cell
        assert planned["search_trials"] in (0, 2) and planned["confirm_trials"] >= 1, p
        assert s.fixed["epochs"] == 2 and s.resources == {"cpu": 1, "gpu": 0} and s.name.endswith("-smoke")


def test_a_preset_in_an_arm_names_it_and_stands_for_the_authors_code():
    s = validate(with_(variants=[{"method": "iabf"}, {"method": "iabf", "preset": "reference"},
                                 {"method": "iabf", "preset": "reference", "flip": "budget"}]), "s.yaml")
    assert [a.name for a in s.arms] == ["iabf", "iabf reference", "iabf reference flip=budget"]
    ref = s.arms[1].fixed
    assert (ref["flip"], ref["tc_input"], ref["clean_weight"], ref["vimco_signal"], ref["val_batch"]) == \
        ("topk", "probs", 0.1, "loss", 100)
    assert s.arms[2].fixed["flip"] == "budget" and "preset" not in s.arms[2].fixed


def test_arms_are_named_by_method_and_what_sets_them_apart():
    s = validate(with_(variants=[{"method": "necst"}, {"method": "iabf", "flip": "topk"},
                                 {"method": "iabf", "flip": "budget"}, {"method": "abf", "name": "ABF ref"}]), "s.yaml")
    assert [a.name for a in s.arms] == ["necst", "iabf flip=topk", "iabf flip=budget", "ABF ref"]
    assert table_columns(s) == {"arm": "arm", "eps": "eps", "flip": "flip", "phase": "phase"}


def test_stack_is_all_seeds_where_the_model_allows_and_the_search_seeds_follow_the_seeds():
    s = validate(with_(seeds=[0, 1, 2, 3, 4, 5]), "space.yaml")
    assert s.stack == "auto" and s.stack_for("digits") == 6 and s.stack_for("cifar10") == 1
    assert s.search_seeds == [6]                             # never a seed the table reports
    three = validate(with_(seeds=[0, 1, 2, 3, 4, 5], stack=3), "space.yaml")
    assert plan(three)["confirm_trials"] == 2 * 2            # 2 eps cells x 2 stacks of 3 seeds
    gaps = validate(with_(seeds=[0, 2, 4]), "space.yaml")    # not consecutive: one trial per seed
    assert gaps.stack_for("digits") == 1 and plan(gaps)["confirm_trials"] == 2 * 3
