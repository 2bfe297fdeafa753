"""Cost of a study: how the wall time of a study (default: quick.yaml) splits between training,
evaluation, checkpointing, tracking and the rest (Ray start-up, scheduling, process start, report).

    python benchmarks/study_cost.py [--space search_spaces/quick.yaml] [--smoke] [--stack S] [--no-asha]

--stack S runs the same seeds stacked S to a trial; --no-asha runs every trial to the end, so that
a stacked and an unstacked study do the same work.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from iabf import metrics as M  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default=str(ROOT / "search_spaces" / "quick.yaml"))
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--stack", type=int, default=None)
    p.add_argument("--no-asha", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        space = args.space
        if args.no_asha:   # a copy of the space without its scheduler
            raw = yaml.safe_load(Path(space).read_text())
            raw.pop("scheduler", None)
            space = f"{tmp}/space.yaml"
            Path(space).write_text(yaml.safe_dump(raw))
        cmd = [sys.executable, str(ROOT / "studies" / "ablation.py"), "--space", space, "--tracking-uri", uri,
               "--storage", f"{tmp}/results", "--data-dir", str(Path(args.data_dir).resolve()),
               *(["--stack", str(args.stack)] if args.stack else [])]
        t0 = time.perf_counter()
        out = subprocess.run(cmd + (["--smoke"] if args.smoke else []), capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if out.returncode:
            print(out.stdout[-2000:], out.stderr[-2000:])
            return out.returncode
        client = MlflowClient(uri)
        exp = next(e for e in client.search_experiments() if e.name != "Default")
        runs = client.search_runs([exp.experiment_id], max_results=10_000)
        parent = next(r for r in runs if "trial_id" not in r.data.tags)
        children = [r for r in runs if "trial_id" in r.data.tags]

        def total(key):
            return sum(m.value for r in children for m in client.get_metric_history(r.info.run_id, key))

        epoch, evals, ckpt = total(M.EPOCH_SECONDS), total(M.EVAL_SECONDS), total(M.CHECKPOINT_SECONDS)
        parts = {"training": epoch - evals, "evaluation": evals, "checkpointing": ckpt,
                 "artifacts (grids, Markov chain)": total(M.ARTIFACT_SECONDS),
                 "tracking (MLflow)": parent.data.metrics.get("study/tracking_seconds", float("nan"))}
    trial_seconds = sum(v for k, v in parts.items() if k != "tracking (MLflow)")
    ended = ", ".join(f"{int(parent.data.metrics.get('study/' + k, 0))} {k}" for k in ("completed", "early_stopped", "failed"))
    print(f"study {exp.name}: {len(children)} runs ({ended}){f', stacked {args.stack} seeds a trial' if args.stack else ''}, "
          f"wall {wall:.1f} s on the driver")
    print("summed over trials (trials run concurrently, so these can exceed the wall time):")
    for k, v in parts.items():
        print(f"  {k:32s} {v:8.2f} s")
    print(f"  {'in trials, total':32s} {trial_seconds:8.2f} s   (on average {trial_seconds / wall:.2f} trials' work per wall second)")
    for k in ("training", "evaluation", "checkpointing", "artifacts (grids, Markov chain)"):
        print(f"  share of trial time: {k:32s} {parts[k] / trial_seconds:6.1%}")
    print("the rest of the wall time is Ray start-up, scheduling, trial process start-up, imports and the report")
    return 0


if __name__ == "__main__":
    sys.exit(main())
