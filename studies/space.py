"""Search spaces: a YAML file per study (schema in search_spaces/README.md), validated in full
before anything starts, then turned into Ray Tune's param_space, searcher and scheduler.

Every error names the file, the key and what is allowed, as one line (`SpaceError`).
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from iabf import metrics as M
from iabf.config import Config, ConfigError, FIELD_TYPES

SEARCHERS = ("grid", "random", "optuna")
DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")
TOP_KEYS = ("study", "description", "dataset", "fixed", "search", "variants", "seeds", "stack", "searcher",
            "scheduler", "metric", "mode", "num_samples", "resources", "max_concurrent")
ASHA_KEYS = ("name", "max_t", "grace_period", "reduction_factor")
RESOURCE_KEYS = ("cpu", "gpu")
METRICS = tuple(v for k, v in vars(M).items() if k.isupper() and isinstance(v, str))
NOT_SEARCHABLE = ("seed", "stack", "data_dir", "device", "download")  # set by `seeds`, `stack`, the command line


class SpaceError(ValueError):
    """A search-space file that is not valid; the message names file, key and what is allowed."""


@dataclass
class Study:
    name: str
    path: str
    fixed: dict = field(default_factory=dict)        # Config field -> value
    search: dict = field(default_factory=dict)       # Config field -> {distribution: args}
    variants: list = field(default_factory=list)     # list of {Config field: value}, one arm each
    seeds: list = field(default_factory=lambda: [0])
    stack: int = 1                                   # seeds trained together in one trial (Config.stack)
    searcher: str = "grid"
    scheduler: dict | None = None                    # {"max_t", "grace_period", "reduction_factor"}
    metric: str = M.VAL_DISTORTION
    mode: str = "min"
    num_samples: int = 1
    resources: dict = field(default_factory=lambda: {"cpu": 1, "gpu": 0})
    max_concurrent: int = 0
    description: str = ""

    def datasets(self) -> list[str]:
        spec = self.search.get("dataset", {})
        found = {*next(iter(spec.values()), [])} if spec else {self.fixed.get("dataset", Config().dataset)}
        return sorted(found | {v["dataset"] for v in self.variants if "dataset" in v})

    def n_trials(self) -> int | None:
        """Trials the grid makes (None when a distribution is sampled: then num_samples)."""
        if any(next(iter(s)) in ("uniform", "loguniform", "randint") for s in self.search.values()):
            return None
        n = self.num_samples * len(self.seeds) // self.stack * max(1, len(self.variants))
        for s in self.search.values():
            kind, values = next(iter(s.items()))
            n *= len(values) if kind == "grid" else 1
        return n


def load_study(path: str | Path) -> Study:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpaceError(f"{path}: no such search-space file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise SpaceError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    return validate(raw, str(path))


def validate(raw, path: str) -> Study:
    def fail(key: str, msg: str):
        raise SpaceError(f"{path}: {key}: {msg}")

    def check_keys(d, allowed, where):
        if not isinstance(d, dict):
            fail(where or "top level", f"expected a mapping, got {type(d).__name__}")
        for k in d:
            if k not in allowed:
                fail(f"{where}.{k}" if where else str(k), f"unknown key; allowed: {', '.join(allowed)}")

    def want(value, types, key, what):
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)) \
                or not isinstance(value, types):
            fail(key, f"expected {what}, got {value!r}")
        return value

    def check_value(name: str, value, key: str):
        """One Config field at one value: Config's own checks, plus no study at eps = 0.5."""
        if name not in FIELD_TYPES:
            fail(key, f"unknown parameter {name!r}; parameters: {', '.join(FIELD_TYPES)}")
        if name in NOT_SEARCHABLE and key.split(".")[0] != "fixed" or name in ("seed", "stack"):
            fail(key, f"{name} is set by {f'`{name}s`' if name == 'seed' else '`stack`' if name == 'stack' else 'the command line'}, not here")
        try:
            Config.from_dict({name: value})
        except ConfigError as e:
            fail(key, str(e))
        if name in ("eps", "test_eps") and value == 0.5:
            fail(key, f"{name}=0.5 is not allowed in a study: a channel at 0.5 carries nothing; use [0, 0.5)")

    if raw is None:
        fail("top level", "the file is empty")
    check_keys(raw, TOP_KEYS, "")
    if "study" not in raw:
        fail("study", "missing; every space names its study (letters, digits, '-', '_')")
    name = want(raw["study"], str, "study", "a name")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        fail("study", f"{name!r} is not allowed: letters, digits, '-' and '_' only")

    fixed = dict(want(raw.get("fixed") or {}, dict, "fixed", "a mapping of parameter: value"))
    if "dataset" in raw:
        fixed["dataset"] = raw["dataset"]
    for k, v in fixed.items():
        check_value(k, v, f"fixed.{k}")

    searcher = raw.get("searcher", "grid")
    if searcher not in SEARCHERS:
        fail("searcher", f"{searcher!r} is not allowed: one of {', '.join(SEARCHERS)}")

    search = want(raw.get("search") or {}, dict, "search", "a mapping of parameter: {distribution: values}")
    for k, spec in search.items():
        key = f"search.{k}"
        if k in fixed:
            fail(key, "also set in fixed; a parameter is either fixed or searched")
        if not isinstance(spec, dict) or len(spec) != 1:
            fail(key, f"expected one of {{{', '.join(f'{d}: ...' for d in DISTRIBUTIONS)}}}")
        kind, args = next(iter(spec.items()))
        if kind not in DISTRIBUTIONS:
            fail(key, f"unknown distribution {kind!r}; allowed: {', '.join(DISTRIBUTIONS)}")
        key = f"{key}.{kind}"
        if kind == "grid" and searcher == "optuna":
            fail(key, "grid is not allowed with the optuna searcher (Optuna samples); use choice")
        if not isinstance(args, list) or not args:
            fail(key, "expected a non-empty list" + ("" if kind in ("grid", "choice") else " [low, high]"))
        if kind in ("grid", "choice"):
            for i, v in enumerate(args):
                check_value(k, v, f"{key}[{i}]")
            if len(set(map(repr, args))) != len(args):
                fail(key, f"repeated values in {args}")
            continue
        if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
            fail(key, f"expected [low, high] numbers, got {args!r}")
        lo, hi = args
        if not lo < hi:
            fail(key, f"low {lo} must be below high {hi}")
        if kind == "loguniform" and lo <= 0:
            fail(key, f"loguniform needs low > 0, got {lo}")
        if kind == "randint" and FIELD_TYPES[k] != "int":
            fail(key, f"randint is for integer parameters; {k} is a {FIELD_TYPES[k]}")
        if kind != "randint" and FIELD_TYPES[k] != "float":
            fail(key, f"{kind} is for float parameters; {k} is a {FIELD_TYPES[k]}")
        for v in (lo, hi - 1 if kind == "randint" else hi):
            check_value(k, v, key)

    variants = want(raw.get("variants") or [], list, "variants", "a list of {parameter: value} arms")
    for i, arm in enumerate(variants):
        check_keys(arm, tuple(FIELD_TYPES), f"variants[{i}]")
        for k, v in arm.items():
            if k in search:
                fail(f"variants[{i}].{k}", "also searched; an arm fixes parameters the search does not touch")
            check_value(k, v, f"variants[{i}].{k}")
    if len(set(json.dumps(a, sort_keys=True) for a in variants)) != len(variants):
        fail("variants", "two arms are the same")

    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                          and s >= 0 for s in seeds):
        fail("seeds", f"expected a non-empty list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        fail("seeds", f"repeated seeds in {seeds}")
    stack = raw.get("stack", 1)

    scheduler = raw.get("scheduler", "none")
    if scheduler == "none" or scheduler == {"name": "none"}:
        scheduler = None
    else:
        check_keys(scheduler, ASHA_KEYS, "scheduler")
        if scheduler.get("name") != "asha":
            fail("scheduler.name", f"{scheduler.get('name')!r} is not allowed: asha or none")
        epochs = fixed.get("epochs", Config().epochs)
        scheduler = {"max_t": scheduler.get("max_t", epochs), "grace_period": scheduler.get("grace_period", 1),
                     "reduction_factor": scheduler.get("reduction_factor", 2)}
        for k, lo in (("max_t", 1), ("grace_period", 1), ("reduction_factor", 2)):
            v = scheduler[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < lo:
                fail(f"scheduler.{k}", f"expected a number >= {lo}, got {v!r}")
        if scheduler["grace_period"] > scheduler["max_t"]:
            fail("scheduler.grace_period", f"{scheduler['grace_period']} exceeds max_t {scheduler['max_t']}")

    metric = raw.get("metric", M.VAL_DISTORTION)
    if metric not in METRICS:
        fail("metric", f"{metric!r} is not a reported metric; one of {', '.join(METRICS)}")
    mode = raw.get("mode", "min")
    if mode not in ("min", "max"):
        fail("mode", f"{mode!r} is not allowed: min or max")
    num_samples = raw.get("num_samples", 1)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        fail("num_samples", f"expected an integer >= 1, got {num_samples!r}")
    resources = {"cpu": 1, "gpu": 0, **want(raw.get("resources") or {}, dict, "resources", "{cpu: N, gpu: N}")}
    check_keys(resources, RESOURCE_KEYS, "resources")
    for k, v in resources.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (k == "cpu" and v <= 0):
            fail(f"resources.{k}", f"expected a number {'> 0' if k == 'cpu' else '>= 0 (fractions share a GPU)'}, got {v!r}")
    if resources["gpu"] > 1 and resources["gpu"] != int(resources["gpu"]):
        fail("resources.gpu", f"{resources['gpu']} is not allowed: a fraction below 1 or a whole number")
    max_concurrent = raw.get("max_concurrent", 0)
    if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) or max_concurrent < 0:
        fail("max_concurrent", f"expected an integer >= 0 (0 = as many as fit), got {max_concurrent!r}")
    description = want(raw.get("description", ""), str, "description", "text")
    return check_stack(Study(name=name, path=path, fixed=fixed, search=search, variants=variants, seeds=seeds,
                             stack=stack, searcher=searcher, scheduler=scheduler, metric=metric, mode=mode,
                             num_samples=num_samples, resources=resources, max_concurrent=max_concurrent,
                             description=description))


def check_stack(study: Study) -> Study:
    """`stack: S` trains the seeds in groups of S consecutive ones (seed, seed+1, ...), each group one
    trial; stacking needs MLP datasets (Config says which)."""
    seeds, stack = study.seeds, study.stack
    if isinstance(stack, bool) or not isinstance(stack, int) or stack < 1:
        raise SpaceError(f"{study.path}: stack: expected an integer >= 1 (seeds trained together in one trial), got {stack!r}")
    if study.searcher == "optuna" and len(seeds) > stack:
        raise SpaceError(f"{study.path}: seeds: the optuna searcher takes one seed, or one stack of seeds (repeats of a "
                         f"sampled point are not a search); re-run the best configurations with a grid study")
    if stack == 1:
        return study
    groups = [seeds[i:i + stack] for i in range(0, len(seeds), stack)]
    if len(seeds) % stack or any(g != list(range(g[0], g[0] + stack)) for g in groups):
        raise SpaceError(f"{study.path}: stack: {stack} needs the seeds in runs of {stack} consecutive integers "
                         f"(e.g. {list(range(stack))}), got seeds {seeds}")
    for d in study.datasets():
        try:
            Config(dataset=d, stack=stack)
        except ConfigError as e:
            raise SpaceError(f"{study.path}: stack: {e}") from None
    return study


def smoke(study: Study) -> Study:
    """The same study shrunk to 2 tiny CPU trials: first values only, 2 epochs, 256 examples."""
    s = copy.deepcopy(study)
    s.search = {k: ({"grid": v["grid"][:1]} if "grid" in v else {"choice": v["choice"][:1]} if "choice" in v else v)
                for k, v in s.search.items()}
    two_arms = len(s.variants) >= 2
    s.variants = s.variants[:2]
    if s.stack > 1:   # one stack of seeds per trial, as in the study
        s.seeds = s.seeds[:s.stack]
        s.variants = s.variants[:2] if two_arms else s.variants
    else:
        s.seeds = s.seeds[:1] if two_arms or s.searcher == "optuna" else (s.seeds + [s.seeds[0] + 1])[:2]
    s.num_samples = 2 if s.n_trials() is None or s.n_trials() < 2 else 1
    s.fixed.update(epochs=2, max_train_examples=256, device="cpu")
    # ASHA still runs, but with its only rung at the end it never stops a smoke trial: 2 complete
    s.scheduler = {"max_t": 2, "grace_period": 2, "reduction_factor": 2} if s.scheduler else None
    s.resources = {"cpu": 1, "gpu": 0}
    return replace(s, name=f"{s.name}-smoke")


# --- Ray Tune ---------------------------------------------------------------------------------

def param_space(study: Study) -> dict:
    """Ray Tune's param_space: constants for fixed values, Tune's samplers for searched ones.
    Arms go in as JSON strings (a categorical every searcher accepts, Optuna included)."""
    from ray import tune

    sampler = {"grid": tune.grid_search, "choice": tune.choice,
               "uniform": lambda a: tune.uniform(*a), "loguniform": lambda a: tune.loguniform(*a),
               "randint": lambda a: tune.randint(*a)}
    space = dict(study.fixed)
    for k, spec in study.search.items():
        kind, args = next(iter(spec.items()))
        space[k] = sampler[kind](args)
    many = tune.choice if study.searcher == "optuna" else tune.grid_search
    if study.variants:
        space["variant"] = many([json.dumps(v, sort_keys=True) for v in study.variants])
    starts = study.seeds[::study.stack]           # one trial per stack of seeds (one per seed without stacking)
    space["seed"] = starts[0] if len(starts) == 1 else tune.grid_search(starts)
    if study.stack > 1:
        space["stack"] = study.stack
    return space


def searcher(study: Study):
    if study.searcher != "optuna":
        return None  # Tune's BasicVariantGenerator: grids crossed, distributions sampled
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    # TPE with a fixed seed, so a study's sequence of suggestions is reproducible
    return OptunaSearch(metric=study.metric, mode=study.mode, sampler=optuna.samplers.TPESampler(seed=0))


def scheduler(study: Study):
    if study.scheduler is None:
        return None
    from ray.tune.schedulers import ASHAScheduler

    # one report per epoch, so Tune's training_iteration counts epochs, also across restores
    return ASHAScheduler(time_attr="training_iteration", **study.scheduler)
