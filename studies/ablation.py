"""Run a study: a search space (YAML) -> Ray Tune trials (studies/protocol.py: a search per table
cell with ASHA, Optuna where continuous, then a confirmation on every seed) -> MLflow.

    python studies/ablation.py                                   # the default: quick.yaml, here
    python studies/ablation.py --space search_spaces/table1.yaml # on a cluster's head: joins it
    python studies/ablation.py --resume                          # finish the latest interrupted one

A study file's keys (`python -m studies.schema --markdown`, search_spaces/README.md): among them `seeds`, a
fixed list of confirmation seeds, or `adaptive: {batch, max, alpha, permutations}`, seeds decided by the data
(more only where a comparison is still open; docs/seeds.md). `--plan` shows either design and its cost.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from iabf.config import INT_MAX, ConfigError, Parser, exit_with, short, warnings_in_one_line  # noqa: E402
from iabf.record import COMPLETED, FAILED, INTERRUPTED, STOP_REASONS  # noqa: E402
from studies.plan import groups, plan  # noqa: E402
from studies.signals import StopSignal  # noqa: E402
from studies.space import TOP, SpaceError, smoke, table_columns  # noqa: E402
from studies.validation import check_gpu, check_stack, load_study  # noqa: E402
from studies.folder import check_storage, local_dir, resolve_experiment, tune_filesystem  # noqa: E402

DEFAULT_SPACE = ROOT / "search_spaces" / "quick.yaml"


def bounded(kind, lo: float, hi: float = INT_MAX):
    """An argparse type: a finite number of `kind` in [lo, hi]. NaN, inf and the like are never valid."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not (math.isfinite(value) and lo <= value <= hi):
            raise argparse.ArgumentTypeError(f"{short(value)} is not allowed: a number in [{lo:g}, {hi:g}]")
        return value
    parse.__name__ = kind.__name__   # what argparse names in its messages
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default=str(DEFAULT_SPACE), help="search-space YAML (default: %(default)s)")
    p.add_argument("--address", default=None,
                   help="a Ray cluster's HOST:PORT (default: RAY_ADDRESS, else the cluster started on this machine, "
                        "else a new local Ray)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")
    p.add_argument("--data-dir", default="data", help="folder of <dataset>.npz (default: %(default)s)")
    p.add_argument("--storage", default="results",
                   help="where Ray Tune keeps its results and the trials their state: a folder, or a URI such as "
                        "s3://bucket/prefix (shared storage on a multi-node cluster; default: %(default)s)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="EXPERIMENT_DIR",
                   help="continue an interrupted study: its folder, or the latest of this space's study")
    p.add_argument("--smoke", action="store_true",
                   help="shrink the space to a few tiny CPU trials through both phases (to check an install)")
    p.add_argument("--max-concurrent", type=bounded(int, *TOP["max_concurrent"].span), default=None,
                   help="at most this many trials at once; 0: as many as the resources allow (default: the space's)")
    p.add_argument("--stack", type=bounded(int, 1, 1024), default=None, metavar="S",
                   help="train S consecutive seeds as one stacked model per trial (overrides the space's stack)")
    p.add_argument("--gpus-per-trial", type=bounded(float, 0, 10_000), default=None,
                   help="override resources.gpu (fractions share a GPU)")
    p.add_argument("--tracking-grace", type=bounded(float, 0, 86_400), default=120,
                   help="seconds to wait at the end for an unreachable tracking server to return (default: %(default)s)")
    p.add_argument("--verbose", action="store_true",
                   help="Ray's full output on the console (default: a status table; the rest in the study's log file)")
    p.add_argument("--plan", action="store_true",
                   help="print the study's cells, groups, trials per phase, trial-epochs against the full grid and "
                        "resources, then exit: no Ray, nothing written")
    p.add_argument("--estimate", action="store_true",
                   help="with --plan: also time each model the study trains on this machine (a few steps on the "
                        "data in --data-dir) and print the expected trial-hours and wall time")
    p.add_argument("--chain-steps", type=bounded(int, *TOP["chain_steps"].span), default=None,
                   help="Markov-chain steps for each finished trial's samples (default: the space's chain_steps, "
                        "9000, the paper's, unless it says otherwise; 90 with --smoke)")
    return p.parse_args(argv)


class Refused(Exception):
    """A study that cannot go on: its one line, and the exit code (2: bad input, nothing written; 1: no
    room, or updates MLflow did not take; 130: stopped at once)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def main(argv=None) -> int:
    args = parse_args(argv)
    warnings_in_one_line()
    if args.estimate and not args.plan:
        print("error: --estimate goes with --plan (see --help)", file=sys.stderr)
        return 2
    if args.plan:   # before torch, Ray and MLflow are imported: a plan takes a second
        return show_plan(args)
    try:
        return run(args)
    except Refused as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code


def run(args: argparse.Namespace) -> int:
    """A study, step by step: everything checked, Ray joined, its folder held and its record opened in
    MLflow, the trials run by Tune, the record closed, the report, the verdict."""
    from iabf.record import limit_mlflow_retries
    from studies import archive, console, tracking

    limit_mlflow_retries()
    study, uri, experiment_dir, guard = checked(args)            # nothing started or written before this
    held = None if args.verbose else console.capture_logs()      # Ray's and MLflow's messages: the log file
    on_cluster = join_ray(args, study)
    stop = StopSignal()   # Ctrl-C, and SIGTERM as a scheduler, `kill`, `docker stop` or a spot reclaim send it
    local = local_dir(experiment_dir)   # the log and the report: on this machine, whatever the storage
    guard = guard or hold(local)        # a new study's folder is its own: held while `guard` lives (to the end)
    mark, datasets = reach(args, study, experiment_dir, local) if on_cluster else (None, None)
    if held is not None:
        console.to_file(held, local)
    exp_id, parent, planned = open_record(study, uri, experiment_dir, args.resume is not None)
    if held is not None:
        print(f"Ray's and MLflow's messages: {local / console.LOG_NAME}", flush=True)
    tracker = None if args.resume else tracking.MLflowTracking(uri, exp_id, parent, study.name)
    tuner = make_tuner(args, study, planned, experiment_dir, uri, tracker, quiet=held is not None,
                       mark=mark, datasets=datasets)
    resume_args = f"--space {args.space} --resume {experiment_dir}"
    try:
        results = fit(tuner, stop, uri, exp_id, parent, resume_args)
        if args.resume and not stop.received:   # the runs of trials that ended while the store took no writes
            restore_runs(uri, exp_id, parent, study.name, results, resume_args)
        counts, left = close_record(tracker, stop, uri, exp_id, parent, experiment_dir, args.tracking_grace, resume_args)
        if not stop.reason:   # a study stopped for a full storage has no room for its report there
            console.summarize(study, uri, exp_id, parent, experiment_dir, counts, local)
    finally:   # however the study ends: its record, where it outlives the cluster (a storage such as s3://)
        if archive.durable(storage := experiment_dir.rsplit("/", 1)[0]):
            print(archive.keep(uri, storage), flush=True)
    return verdict(args, planned, counts, left, stop, uri, experiment_dir, tracker and tracker.problem())


def checked(args: argparse.Namespace):
    """`prepare`'s checks, and for --resume the study's folder held: (study, URI, folder, its lock or None)."""
    from iabf.data import DataError
    from studies import lock, store

    try:
        study, uri, experiment_dir = prepare(args)
        # one study, one driver: a second --resume of a study that a live driver runs is refused here
        guard = lock.hold(local_dir(experiment_dir)) if args.resume is not None else None
    except (SpaceError, ConfigError, DataError, store.TrackingError, ConnectionError, lock.StudyBusy,
            lock.NoRoom, lock.NoLock) as e:
        raise Refused(str(e)) from None
    return study, uri, experiment_dir, guard


def join_ray(args: argparse.Namespace, study) -> bool:
    """Join the cluster (or start a local Ray) and say which; warn of trials no node can hold now.
    True when it joined a cluster (nodes other than this machine's may run the trials)."""
    from studies import cluster

    try:
        joined = cluster.connect(args.address, include_dashboard=False, log_to_driver=args.verbose)
        print(joined, flush=True)
        local = joined.startswith("started a local Ray")
        warning = cluster.check_fits(study.resources, local=local)
    except (ConnectionError, ValueError) as e:
        raise Refused(str(e)) from None
    if warning:
        print(warning, file=sys.stderr, flush=True)
    return not local


def reach(args: argparse.Namespace, study, experiment_dir: str, local: Path) -> tuple[str, dict]:
    """On a cluster: every live node sees the study's folder (else one line, and a new study's folder is
    removed), and the datasets are on the storage for nodes that lack them (studies/reach.py).
    Returns (the folder's mark, {dataset file: its copy on the storage})."""
    from iabf.storage import filesystem
    from studies.reach import Unreached, check_nodes, publish_datasets

    try:
        return check_nodes(experiment_dir), publish_datasets(study.datasets(), study.fixed["data_dir"],
                                                             experiment_dir.rsplit("/", 1)[0])
    except Unreached as e:
        if args.resume is None:   # made a moment ago, by this driver
            shutil.rmtree(local, ignore_errors=True)
            with contextlib.suppress(OSError):
                fs, path = filesystem(experiment_dir)
                fs.delete_dir(path)
        raise Refused(str(e)) from None
    except OSError as e:
        raise Refused(f"--storage {args.storage}: the study's datasets could not be copied there for the cluster's "
                      f"nodes ({' '.join(str(e).split())[:300]})", code=1) from None


def hold(local: Path):
    """A new study's folder, held by this driver; with no room for its lock, or no locking at all, nothing of it
    stays."""
    from studies import lock

    try:
        return lock.hold(local)
    except (lock.NoRoom, lock.NoLock) as e:
        shutil.rmtree(local, ignore_errors=True)   # made a moment ago, by this driver
        raise Refused(str(e), code=1 if isinstance(e, lock.NoRoom) else 2) from None


def open_record(study, uri: str, experiment_dir: str, resume: bool):
    """The study's experiment and parent run in MLflow (the store made if new); says what will run."""
    from studies import store, tracking

    store.create_store(uri)
    exp_id, parent = tracking.start_study(uri, study, experiment_dir, resume=resume)
    planned = plan(study)
    print(f"study {study.name}: {len(groups(study))} groups (cell x arm), {planned['trials']} trials: "
          f"{planned['search_trials']} search, {planned['confirm_trials']} confirmation ({planned['runs']} MLflow runs, "
          f"one per trial and seed); tracked in {uri} "
          f"(experiment {study.name!r}, parent run {parent})", flush=True)
    return exp_id, parent, planned


def make_tuner(args: argparse.Namespace, study, planned: dict, experiment_dir: str, uri: str, tracker, quiet: bool,
               mark: str | None = None, datasets: dict | None = None):
    """Tune's run of the study: a new one (the searcher and ASHA of studies/protocol.py), or the restored one.
    mark, datasets: what a trial checks and fetches on its node (studies/reach.py), on a cluster."""
    from ray import tune

    from studies import console, tracking
    from studies.protocol import NodeLoss, scheduler, searcher, trainable

    # A result that ends a trial early (diverged, no room on the storage: iabf/tune.py) may lack the study's
    # metric; the metric itself was checked against the reported ones (studies/validation.py)
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # Tune's own logs of every trial: its JSON and CSV, named in the callbacks below; not TensorBoard's, whose
    # tensorboardX imports torch into the driver (MLflow is the study's record, and the driver never needs torch)
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    state_root = f"{experiment_dir}/state"    # each trial's own resumable state (iabf/tune.py)
    fn = tune.with_resources(
        tune.with_parameters(trainable, chain_steps=args.chain_steps or study.chain_steps, state_root=state_root,
                             mark=mark, datasets=datasets),
        {"cpu": study.resources["cpu"], "gpu": study.resources["gpu"]})
    columns = table_columns(study)
    if args.resume:  # Tune restores the original run config, callbacks and reporter included
        if quiet:
            console.reporter(columns, study.metric)   # the classic output engine, as when the study began
        tracking.MLflowTracking.resumed_uri = uri   # the restored callback tracks here (see MLflowTracking)
        return tune.Tuner.restore(experiment_dir, trainable=fn, resume_unfinished=True, resume_errored=False,
                                  storage_filesystem=tune_filesystem(experiment_dir))
    return tune.Tuner(   # the searcher suggests what varies (both phases); the fixed values are the same for all
        fn, param_space=dict(study.fixed),
        tune_config=tune.TuneConfig(metric=study.metric, mode=study.mode, num_samples=planned["trials"],
                                    search_alg=searcher(study), scheduler=scheduler(study, state_root),
                                    max_concurrent_trials=study.max_concurrent or None,
                                    reuse_actors=True),  # a trial's process is reused: no re-import of torch
        run_config=tune.RunConfig(
            name=experiment_dir.rsplit("/", 1)[1], storage_path=experiment_dir.rsplit("/", 1)[0],
            storage_filesystem=tune_filesystem(experiment_dir),   # a full disk leaves no half-written file
            callbacks=[tracker, console.StopLines(columns, study.metric), console.LaunchLines(), NodeLoss(),
                       tune.logger.JsonLoggerCallback(), tune.logger.CSVLoggerCallback()],
            progress_reporter=console.reporter(columns, study.metric) if quiet else None,
            # Tune checkpoints only a trial's end (iabf/tune.py): the trial keeps its own state every epoch
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            failure_config=tune.FailureConfig(max_failures=2), verbose=1))   # a lost node counts not (NodeLoss)


def fit(tuner, stop: StopSignal, uri: str, exp_id: str, parent: str, resume_args: str):
    """The trials. A stop signal: Tune saves its state and returns, and the study can be resumed; a second
    one stops at once (exit 130); anything else marks the study FAILED in MLflow and goes on up."""
    from studies import tracking

    try:
        with stop.during_fit():
            return tuner.fit()
    except KeyboardInterrupt:
        tracking.end_study(uri, exp_id, parent, "KILLED")
        raise Refused(f"stopped at once (a second stop signal, or one before Tune had begun); continue from what "
                      f"Tune saved last with:\n  python studies/ablation.py {resume_args}", code=130) from None
    except BaseException:
        tracking.end_study(uri, exp_id, parent, "FAILED")
        raise


def restore_runs(uri: str, exp_id: str, parent: str, name: str, results, resume_args: str) -> None:
    """On --resume: what the store did not take of the trials that ended (studies/repair.py), said in a line."""
    from studies import store
    from studies.repair import repair

    try:
        if written := repair(uri, exp_id, parent, name, results):
            print(f"{written} runs of trials that had ended without their record (the store took no writes then) "
                  f"written from Tune's record of them", flush=True)
    except (*store.TRACKING_ERRORS, OSError) as e:
        raise Refused(f"MLflow at {uri} {store.store_problem(e, uri)}; the runs of ended trials are still not "
                      f"written; once it takes writes, {store.RESUME_WRITES}:\n  python studies/ablation.py "
                      f"{resume_args}", code=1) from None


def close_record(tracker, stop: StopSignal, uri: str, exp_id: str, parent: str, experiment_dir: str,
                 grace: float, resume_args: str) -> tuple[dict, int]:
    """The parent run ended (FINISHED, or KILLED when stopped) with the study's counts; a tracking server
    that went away gets `grace` seconds to come back, in all (SLURM's SIGKILL follows its SIGTERM after
    KillWait: the sbatch's grace fits in it). Returns (counts, updates it never took)."""
    from studies import store, tracking

    deadline = time.monotonic() + grace
    try:
        left = tracker.flush(timeout=grace) if tracker else 0
        counts = store.retrying(tracking.end_study, max(0.0, deadline - time.monotonic()), uri, exp_id, parent,
                                   "KILLED" if stop.received else "FINISHED", tracker.seconds if tracker else 0.0)
    except store.TRACKING_ERRORS as e:
        raise Refused(f"the study ran (results: {experiment_dir}) but MLflow at {uri} {store.store_problem(e, uri)}; "
                      f"{tracker.unlogged() if tracker else 'some'} trial updates are not logged; once it takes writes, "
                      f"{store.RESUME_WRITES}:\n  python studies/ablation.py {resume_args}", code=1) from None
    return counts, left


def verdict(args, planned: dict, counts: dict, left: int, stop: StopSignal, uri: str, experiment_dir: str,
            problem: str | None = None) -> int:
    """How the study ended, as its last lines and exit code: 0 done; 1 what needs a hand (a full storage,
    updates MLflow did not take, every trial failed); 130 stopped, to be resumed."""
    resume = f"  python studies/ablation.py --space {args.space} --resume {experiment_dir}"
    ended = sum(counts.get(k, 0) for k in STOP_REASONS)
    if stop.reason:   # the study stopped itself: a trial found no room on the storage, or no study folder on its node
        print(f"error: {stop.reason}; the study stopped: {ended} of its {planned['runs']} runs (a trial per seed) "
              f"ended, {counts[INTERRUPTED]} unfinished; {stop.fix}, then continue with:\n{resume}",
              file=sys.stderr)
        return 1
    if left:
        from studies.store import RESUME_WRITES

        print(f"error: {left} trial updates could not be written to MLflow at {uri}, which {problem or 'took none'}; "
              f"once it takes writes, {RESUME_WRITES}:\n{resume}", file=sys.stderr)
        return 1
    if not counts.get(COMPLETED) and counts.get(FAILED):
        print(f"error: every trial of the study failed ({counts[FAILED]}); their reasons are on the `trial ... "
              f"failed` lines above and in each run's `failure` tag", file=sys.stderr)
        return 1
    if stop.received or counts.get(INTERRUPTED):
        by = f" by {stop.received}" if stop.received else ""
        print(f"\ninterrupted{by}: {ended} of the study's {planned['runs']} runs (a trial per seed) ended, "
              f"{counts[INTERRUPTED]} unfinished; continue with:\n{resume}", file=sys.stderr)
        return 130
    return 0


def show_plan(args: argparse.Namespace) -> int:
    """--plan (and --estimate): what the study will run, and on this machine what it will cost."""
    from studies import estimate

    try:
        study = with_overrides(args)
    except (SpaceError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.estimate:   # the data it will time
        from iabf.data import DataError
        try:
            check_data(study, args.data_dir)
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    t = time.perf_counter()
    print("\n".join(estimate.describe(study)), flush=True)
    if args.estimate:
        print(f"timing each model on this machine ({os.cpu_count()} CPUs, {study.resources['cpu']:g} per trial):",
              flush=True)
        est = estimate.estimate(study, args.chain_steps or study.chain_steps, args.max_concurrent)
        print(f"expected: {est['trial_hours']:.2f} trial-hours for {est['trials']} trials at their full budget (ASHA's "
              f"stops not counted); about {est['wall_hours'] * 60:.0f} min wall with {est['slots']} at once "
              f"(took {time.perf_counter() - t:.0f} s to estimate)")
        if study.adaptive:   # the same, had every comparison been decided at the earliest look
            from studies.adaptive import cost
            least = estimate.estimate(replace(study, seeds=study.seeds[:cost(study)["least"]]),
                                      args.chain_steps or study.chain_steps, args.max_concurrent, echo=lambda _: None)
            print(f"adaptive: at least {least['trial_hours']:.2f} trial-hours ({least['trials']} trials), about "
                  f"{least['wall_hours'] * 60:.0f} min wall, where every comparison is decided at the earliest look; "
                  f"the line above is the most (every arm to its last seed)")
    return 0


def with_overrides(args: argparse.Namespace):
    """The space with the command line's overrides, validated."""
    study = load_study(args.space)
    if args.stack is not None:
        study = check_stack(replace(study, stack=args.stack))
    if args.smoke:
        study = smoke(study)
    if args.gpus_per_trial is not None:
        study.resources["gpu"] = check_gpu(args.gpus_per_trial, "--gpus-per-trial")
    if args.max_concurrent is not None:
        study.max_concurrent = args.max_concurrent
    return study


def check_data(study, data_dir: str) -> None:
    from iabf.data import check_available

    study.fixed["data_dir"] = str(Path(data_dir).expanduser().resolve())
    for name in study.datasets():
        # every validation size a trial on it asks for (n_valid fixed, per dataset, per arm or a grid; 0: the spec's)
        searched = [v for vs in study.search.get("n_valid", {}).values() if isinstance(vs, list) for v in vs]
        asked = [study.fixed_for(name).get("n_valid", 0), *(a.fixed.get("n_valid", 0) for a in study.arms), *searched]
        for n_valid in sorted(set(asked)):
            check_available(name, study.fixed["data_dir"], n_valid)


def prepare(args: argparse.Namespace):
    """Everything checked before anything starts or is written: the space with the command line's
    overrides, the datasets, the tracking URI, the cluster address. Returns (study, tracking URI,
    experiment folder); raises one of the errors `main` turns into one line and exit code 2."""
    from studies import cluster, store, tracking

    study = with_overrides(args)
    check_data(study, args.data_dir)
    uri = store.check_uri(args.tracking_uri or store.default_tracking_uri())
    check_storage(args.storage)
    cluster.check_address(args.address)
    experiment_dir = resolve_experiment(args.storage, study, args.resume)
    if args.resume is not None and (changed := tracking.changed_since(uri, study, experiment_dir)):
        raise SpaceError(f"--resume {experiment_dir}: the study it began as differs from {args.space or study.path} "
                         f"now in {'; '.join(changed)}; a resumed study runs the plan it began with: restore the "
                         f"file (the parent run keeps it as space.yaml), or run the new plan as a new study "
                         f"(without --resume)")
    return study, uri, experiment_dir


if __name__ == "__main__":
    try:
        code = main()
    except KeyboardInterrupt:   # a stop signal outside the trials' fit (starting Ray, writing the report)
        print("error: interrupted", file=sys.stderr)
        code = 130
    exit_with(code)
