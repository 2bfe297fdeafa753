"""The best runs of a study, from MLflow: per cell and arm, the configuration the search chose, the
runs that confirm it on every seed, and where their checkpoints are.

    python -m analysis.best --study quick --tracking-uri sqlite:///mlflow.db [--json]

A checkpoint URI (runs:/<run id>/checkpoint.pt) loads with
    iabf.train.load_models(mlflow.artifacts.download_artifacts(URI, tracking_uri=...))
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import warnings

from analysis import entries
from iabf.config import exit_with
from iabf.metrics import STATE
from iabf.record import CONFIRMS, PARAM, StoreError, check_store


def best(uri: str, study: str, parent: str | None = None) -> tuple[list[dict], bool]:
    """One record per table entry (cell and arm). Returns (records, confirmed): confirmed is False
    for a study without confirmation runs, whose records are then its best search runs."""
    found = entries.gather(uri, study, parent)
    chosen, confirmed = entries.chosen(found), found.confirmed
    by_id = found.trials.set_index("run_id")
    records = []
    for e in chosen.itertuples():
        ids = list(e.run_ids)
        records.append({
            "cell": by_id.loc[ids[0], "cell"],
            "cell_values": {entries.axis_name(c): _plain(chosen.at[e.Index, c])
                            for c in entries.cell_columns(chosen)},
            "dataset": e.dataset, "bits": int(e.bits), "eps": float(e.eps),
            "arm": e.arm, "method": e.method, "config": e.config,
            "params": {k.removeprefix(PARAM): _plain(v) for k, v in by_id.loc[ids[0]].items()
                       if k.startswith(PARAM) and k not in entries.NOT_CONFIG},
            CONFIRMS: by_id.loc[ids[0], CONFIRMS], "n": int(e.n), "val": float(e.val),
            "test": float(e.test), "test_std": None if math.isnan(e.std) else float(e.std),
            "runs": [{"run_id": i, "seed": int(by_id.loc[i, "seed"]), "test": float(by_id.loc[i, "test"]),
                      "checkpoint": f"runs:/{i}/{STATE}"} for i in ids]})
    return records, confirmed


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.best", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", required=True, help="the study's name (its MLflow experiment)")
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db", help="MLflow tracking URI (default: %(default)s)")
    p.add_argument("--parent", default=None, help="a study run id; default: the study's latest run")
    p.add_argument("--json", action="store_true", help="print JSON (one object per cell and arm) for scripts")
    args = p.parse_args(argv)
    try:
        check_store(args.tracking_uri)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            records, confirmed = best(args.tracking_uri, args.study, args.parent)
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except entries.NothingToReport as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"study": args.study, "confirmed": confirmed, "entries": records}, indent=2))
        return 0
    if not confirmed:
        print("note: this study has no confirmation runs; these are its best search runs", file=sys.stderr)
    for r in records:
        std = f" ± {r['test_std']:.4g}" if r["test_std"] is not None else ""
        print(f"{r['cell']}  {r['arm']}: {r['config']}  test {r['test']:.4g}{std} (n = {r['n']})"
              + (f"  confirms search trial {r[CONFIRMS]}" if r[CONFIRMS] else ""))
        for run in r["runs"]:
            print(f"    seed {run['seed']}: run {run['run_id']}  test {run['test']:.4g}  {run['checkpoint']}")
    return 0


if __name__ == "__main__":
    exit_with(main())
