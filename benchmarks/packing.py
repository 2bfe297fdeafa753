"""Trial packing on one GPU: aggregate training examples/s with 1, 2, 4, 8 trials sharing a GPU
(fractional `gpu` resources), and the GPU memory each trial needs. MNIST MLP, IABF, K = 5.

    python benchmarks/packing.py --data-dir DIR [--epochs 3] [--examples 50000]

Needs a CUDA device; without one it says so and exits 0. The packing factor it supports goes into
search_spaces/table1.yaml (resources.gpu = 1 / factor).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from iabf import metrics as M  # noqa: E402
from iabf.config import Config  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--examples", type=int, default=50_000)
    p.add_argument("--packs", default="1,2,4,8")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: packing needs a GPU; nothing measured")
        return 0
    import os

    import ray
    from ray import tune

    from iabf.tune import trainable

    cfg = Config(dataset="mnist", method="iabf", eps=0.1, K=5, epochs=args.epochs, device="auto",
                 data_dir=str(Path(args.data_dir).resolve()), max_train_examples=args.examples)
    print(f"{torch.cuda.get_device_name()}: MNIST MLP, IABF, K=5, {args.examples} examples x {args.epochs} epochs")
    print(f"{'trials':>6} {'gpu each':>8} {'aggregate ex/s':>15} {'per trial ex/s':>15} {'peak MB/trial':>14} {'vs 1 trial':>10}")
    base, aggregate = None, {}
    for k in [int(x) for x in args.packs.split(",")]:
        ray.init(num_cpus=os.cpu_count(), num_gpus=1, include_dashboard=False, log_to_driver=False)
        cpus = max(1, os.cpu_count() // k)
        with tempfile.TemporaryDirectory() as d:
            grid = tune.Tuner(tune.with_resources(tune.with_parameters(trainable, chain_steps=9), {"cpu": cpus, "gpu": 1 / k}),
                              param_space={**cfg.to_dict(), "seed": tune.grid_search(list(range(k)))},
                              run_config=tune.RunConfig(storage_path=d, verbose=0)).fit()
            frames = [r.metrics_dataframe for r in grid]
        ray.shutdown()
        # the epochs after the first, while every trial runs: per-trial rate, summed
        per_trial = [f[M.EXAMPLES_PER_S].iloc[1:].median() for f in frames]
        agg = sum(per_trial)
        base = base or agg
        mem = max(f[M.GPU_PEAK_MB].max() for f in frames)
        aggregate[k] = agg
        print(f"{k:>6} {1 / k:>8.3f} {agg:>15.0f} {agg / k:>15.0f} {mem:>14.0f} {agg / base:>9.2f}x")
    # the fewest trials per GPU that reach 95% of the best aggregate: more would only add contention
    best = max(aggregate.values())
    factor = min(k for k, agg in aggregate.items() if agg >= 0.95 * best)
    print(f"packing factor supported: {factor} trials per GPU -> resources: {{gpu: {1 / factor:g}}} in table1.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
