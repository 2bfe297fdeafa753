"""Per-trial overhead of Ray Tune and MLflow: N trials that do no training (one report each)
against N plain calls of the same function, at several study sizes. Targets: <= 1 s per trial on
a local Ray, and a cost per extra trial that does not grow with the study (the driver's bookkeeping
stays linear: 20 -> 200 -> 1,000 trials should cost about the same per added trial).

    python benchmarks/overhead.py [--trials 20 200 1000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iabf import metrics as M  # noqa: E402
from iabf.config import Config  # noqa: E402


def no_training(params: dict) -> dict:
    Config.from_dict(params)   # what a trial does before training
    return {M.EPOCH: 1, M.VAL_DISTORTION: 1.0}


def trainable(params: dict) -> None:
    from ray import tune

    tune.report(no_training(params))


def run_tune(n: int, tracked: bool, tmp: str) -> float:
    from ray import tune

    from studies import tracking
    from studies.space import Study

    callbacks = []
    if tracked:
        uri = f"sqlite:///{tmp}/mlflow-{time.time_ns()}.db"
        exp, parent = tracking.start_study(uri, Study(name="overhead", path=""), f"{tmp}/exp", resume=False)
        callbacks = [tracking.MLflowTracking(uri, exp, parent, "overhead")]
    space = {"dataset": "digits", "epochs": 1, "seed": tune.grid_search(list(range(n)))}
    t0 = time.perf_counter()
    tune.Tuner(tune.with_resources(trainable, {"cpu": 1}), param_space=space,
               tune_config=tune.TuneConfig(reuse_actors=True),
               run_config=tune.RunConfig(storage_path=tmp, callbacks=callbacks, verbose=0)).fit()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, nargs="+", default=[20, 200, 1000], help="study sizes (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="repeats at the smallest size (larger ones: 1)")
    args = p.parse_args(argv)
    import os

    import ray

    sizes = sorted(args.trials)
    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    init = time.perf_counter() - t0
    print(f"trials doing no training, {os.cpu_count()} CPUs; ray.init (once per study): {init:.2f} s", flush=True)
    print(f"{'trials':>7} {'plain calls':>12} {'Ray Tune':>10} {'+ MLflow':>10} {'per trial':>10} {'of which MLflow':>16}"
          f" {'per added trial':>16}")
    previous, worst = None, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            repeats = args.repeats if n == sizes[0] else 1
            t0 = time.perf_counter()
            for i in range(n):
                no_training({"dataset": "digits", "epochs": 1, "seed": i})
            plain = time.perf_counter() - t0
            bare = statistics.median(run_tune(n, False, tmp) for _ in range(repeats))
            tracked = statistics.median(run_tune(n, True, tmp) for _ in range(repeats))
            per_trial = (tracked - plain) / n
            added = "" if previous is None else f"{(tracked - previous[1]) / (n - previous[0]):16.3f}"
            print(f"{n:7d} {plain:11.3f}s {bare:9.2f}s {tracked:9.2f}s {per_trial:9.3f}s {(tracked - bare) / n:15.3f}s"
                  f" {added}", flush=True)
            worst = max(worst, per_trial)
            previous = (n, tracked)
    ray.shutdown()
    print(f"overhead per trial at most {worst:.3f} s (target <= 1 s: {'met' if worst <= 1 else 'NOT met'}); "
          f"'per added trial' should stay about level as the study grows (linear cost)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
