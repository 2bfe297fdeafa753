"""Train and evaluate one model: `run(config, report)` is the whole loop, top to bottom.

No Ray and no MLflow in here: a caller passes `report(metrics, checkpoint)`, called once per epoch
with that epoch's metrics and a function that returns the full training state, to save or ignore.

    python -m iabf.train --dataset mnist --method iabf --eps 0.1 --lam 0.01 --K 5 --epochs 10
    python -m iabf.train --dataset mnist --stack 4      # seeds 0-3 as one stacked model (stacked.py)

The same loop trains one seed or a stack of seeds (`Config.stack`): per seed the initialisation,
batch order, validation, best epoch and checkpoint of its own separate run.
"""
from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from . import metrics as M
from . import stacked
from .channels import bernoulli
from .config import (Config, ConfigError, config_from_args, config_parser, exit_with, run_name, seed_configs,
                     warnings_in_one_line)
from .data import IMAGE_SHAPE, DataError, Splits, load_for, to_float
from .losses import binary_entropy, discriminator_loss, distortion, objective, tc_input
from .models import build
from .precision import autocast, check as check_precision
from .separation import link, source_code
from .stacked import NAMES, seed_metrics

CHECKPOINT_VERSION = 1
Report = Callable[[dict, Callable[[], list[dict]]], None]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the run."""


class Diverged(FloatingPointError):
    """Training produced a non-finite loss. Deterministic: a retry would fail the same way."""

    def __init__(self, epoch: int, what: str):
        super().__init__(f"training diverged at epoch {epoch}: {what}")
        self.epoch = epoch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' is not allowed: no CUDA device is visible (use cpu or auto)")
    return torch.device(name)


# Evaluation runs the networks on at most this many images at a time. The channel noise is still
# drawn per eval_batch_size batch, so this changes speed, not numbers: CIFAR-10's conv activations
# for 1,000 images (260 MB a layer) leave the cache, and a chunk of 100 evaluates ~3x faster on a CPU.
FORWARD_CHUNK = 100


def forward(module, x: torch.Tensor, chunk: int = FORWARD_CHUNK) -> torch.Tensor:
    return torch.cat([module(c) for c in x.split(chunk)]) if len(x) > chunk else module(x)


@torch.no_grad()
def evaluate(enc, dec, images: torch.Tensor, binary: bool, cfg: Config, seed: int,
             chunk: int = FORWARD_CHUNK) -> dict:
    """Table 1's measure over a whole split: encode, one channel sample at the test eps, decode.
    The channel noise is drawn from a fixed seed, so epochs are compared on the same noise.
    Also the bit error rate of that channel draw, the word error rate (codes that arrived with any
    bit wrong; for separation: after the channel decoder), and the per-bit entropies of the codes (eq. 11).
    chunk: images per forward pass (speed only, see FORWARD_CHUNK). Returns plain floats (one device sync)."""
    was_training = enc.training
    enc.eval(), dec.eval()
    gen = torch.Generator(device=images.device).manual_seed(seed)
    n = len(images)
    dist = errors = words = h_cond = torch.zeros((), device=images.device)
    p_sum = 0
    send = link(cfg)                                                # the channel (separation: coded)
    for i in range(0, n, cfg.eval_batch_size):
        x = to_float(images[i:i + cfg.eval_batch_size])
        with autocast(cfg.precision, images.device):
            p = torch.sigmoid(forward(enc, x, chunk).float())       # (B, M), float32 (precision.py)
        sent, received = send(p, gen)
        with autocast(cfg.precision, images.device):
            logits = forward(dec, received, chunk)
        dist = dist + distortion(logits, x, binary).sum()
        wrong = received != sent
        errors, words = errors + wrong.sum(), words + wrong.any(-1).sum()
        h_cond = h_cond + binary_entropy(p).sum()
        p_sum = p_sum + p.sum(0)
    enc.train(was_training), dec.train(was_training)
    h_marg = binary_entropy(p_sum / n)                              # H(Y_d) per bit, nats
    bits = h_marg.numel()
    out = torch.stack([dist / n, errors / (n * bits), words / n, h_marg.mean() / math.log(2),
                       (h_marg.sum() - h_cond / n) / math.log(2)]).tolist()
    return dict(zip(("distortion", "bit_error_rate", "word_error_rate", "marginal_entropy", "mutual_info"), out))


def snapshot(models: dict, opt_states: dict, gen: torch.Generator, epoch: int, best: dict, cfg: Config,
             wall_seconds: float) -> dict:
    """Everything a run needs to continue, in types that load with weights_only=True.
    opt_states: each optimizer's state_dict()."""
    return {
        "version": CHECKPOINT_VERSION,
        "config": cfg.to_dict(),
        "epoch": epoch,
        "best_val": best["val"],
        "best_epoch": best["epoch"],
        "model": {k: m.state_dict() for k, m in models.items()},
        "best_model": best["model"],
        "optimizer": opt_states,
        "generator": gen.get_state(),
        "wall_seconds": wall_seconds,
        "image_shape": list(models["decoder"].image_shape),   # a dataset of one's own has no table entry
    }


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write atomically (temporary file, then rename): a crash never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} not found") from None
    except Exception as e:  # a truncated or foreign file: say which and why, in one line
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {path} is not an iabf checkpoint of version {CHECKPOINT_VERSION}")
    return state


def models_from_state(state: dict, which: str = "best_model", device="cpu"):
    """(config, encoder, decoder) in eval mode, by default with the best-by-validation weights."""
    cfg = Config.from_dict(state["config"])
    enc, dec, _ = build(cfg.dataset, tuple(state.get("image_shape") or IMAGE_SHAPE[cfg.dataset]), cfg.latent_bits)
    weights = state[which] or state["model"]
    enc.load_state_dict(weights["encoder"]), dec.load_state_dict(weights["decoder"])
    return cfg, enc.to(device).eval(), dec.to(device).eval()


def load_models(path: str | os.PathLike, which: str = "best_model", device="cpu"):
    return models_from_state(load_checkpoint(path, device), which, device)


def train_step(x: torch.Tensor, models: dict, opts: dict, binary: bool, cfg: Config, gen) -> dict:
    """One step of Algorithm 1 on a batch x: the TC classifier (iabf), then encoder and decoder on
    eq. 29. Returns detached per-batch statistics, left on the device."""
    enc, dec, disc = models["encoder"], models["decoder"], models["discriminator"]
    # forward passes under autocast (fp32: nothing); each backward follows the dtypes of its forward
    with autocast(cfg.precision, x.device):
        p = torch.sigmoid(enc(x).float())                                      # (B, M), float32 (precision.py)
    y = None if cfg.method == "necst" else bernoulli(p.detach(), gen)          # line 5
    stats = {}
    if cfg.method == "iabf":  # lines 6-8: the classifier first, on this batch's codes
        with autocast(cfg.precision, x.device):
            d_loss = discriminator_loss(disc, tc_input(p, y, cfg.tc_input).detach(), gen)
        opts["discriminator"].zero_grad(set_to_none=True)
        d_loss.backward()
        opts["discriminator"].step()
        stats["disc_loss"] = d_loss.detach()
    with autocast(cfg.precision, x.device):
        loss, more = objective(dec, disc, enc, x, p, y, binary, cfg, gen)    # lines 9-10, eq. 29
    opts["model"].zero_grad(set_to_none=True)
    loss.backward()
    opts["model"].step()
    return {**stats, **more}


def test_best(enc, dec, best: dict, data: Splits, cfg: Config) -> dict:
    """Table 1's number: the best-by-validation weights on the test split, one channel sample."""
    enc_b, dec_b = copy.deepcopy(enc), copy.deepcopy(dec)
    enc_b.load_state_dict(best["model"]["encoder"]), dec_b.load_state_dict(best["model"]["decoder"])
    return {f"test/{k}": v for k, v in evaluate(enc_b, dec_b, data.test, data.binary, cfg, seed=cfg.seed + 2).items()}


def validation_images(data: Splits, cfg: Config, epoch: int) -> torch.Tensor:
    """The whole validation split (or its first cfg.val_subset images, a fixed subset), or
    (cfg.val_batch, as the reference code) one batch of that many images drawn from it afresh each
    epoch, reproducibly from the seed and the epoch."""
    val = data.val[:cfg.val_subset] if cfg.val_subset else data.val
    if not cfg.val_batch:
        return val
    gen = torch.Generator(device=val.device).manual_seed(cfg.seed * 100_003 + epoch)
    return val[torch.randperm(len(val), generator=gen, device=val.device)[:cfg.val_batch]]


def end_of_epoch(epoch: int, train: dict, models: dict, best: dict, data: Splits, cfg: Config) -> tuple[dict, dict]:
    """After an epoch's training: validate (on the whole validation split by default), keep the
    best state, and after the last epoch test the best-by-validation model (Table 1).
    Returns (metrics, best)."""
    enc, dec = models["encoder"], models["decoder"]
    val = evaluate(enc, dec, validation_images(data, cfg, epoch), data.binary, cfg, seed=cfg.seed + 1)
    if val["distortion"] < best["val"]:
        best = {"val": val["distortion"], "epoch": epoch,
                "model": {k: copy.deepcopy(m.state_dict()) for k, m in models.items()}}
    metrics = {M.EPOCH: epoch, **{f"train/{k}": v for k, v in train.items()},
               **{f"val/{k}": v for k, v in val.items()},
               M.BEST_VAL_DISTORTION: best["val"], M.BEST_EPOCH: best["epoch"]}
    if epoch == cfg.epochs:
        metrics.update(test_best(enc, dec, best, data, cfg))
    return metrics, best


def plain_engine(models: dict, gen: torch.Generator, cfg: Config, resume: dict | None):
    """One seed as train.run drives it: (step, sync, optimizer_states, extra_state). Its channel
    noise comes from the run's own generator, which also draws its batches."""
    enc, dec, disc = models["encoder"], models["decoder"], models["discriminator"]
    # what the training step calls: compiled wrappers of the same modules (weights shared), so
    # checkpoints and evaluation keep using the plain modules and their state_dict keys
    step_models = models if cfg.compile == "off" else \
        {k: torch.compile(m, mode=cfg.compile, dynamic=False) for k, m in models.items()}
    # Adam is per-parameter, so one optimizer over encoder+decoder equals the reference's two.
    opts = {"model": torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=cfg.lr),
            "discriminator": torch.optim.Adam(disc.parameters(), lr=cfg.lr)}
    if resume is not None:
        for k, o in opts.items():
            o.load_state_dict(resume["optimizer"][k])

    def step(x: torch.Tensor, binary: bool) -> dict:   # x: (1, B, *image), the stack of one
        return {k: v.reshape(1) for k, v in train_step(x[0], step_models, opts, binary, cfg, gen).items()}

    return step, lambda: None, lambda: [{k: o.state_dict() for k, o in opts.items()}], dict


def seeded_models(cfgs: list[Config], data: Splits, device, resume: list[dict] | None):
    """Per seed: its networks (initialised from its seed), its batch-order generator and its best so far,
    restored from `resume` where given; and the epoch and wall seconds to continue from."""
    models, gens = [], []
    for c in cfgs:
        torch.manual_seed(c.seed)                                         # initialisation
        models.append(dict(zip(NAMES, (m.to(device) for m in build(c.dataset, data.image_shape, c.latent_bits)))))
        gens.append(torch.Generator(device=device).manual_seed(c.seed))   # batch order (one seed: its noise too)
    if resume is None:
        return models, gens, [{"val": math.inf, "epoch": 0, "model": None} for _ in cfgs], 0, 0.0
    for m, g, st in zip(models, gens, resume):
        for k in NAMES:
            m[k].load_state_dict(st["model"][k])
        g.set_state(st["generator"].cpu())
    bests = [{"val": st["best_val"], "epoch": st["best_epoch"], "model": st["best_model"]} for st in resume]
    # wall time is cumulative across restarts; a stack's is split evenly between its seeds
    return models, gens, bests, resume[0]["epoch"], resume[0].get("wall_seconds", 0.0) * len(cfgs)


def run(cfg: Config, report: Report | None = None, resume: list[dict] | None = None,
        data: Splits | None = None) -> tuple[dict, list[dict]]:
    """Train `cfg` for cfg.epochs, validating every epoch, and test the best-by-validation model at
    the end; cfg.stack > 1 trains the seeds cfg.seed, cfg.seed + 1, ... together as one stacked
    model (stacked.py), each still its own run. `report(metrics, checkpoints)` is called every
    epoch (metrics: stacked.seed_metrics; checkpoints(): one state per seed). `resume`: those
    states, to continue from. Returns (final metrics, final states, one per seed)."""
    t_start = time.perf_counter()
    # --- seed -> data -> model, per seed as its separate run does it ---
    device = resolve_device(cfg.device)
    check_precision(cfg.precision, device)
    cfgs = seed_configs(cfg)
    seeds, S = [c.seed for c in cfgs], len(cfgs)
    if data is None:
        data = load_for(cfg, device)
    if S > 1 and data.image_shape == (3, 32, 32):   # Config knows the table's datasets; this, one's own
        raise ConfigError(f"stack={S} is not allowed: 1 for {cfg.dataset} (a conv model: vmap cannot batch its "
                          "BatchNorm)", "stack")
    models, gens, bests, start, wall_before = seeded_models(cfgs, data, device, resume)
    trained = source_code(cfg)   # what the step optimises (separation: its noiseless source code)
    step, sync, optimizer_states, extra_state = (
        plain_engine(models[0], gens[0], trained, resume and resume[0]) if S == 1 else
        stacked.engine(models, trained, resume, device))

    def checkpoints(epoch: int, bests: list, wall: float) -> list[dict]:
        return [{**snapshot(m, o, g, epoch, b, c, wall / S), **extra_state()}
                for m, o, g, b, c in zip(models, optimizer_states(), gens, bests, cfgs)]

    n, per_seed = len(data.train), []
    for epoch in range(start + 1, cfg.epochs + 1):
        # --- one epoch of Algorithm 1, every seed on its own batch order ---
        t_epoch = time.perf_counter()
        sums: dict[str, torch.Tensor] = {}
        perms = torch.stack([torch.randperm(n, generator=g, device=device) for g in gens])     # (S, n)
        for i in range(0, n, cfg.batch_size):
            x = to_float(data.train[perms[:, i:i + cfg.batch_size]])                         # (S, B, *image)
            for k, v in step(x, data.binary).items():
                sums[k] = sums.get(k, 0) + v * x.shape[1]
        trains = [dict(zip(sums, v)) for v in torch.stack(list(sums.values())).div(n).T.tolist()]  # one sync
        for s, t in zip(seeds, trains):
            # NaN or inf anywhere in a step (probabilities, activations, loss) reaches the loss; nothing
            # raises before (channels.bernoulli), so every CPU and GPU ends here, at the same epoch
            if not math.isfinite(t["loss"]):
                raise Diverged(epoch, "non-finite training loss" + (f" for seed {s}" if S > 1 else "") +
                               f" (lr={cfg.lr:g}): the weights, the encoder's probabilities or the loss became NaN or inf")
        train_seconds = time.perf_counter() - t_epoch

        # --- validation (the split, its fixed subset or a batch: Config.val_subset, val_batch), the best state,
        #     the test after the last epoch ---
        t_eval = time.perf_counter()
        sync()
        per_seed = []
        for i, c in enumerate(cfgs):
            metrics, bests[i] = end_of_epoch(epoch, trains[i], models[i], bests[i], data, c)
            per_seed.append(metrics)
        now = time.perf_counter()                                   # one clock reading for every seed
        wall = wall_before + now - t_start
        for metrics in per_seed:
            metrics[M.EXAMPLES_PER_S] = n / train_seconds           # per seed; a stack does S times this
            metrics[M.EVAL_SECONDS] = (now - t_eval) / S
            metrics[M.EPOCH_SECONDS] = (now - t_epoch) / S
            metrics[M.WALL_SECONDS] = wall / S
        if report is not None:
            report(seed_metrics(per_seed, seeds), lambda e=epoch, b=list(bests), w=wall: checkpoints(e, b, w))
    if start >= cfg.epochs:  # resumed from the final checkpoint (its report may have been lost): report the end again;
        # validation of the restored last-epoch weights repeats that epoch's numbers (fixed-seed evaluation)
        per_seed = [{**end_of_epoch(cfg.epochs, {}, m, b, data, c)[0], M.WALL_SECONDS: wall_before / S}
                    for m, b, c in zip(models, bests, cfgs)]
        if report is not None:
            report(seed_metrics(per_seed, seeds), lambda: checkpoints(cfg.epochs, bests, wall_before))
    return seed_metrics(per_seed, seeds), checkpoints(cfg.epochs, bests, wall_before + time.perf_counter() - t_start)


# --- command line ---------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = config_parser("python -m iabf.train", __doc__)
    p.add_argument("--out", default="", help="folder for best.pt and metrics.json; default runs/<run name>")
    args = p.parse_args(argv)
    warnings_in_one_line()
    try:
        cfg = config_from_args(args)
        name = run_name(cfg) + (f"-stack{cfg.stack}" if cfg.stack > 1 else "")
        out = Path(args.out or Path("runs") / name)

        def progress(m: dict, _checkpoint) -> None:
            print(f"epoch {m[M.EPOCH]:>4}/{cfg.epochs}  loss {m[M.TRAIN_LOSS]:9.4f}  "
                  f"val/distortion {m[M.VAL_DISTORTION]:8.4f}  best {m[M.BEST_VAL_DISTORTION]:8.4f} "
                  f"(epoch {m[M.BEST_EPOCH]})  {m[M.EXAMPLES_PER_S]:7.0f} ex/s", file=sys.stderr, flush=True)

        print(f"training {name} on {resolve_device(cfg.device)}", file=sys.stderr, flush=True)
        final, states = run(cfg, progress)   # a stack's progress lines show the mean over its seeds
        # one seed: best.pt; a stack: one folder per seed, each a normal single-seed run's
        saved = [save_checkpoint(s, out / ("" if cfg.stack == 1 else f"seed{s['config']['seed']}") / "best.pt")
                 for s in states]
        (out / "metrics.json").write_text(json.dumps(final, indent=2))
        print(f"saved {', '.join(map(str, saved))}", file=sys.stderr)
    except ConfigError as e:   # named by its option, as the user typed it
        print(f"error: --{e.key.replace('_', '-')}: {e}" if e.key else f"error: {e}", file=sys.stderr)
        return 2
    except DataError as e:    # bad input: the dataset file is named, nothing was written
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (CheckpointError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    print(json.dumps(final))
    return 0


if __name__ == "__main__":
    exit_with(main())
