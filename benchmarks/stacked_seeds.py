"""Stacked seeds (Config.stack): training examples/s of S seeds trained as one vmapped model,
against the same S seeds trained one after another as separate runs, for S = 1, 2, 4, 8.

Both go through the real code (`iabf.train.run` with and without `stack`) and count training time only
(the `sys/examples_per_s` an epoch reports; each run's first epoch warms up and is dropped).
Separate runs one after another on one device have the aggregate rate of one run; packing separate
trials side by side on a GPU is `packing.py`'s question. Rounds alternate separate and stacked.
Prints per S the aggregate examples/s (medians over rounds) and the speedup stacked / separate
(median of the rounds' ratios). Usage:
    python benchmarks/stacked_seeds.py --data-dir ../shared/data [--dataset mnist] [--method iabf]
        [--examples 5000] [--repeats 3] [--stacks 2 4 8] [--device cuda]
"""
from __future__ import annotations

import statistics
import sys

import common
from iabf import metrics as M
from iabf import train
from iabf.config import Config


def rate(run, cfg: Config, data) -> float:
    """Per-seed training examples/s of the second epoch (the first warms up)."""
    history = []
    run(Config(**{**cfg.to_dict(), "epochs": 2}), lambda m, _: history.append(m[M.EXAMPLES_PER_S]), data=data)
    return history[-1]


def main(argv=None) -> int:
    p = common.parser(__doc__, "training examples per epoch (per seed)")
    p.add_argument("--repeats", type=int, default=3, help="rounds of (separate, stacked), alternated")
    p.add_argument("--stacks", type=int, nargs="+", default=[2, 4, 8])
    args = p.parse_args(argv)
    cfg, data, name = common.setup(args)
    print(f"{cfg.dataset} {cfg.method}, K = {cfg.K}, batch {cfg.batch_size}, {len(data.train)} examples per seed "
          f"per epoch; {name}; medians of {args.repeats} alternating rounds")
    print(f"{'S':>3} {'separate ex/s':>14} {'stacked ex/s (all seeds)':>25} {'per seed':>9} {'stacked / separate':>19}")
    for S in args.stacks:
        separate, together = [], []
        for _ in range(args.repeats):   # alternate, so a slow spell of a shared machine hits both
            separate.append(rate(train.run, cfg, data))
            together.append(S * rate(train.run, Config(**{**cfg.to_dict(), "stack": S}), data))
        ratio = statistics.median(t / s for t, s in zip(together, separate))
        med = statistics.median(together)
        print(f"{S:>3} {statistics.median(separate):14.0f} {med:25.0f} {med / S:9.0f} {ratio:19.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
