"""The Ray Tune trainable: the one module of `iabf` that imports Ray, kept thin because Ray's API
moves between versions. It wraps `iabf.train.run` (`iabf.stacked.run` for stacked seeds): a report
and a checkpoint every epoch, a resume from the checkpoint when Ray restarts the trial, the GPU
when the trial was given one.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from ray import tune

from . import metrics as M
from . import stacked
from .config import Config
from .data import load, to_float
from .sampling import markov_chain, reconstructions, save_grid
from .stacked import seed_configs
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


@dataclass
class Part:
    """One seed of a trial: its config, the prefix of its metrics in the trial's results and the
    folder of its checkpoint and artifacts inside each Tune checkpoint. A plain trial has one part
    ("", ""); a stacked one (Config.stack) has one per seed (seed3/..., seed3/)."""
    cfg: Config
    prefix: str
    folder: str


def parts(cfg: Config) -> list[Part]:
    if cfg.stack == 1:
        return [Part(cfg, "", "")]
    return [Part(c, M.seed_key(c.seed, ""), f"seed{c.seed}") for c in seed_configs(cfg)]


def trainable(params: dict, chain_steps: int = 9000) -> None:
    cfg = config_from_params(params)
    cfg.device = trial_device(cfg)
    data = load(cfg.dataset, cfg.data_dir, cfg.device, cfg.max_train_examples, cfg.download)
    seeds = parts(cfg)
    resume = None
    if (ckpt := tune.get_checkpoint()) is not None:   # Ray restarted this trial: continue it
        with ckpt.as_directory() as d:
            resume = [load_checkpoint(Path(d) / s.folder / STATE, map_location=cfg.device) for s in seeds]

    gpu = tune.get_context().get_trial_resources().required_resources.get("GPU", 0.0)

    def report(metrics: dict, checkpoint) -> None:
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            states = checkpoint()
            states = states if isinstance(states, list) else [states]
            for s, state in zip(seeds, states):
                save_checkpoint(state, Path(d) / s.folder / STATE)
            share = (time.perf_counter() - t0) / len(seeds)
            for s, state in zip(seeds, states):
                metrics[s.prefix + M.CHECKPOINT_SECONDS] = share
                if M.TEST_DISTORTION in metrics:  # the last epoch: artifacts of the best model
                    t0 = time.perf_counter()
                    _, enc, dec = models_from_state(state, device=cfg.device)
                    write_artifacts(Path(d) / s.folder, s.cfg, enc, dec, data.test, chain_steps)
                    metrics[s.prefix + M.ARTIFACT_SECONDS] = time.perf_counter() - t0
            for prefix in {"", *(s.prefix for s in seeds)}:
                metrics[prefix + M.GPU_SECONDS] = metrics[prefix + M.WALL_SECONDS] * gpu
                if cfg.device == "cuda":  # what packing several trials on one GPU has to fit
                    metrics[prefix + M.GPU_PEAK_MB] = torch.cuda.max_memory_allocated() / 2**20
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    try:
        if cfg.stack > 1:
            stacked.run(cfg, report, resume=resume, data=data)
        else:
            run(cfg, report, resume=resume and resume[0], data=data)
    except Diverged as e:  # end the trial here: Ray's retry from the checkpoint would diverge again
        tune.report({M.EPOCH: e.epoch, M.VAL_DISTORTION: float("nan"), M.TRAIN_LOSS: float("nan"), "failure": str(e)})
