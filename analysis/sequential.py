"""Seeds decided by the data: the adaptive confirmation's tests, and what an undecided contrast would need.

The method is AdaStop's (Mathieu et al., "AdaStop: adaptive statistical testing for sound comparisons of
Deep RL agents", TMLR 2024): group-sequential permutation tests over a family of comparisons, with a
step-down over the family at every look and the level spent linearly over the looks, so that the
family-wise error is at most alpha however many looks were taken. Why it and not a t-test with an
alpha-spending boundary (Pocock, O'Brien-Fleming): a study's arms are compared on 3 to 12 seeds, where a t
boundary rests on normality that a handful of test distortions cannot check, and the family (every arm
against its baselines in every cell) would need a correction of its own on top; a permutation test assumes
only that seeds are exchangeable, and controls the error over the whole family and every look at once.
Why not its authors' package (`adastop` 0.1.3): its error, measured (docs/seeds.md), is twice alpha for one
comparison and above it for comparisons that share an arm; `_Paths` says what differs here.

Pure functions: per-seed values in, decisions out. The driver (studies/protocol.py) and the report
(analysis/report.py) call the same `decide`, so the report replays from the record exactly the looks the
study took: a look uses only the seeds of the batches up to it, so what it decided never changes.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

BETTER, WORSE, UNDECIDED, PENDING = "better", "worse", "undecided", "pending"


# The level spent by look k of K: alpha * (k / K) ** rho (Kim & DeMets' power family). 1: AdaStop's linear
# spending (Pocock-like: early looks decide more, the last has little left); 3: O'Brien-Fleming-like (little
# spent early, the last look close to a fixed design's level: 0.95 of its power against 0.84, benchmarks/sequential.py)
SPENDING = {"linear": 1.0, "obrien-fleming": 3.0}


@dataclass(frozen=True)
class Design:
    """A study's `adaptive:` block: `batch` new seeds per arm at each look, up to `max` per arm."""
    batch: int = 3           # seeds per arm per look (AdaStop's n); the first look has `batch` seeds too
    max: int = 12            # seeds per arm at most: max / batch looks (AdaStop's K)
    alpha: float = 0.05      # family-wise error over every comparison and every look
    permutations: int = 10000   # random relabelling paths beside the observed one (AdaStop's B)
    spending: str = "obrien-fleming"   # how alpha is spent over the looks: a key of SPENDING
    test: str = "joint-relabel-welch"   # which test took the looks: a study begun under another is not resumed so

    @property
    def looks(self) -> int:
        return self.max // self.batch

    def batch_seeds(self, look: int, first: int = 0) -> list[int]:
        """The seeds of look `look` (0-based): never a seed of an earlier look."""
        return list(range(first + look * self.batch, first + (look + 1) * self.batch))

    def text(self) -> str:   # as the study's parent run records it
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def parse(cls, text: str | None) -> "Design | None":
        # recorded before `test` was: the package's test, which spent linearly
        return cls(**{"test": LEGACY_TEST, "spending": "linear", **json.loads(text)}) if text else None


CURRENT_TEST, LEGACY_TEST = Design.test, "adastop-0.1.3"


@dataclass
class Look:
    """One look: how many seeds each live arm had, and what it decided."""
    number: int                                   # 1-based
    seeds: int                                    # per arm in a comparison still open before this look
    decided: dict = field(default_factory=dict)   # (arm key, baseline key) -> BETTER / WORSE / UNDECIDED
    next_arms: list = field(default_factory=list)  # the arms that get the next batch


def decide(design: Design, values: dict[str, dict[int, float]], family: list[tuple[str, str]], mode: str,
           first: int = 0) -> tuple[list[Look], str | None]:
    """The looks the data so far allows, replayed from the first: values[key][seed] is an arm's test metric on
    one seed (key: "cell | arm"); family: (arm, baseline) pairs, the comparisons the error is controlled over.
    A look is taken when every arm of a still open comparison has every seed of the batches up to it.
    Returns (the looks taken, why the next cannot be taken where it never can: a seed with no value)."""
    family = sorted(family)
    agents = sorted({k for pair in family for k in pair})
    cells = sorted({a.split(" | ", 1)[0] for a in agents})
    paths = _Paths(design, agents, cells)
    looks, live, open_ = [], set(agents), list(family)
    for k in range(design.looks):
        seeds = [s for look in range(k + 1) for s in design.batch_seeds(look, first)]
        missing = [a for a in sorted(live) if any(s not in values.get(a, {}) for s in seeds)]
        if missing:
            return looks, None
        failed = [(a, s) for a in sorted(live) for s in seeds if not math.isfinite(values[a][s])]
        if failed:
            return looks, f"{failed[0][0]} has no value on seed {failed[0][1]} (its trial failed)"
        paths.add_block(k, {a: [values[a][s] for s in design.batch_seeds(k, first)] for a in sorted(live)})
        look = Look(k + 1, len(seeds))
        for (a, b), sign in paths.step_down(k, open_):
            look.decided[(a, b)] = BETTER if (sign > 0) == (mode == "max") else WORSE
        open_ = [pair for pair in open_ if pair not in look.decided]
        if k + 1 == design.looks:
            look.decided.update({pair: UNDECIDED for pair in open_})
            open_ = []
        live = {a for pair in open_ for a in pair}
        look.next_arms = sorted(live)
        looks.append(look)
        if not open_:
            break
    return looks, None


class _Paths:
    """The group-sequential permutation test of AdaStop (Mathieu et al.; linear alpha spending over the looks, a
    step-down over the family at each look, the paths that crossed a boundary left out of the later looks'
    distributions), on B random permutation paths and the observed one (path 0). A path relabels, at each look
    and in each cell, the new seeds' values among the cell's arms at once, so that comparisons sharing an arm keep
    the dependence they have under the null (the `adastop` package, 0.1.3, permutes each pair on its own, which
    our simulations measured at 0.087 family-wise error for alpha 0.05 with 3 comparisons in a cell, and compares
    |T| with a one-tailed boundary: 0.10 for a single comparison). With the observed path among the B + 1 and
    every boundary computed from all of them alike, a look rejects a true null with probability at most its share
    of alpha (the paths are exchangeable under the null), however many permutations there are."""

    def __init__(self, design: Design, agents: list[str], cells: list[str]):
        self.design, self.n = design, design.permutations + 1
        self.cell_of = {a: a.split(" | ", 1)[0] for a in agents}
        self.column = {a: i for i, a in enumerate(agents)}
        self.sums = np.zeros((self.n, len(agents)))          # per path and arm: the sum of its values
        self.squares = np.zeros((self.n, len(agents)))       # ... and of their squares
        self.count = np.zeros(len(agents))                   # values per arm so far (the same on every path)
        self.alive = np.ones(self.n, dtype=bool)             # paths that crossed no earlier boundary
        self.spent = 0.0
        self.cells = cells

    def add_block(self, k: int, block: dict[str, list[float]]) -> None:
        """Look k's new seeds (per live arm) into every path."""
        for ci, cell in enumerate(self.cells):
            arms = [a for a in block if self.cell_of[a] == cell]
            if not arms:
                continue
            x = np.concatenate([np.asarray(block[a], dtype=float) for a in arms])
            # seeded by the block's values as a set (the same under every relabelling, so the paths stay
            # exchangeable with the observed one): a replay draws the same paths, another study other ones
            digest = hashlib.sha256(np.sort(x).tobytes()).digest()
            rng = np.random.default_rng([k, ci, *np.frombuffer(digest[:16], dtype=np.uint32).tolist()])
            perm = rng.permuted(np.tile(np.arange(x.size, dtype=np.int32), (self.n, 1)), axis=1)
            perm[0] = np.arange(x.size)                        # path 0: the observed labels
            values = x[perm].reshape(self.n, len(arms), self.design.batch)
            columns = [self.column[a] for a in arms]
            self.sums[:, columns] += values.sum(axis=2)
            self.squares[:, columns] += (values ** 2).sum(axis=2)
            self.count[columns] += self.design.batch

    def _max_t(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        """Per path (rows) and comparison (columns): Welch's t statistic of the two arms' values on that path.
        Studentised on each path (not by one fixed scale): where an arm truly differs, relabelling its values
        into the others widens their spread, so the other comparisons' permutation distributions are not
        inflated by its difference, and the cells' scales need no common unit."""
        a = [self.column[x] for x, _ in pairs]
        b = [self.column[y] for _, y in pairs]
        n_a, n_b = self.count[a], self.count[b]
        mean_a, mean_b = self.sums[:, a] / n_a, self.sums[:, b] / n_b
        var_a = np.maximum(self.squares[:, a] / n_a - mean_a ** 2, 0) * n_a / (n_a - 1)
        var_b = np.maximum(self.squares[:, b] / n_b - mean_b ** 2, 0) * n_b / (n_b - 1)
        se = np.sqrt(var_a / n_a + var_b / n_b)
        diff = mean_a - mean_b
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(se > 0, diff / np.where(se > 0, se, 1.0), np.sign(diff) * np.inf)

    def step_down(self, k: int, open_: list[tuple[str, str]]) -> list[tuple[tuple, int]]:
        """Look k's rejections, largest first: (comparison, the sign of its difference)."""
        budget = self.design.alpha * ((k + 1) / self.design.looks) ** SPENDING[self.design.spending] - self.spent
        allowed = int(math.floor(budget * self.n + 1e-9))   # paths a boundary may leave above it at this look
        rejected, pairs, bound = [], list(open_), math.inf
        while pairs:
            t = self._max_t(pairs)
            top = np.abs(t).max(axis=1)
            values = np.sort(top[self.alive])[::-1]
            bound = values[allowed] if 0 < allowed < values.size else (-math.inf if allowed >= values.size else math.inf)
            i = int(np.argmax(np.abs(t[0])))
            if not top[0] > bound:
                break
            rejected.append((pairs[i], int(np.sign(t[0, i]))))
            pairs.pop(i)
        if pairs and math.isfinite(bound):   # the paths beyond this look's boundary leave the later looks' tests
            crossed = self.alive & (np.abs(self._max_t(pairs)).max(axis=1) > bound)
            self.spent += crossed.sum() / self.n
            self.alive &= ~crossed
        return rejected


def outcome(looks: list[Look], family: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[str, int, int]]:
    """Per comparison: (decision, the look that took it, the seeds per arm it took); PENDING where no look has."""
    out = {pair: (PENDING, 0, looks[-1].seeds if looks else 0) for pair in family}
    for look in looks:
        for pair, decision in look.decided.items():
            out[pair] = (decision, look.number, look.seeds)
    return out


def family(methods: dict[str, str]) -> list[tuple[str, str]]:
    """The comparisons of a study's arms (key "cell | arm" -> its method): in each cell, each arm against its
    baselines (analysis.significance.baselines: what the report contrasts)."""
    from analysis.significance import baselines

    cells: dict[str, list[str]] = {}
    for key in methods:
        cell, arm = key.split(" | ", 1)
        cells.setdefault(cell, []).append(arm)
    return [(f"{cell} | {arm}", f"{cell} | {base}") for cell, arms in cells.items() for arm in arms
            for base in baselines(arm, methods[f"{cell} | {arm}"], arms)]


def earliest_look(design: Design, family: list[tuple[str, str]]) -> int | None:
    """The first look at which the design can decide anything: arms whose values never overlap, fed to the
    same test. None: not even at `max` seeds; such a design cannot reach its level (too few permutations
    for alpha spent over its looks)."""
    return _earliest_look(design, tuple(family))


@functools.cache   # a pure function of the design and the family, asked by the check, the plan and the cost
def _earliest_look(design: Design, family: tuple[tuple[str, str], ...]) -> int | None:
    agents = sorted({k for pair in family for k in pair})
    seeds = range(design.max)
    values = {a: {s: 1000.0 * i + 1e-3 * s for s in seeds} for i, a in enumerate(agents)}
    looks, _ = decide(design, values, family, "min")
    return next((look.number for look in looks if look.decided and any(
        d != UNDECIDED for d in look.decided.values())), None)


# --- what an undecided comparison would need ---------------------------------------------------------------

POWER = 0.8


def pooled_sd(a: list, b: list) -> float:
    """The two arms' sample standard deviations, pooled as equal-n t-tests pool them."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return math.sqrt((np.var(a, ddof=1) + np.var(b, ddof=1)) / 2)


def seeds_needed(diff: float, sd: float, alpha: float, power: float = POWER) -> float:
    """Seeds per arm at which a two-sided two-sample t-test at `alpha` detects a true difference `diff` with
    `power`, for a seed-to-seed standard deviation `sd` (statsmodels' TTestIndPower); inf where diff is 0,
    NaN where sd is unknown."""
    from statsmodels.stats.power import TTestIndPower

    if not (math.isfinite(diff) and math.isfinite(sd)) or sd <= 0:
        return float("nan")
    if diff == 0:
        return float("inf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        n = TTestIndPower().solve_power(effect_size=abs(diff) / sd, alpha=alpha, power=power, ratio=1.0)
    return float(max(2, math.ceil(n))) if n is not None and math.isfinite(n) else float("nan")


def detectable(n: int, sd: float, alpha: float, power: float = POWER) -> float:
    """The smallest true difference that `n` seeds per arm detect with `power` (two-sided t-test at alpha)."""
    from statsmodels.stats.power import TTestIndPower

    if n < 2 or not math.isfinite(sd) or sd <= 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = TTestIndPower().solve_power(nobs1=n, alpha=alpha, power=power, ratio=1.0)
    return float(d) * sd if d is not None and math.isfinite(d) else float("nan")


# --- the report's sections -----------------------------------------------------------------------------------

def study_values(trials: pd.DataFrame, test: str) -> dict[str, dict[int, float]]:
    """Per arm key ("cell | arm"), its confirmation runs' `test` metric by seed: what the looks were taken on."""
    from iabf import record as R

    column = R.METRIC_OF + test
    values = trials[column] if column in trials else pd.Series(np.nan, index=trials.index)
    out: dict[str, dict[int, float]] = {}
    for cell, arm, seed, v in zip(trials[R.CELL], trials[R.ARM], trials["seed"], values):
        out.setdefault(f"{cell} | {arm}", {})[int(seed)] = float(v)
    return out


def adaptive_frame(design: Design, values: dict[str, dict[int, float]], family: list[tuple[str, str]],
                   mode: str) -> pd.DataFrame:
    """Per comparison of the family: the decision, the look and seeds it took, the difference on those seeds with
    Welch's fixed-sample 95% interval, and for an undecided one what `max` seeds could detect (80% power) and the
    seeds that would detect the observed difference, at alpha / comparisons (Bonferroni: Holm's first step)."""
    from analysis.significance import welch_samples

    looks, why = decide(design, values, family, mode)
    decided, m = outcome(looks, sorted(family)), len(family)
    rows = []
    for (a, b), (decision, look, n) in decided.items():
        x = [values[a][s] for s in sorted(values[a])[:n]]
        y = [values[b][s] for s in sorted(values[b])[:n]]
        low, high, p = welch_samples(x, y)
        sd = pooled_sd(x, y)
        diff = float(np.mean(x) - np.mean(y))
        open_ = decision in (UNDECIDED, PENDING)
        rows.append({"cell": a.split(" | ")[0], "arm": a.split(" | ")[1], "against": b.split(" | ")[1],
                     "decision": decision, "look": look, "seeds": n, "diff": diff, "low": low, "high": high,
                     "sd": sd, "detectable": detectable(design.max, sd, design.alpha / m) if open_ else float("nan"),
                     "seeds_needed": seeds_needed(diff, sd, design.alpha / m) if open_ else float("nan")})
    out = pd.DataFrame(rows, columns=["cell", "arm", "against", "decision", "look", "seeds", "diff", "low", "high",
                                      "sd", "detectable", "seeds_needed"])
    out.attrs["stopped"] = why
    return out


def _seeds_text(n: float) -> str:
    return "--" if math.isnan(n) else "never (no difference)" if math.isinf(n) else f"{n:.0f}"


def adaptive_markdown(frame: pd.DataFrame, design: Design, metric: str) -> str:
    lines = [f"| cell | arm | against | decision | look | seeds per arm | diff in {metric} (95% CI) | "
             "detectable at max (80% power) | seeds to detect the diff |", "|---" * 9 + "|"]
    for r in frame.itertuples():
        ci = "" if math.isnan(r.low) else f" ({r.low:+.4g}, {r.high:+.4g})"
        said = f"{r.decision} at the maximum" if r.decision == UNDECIDED else r.decision
        lines.append(f"| {r.cell} | {r.arm} | {r.against} | {said} | {r.look or '--'} | {r.seeds} | {r.diff:+.4g}{ci} | "
                     f"{'--' if math.isnan(r.detectable) else f'{r.detectable:.3g}'} | {_seeds_text(r.seeds_needed)} |")
    return "\n".join(lines) + "\n"


def power_frame(con: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """A fixed-seed study's contrasts left undecided by Holm (p >= alpha, or no test): the effect their seeds
    could detect with 80% power and the seeds per arm that would detect the observed difference, both at
    alpha / contrasts (Holm's first step), from the observed seed-to-seed spread."""
    m = max(1, int(con.p_value.notna().sum()))
    open_ = con[~(con.p_holm < alpha)].copy()
    open_["detectable"] = [detectable(min(int(r.n), int(r.n_against)), r.sd, alpha / m) for r in open_.itertuples()]
    open_["seeds_needed"] = [seeds_needed(r.diff, r.sd, alpha / m) for r in open_.itertuples()]
    return open_


def power_markdown(frame: pd.DataFrame, axes: list[str]) -> str:
    from analysis.entries import arm_label, axis_name
    from iabf import record as R

    lines = ["| " + " | ".join(map(axis_name, axes)) + " | arm | against | diff | n | detectable with these seeds | seeds to "
             "detect the diff |", "|---" * (len(axes) + 6) + "|"]
    for _, r in frame.iterrows():
        lines.append("| " + " | ".join(R.value_text(r[a]) for a in axes) + f" | {arm_label(r.arm)} | "
                     f"{arm_label(r.against)} | {r['diff']:+.4g} | {r.n} vs {r.n_against} | "
                     f"{'--' if math.isnan(r.detectable) else f'{r.detectable:.3g}'} | {_seeds_text(r.seeds_needed)} |")
    return "\n".join(lines) + "\n"
