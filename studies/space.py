"""Search spaces: a YAML file per study (schema in search_spaces/README.md), validated in full
before anything starts, then turned into Ray Tune's param_space, searcher and scheduler.

Every error names the file, the key and what is allowed, as one line (`SpaceError`).
"""
from __future__ import annotations

import codecs
import copy
import json
import math
import re
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from iabf import metrics as M
from iabf.config import INT_MAX, Config, ConfigError, FIELD_TYPES, one_line, short

SEARCHERS = ("grid", "random", "optuna")
DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")
TOP_KEYS = ("study", "description", "dataset", "fixed", "search", "variants", "seeds", "stack", "searcher",
            "scheduler", "metric", "mode", "num_samples", "resources", "max_concurrent")
ASHA_KEYS = ("name", "max_t", "grace_period", "reduction_factor")
RESOURCE_KEYS = ("cpu", "gpu")
METRICS = tuple(v for k, v in vars(M).items() if k.isupper() and isinstance(v, str))
NOT_SEARCHABLE = ("seed", "stack", "data_dir", "device", "download")  # set by `seeds`, `stack`, the command line


MAX_BYTES = 1 << 20   # a search space is a short YAML file; anything bigger is not one


class SpaceError(ValueError):
    """A search-space file that is not valid; the message names file, key and what is allowed, on
    one line (a value or key quoted from the file cannot break it)."""

    def __init__(self, message: str):
        super().__init__(one_line(message))


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
    """Read and validate a space file. Only a small regular file is read (never a FIFO, a device
    or a folder: reading those can block or never end); UTF-8 or UTF-16/32 with a byte-order mark."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise SpaceError(f"{path}: no such search-space file") from None
    except (OSError, ValueError) as e:   # ValueError: a NUL in the name
        raise SpaceError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
    if not stat.S_ISREG(info.st_mode):
        raise SpaceError(f"{path}: not a regular file; a search space is a YAML file")
    if info.st_size > MAX_BYTES:
        raise SpaceError(f"{path}: {info.st_size} bytes; a search space is a YAML file of at most {MAX_BYTES} bytes")
    try:
        raw = yaml.safe_load(decode(path.read_bytes(), path))
    except OSError as e:
        raise SpaceError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise SpaceError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    except RecursionError:
        raise SpaceError(f"{path}: nested too deeply to be a search space") from None
    except ValueError as e:   # e.g. an integer of more than 4300 digits, which Python refuses to parse
        raise SpaceError(f"{path}: not a valid search space: {e}") from None
    try:
        return validate(raw, str(path))
    except RecursionError:
        raise SpaceError(f"{path}: nested too deeply to be a search space") from None


BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def decode(data: bytes, path: Path) -> str:
    """YAML's encodings (YAML 1.2, 5.2): UTF-8, or UTF-16/32 announced by a byte-order mark."""
    encoding = next((enc for bom, enc in BOMS if data.startswith(bom)), "utf-8")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        raise SpaceError(f"{path}: not {encoding.upper().removesuffix('-SIG')} text (byte {e.start}); "
                         f"save the search space as UTF-8") from None
    if "\0" in text:
        raise SpaceError(f"{path}: contains a NUL character; not a text file")
    return text


def validate(raw, path: str) -> Study:
    def fail(key: str, msg: str):
        raise SpaceError(f"{path}: {key}: {msg}")

    def check_keys(d, allowed, where):
        if not isinstance(d, dict):
            fail(where or "top level", f"expected a mapping, got {type(d).__name__}")
        for k in d:
            if k not in allowed:
                k = k if isinstance(k, str) else short(k)
                fail(f"{where}.{k}" if where else k, f"unknown key; allowed: {', '.join(allowed)}")

    def number(value, key: str, lo: float, integer: bool = False, above: bool = False, hi: float = INT_MAX):
        """A finite number (an integer if asked) in [lo, hi] (or (lo, hi] if above): NaN, inf, bools and
        values beyond 32-bit integers are never valid here."""
        ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float)) and \
            math.isfinite(value) and (value > lo if above else value >= lo) and value <= hi
        if not ok:
            fail(key, f"expected {'an integer' if integer else 'a number'} {'>' if above else '>='} {lo:g} "
                      f"and <= {hi:g}, got {short(value)}")
        return value

    def want(value, types, key, what):
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)) \
                or not isinstance(value, types):
            fail(key, f"expected {what}, got {short(value)}")
        return value

    def check_value(name: str, value, key: str):
        """One Config field at one value: Config's own checks, plus no study at eps = 0.5."""
        if name not in FIELD_TYPES:
            fail(key, f"unknown parameter {short(name)}; parameters: {', '.join(FIELD_TYPES)}")
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
        fail("study", f"{short(name)} is not allowed: letters, digits, '-' and '_' only")

    fixed = dict(want(raw.get("fixed") or {}, dict, "fixed", "a mapping of parameter: value"))
    if "dataset" in raw:
        fixed["dataset"] = raw["dataset"]
    for k, v in fixed.items():
        check_value(k, v, f"fixed.{k}")

    searcher = raw.get("searcher", "grid")
    if searcher not in SEARCHERS:
        fail("searcher", f"{short(searcher)} is not allowed: one of {', '.join(SEARCHERS)}")

    search = want(raw.get("search") or {}, dict, "search", "a mapping of parameter: {distribution: values}")
    for k, spec in search.items():
        key = f"search.{k}"
        if k in fixed:
            fail(key, "also set in fixed; a parameter is either fixed or searched")
        if not isinstance(spec, dict) or len(spec) != 1:
            fail(key, f"expected one of {{{', '.join(f'{d}: ...' for d in DISTRIBUTIONS)}}}")
        kind, args = next(iter(spec.items()))
        if kind not in DISTRIBUTIONS:
            fail(key, f"unknown distribution {short(kind)}; allowed: {', '.join(DISTRIBUTIONS)}")
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
        if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool)
                                     and math.isfinite(a) for a in args):
            fail(key, f"expected [low, high] finite numbers, got {short(args)}")
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
                                                          and 0 <= s <= INT_MAX for s in seeds):
        fail("seeds", f"expected a non-empty list of integers >= 0, got {short(seeds)}")
    if len(set(seeds)) != len(seeds):
        fail("seeds", f"repeated seeds in {seeds}")
    stack = raw.get("stack", 1)

    scheduler = raw.get("scheduler", "none")
    if scheduler == "none" or scheduler == {"name": "none"}:
        scheduler = None
    else:
        check_keys(scheduler, ASHA_KEYS, "scheduler")
        if scheduler.get("name") != "asha":
            fail("scheduler.name", f"{short(scheduler.get('name'))} is not allowed: asha or none")
        epochs = fixed.get("epochs", Config().epochs)
        scheduler = {"max_t": scheduler.get("max_t", epochs), "grace_period": scheduler.get("grace_period", 1),
                     "reduction_factor": scheduler.get("reduction_factor", 2)}
        number(scheduler["max_t"], "scheduler.max_t", 1, integer=True)
        number(scheduler["grace_period"], "scheduler.grace_period", 1, integer=True)
        number(scheduler["reduction_factor"], "scheduler.reduction_factor", 2, hi=1000)
        if scheduler["grace_period"] > scheduler["max_t"]:
            fail("scheduler.grace_period", f"{scheduler['grace_period']} exceeds max_t {scheduler['max_t']}")

    metric = raw.get("metric", M.VAL_DISTORTION)
    if metric not in METRICS:
        fail("metric", f"{short(metric)} is not a reported metric; one of {', '.join(METRICS)}")
    mode = raw.get("mode", "min")
    if mode not in ("min", "max"):
        fail("mode", f"{short(mode)} is not allowed: min or max")
    num_samples = number(raw.get("num_samples", 1), "num_samples", 1, integer=True, hi=100_000)
    resources = {"cpu": 1, "gpu": 0, **want(raw.get("resources") or {}, dict, "resources", "{cpu: N, gpu: N}")}
    check_keys(resources, RESOURCE_KEYS, "resources")
    number(resources["cpu"], "resources.cpu", 0, above=True, hi=10_000)
    number(resources["gpu"], "resources.gpu", 0, hi=10_000)
    check_gpu(resources["gpu"], f"{path}: resources.gpu")
    max_concurrent = number(raw.get("max_concurrent", 0), "max_concurrent", 0, integer=True)
    description = want(raw.get("description", ""), str, "description", "text")
    return check_stack(Study(name=name, path=path, fixed=fixed, search=search, variants=variants, seeds=seeds,
                             stack=stack, searcher=searcher, scheduler=scheduler, metric=metric, mode=mode,
                             num_samples=num_samples, resources=resources, max_concurrent=max_concurrent,
                             description=description))


def check_gpu(gpu: float, where: str) -> float:
    """GPUs per trial: a fraction below 1 packs trials on a GPU; above 1, whole GPUs only."""
    if gpu > 1 and gpu != int(gpu):
        raise SpaceError(f"{where}: {gpu:g} is not allowed: a fraction below 1 or a whole number")
    return gpu


def check_stack(study: Study) -> Study:
    """`stack: S` trains the seeds in groups of S consecutive ones (seed, seed+1, ...), each group one
    trial; stacking needs MLP datasets (Config says which)."""
    seeds, stack = study.seeds, study.stack
    if isinstance(stack, bool) or not isinstance(stack, int) or not 1 <= stack <= 1024:
        raise SpaceError(f"{study.path}: stack: expected an integer >= 1 (seeds trained together in one trial), got {short(stack)}")
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
    Arms go in as mappings (`variant/method`, ... in Tune's tables), for Optuna as JSON strings
    (a categorical of plain values)."""
    from ray import tune

    sampler = {"grid": tune.grid_search, "choice": tune.choice,
               "uniform": lambda a: tune.uniform(*a), "loguniform": lambda a: tune.loguniform(*a),
               "randint": lambda a: tune.randint(*a)}
    space = dict(study.fixed)
    for k, spec in study.search.items():
        kind, args = next(iter(spec.items()))
        space[k] = sampler[kind](args)
    if study.variants and study.searcher == "optuna":
        space["variant"] = tune.choice([json.dumps(v, sort_keys=True) for v in study.variants])
    elif study.variants:   # every arm names every arm key (None: not set) for Tune's table columns
        keys = sorted({k for v in study.variants for k in v})
        space["variant"] = tune.grid_search([{k: v.get(k) for k in keys} for v in study.variants])
    starts = study.seeds[::study.stack]           # one trial per stack of seeds (one per seed without stacking)
    space["seed"] = starts[0] if len(starts) == 1 else tune.grid_search(starts)
    if study.stack > 1:
        space["stack"] = study.stack
    return space


def table_columns(study: Study) -> dict[str, str]:
    """The trial parameters that differ between a study's trials, as Tune's (flattened) config keys
    -> column names: what the status table shows."""
    arm_keys = sorted({k for v in study.variants for k in v})
    columns = {k: k for k in study.search}
    if study.searcher == "optuna" and arm_keys:
        columns["variant"] = "arm"
    else:
        columns.update({f"variant/{k}": k for k in arm_keys})
    if len(study.seeds) > study.stack:
        columns["seed"] = "seed"
    return columns


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

    # our epoch, not Tune's training_iteration: a trial restarted from its own state (iabf/tune.py)
    # goes on counting epochs, where Tune's count would start again
    return ASHAScheduler(time_attr=M.EPOCH, **study.scheduler)
