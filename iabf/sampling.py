"""The implicit generative model of a trained code (eq. 32, Fig. 3) and reconstruction grids.

    python -m iabf.sampling runs/mnist-iabf-eps0.1-lam0.01-K5-s0/best.pt --data-dir DIR --out chain.png
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch
from torchvision.utils import save_image

from .channels import transmit
from .config import exit_with
from .data import DataError, load_for, to_float


@torch.no_grad()
def markov_chain(enc, dec, x0: torch.Tensor, eps: float, channel: str = "bsc", steps: int = 9000,
                 every: int = 1000, noise_std: float = 0.01, gen: torch.Generator | None = None,
                 send=None) -> torch.Tensor:
    """Eq. 32: y_t ~ p_noisy(y|x_t) through the channel, x_{t+1} from q(x|y_t).

    As in the reference: x_{t+1} is the decoder's mean plus Gaussian noise of std `noise_std`,
    clipped to [0, 1]. x0: (N, C, H, W) in [0, 1]. Returns (1 + steps // every, N, C, H, W):
    the start and every `every`-th state. send: how a code crosses (separation.link); default the channel."""
    send = send or (lambda p, g: transmit(p, eps, channel, g))
    x, frames = x0, [x0]
    for t in range(1, steps + 1):
        _, received = send(torch.sigmoid(enc(x)), gen)
        x = torch.sigmoid(dec(received))
        noise = torch.randn(x.shape, generator=gen, device=x.device)
        x = (x + noise_std * noise).clamp(0, 1)
        if t % every == 0:
            frames.append(x)
    return torch.stack(frames)


@torch.no_grad()
def reconstructions(enc, dec, x: torch.Tensor, eps: float, channel: str = "bsc",
                    gen: torch.Generator | None = None, send=None) -> torch.Tensor:
    """(2, N, C, H, W): the images and their decodings after one pass through the channel."""
    send = send or (lambda p, g: transmit(p, eps, channel, g))
    _, received = send(torch.sigmoid(enc(x)), gen)
    return torch.stack([x, torch.sigmoid(dec(received))])


def save_grid(frames: torch.Tensor, path: str | Path) -> Path:
    """(rows, N, C, H, W) -> one PNG (or any format save_image knows), a row per frame."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows, n = frames.shape[:2]
    save_image(frames.reshape(rows * n, *frames.shape[2:]).float().cpu(), path, nrow=n, padding=1)
    return path


def main(argv: list[str] | None = None) -> int:
    from .separation import link
    from .train import CheckpointError, load_models

    p = argparse.ArgumentParser(prog="python -m iabf.sampling", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="a best.pt written by python -m iabf.train")
    p.add_argument("--data-dir", default=None, help="where the starting test images come from; default: the run's")
    p.add_argument("--out", default="chain.png", help="image file to write")
    p.add_argument("--n", type=int, default=10, help="chains (test images to start from)")
    p.add_argument("--steps", type=int, default=9000, help="Markov-chain steps")
    p.add_argument("--every", type=int, default=1000, help="save a row every this many steps")
    p.add_argument("--eps", type=float, default=None, help="channel noise; default: the run's test eps")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        cfg, enc, dec = load_models(args.checkpoint)
        data = load_for(replace(cfg, data_dir=args.data_dir or cfg.data_dir, download=False))
        x0 = to_float(data.test[: args.n])
        gen = torch.Generator().manual_seed(args.seed)
        eps = cfg.eval_eps if args.eps is None else args.eps
        frames = markov_chain(enc, dec, x0, eps, cfg.channel, args.steps, args.every, gen=gen, send=link(cfg, eps))
        print(save_grid(frames, args.out))
    except (CheckpointError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    exit_with(main())
