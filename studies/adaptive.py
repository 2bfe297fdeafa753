"""A study's adaptive confirmation (`adaptive:` in its file): which comparisons it decides, what it can cost,
and the looks its searcher takes as the seeds come in. The tests are analysis/sequential.py's, the same
functions the report replays them with."""
from __future__ import annotations

import math

from analysis.sequential import Design, decide, earliest_look
from analysis.sequential import family as sequential_family
from iabf import metrics as M
from iabf.config import Config
from studies.checks import check_keys, fail, in_span
from studies.plan import groups
from studies.space import TOP, SpaceError


def family(study) -> list[tuple[str, str]]:
    """The comparisons whose error the design controls (analysis.sequential.family), as group keys."""
    return sequential_family({g.key: g.base.get("method", Config().method) for g in groups(study)})


def check_adaptive(raw: dict, confirm: bool):
    """`adaptive:`, the confirmation's seeds decided by the data (analysis.sequential.Design), or None."""
    block = raw.get("adaptive")
    if block is None:
        return None
    spans = TOP["adaptive"].schema["properties"]   # the ranges, declared once beside the key (studies/space.py)
    check_keys(block, tuple(spans), "adaptive")
    d = Design()

    def read(key: str, lo=None):   # lo: a bound tighter than the declared one (max: two looks at least)
        return in_span(block.get(key, getattr(d, key)), f"adaptive.{key}", spans[key], lo)

    batch = read("batch")
    most = read("max", lo=2 * batch)
    if most % batch:
        fail("adaptive.max", f"{most} is not a multiple of batch {batch}: every look adds a whole batch")
    alpha, permutations = float(read("alpha")), read("permutations")
    spending = block.get("spending", d.spending)
    if spending not in spans["spending"]["enum"]:
        fail("adaptive.spending", f"{spending!r} is not one of {', '.join(spans['spending']['enum'])}")
    if "seeds" in raw:
        fail("seeds", f"an adaptive confirmation draws its own seeds (0 to {most - 1}, {batch} at a look): remove "
                      "`seeds`, or `adaptive` for a fixed list")
    if not confirm:
        fail("adaptive", "decides what the confirmation phase compares: remove it, or `confirm: false`")
    return Design(batch, most, alpha, permutations, spending)


def check_family(study):
    """Refuse, in one line, an adaptive design that has nothing to decide or cannot reach its level."""
    design = study.adaptive
    if design is None:
        return study
    where = f"{study.path}: adaptive"
    if study.metric not in M.TESTED:
        raise SpaceError(f"{where}: the study's metric {study.metric} has no test counterpart to compare arms on; "
                         f"use one of {', '.join(M.TESTED)}")
    pairs = family(study)
    if not pairs:
        raise SpaceError(f"{where}: no comparison to decide: no cell has an arm and one of its baselines (NECST, or "
                         "the same method by the paper's equations)")
    if earliest_look(design, pairs) is None:
        raise SpaceError(f"{where}: batches of {design.batch} up to {design.max} seeds cannot reach alpha "
                         f"{design.alpha:g} over {len(pairs)} comparisons: even arms whose values never overlap stay "
                         f"undecided (too few relabellings of so few seeds, or too few permutation paths, for the "
                         "level a look may spend); raise batch, max or permutations")
    return study


def cost(study) -> dict:
    """The least and the most seeds per arm the design can take: every comparison decided at the earliest
    look the test allows, or none before `max`."""
    design, pairs = study.adaptive, family(study)
    first = earliest_look(design, pairs)
    return {"least": first * design.batch, "most": design.max, "looks": design.looks, "earliest": first,
            "comparisons": len(pairs)}


def plan_line(study) -> str:
    d, c = study.adaptive, cost(study)
    return (f"adaptive confirmation: {d.batch} seeds per arm at each of up to {d.looks} looks ({d.max} at most), "
            f"{c['comparisons']} comparisons at family-wise alpha {d.alpha:g} (AdaStop's test, {d.spending} "
            f"spending); the earliest decision at "
            f"look {c['earliest']} ({c['least']} seeds): the confirmation costs {c['least'] / d.max:.0%} to 100% of "
            f"fixed {d.max} seeds")


class Looks:
    """The searcher's side: per-seed test values as confirmation trials end, a look as soon as every arm of an
    open comparison has its batch, and which chosen configurations get the next batch. Holds only values;
    the decisions are decide()'s replay of them, so a searcher restored from an older state takes the same."""

    def __init__(self, study):
        self.design: Design = study.adaptive
        self.mode, self.test = study.mode, M.TESTED[study.metric]
        self.first = study.seeds[0]
        self.family = family(study)
        self.values: dict[str, dict[int, float]] = {}
        self.taken: int = 0                                # looks acted on
        self.live: set = set()                             # the arms the next look waits for
        self.stopped: str | None = None

    def add(self, key: str, config: dict, result: dict | None, failed: bool) -> None:
        seed, stack = int(config["seed"]), int(config.get("stack") or 1)
        for s in range(seed, seed + stack):
            name = self.test if stack == 1 else M.seed_key(s, self.test)
            value = (result or {}).get(name, math.nan)
            self.values.setdefault(key, {})[s] = math.nan if failed or not isinstance(value, (int, float)) \
                else float(value)

    def ready(self, chosen: set) -> list:
        """New looks, with the arms that get the next batch; [] until one can be taken. `chosen`: the
        groups with a configuration to confirm (the family is theirs once no group searches)."""
        if self.stopped:
            return []
        pairs = [p for p in self.family if p[0] in chosen and p[1] in chosen]
        live = self.live if self.taken else {k for p in pairs for k in p}
        seeds = [s for look in range(self.taken + 1) for s in self.design.batch_seeds(look, self.first)]
        if not pairs or any(s not in self.values.get(a, {}) for a in live for s in seeds):
            return []                                      # a batch still training: no test to spend a look on
        looks, why = decide(self.design, self.values, pairs, self.mode, self.first)
        new = looks[self.taken:]
        self.taken = len(looks)
        if new:
            self.live = set(new[-1].next_arms)
        if why:
            self.stopped = why
        return new
