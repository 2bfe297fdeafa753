"""Training throughput (examples/s), MNIST MLP, IABF, K = 5:

  (a) our trainable's training loop as Ray Tune runs it (one trial, every epoch a repeat)
  (b) a minimal hand-written PyTorch loop of the same model and loss (no Ray, MLflow, checkpoints)
  (c) the naive pipeline: a torchvision-style Dataset of PIL images, per-sample ToTensor, DataLoader

Prints each figure (median of the repeats) and the ratios a/b (target >= 0.95) and a/c
(target >= 5 on a GPU). Usage:
    python benchmarks/throughput.py --data-dir ../shared/data [--examples 10000] [--repeats 3] [--device cuda]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from iabf import metrics as M  # noqa: E402
from iabf.config import Config  # noqa: E402
from iabf.data import load, to_float  # noqa: E402
from iabf.losses import discriminator_loss, objective, tc_input  # noqa: E402
from iabf.models import build  # noqa: E402


def ours_under_ray(cfg: Config, repeats: int, threads: int, gpu: float) -> list[float]:
    import ray
    from ray import tune

    from iabf.tune import trainable

    ray.init(num_cpus=threads, num_gpus=1 if gpu else 0, include_dashboard=False, log_to_driver=False)
    try:
        params = {**cfg.to_dict(), "epochs": repeats + 1}
        with tempfile.TemporaryDirectory() as d:
            grid = tune.Tuner(tune.with_resources(tune.with_parameters(trainable, chain_steps=9),
                                                  {"cpu": threads, "gpu": gpu}),
                              param_space=params, run_config=tune.RunConfig(storage_path=d, verbose=0)).fit()
            history = grid[0].metrics_dataframe
    finally:
        ray.shutdown()
    return history[M.EXAMPLES_PER_S].tolist()[1:]          # the first epoch warms up


def baseline_step(x, enc, dec, disc, opt, opt_d, binary: bool, cfg: Config, gen=None) -> None:
    """One IABF step written out by hand: the TC classifier, then encoder and decoder."""
    p = torch.sigmoid(enc(x))
    y = torch.bernoulli(p.detach(), generator=gen)
    d_loss = discriminator_loss(disc, tc_input(p, y, cfg.tc_input).detach(), gen)
    opt_d.zero_grad(), d_loss.backward(), opt_d.step()
    loss, _ = objective(dec, disc, enc, x, p, y, binary, cfg, gen)
    opt.zero_grad(), loss.backward(), opt.step()


def hand_loop(cfg: Config, repeats: int) -> list[float]:
    """What a researcher would write in an afternoon: tensors on the device, index batches."""
    device = torch.device(cfg.device)
    torch.manual_seed(0)
    data = load(cfg.dataset, cfg.data_dir, device, cfg.max_train_examples)
    enc, dec, disc = (m.to(device) for m in build(cfg.dataset, data.image_shape, cfg.bits))
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=cfg.lr)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr)
    gen = torch.Generator(device=device).manual_seed(0)
    rates, n = [], len(data.train)
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen, device=device)
        for i in range(0, n, cfg.batch_size):
            baseline_step(to_float(data.train[perm[i:i + cfg.batch_size]]), enc, dec, disc, opt, opt_d,
                          data.binary, cfg, gen)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(n / (time.perf_counter() - t0))
    return rates[1:]


class PILDataset(torch.utils.data.Dataset):
    """torchvision.datasets.MNIST's __getitem__: a PIL image per sample, then the transform."""

    def __init__(self, images: np.ndarray):
        from torchvision import transforms

        self.images, self.transform = images, transforms.ToTensor()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i], mode="L"))


def naive_loop(cfg: Config, repeats: int) -> list[float]:
    device = torch.device(cfg.device)
    torch.manual_seed(0)
    data = load(cfg.dataset, cfg.data_dir, "cpu", cfg.max_train_examples)
    loader = torch.utils.data.DataLoader(PILDataset(data.train[:, 0].numpy()), batch_size=cfg.batch_size, shuffle=True)
    enc, dec, disc = (m.to(device) for m in build(cfg.dataset, data.image_shape, cfg.bits))
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=cfg.lr)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr)
    rates = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        for x in loader:
            baseline_step(x.to(device), enc, dec, disc, opt, opt_d, data.binary, cfg)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(len(data.train) / (time.perf_counter() - t0))
    return rates[1:]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--examples", type=int, default=10_000, help="training examples per epoch (repeat)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--method", default="iabf")
    args = p.parse_args(argv)
    threads = torch.get_num_threads()
    cfg = Config(dataset="mnist", method=args.method, eps=0.1, K=5, data_dir=str(Path(args.data_dir).resolve()),
                 max_train_examples=args.examples, device=args.device)
    gpu = 1.0 if args.device == "cuda" else 0.0
    print(f"MNIST MLP, {cfg.method}, K={cfg.K}, batch {cfg.batch_size}, {args.examples} examples x {args.repeats} "
          f"repeats, device {args.device}, {threads} CPU threads", flush=True)
    results = {"b_hand_loop": hand_loop(cfg, args.repeats), "c_naive_dataloader": naive_loop(cfg, args.repeats),
               "a_ours_ray": ours_under_ray(cfg, args.repeats, threads, gpu)}
    med = {k: statistics.median(v) for k, v in results.items()}
    for k in sorted(med):
        print(f"{k:22s} {med[k]:10.0f} examples/s   (repeats: {', '.join(f'{r:.0f}' for r in results[k])})")
    ab, ac = med["a_ours_ray"] / med["b_hand_loop"], med["a_ours_ray"] / med["c_naive_dataloader"]
    print(f"a/b = {ab:.3f}   (target >= 0.95: {'met' if ab >= 0.95 else 'NOT met'})")
    print(f"a/c = {ac:.2f}    (target >= 5 on a GPU{'' if args.device == 'cuda' else '; on CPU the loop is compute-bound'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
