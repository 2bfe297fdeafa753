"""The study protocol's Ray hooks: the searcher and the scheduler that run studies/plan.py's plan, and
the trial's entry point.

What a study is (cells, groups, the two phases, counting and choosing) is studies/plan.py, which
imports no Ray; here are only the objects Ray Tune calls.

`StudySearcher` and `GroupASHA` are thin routers in front of Ray's own OptunaSearch and
ASHAScheduler, one instance per group; neither TPE nor ASHA is written again here.
"""
from __future__ import annotations

import math
import pickle
import re
from collections import deque
from pathlib import Path

from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from iabf import metrics as M
from iabf import record as R
from studies.plan import Group  # noqa: F401  (a searcher pickled before plan.py existed names it here)
from iabf.record import CONFIRM, FAILURE, REPLAYED, SEARCH, cell_label, choose, score
from analysis.sequential import UNDECIDED
from studies.adaptive import Looks
from studies.plan import grid_points, groups, n_configs, seed_groups

META = R.LABELS   # trial parameters that are labels, not Config fields
SEED_KEYS = ("seed", "stack")   # what a trial's seeds add to its configuration (Config's first seed, stack size)


def with_seeds(params: dict, seeds: list[int]) -> dict:
    """A configuration on consecutive seeds, as one trial (one seed where the stack is 1)."""
    return {**params, **dict(zip(SEED_KEYS, (seeds[0], len(seeds))))}


def trainable(config: dict, chain_steps: int = 9000, state_root: str | None = None, mark: str | None = None,
              datasets: dict | None = None) -> None:
    """A trial: iabf/tune.py's trainable, imported in the trial's worker, so that the study's driver
    never imports torch (nor Tune's TensorBoard logger, which would: studies/ablation.py). On 2 CPUs a
    one-trial study then started Ray 3 s sooner and ended 4-5 s sooner (12 s against 16-18 in all),
    and the head node's driver holds none of torch's memory."""
    from iabf.tune import trainable as train

    return train(config, chain_steps=chain_steps, state_root=state_root, mark=mark, datasets=datasets)


def searcher(study) -> "StudySearcher":
    """The study's trials, both phases."""
    return StudySearcher(study)


def scheduler(study, state_root: str | None = None) -> "GroupASHA | None":
    """Ray's ASHA, one per group; none without early stopping. state_root: where the trials keep
    their state, from which a resumed study rebuilds ASHA's records."""
    if study.scheduler is None:
        return None
    return GroupASHA(study.metric, study.mode, state_root, **study.scheduler)


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
        self.chosen: dict[str, tuple[dict, str]] = {}   # group -> (its chosen configuration, its search uid)
        self.looks = Looks(study) if study.adaptive else None   # the adaptive confirmation's seeds so far
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
                self.todo[key] = deque(with_seeds(p, s) for p in points for s in seeds)

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
                R.PHASE: phase, R.CELL: cell_label(g.cell), R.ARM: g.arm, R.UID: uid, **meta}

    def _enqueue_confirm(self, key: str, params: dict, confirms: str, look: int = 0) -> None:
        """The chosen configuration on every seed, or with an adaptive design on the seeds of one look."""
        seeds = self.study.adaptive.batch_seeds(look, self.study.seeds[0]) if self.looks else self.study.seeds
        self.chosen[key] = (params, confirms)
        for s in seed_groups(seeds, self.study.stack_for(self.groups[key].dataset)):
            self.confirms.append((key, with_seeds(params, s), confirms))

    def _look(self) -> None:
        """An adaptive design's look, once no group searches and every open comparison's arms have their batch:
        the decided comparisons stop, the arms still in an undecided one get the next batch."""
        if self.looks is None or any(self._searching(k) for k in self.groups):
            return
        for look in self.looks.ready(set(self.chosen)):
            self.looks.done = getattr(self.looks, "done", 0) + sum(d != UNDECIDED for d in look.decided.values())
            print(look_line(look, self.looks.done, len(self.looks.family), self.study.adaptive), flush=True)
            for key in look.next_arms:
                params, confirms = self.chosen[key]
                self._enqueue_confirm(key, params, confirms, look=look.number)
        if self.looks.stopped and self.looks.taken < self.study.adaptive.looks:
            print(f"adaptive confirmation: no further look: {self.looks.stopped}; the open comparisons stay "
                  "undecided", flush=True)
            self.looks.taken = self.study.adaptive.looks       # said once

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
                params = with_seeds(params, seeds)
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
        # an adaptive design's next look may ask for more seeds until its last confirmation trial has ended
        waiting = self.looks is not None and any(phase == CONFIRM for _, phase, _ in self.live.values())
        return None if waiting or any(self._searching(k) for k in self.groups) else Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        key, phase, _ = self.live.get(trial_id, (None, None, None))
        if key in self.samplers and phase == SEARCH and not result.get(REPLAYED) and self.metric in result:
            self.samplers[key].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        key, phase, config = self.live.pop(trial_id, (None, None, None))
        if key is not None and phase == CONFIRM and self.looks is not None:
            self.looks.add(key, config, result, error or FAILURE in (result or {}))
            self._look()
        if key is None or phase != SEARCH:
            return
        result = result or {}
        failed = error or FAILURE in result or not math.isfinite(score(result, self.metric))
        if key in self.samplers:
            self.samplers[key].on_trial_complete(trial_id, None if failed else result, error=failed)
        self.results[key].append({"uid": config[R.UID],
                                  "params": {k: v for k, v in config.items() if k not in META and v is not None},
                                  "epoch": result.get(M.EPOCH, 0),
                                  "score": math.nan if failed else score(result, self.metric)})
        if self.study.confirm and not self._searching(key):
            best = choose(self.results[key], self.mode)
            if best is not None:              # a group whose every search trial failed has nothing to confirm
                params = {k: v for k, v in best["params"].items() if k not in SEED_KEYS}
                self._enqueue_confirm(key, params, confirms=best["uid"])
            self._look()                      # the last search to end may be what a look waited for

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update({"chosen": {}, "looks": None, **pickle.load(f)})   # saved before adaptive designs


def look_line(look, done: int, comparisons: int, design) -> str:
    """The console's line for one look of an adaptive confirmation; done: comparisons decided so far."""
    def names(pair):
        (cell, arm), (_, base) = (k.split(" | ") for k in pair)
        return cell, arm, base
    decided = [f"{c}: {a} {d} than {b}" for (c, a, b), d in ((names(p), d) for p, d in look.decided.items())
               if d != UNDECIDED]
    left = [f"{c}: {a} vs {b}" for (c, a, b), d in ((names(p), d) for p, d in look.decided.items()) if d == UNDECIDED]
    more = (f"; {len(look.next_arms)} arm(s) get seeds {look.number * design.batch}-"
            f"{(look.number + 1) * design.batch - 1}" if look.next_arms else "; the confirmation is complete")
    return (f"adaptive confirmation, look {look.number} of {design.looks} ({look.seeds} seeds per arm): "
            f"{len(decided)} decided here{': ' + ', '.join(decided) if decided else ''}; {done} of {comparisons} "
            f"so far{'; undecided at the maximum: ' + ', '.join(left) if left else ''}{more}")


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
        if config.get(R.PHASE, SEARCH) != SEARCH:
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

        saved = TrialState(self.state_root, R.state_key(trial.config, trial.trial_id)).load("cpu")
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


class NodeLoss(Callback):
    """A trial whose node was lost (a spot instance reclaimed by EC2, a node that crashed) is retried, from its
    state, without the loss counting against Tune's max_failures: Tune counts an actor's death unless Ray drained
    its node as preempted, which an EC2 reclaim is not, so a trial reclaimed three times would be a failed trial.
    Up to MAX losses a trial; a trial that keeps losing its node (one that takes its node down) fails as before."""

    MAX = 20
    # what Ray says of an actor on a lost node: unavailable (its connection gone: the node's processes ended), or
    # dead because its node died; a Python error in the trial is a RayTaskError, and an OOM kill says so: both count
    LOST = re.compile(r"actor \S+ is unavailable|node (?:has )?died|because its node|NodeDiedError", re.I)

    def __init__(self):
        self.losses: dict[str, int] = {}

    def on_trial_recover(self, iteration, trials, trial, **info):
        metadata = getattr(trial, "run_metadata", None)   # Tune's count of a trial's failures (2.x)
        if metadata is None or not hasattr(metadata, "num_failures"):
            return
        try:
            said = Path(trial.error_file).read_text(errors="replace").rsplit("Failure #", 1)[-1]
        except (OSError, TypeError):
            return
        if self.LOST.search(said) and self.losses.get(trial.trial_id, 0) < self.MAX:
            self.losses[trial.trial_id] = self.losses.get(trial.trial_id, 0) + 1
            metadata.num_failures = max(0, metadata.num_failures - 1)
