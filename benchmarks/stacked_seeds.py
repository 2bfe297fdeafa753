"""Stacked seeds (Config.stack): training examples/s of S seeds trained as one vmapped model,
against the same S seeds trained one after another as separate runs, for S = 1, 2, 4, 8.

Both go through the real code (`iabf.stacked.run`, `iabf.train.run`) and count training time only
(the `sys/examples_per_s` an epoch reports; each run's first epoch warms up and is dropped).
Separate runs one after another on one device have the aggregate rate of one run; packing separate
trials side by side on a GPU is `packing.py`'s question. Rounds alternate separate and stacked.
Prints per S the aggregate examples/s (medians over rounds) and the speedup stacked / separate
(median of the rounds' ratios). Usage:
    python benchmarks/stacked_seeds.py --data-dir ../shared/data [--dataset mnist] [--method iabf]
        [--examples 5000] [--repeats 3] [--stacks 2 4 8] [--device cuda]
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from iabf import metrics as M  # noqa: E402
from iabf import stacked, train  # noqa: E402
from iabf.config import Config  # noqa: E402
from iabf.data import load  # noqa: E402


def rate(run, cfg: Config, data) -> float:
    """Per-seed training examples/s of the second epoch (the first warms up)."""
    history = []
    run(Config(**{**cfg.to_dict(), "epochs": 2}), lambda m, _: history.append(m[M.EXAMPLES_PER_S]), data=data)
    return history[-1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--method", default="iabf")
    p.add_argument("--examples", type=int, default=5000, help="training examples per epoch (per seed)")
    p.add_argument("--repeats", type=int, default=3, help="rounds of (separate, stacked), alternated")
    p.add_argument("--stacks", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = Config(dataset=args.dataset, method=args.method, K=5, device=args.device, data_dir=args.data_dir,
                 max_train_examples=args.examples)
    data = load(cfg.dataset, cfg.data_dir, torch.device(args.device), cfg.max_train_examples)
    # validation is not timed, but it runs every epoch: keep it small
    data = dataclasses.replace(data, val=data.val[:1000], test=data.test[:1000])
    name = "GPU " + torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} threads"
    print(f"{cfg.dataset} {cfg.method}, K = {cfg.K}, batch {cfg.batch_size}, {len(data.train)} examples per seed "
          f"per epoch; {name}; medians of {args.repeats} alternating rounds")
    print(f"{'S':>3} {'separate ex/s':>14} {'stacked ex/s (all seeds)':>25} {'per seed':>9} {'stacked / separate':>19}")
    for S in args.stacks:
        separate, together = [], []
        for _ in range(args.repeats):   # alternate, so a slow spell of a shared machine hits both
            separate.append(rate(train.run, cfg, data))
            together.append(S * rate(stacked.run, Config(**{**cfg.to_dict(), "stack": S}), data))
        ratio = statistics.median(t / s for t, s in zip(together, separate))
        med = statistics.median(together)
        print(f"{S:>3} {statistics.median(separate):14.0f} {med:25.0f} {med / S:9.0f} {ratio:19.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
