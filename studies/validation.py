"""Reading and validating a study file (`load_study`, `validate`): one check per key or rule, in the
order a reader meets them in the file. `studies/space.py` is what a valid study is.

Every error names the file, the key and what is allowed, as one line (`SpaceError`). A check raises
`Invalid(key, message)`; `in_file` puts the file's name in front.
"""
from __future__ import annotations

import codecs
import json
import math
import re
import stat
from dataclasses import replace
from pathlib import Path

import yaml

from iabf.config import FIELD_TYPES, Config, ConfigError, short
from iabf.datasets import SPECS
from studies.adaptive import check_adaptive, check_family
from studies.checks import (  # noqa: F401  (Invalid, fail, in_file: the validator's, for those who import them here)
    Invalid, check_choice, check_keys, check_value, fail, in_file, in_span, number, preset, seed_list, top_int, want,
)
from studies.plan import cell_axes, is_cell
from studies.space import (
    ARM_NAME, DISPLAY, DISTRIBUTIONS, METRICS, NOT_SEARCHABLE, SEARCHERS, TOP, TOP_KEYS, Arm, SpaceError, Study, default,
)

ARM_KEYS = ("name", "search", "preset")          # besides Config fields
ASHA = TOP["scheduler"].schema["anyOf"][1]["properties"]   # ASHA's keys and ranges, declared once beside the key
RESOURCE_KEYS = ("cpu", "gpu")
MAX_BYTES = 1 << 20   # a search space is a short YAML file; anything bigger is not one
# Trials one study may plan (both phases). Far above any real study (table1.yaml: 336), and what the
# driver plans in seconds and tens of MB (a trial's bookkeeping is ~1 kB, and Tune's driver adds
# ~0.3 s per trial: 10,000 is an hour of it): a bigger plan is a mistake, refused before anything
# is built.
MAX_TRIALS = 10_000


# --- reading a file ----------------------------------------------------------------------------------

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


# --- the whole file ----------------------------------------------------------------------------------

def validate(raw, path: str) -> Study:
    """A parsed study file as a Study, every key checked in turn; the first problem is a SpaceError."""
    with in_file(path):
        if raw is None:
            fail("top level", "the file is empty")
        check_keys(raw, TOP_KEYS, "")
        name = check_name(raw)
        fixed = check_fixed(raw)
        searcher = check_choice(raw, "searcher", SEARCHERS, f"is not allowed: one of {', '.join(SEARCHERS)}")
        cells = check_cells(raw)
        cell = lambda k: is_cell(k, cells, fixed)   # noqa: E731  (studies/plan.py's rule, before the Study exists)
        search = check_search(raw.get("search"), "search", fixed, searcher, cell)
        datasets = search["dataset"][next(iter(search["dataset"]))] if "dataset" in search else \
            [fixed.get("dataset", Config().dataset)]
        by_dataset = check_by_dataset(raw, datasets, search, cell)
        display = check_display(raw, datasets)
        arms = check_arms(raw, fixed, searcher, search, by_dataset, cell)
        confirm = want(raw.get("confirm", default("confirm")), bool, "confirm", "true or false")
        adaptive = check_adaptive(raw, confirm)   # studies/adaptive.py: the block and the design's own rules
        seeds, search_seeds = check_seeds({**raw, "seeds": list(range(adaptive.max))} if adaptive else raw)
        scheduler = check_scheduler(raw, fixed, by_dataset, datasets)
        metric = check_choice(raw, "metric", METRICS, f"is not a reported metric; one of {', '.join(METRICS)}")
        mode = check_choice(raw, "mode", ("min", "max"), "is not allowed: min or max")
        num_samples = top_int(raw, "num_samples")
        if searcher == "grid" and num_samples != 1:
            fail("num_samples", "a grid is run once (repeats are `seeds`); num_samples is for random and optuna")
        study = Study(
            name=name, path=path, fixed=fixed, by_dataset=by_dataset, display=display, search=search,
            arms=arms or [Arm(fixed.get("method", Config().method))],   # no variants: one arm, named by its method
            seeds=seeds, search_seeds=search_seeds, stack=raw.get("stack", default("stack")), confirm=confirm,
            adaptive=adaptive,
            cells=cells, searcher=searcher, scheduler=scheduler, metric=metric, mode=mode, num_samples=num_samples,
            resources=check_resources(raw),
            max_concurrent=top_int(raw, "max_concurrent"),
            description=want(raw.get("description", default("description")), str, "description", "text"),
            chain_steps=top_int(raw, "chain_steps"))
    return check_family(check_groups(check_stack(check_size(study))))


def check_groups(study: Study) -> Study:
    """Each cell and arm's values together (the rules between fields, e.g. examples_seen with max_train_examples)."""
    from studies.plan import groups

    try:
        groups(study)
    except ConfigError as e:
        raise SpaceError(f"{study.path}: {e.key or 'fixed'}: {e}") from None
    return study


# --- one key each ------------------------------------------------------------------------------------

def check_name(raw: dict) -> str:
    if "study" not in raw:
        fail("study", "missing; every space names its study (letters, digits, '-', '_')")
    name = want(raw["study"], str, "study", "a name")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        fail("study", f"{short(name)} is not allowed: letters, digits, '-' and '_' only")
    return name


def check_fixed(raw: dict) -> dict:
    """`fixed`, with `dataset` (its shorthand) and its preset's values in it."""
    fixed = dict(want(raw.get("fixed") or default("fixed"), dict, "fixed", "a mapping of parameter: value"))
    if "dataset" in raw:
        fixed["dataset"] = raw["dataset"]
    fixed = preset(fixed, "fixed")
    for k, v in fixed.items():
        check_value(k, v, f"fixed.{k}")
    return fixed


def check_cells(raw: dict) -> list | None:
    cells = raw.get("cells", default("cells"))
    if cells is not None:
        if not isinstance(cells, list) or not cells or len(set(map(repr, cells))) != len(cells) or \
                not all(isinstance(c, str) and c in FIELD_TYPES and c not in NOT_SEARCHABLE for c in cells):
            fail("cells", f"expected a list of distinct parameters ({', '.join(FIELD_TYPES)}), got {short(cells)}")
    return cells


def check_search(spec_map, where: str, fixed: dict, searcher: str, cell) -> dict:
    """{parameter: {distribution: args}}; a parameter that makes cells (`cell(k)`) takes a list of values."""
    spec_map = want(spec_map or {}, dict, where, "a mapping of parameter: {distribution: values}")
    for k, spec in spec_map.items():
        if k in fixed:
            fail(f"{where}.{k}", "also set in fixed; a parameter is either fixed or searched")
        check_distribution(k, spec, f"{where}.{k}", searcher, cell(k))
    return dict(spec_map)


def check_distribution(k: str, spec, key: str, searcher: str, cell: bool) -> None:
    """One searched parameter: a list of values (grid, choice) or a numeric range (uniform, loguniform, randint)."""
    if not isinstance(spec, dict) or len(spec) != 1:
        fail(key, f"expected one of {{{', '.join(f'{d}: ...' for d in DISTRIBUTIONS)}}}")
    kind, args = next(iter(spec.items()))
    if kind not in DISTRIBUTIONS:
        fail(key, f"unknown distribution {short(kind)}; allowed: {', '.join(DISTRIBUTIONS)}")
    key = f"{key}.{kind}"
    if not isinstance(args, list) or not args:
        fail(key, "expected a non-empty list" + ("" if kind in ("grid", "choice") else " [low, high]"))
    if cell and kind not in ("grid", "choice"):
        fail(key, f"{k} decides the table cell, so each of its values is a cell: give a list (grid)")
    if not cell and searcher == "grid" and kind != "grid":
        fail(key, f"{kind} is sampled: use searcher: random or optuna, or a grid")
    if not cell and searcher != "grid" and kind == "grid":
        fail(key, f"grid is not allowed with the {searcher} searcher (it samples); use choice")
    if kind in ("grid", "choice"):
        for i, v in enumerate(args):
            check_value(k, v, f"{key}[{i}]")
        if len(set(map(repr, args))) != len(args):
            fail(key, f"repeated values in {short(args)}")
        return
    if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool)
                                 and math.isfinite(a) for a in args):
        fail(key, f"expected [low, high] finite numbers, got {short(args)}")
    lo, hi = args
    if not lo < hi:
        fail(key, f"low {lo} must be below high {hi}")
    if kind == "loguniform" and lo <= 0:
        fail(key, f"loguniform needs low > 0, got {lo}")
    if kind == "randint" and FIELD_TYPES.get(k) != "int":
        fail(key, f"randint is for integer parameters; {k} is a {FIELD_TYPES.get(k)}")
    if kind != "randint" and FIELD_TYPES.get(k) != "float":
        fail(key, f"{kind} is for float parameters; {k} is a {FIELD_TYPES.get(k)}")
    for v in (lo, hi - 1 if kind == "randint" else hi):
        check_value(k, v, key)


def of_study(where: str, d, datasets: list) -> str:
    """A per-dataset key (by_dataset, display) names one of the study's datasets."""
    key = f"{where}.{d if isinstance(d, str) else short(d)}"
    if d not in datasets:
        fail(key, f"not a dataset of this study; its datasets: {', '.join(map(str, datasets))}")
    return key


def check_by_dataset(raw: dict, datasets: list, search: dict, cell) -> dict:
    """Per-dataset values (a budget that differs by dataset): over `fixed`, under an arm's own values."""
    by_dataset = dict(want(raw.get("by_dataset") or default("by_dataset"), dict, "by_dataset",
                           "a mapping of dataset: {parameter: value}"))
    for d, values in by_dataset.items():
        of_study("by_dataset", d, datasets)
        values = want(values, dict, f"by_dataset.{d}", "a mapping of parameter: value")
        for k, v in values.items():
            key = f"by_dataset.{d}.{k if isinstance(k, str) else short(k)}"
            if k == "dataset" or k in search or cell(k):
                fail(key, "searched or a cell parameter; by_dataset holds values fixed per dataset")
            check_value(k, v, key)
        by_dataset[d] = dict(values)
    return by_dataset


def check_display(raw: dict, datasets: list) -> dict:
    display = dict(want(raw.get("display") or default("display"), dict, "display", "a mapping of dataset: name"))
    for d, text in display.items():
        key = of_study("display", d, datasets)
        if d in SPECS:
            fail(key, f"{d} is one of the paper's datasets and keeps its name ({SPECS[d].display}); display names a "
                      f"dataset of one's own")
        if not isinstance(text, str) or not DISPLAY.fullmatch(text):
            fail(key, f"{short(text)} is not allowed: up to 60 letters, digits, spaces and . , ( ) + / - _")
    return display


def check_arms(raw: dict, fixed: dict, searcher: str, search: dict, by_dataset: dict, cell) -> list[Arm]:
    """`variants`: each arm's values (its preset expanded) and its own search, distinct and named."""
    arms, expanded = [], []          # arms as written (they are named by their preset), and their values
    variants = want(raw.get("variants") or default("variants"), list, "variants", "a list of arms {parameter: value}")
    for i, arm in enumerate(variants):
        where = f"variants[{i}]"
        check_keys(arm, (*FIELD_TYPES, *ARM_KEYS), where)
        shown = {k: v for k, v in arm.items() if k not in ("name", "search")}   # what names it
        own = preset(shown, where)
        for k, v in own.items():
            if k in search:
                fail(f"{where}.{k}", "also searched; an arm fixes parameters the search does not touch")
            if cell(k):
                fail(f"{where}.{k}", f"{k} decides the table cell; set it in fixed or search, for every arm")
            check_value(k, v, f"{where}.{k}")
        arm_search = check_search(arm.get("search"), f"{where}.search", fixed, searcher, lambda k: False)
        for k in arm_search:
            if k in search or k in own or cell(k) or any(k in v for v in by_dataset.values()):
                fail(f"{where}.search.{k}", "already fixed or searched for every arm, or a cell parameter")
        label = arm.get("name", None)
        if label is not None and (not isinstance(label, str) or not ARM_NAME.fullmatch(label)):
            fail(f"{where}.name", f"{short(label)} is not allowed: up to 40 letters, digits, spaces and . = + -")
        arms.append(Arm(label or "", shown, arm_search))
        expanded.append(own)
    if len({json.dumps([a.fixed, a.search], sort_keys=True) for a in arms}) != len(arms):
        fail("variants", "two arms are the same")
    arms = [replace(a, fixed=own) for a, own in zip(name_arms(arms), expanded)]
    if len({a.name for a in arms}) != len(arms):
        fail("variants", f"two arms have the same name {short(sorted(a.name for a in arms))}; name them (name: ...)")
    return arms


def name_arms(arms: list[Arm]) -> list[Arm]:
    """An unnamed arm is named by its method, and by the values that tell it from the other arms of
    that method when there are several (`iabf flip=topk`)."""
    out = []
    for arm in arms:
        if arm.name:
            out.append(arm)
            continue
        method = arm.fixed.get("method", "")
        same = [a for a in arms if a.fixed.get("method", "") == method]
        preset = arm.fixed.get("preset", "paper")          # the paper's version goes unsaid
        values = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(arm.fixed.items())
                  if k not in ("method", "preset") and len(same) > 1]
        parts = [method, *([preset] if preset != "paper" else []), *values]
        out.append(replace(arm, name=" ".join(p for p in parts if p) or "default"))
    return out


def check_seeds(raw: dict) -> tuple[list, list]:
    """The confirmation seeds and the search's, apart: a choice is never reported on the seeds it was made on."""
    seeds = seed_list(raw.get("seeds", default("seeds")), "seeds")
    search_seeds = seed_list(raw.get("search_seeds", [max(seeds) + 1]), "search_seeds")
    if set(search_seeds) & set(seeds):
        fail("search_seeds", f"{short(search_seeds)} overlaps seeds {short(seeds)}: the confirmation would report "
                             f"numbers the choice was made on; use other seeds")
    return seeds, search_seeds


def check_scheduler(raw: dict, fixed: dict, by_dataset: dict, datasets: list) -> dict | None:
    """ASHA's settings, time in epochs (max_t: the longest dataset's epochs); None for no scheduler."""
    scheduler = raw.get("scheduler", default("scheduler"))
    if scheduler == "none" or scheduler == {"name": "none"}:
        return None
    check_keys(scheduler, tuple(ASHA), "scheduler")
    if scheduler.get("name") != "asha":
        fail("scheduler.name", f"{short(scheduler.get('name'))} is not allowed: asha or none")
    epochs = max({**fixed, **by_dataset.get(d, {})}.get("epochs", Config().epochs) for d in datasets)
    scheduler = {"max_t": scheduler.get("max_t", epochs), "grace_period": scheduler.get("grace_period", 1),
                 "reduction_factor": scheduler.get("reduction_factor", 2)}
    for key in ("max_t", "grace_period", "reduction_factor"):
        in_span(scheduler[key], f"scheduler.{key}", ASHA[key])
    if scheduler["grace_period"] > scheduler["max_t"]:
        fail("scheduler.grace_period", f"{scheduler['grace_period']} exceeds max_t {scheduler['max_t']}")
    return scheduler


def check_resources(raw: dict) -> dict:
    resources = {**default("resources"), **want(raw.get("resources") or {}, dict, "resources", "{cpu: N, gpu: N}")}
    check_keys(resources, RESOURCE_KEYS, "resources")
    number(resources["cpu"], "resources.cpu", 0, above=True, hi=10_000)
    number(resources["gpu"], "resources.gpu", 0, hi=10_000)
    if problem := gpu_problem(resources["gpu"]):
        fail("resources.gpu", problem)
    return resources


def gpu_problem(gpu: float) -> str | None:
    """GPUs per trial: a fraction below 1 packs trials on a GPU; above 1, whole GPUs only."""
    return f"{gpu:g} is not allowed: a fraction below 1 or a whole number" if gpu > 1 and gpu != int(gpu) else None


def check_gpu(gpu: float, where: str) -> float:
    """--gpus-per-trial, by the rule of resources.gpu."""
    if problem := gpu_problem(gpu):
        raise SpaceError(f"{where}: {problem}")
    return gpu


# --- the rules of the whole study --------------------------------------------------------------------

def check_size(study: Study) -> Study:
    """Refuse a study that plans more than MAX_TRIALS trials, counted from the sizes of its lists,
    before any configuration, group or trial is built (a 10^10-point grid is 80 bytes of YAML)."""
    search_cells = cell_axes(study)
    cells = math.prod(len(values) for values in search_cells.values())
    worst, worst_text, trials = 1, "", 0
    for arm in study.arms:
        space = {**{k: v for k, v in study.search.items() if k not in search_cells}, **arm.search}
        sizes = [len(next(iter(spec.values()))) for spec in space.values()]
        sampled = any(next(iter(spec)) != "grid" for spec in space.values())
        n = study.num_samples if sampled else math.prod(sizes)
        if n > worst:
            worst, worst_text = n, (f"num_samples {n:,}" if sampled else
                                    f"grid {' x '.join(map(str, sizes))} = {n:,} configurations")
        # an upper bound: every configuration searched, every seed its own trial
        trials += n * (1 if study.confirm else len(study.seeds)) + (len(study.seeds) if study.confirm else 0)
    if trials * cells > MAX_TRIALS:
        key = "num_samples" if worst_text.startswith("num_samples") else "search"
        raise SpaceError(f"{study.path}: {key}: the study plans up to {trials * cells:,} trials ({cells:,} cell(s) x "
                         f"{len(study.arms)} arm(s); {worst_text or 'one configuration'} per cell and arm); at most "
                         f"{MAX_TRIALS:,} are allowed: shrink the grids or num_samples, or split the study")
    return study


def check_stack(study: Study) -> Study:
    """`stack: S` trains the confirmation seeds in groups of S consecutive ones, each group one trial
    (auto: all of them where the dataset allows); a search on several seeds is one stacked trial.
    Stacking needs MLP datasets (Config says which). Seeds are repeats, never contestants: ASHA and
    sampled searches judge a configuration on one trial. Also run after `--stack` overrides the file's."""
    with in_file(study.path):
        seeds, stack = study.seeds, study.stack
        if stack != "auto" and (isinstance(stack, bool) or not isinstance(stack, int) or not 1 <= stack <= 1024):
            fail("stack", f"expected auto or an integer >= 1 (seeds trained together in one trial), got {short(stack)}")
        for key, group, size in (("stack", seeds, stack), ("search_seeds", study.search_seeds, len(study.search_seeds))):
            if size != "auto" and size != 1:
                check_runs(key, group, size, study.datasets())
        if study.adaptive and stack != "auto" and study.adaptive.batch % stack:
            fail("stack", f"{stack} does not divide adaptive.batch {study.adaptive.batch}: a look's seeds are "
                          f"trained {stack} at a time")
        several = max(len(seeds) // (study.stack_for(d)) for d in study.datasets()) > 1
        if not study.confirm and several and study.scheduler is not None:
            fail("scheduler", "ASHA would stop some seeds of a configuration and keep others; stack every seed into "
                              "one trial (stack: auto) or keep the confirmation phase (confirm: true)")
        if not study.confirm and several and study.searcher != "grid":
            fail("seeds", f"the {study.searcher} searcher judges a sampled point on one trial: stack the seeds "
                          f"(stack: auto) or keep the confirmation phase (confirm: true)")
    return study


def check_runs(key: str, group: list, size: int, datasets: list) -> None:
    """Seeds trained `size` at a time: runs of consecutive integers, on datasets whose model stacks."""
    runs = [group[i:i + size] for i in range(0, len(group), size)]
    if len(group) % size or any(r != list(range(r[0], r[0] + size)) for r in runs):
        fail(key, f"{size} seeds per trial need the seeds in runs of {size} consecutive integers "
                  f"(e.g. {list(range(size))}), got {short(group)}")
    for d in datasets:
        try:
            Config(dataset=d, stack=size)
        except ConfigError as e:
            fail(key, str(e))
