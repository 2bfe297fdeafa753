"""Per-dataset speed on one CPU thread: training examples/s per method, and the seconds of one
validation pass over the whole validation split, for each of Table 1's datasets.

With --before REV, the same measurement also runs on the code of git revision REV (a temporary
worktree, in a subprocess), and the two print side by side with their ratio: one run, one machine,
one load. With --precision fp32 bf16, the working tree is measured in both (Config.precision), side by
side with the ratio, and the line above the table says whether this CPU has bf16 kernels. Usage:
    python benchmarks/datasets.py --data-dir ../shared/data [--before REV | --precision fp32 bf16] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("binary_mnist", "mnist", "omniglot", "cifar10")
METHODS = ("necst", "abf", "iabf")
# training examples timed per dataset (after one warm-up batch): a few seconds each
TRAIN_EXAMPLES = {"binary_mnist": 3000, "mnist": 3000, "omniglot": 3000, "cifar10": 600}


def measure(data_dir: str, threads: int, datasets: list[str], precision: str = "fp32", device: str = "cpu") -> dict:
    """{dataset: {"train/<method>": examples/s, "val_seconds": s, "val_images": n}} for the code on
    sys.path. Uses only APIs that older revisions share (Config, load, build, train_step, evaluate);
    `precision` other than fp32 needs a revision that has Config.precision."""
    import torch

    from iabf import train as T
    from iabf.config import Config
    from iabf.data import load, to_float
    from iabf.models import build

    torch.set_num_threads(threads)
    out = {}
    for ds in datasets:
        n = TRAIN_EXAMPLES[ds]
        data = load(ds, data_dir, device, n + 100)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        row = {}
        for method in METHODS:
            cfg = Config(dataset=ds, method=method, K=5, eps=0.1, data_dir=data_dir, device=device,
                         **({} if precision == "fp32" else {"precision": precision}))
            torch.manual_seed(0)
            enc, dec, disc = (m.to(device) for m in build(ds, data.image_shape, cfg.bits))
            models = {"encoder": enc, "decoder": dec, "discriminator": disc}
            opts = {"model": torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=cfg.lr),
                    "discriminator": torch.optim.Adam(disc.parameters(), lr=cfg.lr)}
            gen = torch.Generator(device=device).manual_seed(0)
            step = lambda i: T.train_step(to_float(data.train[i:i + cfg.batch_size]), models, opts,  # noqa: E731
                                          data.binary, cfg, gen)
            step(n)                                                           # warm-up batch
            sync()
            t0 = time.perf_counter()
            for i in range(0, n, cfg.batch_size):
                step(i)
            sync()
            row[f"train/{method}"] = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        T.evaluate(enc, dec, data.val, data.binary, cfg, seed=1)
        sync()
        row["val_seconds"], row["val_images"] = time.perf_counter() - t0, len(data.val)
        out[ds] = row
    return out


def measure_revision(rev: str, data_dir: str, threads: int, datasets: list[str]) -> dict:
    """measure() on the code of git revision rev, from a temporary worktree, in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(tree), rev], check=True)
        try:
            code = (f"import json, sys; sys.path.insert(0, {str(tree)!r}); sys.path.insert(1, {str(ROOT)!r}); "
                    f"from benchmarks.datasets import measure; "
                    f"print(json.dumps(measure({data_dir!r}, {threads}, {datasets!r})))")
            env = {**os.environ, "PYTHONPATH": str(tree)}
            res = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--threads", type=int, default=1, help="torch threads (a study's trial has one core)")
    p.add_argument("--before", default="", help="a git revision to measure beside the working tree")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--precision", nargs=2, default=None, metavar=("A", "B"),
                   help="measure the working tree in two precisions side by side (e.g. fp32 bf16; tf32: CUDA)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = p.parse_args(argv)
    if args.before and args.precision:
        p.error("--before and --precision compare different things; give one")
    data_dir = str(Path(args.data_dir).resolve())
    sys.path.insert(0, str(ROOT))
    print(f"{args.threads} CPU thread(s), K = 5, batch 100, eval batch 1000; training examples timed: "
          + ", ".join(f"{d} {TRAIN_EXAMPLES[d]}" for d in args.datasets), flush=True)
    if args.precision:
        import torch

        from iabf.precision import has_bf16_kernels

        where = "this CPU (AVX512_BF16 or AMX)" if args.device == "cpu" else "this GPU"
        print(f"bf16 kernels on {where}: {'yes' if has_bf16_kernels(torch.device(args.device)) else 'no'}; "
              f"{args.precision[0]} -> {args.precision[1]}", flush=True)
        before = measure(data_dir, args.threads, args.datasets, args.precision[0], args.device)
        after = measure(data_dir, args.threads, args.datasets, args.precision[1], args.device)
    else:
        before = measure_revision(args.before, data_dir, args.threads, args.datasets) if args.before else None
        after = measure(data_dir, args.threads, args.datasets, device=args.device)
    cols = [f"train/{m}" for m in METHODS] + ["val_seconds"]
    head = "dataset        " + "".join(f"{c:>26s}" for c in cols)
    print(head + ("\n(before -> after, ratio; examples/s, validation pass in s)" if before else ""))
    for ds in args.datasets:
        cells = []
        for c in cols:
            a = after[ds][c]
            fmt = ".1f" if c.startswith("train") else ".3g"             # validation: seconds, 3 digits
            if before is None:
                cells.append(f"{a:26{fmt}}")
            else:
                b = before[ds][c]
                ratio = a / b if c.startswith("train") else b / a        # > 1 is faster
                cells.append(f"{b:9{fmt}} -> {a:7{fmt}} ({ratio:4.2f}x)".rjust(26))
        print(f"{ds:15s}" + "".join(cells) + f"   val split {after[ds]['val_images']} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
