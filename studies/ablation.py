"""Run a study: a search space (YAML) -> Ray Tune trials (ASHA, Optuna where continuous) -> MLflow.

    python studies/ablation.py                                   # the default: quick.yaml, local
    python studies/ablation.py --space search_spaces/table1.yaml --address auto   # on a cluster
    python studies/ablation.py --resume                          # finish the latest interrupted one
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from iabf.config import ConfigError  # noqa: E402
from iabf.data import DataError, check_available  # noqa: E402
from studies import tracking  # noqa: E402
from studies.space import SpaceError, check_stack, load_study, param_space, scheduler, searcher, smoke  # noqa: E402

DEFAULT_SPACE = ROOT / "search_spaces" / "quick.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default=str(DEFAULT_SPACE), help="search-space YAML (default: %(default)s)")
    p.add_argument("--address", default=None, help="Ray cluster address; 'auto' on a cluster (default: a local Ray)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")
    p.add_argument("--data-dir", default="data", help="folder of <dataset>.npz (default: %(default)s)")
    p.add_argument("--storage", default=str(Path("results").resolve()),
                   help="where Ray Tune keeps trials and checkpoints (shared storage on a multi-node cluster)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="EXPERIMENT_DIR",
                   help="continue an interrupted study: its folder, or the latest of this space's study")
    p.add_argument("--smoke", action="store_true", help="shrink the space to 2 tiny CPU trials (for tests)")
    p.add_argument("--max-concurrent", type=int, default=None, help="at most this many trials at once")
    p.add_argument("--stack", type=int, default=None, metavar="S",
                   help="train S consecutive seeds as one stacked model per trial (overrides the space's stack)")
    p.add_argument("--gpus-per-trial", type=float, default=None, help="override resources.gpu (fractions share a GPU)")
    p.add_argument("--tracking-grace", type=float, default=120,
                   help="seconds to wait at the end for an unreachable tracking server to return (default: %(default)s)")
    p.add_argument("--chain-steps", type=int, default=None,
                   help="Markov-chain steps for each finished trial's samples (default: 9000, the paper's; 90 with --smoke)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"
    # a lost tracking server should cost seconds per attempt, not minutes (MLflow's defaults retry 7x)
    for key, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                       ("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")):
        os.environ.setdefault(key, value)

    # --- validate everything before anything starts ---
    try:
        study = load_study(args.space)
        if args.stack is not None:
            study = check_stack(replace(study, stack=args.stack))
        if args.smoke:
            study = smoke(study)
        if args.gpus_per_trial is not None:
            study.resources["gpu"] = args.gpus_per_trial
        if args.max_concurrent is not None:
            study.max_concurrent = args.max_concurrent
        data_dir = str(Path(args.data_dir).expanduser().resolve())
        study.fixed["data_dir"] = data_dir
        for name in study.datasets():
            check_available(name, data_dir)
        uri = tracking.check_uri(args.tracking_uri or tracking.default_tracking_uri())
        check_address(args.address)
        experiment_dir = resolve_experiment(args, study)
    except (SpaceError, ConfigError, DataError, tracking.TrackingError, ConnectionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    import ray
    from ray import tune

    from iabf.tune import trainable

    try:
        if args.address:
            ray.init(address=args.address, include_dashboard=False)
        else:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        print(f"error: cannot reach the Ray cluster at {args.address!r}: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2

    exp_id, parent = tracking.start_study(uri, study, experiment_dir, resume=args.resume is not None)
    print(f"study {study.name}: {study.n_trials() or study.num_samples} trials, tracked in {uri} "
          f"(experiment {study.name!r}, parent run {parent})", flush=True)
    chain_steps = args.chain_steps or (90 if args.smoke else 9000)
    fn = tune.with_resources(tune.with_parameters(trainable, chain_steps=chain_steps),
                             {"cpu": study.resources["cpu"], "gpu": study.resources["gpu"]})
    tracker = tracking.MLflowTracking(uri, exp_id, parent, study.name)
    if args.resume:  # Tune restores the original run config, callbacks included
        tracker = None
        tuner = tune.Tuner.restore(experiment_dir, trainable=fn, resume_unfinished=True, resume_errored=False)
    else:
        tuner = tune.Tuner(
            fn, param_space=param_space(study),
            tune_config=tune.TuneConfig(metric=study.metric, mode=study.mode, num_samples=study.num_samples,
                                        search_alg=searcher(study), scheduler=scheduler(study),
                                        max_concurrent_trials=study.max_concurrent or None,
                                        reuse_actors=True),  # a trial's process is reused: no re-import of torch
            run_config=tune.RunConfig(
                name=Path(experiment_dir).name, storage_path=str(Path(experiment_dir).parent),
                callbacks=[tracker],
                # 3, not 1: Tune deletes a trial's oldest checkpoint before its next experiment snapshot,
                # so a driver killed in between resumes from a checkpoint that is gone; keeping 3 makes
                # that window rare (a snapshot is forced after num_to_keep checkpoints) and bounds disk
                checkpoint_config=tune.CheckpointConfig(num_to_keep=3),
                failure_config=tune.FailureConfig(max_failures=2), verbose=1))
    try:
        tuner.fit()   # Ctrl-C: Tune saves its state and returns; the study can be resumed
    except BaseException:
        tracking.end_study(uri, exp_id, parent, "FAILED")
        raise
    try:  # a tracking server that went away gets a grace period to come back
        left = tracker.flush(timeout=args.tracking_grace) if tracker else 0
        counts = tracking.retrying(tracking.end_study, args.tracking_grace, uri, exp_id, parent, "FINISHED",
                                   tracker.seconds if tracker else 0.0)
    except tracking.TRACKING_ERRORS as e:
        print(f"error: the study ran (results: {experiment_dir}) but MLflow at {uri} is unreachable "
              f"({type(e).__name__}); {tracker.unlogged() if tracker else 'some'} trial updates are not logged",
              file=sys.stderr)
        return 1
    summarize(study, uri, parent, experiment_dir, counts)
    if left:
        print(f"error: {left} trial updates could not be written to MLflow at {uri}", file=sys.stderr)
        return 1
    if counts.get("interrupted"):
        print(f"\ninterrupted with {counts['interrupted']} trial(s) unfinished; continue with:\n"
              f"  python studies/ablation.py --space {args.space} --resume {experiment_dir}", file=sys.stderr)
        return 130
    return 0


def check_address(address: str | None) -> None:
    """Fail fast on a cluster address nobody answers at (Ray itself retries for minutes)."""
    if address in (None, "auto", "local"):
        return
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
    try:
        with socket.create_connection((host, int(port or (10001 if address.startswith("ray://") else 6379))), timeout=3):
            pass
    except (OSError, ValueError) as e:
        raise ConnectionError(f"cannot reach the Ray cluster at {address!r} ({type(e).__name__}: {e}); "
                              f"use --address auto on the head node, or HOST:PORT of a running Ray head") from None


def resolve_experiment(args, study) -> str:
    """A new study gets a fresh folder <storage>/<study>-<time>; --resume finds an existing one."""
    storage = Path(args.storage).expanduser().resolve()
    if args.resume is None:
        return str(storage / f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if args.resume != "latest":
        path = Path(args.resume).expanduser().resolve()
        if not (path / "tuner.pkl").exists():
            raise SpaceError(f"{path}: not a study folder to resume (no tuner.pkl)")
        return str(path)
    found = sorted(storage.glob(f"{study.name}-*/tuner.pkl"))
    if not found:
        raise SpaceError(f"{storage}: no earlier run of study {study.name!r} to resume")
    return str(found[-1].parent)


def summarize(study, uri, parent, experiment_dir, counts) -> None:
    """How the trials ended, the configuration chosen per cell (from the report), where things are."""
    print(f"\ntrials: {', '.join(f'{counts[k]} {k}' for k in ('completed', 'early_stopped', 'failed', 'interrupted'))}"
          f"; {counts['trial_hours']:.3f} trial-hours, {counts['gpu_hours']:.3f} GPU-hours")
    report_dir = Path(experiment_dir) / "report"
    if counts["completed"]:  # the paper's table and figures, also kept on the study's parent run
        import pandas as pd

        from analysis.report import write_report

        written = write_report(uri, study.name, report_dir, parent=parent, quiet=True)
        tracking.log_report(uri, parent, report_dir)
        cells = pd.read_csv(written["table1.csv"])
        print("\nbest configuration per (dataset, method, eps), chosen by validation; test distortion:")
        print(cells[["dataset", "bits", "method", "eps", "lam", "K", "n", "val", "test", "std"]].to_string(index=False))
        print(f"\nTable 1, reproduction report and figures: {report_dir} (and on the parent run in MLflow)")
    print(f"MLflow: {uri}  experiment {study.name!r}, parent run {parent}")
    if uri.startswith("sqlite:"):
        print(f"  browse: mlflow ui --backend-store-uri {uri}")
    print(f"Ray Tune results: {experiment_dir}")


if __name__ == "__main__":
    sys.exit(main())
