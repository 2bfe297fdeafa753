"""What the training benchmarks share: their common options, the config and the data they time."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from iabf.config import Config  # noqa: E402
from iabf.data import Splits, load  # noqa: E402


def parser(doc: str, examples_help: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--method", default="iabf")
    p.add_argument("--examples", type=int, default=5000, help=examples_help)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    return p


def setup(args: argparse.Namespace) -> tuple[Config, Splits, str]:
    """(config: IABF-style K = 5 at the paper's batch size, data, the machine in words)."""
    torch.set_num_threads(args.threads)
    cfg = Config(dataset=args.dataset, method=args.method, K=5, device=args.device, data_dir=args.data_dir,
                 max_train_examples=args.examples)
    data = load(cfg.dataset, cfg.data_dir, torch.device(args.device), cfg.max_train_examples)
    # evaluation is not timed, but it runs every epoch: keep it small
    data = dataclasses.replace(data, val=data.val[:1000], test=data.test[:1000])
    name = "GPU " + torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} threads"
    return cfg, data, name
