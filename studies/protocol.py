"""The study protocol: search inside each table cell, then confirm the choice on every seed.

A *cell* is one entry of the paper's table: dataset, channel, code length and test eps (a space's
`cells:` names other parameters). A *group* is one arm in one cell: the alternatives for one table
entry. A study runs in two phases, in one Tuner, one MLflow parent run and one `--resume`:

1. search: each group's configurations (its grid, or `num_samples` draws of its own seeded Optuna
   sampler) train on the search seed (or the mean of a stack of search seeds), and Ray's ASHA,
   one instance per group, stops the weak ones. A trial is only compared with the alternatives
   for its own table entry: never across eps values, datasets or methods, and a group with one
   configuration has nothing to search;
2. confirm: once a group's search has ended, its best configuration by validation trains on every
   seed in `seeds`, to the full budget, without early stopping (stacked where the dataset allows).
   Tables use these runs only, so every entry has n = len(seeds).

Seeds are repeats, never contestants: the search judges a configuration on its search seed(s);
the confirmation reports it on all of `seeds`, which the search never saw (no winner's curse).
`confirm: false` instead runs every configuration on every seed and tabulates those runs.

`StudySearcher` and `GroupASHA` are thin routers in front of Ray's own OptunaSearch and
ASHAScheduler, one instance per group; neither TPE nor ASHA is written again here.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import pickle
from collections import deque
from dataclasses import dataclass

from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from iabf import metrics as M
from iabf.config import Config
from iabf.tune import REPLAYED
from iabf.tune import STUDY_KEYS as META   # trial parameters that are labels, not Config fields
from studies.space import cell_axes, is_cell_key  # noqa: F401  (the protocol's cells)

SEARCH, CONFIRM = "search", "confirm"


# --- cells and groups -----------------------------------------------------------------------------

def cell_of(cfg: Config, keys: list[str] | None = None) -> dict:
    """The table entry a configuration belongs to: by default (dataset, channel, bits, test eps)."""
    if keys is None:
        return {"dataset": cfg.dataset, "channel": cfg.channel, "bits": cfg.bits, "eps": cfg.eval_eps}
    return {k: getattr(cfg, k) for k in keys}


def cell_label(cell: dict) -> str:
    """digits/bsc/16b/eps0.1 for the default cell; key=value pairs otherwise."""
    if list(cell) == ["dataset", "channel", "bits", "eps"]:
        return f"{cell['dataset']}/{cell['channel']}/{cell['bits']}b/eps{cell['eps']:g}"
    return "/".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in cell.items())


@dataclass
class Group:
    """One arm in one cell: what the search chooses between, and what the confirmation reports."""
    cell: dict          # cell_of() of its configurations
    arm: str            # the arm's name
    base: dict          # the Config values every configuration of the group shares
    space: dict         # what it searches: {parameter: {distribution: args}}
    dataset: str

    @property
    def key(self) -> str:
        return f"{cell_label(self.cell)} | {self.arm}"

    @property
    def seed(self) -> int:
        """Its samplers' seed: fixed by what the group is, so a study repeats its suggestions."""
        return int(hashlib.sha1(self.key.encode()).hexdigest()[:8], 16)


def groups(study) -> list[Group]:
    axes = cell_axes(study)
    out = []
    for values in itertools.product(*axes.values()):
        for arm in study.arms:
            cell = dict(zip(axes, values))
            base = {**study.fixed_for(cell.get("dataset", study.fixed.get("dataset", Config.dataset))), **cell,
                    **arm.fixed}
            space = {**{k: v for k, v in study.search.items() if k not in axes}, **arm.search}
            cfg = Config.from_dict(base)
            out.append(Group(cell=cell_of(cfg, study.cells), arm=arm.name, base=base, space=space, dataset=cfg.dataset))
    return out


def grid_points(space: dict) -> list[dict] | None:
    """Every configuration of a grid space; None where a distribution is sampled."""
    if any(next(iter(spec)) != "grid" for spec in space.values()):
        return None
    names = list(space)
    return [dict(zip(names, combo)) for combo in itertools.product(*(space[k]["grid"] for k in names))]


def n_configs(group: Group, study) -> int:
    """How many configurations a group searches, counted, not built."""
    if any(next(iter(spec)) != "grid" for spec in group.space.values()):
        return study.num_samples
    return math.prod(len(spec["grid"]) for spec in group.space.values())


def seed_groups(seeds: list[int], stack: int) -> list[list[int]]:
    return [seeds[i:i + stack] for i in range(0, len(seeds), stack)]


def cell_plan(study) -> list[dict]:
    """Per cell: the trials and trial-epochs the study plans, per phase, and what the full grid
    without early stopping (every configuration on every seed to the end) would cost. Search
    epochs are an upper bound (ASHA stops some trials early); epochs count per seed."""
    cells: dict[str, dict] = {}
    for g in groups(study):
        epochs = g.base.get("epochs", Config().epochs)
        max_t = min(epochs, study.scheduler["max_t"]) if study.scheduler else epochs
        c = cells.setdefault(cell_label(g.cell), {"cell": cell_label(g.cell), "search_trials": 0, "search_epochs": 0,
                                                  "confirm_trials": 0, "confirm_epochs": 0, "full_grid_epochs": 0})
        n, per_seed_group = n_configs(g, study), len(seed_groups(study.seeds, study.stack_for(g.dataset)))
        c["full_grid_epochs"] += n * len(study.seeds) * epochs
        if not study.confirm:
            c["search_trials"] += n * per_seed_group
            c["search_epochs"] += n * len(study.seeds) * max_t
        else:
            if n > 1:
                c["search_trials"] += n
                c["search_epochs"] += n * len(study.search_seeds) * max_t
            c["confirm_trials"] += per_seed_group
            c["confirm_epochs"] += len(study.seeds) * epochs
    return list(cells.values())


def plan(study) -> dict:
    """The whole study's cell_plan, summed; `trials` is every trial of both phases."""
    keys = ("search_trials", "search_epochs", "confirm_trials", "confirm_epochs", "full_grid_epochs")
    out = {k: sum(c[k] for c in cell_plan(study)) for k in keys}
    return {**out, "trials": out["search_trials"] + out["confirm_trials"]}


def tune_space(space: dict) -> dict:
    """A group's sampled space in Ray Tune's domains (which OptunaSearch converts)."""
    from ray import tune

    make = {"choice": tune.choice, "uniform": lambda a: tune.uniform(*a),
            "loguniform": lambda a: tune.loguniform(*a), "randint": lambda a: tune.randint(*a)}
    return {k: make[kind](args) for k, spec in space.items() for kind, args in spec.items()}


def optuna_searcher(group: Group, study):
    """The group's own OptunaSearch: TPE (searcher: optuna) or random sampling, seeded by the group.
    TPE starts from a quarter of the budget drawn at random (2 to 10 points, Optuna's default 10)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    sampler = optuna.samplers.TPESampler(seed=group.seed, n_startup_trials=max(2, min(10, study.num_samples // 4))) \
        if study.searcher == "optuna" else optuna.samplers.RandomSampler(seed=group.seed)
    return OptunaSearch(space=OptunaSearch.convert_search_space(tune_space(group.space)), metric=study.metric,
                        mode=study.mode, sampler=sampler)


def score(result: dict, metric: str) -> float:
    """What chooses a group's configuration: the best validation distortion so far (the model a
    trial keeps), or the last value of another metric."""
    value = result.get(M.BEST_VAL_DISTORTION if metric == M.VAL_DISTORTION else metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan


def choose(results: list[dict], mode: str) -> dict | None:
    """The best of a group's search trials: among those that trained longest (ASHA's survivors),
    the best score. results: {"uid", "params", "epoch", "score"}; failed trials have no score."""
    ok = [r for r in results if math.isfinite(r["score"])]
    if not ok:
        return None
    furthest = max(r["epoch"] for r in ok)
    sign = 1 if mode == "min" else -1
    return min((r for r in ok if r["epoch"] == furthest), key=lambda r: sign * r["score"])


# --- the searcher: both phases, every group --------------------------------------------------------

class StudySearcher(Searcher):
    """Suggests the study's trials: each group's search (its grid, or its own OptunaSearch), then,
    when a group's search has ended, the confirmation of its best configuration on every seed.
    Every trial carries a `uid` fixed by what it is (group, phase, number), so that a trial
    suggested again after a resume is recognised as the same one (tracking, trial state)."""

    def __init__(self, study):
        super().__init__(metric=study.metric, mode=study.mode)
        self.study = study
        self.groups = {g.key: g for g in groups(study)}
        self.todo: dict[str, deque] = {}          # group -> grid points still to suggest
        self.left: dict[str, int] = {}            # group -> samples still to draw (sampled spaces)
        self.samplers: dict = {}                  # group -> its OptunaSearch
        self.count: dict[str, int] = dict.fromkeys(self.groups, 0)
        self.live: dict[str, tuple[str, str, dict]] = {}   # trial id -> (group, phase, trial parameters)
        self.results: dict[str, list] = {k: [] for k in self.groups}
        self.confirms: deque = deque()            # (group, parameters, search uid) ready to suggest
        # every parameter some group varies, so that every trial names them all (None: not this
        # trial's; Tune's status table looks each one up in every trial)
        self.varying = sorted({k for g in self.groups.values() for k in (*g.space, *g.base) if k not in study.fixed})
        for key, g in self.groups.items():
            # without a confirmation, the search trials are the table's: every configuration on every seed
            seeds = seed_groups(study.seeds, study.stack_for(g.dataset)) if not study.confirm else [study.search_seeds]
            points = grid_points(g.space)
            if study.confirm and n_configs(g, study) == 1:   # nothing to choose: confirm at once
                self._enqueue_confirm(key, (points or [{}])[0], confirms="")
            elif points is None:                  # validation allows one seed group with sampling
                self.left[key] = study.num_samples
                self.samplers[key] = optuna_searcher(g, study)
            else:
                self.todo[key] = deque({**p, "seed": s[0], "stack": len(s)} for p in points for s in seeds)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True    # metric, mode and space come from the study itself

    def _trial(self, key: str, phase: str, params: dict, **meta) -> dict:
        """A trial's parameters: what differs from the study's fixed values (Tune adds those)."""
        g = self.groups[key]
        uid = f"{g.seed:08x}-{phase[0]}{self.count[key]}"
        self.count[key] += 1
        fixed = self.study.fixed
        return {**dict.fromkeys(self.varying),
                **{k: v for k, v in {**g.base, **params}.items() if k not in fixed or fixed[k] != v},
                "phase": phase, "cell": cell_label(g.cell), "arm": g.arm, "uid": uid, **meta}

    def _enqueue_confirm(self, key: str, params: dict, confirms: str) -> None:
        for s in seed_groups(self.study.seeds, self.study.stack_for(self.groups[key].dataset)):
            self.confirms.append((key, {**params, "seed": s[0], "stack": len(s)}, confirms))

    def _searching(self, key: str) -> bool:
        return bool(self.todo.get(key)) or self.left.get(key, 0) > 0 or any(k == key for k, *_ in self.live.values())

    def suggest(self, trial_id: str):
        # the search first (it gates the confirmations), the group with the fewest trials so far first
        for key in sorted(self.groups, key=lambda k: self.count[k]):
            if self.todo.get(key):
                params = self.todo[key].popleft()
            elif self.left.get(key, 0) > 0:
                params = self.samplers[key].suggest(trial_id)
                if params is None:
                    continue
                self.left[key] -= 1
                seeds = self.study.search_seeds if self.study.confirm else self.study.seeds
                params = {**params, "seed": seeds[0], "stack": len(seeds)}
            else:
                continue
            config = self._trial(key, SEARCH, params)
            self.live[trial_id] = (key, SEARCH, config)
            return config
        if self.confirms:
            key, params, confirms = self.confirms.popleft()
            config = self._trial(key, CONFIRM, params, confirms=confirms)
            self.live[trial_id] = (key, CONFIRM, config)
            return config
        return None if any(self._searching(k) for k in self.groups) else Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        key, phase, _ = self.live.get(trial_id, (None, None, None))
        if key in self.samplers and phase == SEARCH and not result.get(REPLAYED):
            self.samplers[key].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        key, phase, config = self.live.pop(trial_id, (None, None, None))
        if key is None or phase != SEARCH:
            return
        result = result or {}
        failed = error or "failure" in result or not math.isfinite(score(result, self.metric))
        if key in self.samplers:
            self.samplers[key].on_trial_complete(trial_id, None if failed else result, error=failed)
        self.results[key].append({"uid": config["uid"],
                                  "params": {k: v for k, v in config.items() if k not in META and v is not None},
                                  "epoch": result.get(M.EPOCH, 0),
                                  "score": math.nan if failed else score(result, self.metric)})
        if self.study.confirm and not self._searching(key):
            best = choose(self.results[key], self.mode)
            if best is not None:              # a group whose every search trial failed has nothing to confirm
                params = {k: v for k, v in best["params"].items() if k not in ("seed", "stack")}
                self._enqueue_confirm(key, params, confirms=best["uid"])

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


# --- the scheduler: Ray's ASHA, one per group, none for confirmations ------------------------------

class GroupASHA(FIFOScheduler):
    """Ray's ASHAScheduler, one instance per group (cell and arm), behind one scheduler: a search
    trial is compared only with its own group's trials. Confirmation trials are never stopped, and
    neither is a result a resumed trial reports again (iabf/tune.py).

    Across a resume, Tune builds the scheduler anew and adds every trial of the study again. The
    rung records are rebuilt from what the trials reported: a trial that ended before the resume,
    from its own state file's history (`state_root`, iabf.tune.TrialState); a trial that goes on,
    from the past epochs it reports again (marked replayed). So a resumed study stops the trials
    an uninterrupted one stops."""

    def __init__(self, metric: str, mode: str, state_root: str | None = None, **asha):
        super().__init__()
        self._metric, self._mode, self.asha_args, self.state_root = metric, mode, asha, state_root
        self.by_group: dict[str, ASHAScheduler] = {}

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True

    def _asha(self, trial) -> ASHAScheduler | None:
        config = trial.config
        if config.get("phase", SEARCH) != SEARCH:
            return None
        key = f"{config.get('cell', '')} | {config.get('arm', '')}"
        if key not in self.by_group:
            # a group's trials train for its dataset's epochs (by_dataset), at most max_t
            max_t = min(self.asha_args["max_t"], config.get("epochs") or self.asha_args["max_t"])
            args = {**self.asha_args, "max_t": max_t, "grace_period": min(self.asha_args["grace_period"], max_t)}
            # our epoch, not Tune's training_iteration: a trial restarted from its own state goes on
            # counting epochs, where Tune's count would start again
            self.by_group[key] = ASHAScheduler(time_attr=M.EPOCH, metric=self._metric, mode=self._mode, **args)
        return self.by_group[key]

    def _record(self, asha: ASHAScheduler, trial, result: dict) -> None:
        """Put a past result in the trial's rung records, as ASHA did when it came; no decision."""
        if M.EPOCH in result and isinstance(result.get(self._metric), (int, float)):
            asha._trial_info[trial.trial_id].on_result(trial, result[M.EPOCH], asha._metric_op * result[self._metric])

    def _history(self, trial) -> list[dict]:
        """What a finished trial reported, epoch by epoch, from its own state file (none: [])."""
        if not getattr(self, "state_root", None):
            return []
        from iabf.tune import TrialState

        saved = TrialState(self.state_root, trial.config.get("uid") or trial.trial_id).load("cpu")
        return saved["history"] if saved else []

    def on_trial_add(self, tune_controller, trial):
        if (asha := self._asha(trial)) is not None:
            asha.on_trial_add(tune_controller, trial)
            if getattr(trial, "status", None) == Trial.TERMINATED:   # re-added on resume, after it ended
                for result in self._history(trial):
                    self._record(asha, trial, result)

    def on_trial_result(self, tune_controller, trial, result):
        if (asha := self._asha(trial)) is None:
            return TrialScheduler.CONTINUE
        if result.get(REPLAYED):   # already decided before the resume: only its record is rebuilt
            self._record(asha, trial, result)
            return TrialScheduler.CONTINUE
        return asha.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        if (asha := self._asha(trial)) is not None and trial.trial_id in asha._trial_info:
            asha.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        if (asha := self._asha(trial)) is not None and trial.trial_id in asha._trial_info:
            asha.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return f"ASHA per search group (cell and arm): {len(self.by_group)} groups so far"
