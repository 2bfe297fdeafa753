"""torch.compile behind `Config.compile`: training examples/s of `iabf.train.run` with each mode
against compile off (MNIST MLP, IABF, K = 5), and what the compilation costs in the first epoch.

Each mode trains 1 + repeats epochs; the first epoch (which compiles) is timed apart and dropped
from the rate. Prints per mode the median examples/s, the first epoch's seconds and the ratio to
off. Usage:
    python benchmarks/compile.py --data-dir ../shared/data [--examples 5000] [--repeats 3]
        [--modes default reduce-overhead] [--device cuda]
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
from iabf import train  # noqa: E402
from iabf.config import Config  # noqa: E402
from iabf.data import load  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--method", default="iabf")
    p.add_argument("--examples", type=int, default=5000, help="training examples per epoch")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs after the first")
    p.add_argument("--modes", nargs="+", default=["default", "reduce-overhead"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = Config(dataset=args.dataset, method=args.method, K=5, epochs=1 + args.repeats, device=args.device,
                 data_dir=args.data_dir, max_train_examples=args.examples)
    data = load(cfg.dataset, cfg.data_dir, torch.device(args.device), cfg.max_train_examples)
    data = dataclasses.replace(data, val=data.val[:1000], test=data.test[:1000])   # evaluation is not timed
    name = "GPU " + torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} threads"
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
