"""torch.compile behind `Config.compile`: training examples/s of `iabf.train.run` with each mode
against compile off (MNIST MLP, IABF, K = 5), and what the compilation costs in the first epoch.

Each mode trains 1 + repeats epochs; the first epoch (which compiles) is timed apart and dropped
from the rate. Prints per mode the median examples/s, the first epoch's seconds and the ratio to
off. Usage:
    python benchmarks/compile.py --data-dir ../shared/data [--examples 5000] [--repeats 3]
        [--modes default reduce-overhead] [--device cuda]
"""
from __future__ import annotations

import dataclasses
import statistics
import sys

import common
from iabf import metrics as M
from iabf import train


def main(argv=None) -> int:
    p = common.parser(__doc__, "training examples per epoch")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs after the first")
    p.add_argument("--modes", nargs="+", default=["default", "reduce-overhead"])
    args = p.parse_args(argv)
    cfg, data, name = common.setup(args)
    cfg = dataclasses.replace(cfg, epochs=1 + args.repeats)
    print(f"{cfg.dataset} {cfg.method}, K = {cfg.K}, batch {cfg.batch_size}, {len(data.train)} examples per epoch, "
          f"median of {args.repeats} epochs after the first; {name}")
    print(f"{'compile':>16} {'examples/s':>11} {'first epoch s':>14} {'vs off':>7}")
    base = None
    for mode in ["off", *args.modes]:
        history = []
        train.run(dataclasses.replace(cfg, compile=mode), lambda m, _: history.append(m), data=data)
        rate = statistics.median(m[M.EXAMPLES_PER_S] for m in history[1:])
        first = len(data.train) / history[0][M.EXAMPLES_PER_S]
        base = base or rate
        print(f"{mode:>16} {rate:11.0f} {first:14.1f} {rate / base:7.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
