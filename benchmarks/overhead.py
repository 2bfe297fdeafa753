"""Per-trial overhead of Ray Tune and MLflow: N trials that do no training (one report each)
against N plain calls of the same function. Target: <= 1 s per trial on a local Ray.

    python benchmarks/overhead.py [--trials 20]
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
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    import os

    import ray

    n = args.trials
    t0 = time.perf_counter()
    for i in range(n):
        no_training({"dataset": "digits", "epochs": 1, "seed": i})
    plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    init = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        bare = [run_tune(n, False, tmp) for _ in range(args.repeats)]
        tracked = [run_tune(n, True, tmp) for _ in range(args.repeats)]
    ray.shutdown()
    b, t = statistics.median(bare), statistics.median(tracked)
    print(f"{n} trials doing no training, {os.cpu_count()} CPUs, medians of {args.repeats} repeats")
    print(f"plain calls                  {plain:8.3f} s  ({plain / n * 1000:.2f} ms per call)")
    print(f"ray.init (once per study)    {init:8.3f} s")
    print(f"Ray Tune                     {b:8.3f} s  ({(b - plain) / n:.3f} s per trial)   repeats: {', '.join(f'{x:.2f}' for x in bare)}")
    print(f"Ray Tune + MLflow tracking   {t:8.3f} s  ({(t - plain) / n:.3f} s per trial)   repeats: {', '.join(f'{x:.2f}' for x in tracked)}")
    per_trial = (t - plain) / n
    print(f"overhead per trial: {per_trial:.3f} s (target <= 1 s: {'met' if per_trial <= 1 else 'NOT met'}); "
          f"of which MLflow {(t - b) / n:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
