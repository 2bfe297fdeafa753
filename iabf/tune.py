"""The Ray Tune trainable: the one module of `iabf` that imports Ray, kept thin because Ray's API
moves between versions. It wraps `iabf.train.run`: a report and a checkpoint every epoch, a
resume from the checkpoint when Ray restarts the trial, the GPU when the trial was given one.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch
from ray import tune

from . import metrics as M
from .config import Config
from .data import load, to_float
from .sampling import markov_chain, reconstructions, save_grid
from .train import Diverged, load_checkpoint, models_from_state, run, save_checkpoint

STATE = "checkpoint.pt"   # inside every Tune checkpoint; the final one also holds the artifacts below
ARTIFACTS = ("config.json", "reconstructions.png", "markov_chain.png")


def config_from_params(params: dict) -> Config:
    """A trial's Config: the sampled parameters, with its arm (a JSON string) merged in."""
    params = dict(params)
    arm = json.loads(params.pop("variant", "{}"))
    return Config.from_dict({**params, **arm})


def trial_device(cfg: Config) -> str:
    """cuda when Ray gave this trial a GPU (Ray sets CUDA_VISIBLE_DEVICES to it) and one is usable."""
    if cfg.device != "auto":
        return cfg.device
    import ray

    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


def write_artifacts(folder: Path, cfg: Config, enc, dec, test_images: torch.Tensor, chain_steps: int) -> None:
    """Config, a reconstruction grid and Markov-chain samples (eq. 32) of the best model."""
    (folder / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    x = to_float(test_images[:10])
    gen = torch.Generator(device=x.device).manual_seed(cfg.seed)
    save_grid(reconstructions(enc, dec, x, cfg.eval_eps, cfg.channel, gen), folder / "reconstructions.png")
    every = max(1, chain_steps // 9)
    frames = markov_chain(enc, dec, x, cfg.eval_eps, cfg.channel, chain_steps, every, gen=gen)
    save_grid(frames, folder / "markov_chain.png")


def trainable(params: dict, chain_steps: int = 9000) -> None:
    cfg = config_from_params(params)
    cfg.device = trial_device(cfg)
    data = load(cfg.dataset, cfg.data_dir, cfg.device, cfg.max_train_examples, cfg.download)
    resume = None
    if (ckpt := tune.get_checkpoint()) is not None:   # Ray restarted this trial: continue it
        with ckpt.as_directory() as d:
            resume = load_checkpoint(Path(d) / STATE, map_location=cfg.device)

    gpu = tune.get_context().get_trial_resources().required_resources.get("GPU", 0.0)

    def report(metrics: dict, checkpoint) -> None:
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            state = checkpoint()
            save_checkpoint(state, Path(d) / STATE)
            metrics[M.CHECKPOINT_SECONDS] = time.perf_counter() - t0
            if M.TEST_DISTORTION in metrics:  # the last epoch: artifacts of the best model
                t0 = time.perf_counter()
                _, enc, dec = models_from_state(state, device=cfg.device)
                write_artifacts(Path(d), cfg, enc, dec, data.test, chain_steps)
                metrics[M.ARTIFACT_SECONDS] = time.perf_counter() - t0
            metrics[M.GPU_SECONDS] = metrics[M.WALL_SECONDS] * gpu
            if cfg.device == "cuda":  # what packing several trials on one GPU has to fit
                metrics[M.GPU_PEAK_MB] = torch.cuda.max_memory_allocated() / 2**20
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    try:
        run(cfg, report, resume=resume, data=data)
    except Diverged as e:  # end the trial here: Ray's retry from the checkpoint would diverge again
        tune.report({M.EPOCH: e.epoch, M.VAL_DISTORTION: float("nan"), M.TRAIN_LOSS: float("nan"), "failure": str(e)})
