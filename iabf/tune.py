"""The Ray Tune trainable: the one module of `iabf` that imports Ray, kept thin because Ray's API
moves between versions. It wraps `iabf.train.run` (one seed, or a stack of seeds): a report every
epoch, the GPU when the trial was given one, and resumable state that the trial owns:

- every epoch the trial writes its full training state, atomically, to the study's storage
  (`<storage>/<experiment>/state/<trial id>.pt`, through pyarrow.fs, so `s3://` works as a
  folder does). A restarted trial (a lost node, a killed process, a resumed study) continues from
  it, whatever Tune's checkpoints say;
- Tune gets one checkpoint, after the last epoch: the final states with the artifacts, which the
  tracking layer copies to MLflow. Fewer checkpoints mean no forced experiment snapshots, and no
  checkpoint that Tune deletes can be the one a resumed study needs.
"""
from __future__ import annotations

import contextlib
import io
import json
import pickle
import socket
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.fs
import ray
import torch
from ray import tune

from . import metrics as M
from . import record as R
from .config import Config
from .data import load_for, on_this_node, to_float
from .record import (HOSTNAME, NODE_ID, REPLAYED, STATE_RESET, STORAGE_FULL, STORAGE_UNREACHED, config_from_params,
                     parts)
from .sampling import markov_chain, reconstructions, save_grid
from .separation import link
from .storage import StorageFull, filesystem, mark_problem, no_room
from .train import Diverged, load_checkpoint, models_from_state, run, save_checkpoint

# What a trial reports besides its metrics is part of the study's record (iabf/record.py: REPLAYED on
# resume, NODE_ID and HOSTNAME, STATE_RESET when its state file could not be read, STORAGE_FULL when
# the storage has no room for it, STORAGE_UNREACHED when its node does not see the study's folder,
# ARTIFACTS beside M.STATE in its checkpoint), so the driver reads it without torch
STOP_WAIT_S = 300      # how long a trial that reported one of R.STOPS waits for the driver to stop the study


class GPUUnusable(RuntimeError):
    """Ray gave a trial a GPU that torch cannot use (a driver older than torch's CUDA build, no driver)."""


def nvidia_driver() -> str:
    """The node's NVIDIA driver version, as the kernel module reports it, or why there is none."""
    try:
        line = Path("/proc/driver/nvidia/version").read_text().splitlines()[0]
        return next((w for w in line.split() if w[:1].isdigit() and "." in w), line.strip())
    except (OSError, IndexError):
        return "none loaded (no /proc/driver/nvidia/version)"


def trial_device(cfg: Config) -> str:
    """cuda when Ray gave this trial a GPU (Ray sets CUDA_VISIBLE_DEVICES to it), cpu when it gave none.
    A GPU that torch cannot use stops the trial with one line (on CPU it would run 50x slower, silently);
    a study that wants the CPU anyway says `device: cpu`."""
    if cfg.device != "auto":
        return cfg.device
    if not ray.get_gpu_ids():
        return "cpu"
    if not torch.cuda.is_available():
        raise GPUUnusable(f"node {socket.gethostname()} gave this trial GPU {ray.get_gpu_ids()} but torch cannot use it "
                          f"(NVIDIA driver {nvidia_driver()}; torch {torch.__version__} built for CUDA "
                          f"{torch.version.cuda or 'none: a CPU build'}); install a driver for that CUDA, or set "
                          f"device: cpu in the study to train on the CPU")
    return "cuda"


def write_artifacts(folder: Path, cfg: Config, enc, dec, test_images: torch.Tensor, chain_steps: int) -> None:
    """Config, a reconstruction grid and Markov-chain samples (eq. 32) of the best model."""
    (folder / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    x = to_float(test_images[:10])
    gen = torch.Generator(device=x.device).manual_seed(cfg.seed)
    send = link(cfg)   # the channel, or separation's channel code around it
    save_grid(reconstructions(enc, dec, x, cfg.eval_eps, cfg.channel, gen, send), folder / "reconstructions.png")
    every = max(1, chain_steps // 9)
    frames = markov_chain(enc, dec, x, cfg.eval_eps, cfg.channel, chain_steps, every, gen=gen, send=send)
    save_grid(frames, folder / "markov_chain.png")


class TrialState:
    """A trial's own resumable state on the study's storage (a local folder or a URI such as
    s3://bucket/prefix): one file, replaced atomically, holding the per-seed training states and
    every epoch's reported metrics (the history, replayed on resume: see `trainable`)."""

    def __init__(self, root: str, trial_id: str):
        self.fs, folder = filesystem(root)
        self.path = f"{folder}/{trial_id}.pt"
        self.fs.create_dir(folder, recursive=True)
        self.damaged = ""   # what load() found wrong with the file, if anything

    def save(self, states: list[dict], history: list[dict]) -> None:
        buffer = io.BytesIO()
        torch.save({"states": states, "history": history}, buffer)
        tmp = self.path + ".tmp"
        try:
            with self.fs.open_output_stream(tmp) as f:   # write, then rename: never half a state
                f.write(buffer.getbuffer())
            self.fs.move(tmp, self.path)
        except OSError as e:
            with contextlib.suppress(OSError):   # the part written takes room the study needs
                self.fs.delete_file(tmp)
            raise no_room(e, "the trial's state", self.path, buffer.getbuffer().nbytes) or e

    def load(self, device: str) -> dict | None:
        """The saved state, or None. A file that cannot be read (saves are atomic, so this is damage
        from outside: a disk, a copy, a hand) is set aside as <file>.damaged, named in `damaged`,
        and the trial starts again from its first epoch."""
        if self.fs.get_file_info(self.path).type != pyarrow.fs.FileType.File:
            return None
        try:
            with self.fs.open_input_file(self.path) as f:
                saved = torch.load(io.BytesIO(f.read()), map_location=device, weights_only=True)
            if not isinstance(saved, dict) or not {"states", "history"} <= set(saved):
                raise ValueError("not a trial state")
            return saved
        except (RuntimeError, EOFError, OSError, ValueError, KeyError, pickle.UnpicklingError) as e:
            aside = f"{self.path}.damaged"
            self.fs.move(self.path, aside)
            reason = (str(e).strip().splitlines() or [""])[0][:200]
            self.damaged = (f"state file {self.path} could not be read ({type(e).__name__}: {reason}); set aside as "
                            f"{aside}; the trial trains again from its first epoch")
            print(f"warning: {self.damaged}", file=sys.stderr, flush=True)
            return None


def stop_study(key: str, reason: str, where: dict) -> None:
    """Report what stops the whole study (R.STOPS: retrying the trial cannot help), then wait to be stopped."""
    tune.report({key: reason, **where})
    time.sleep(STOP_WAIT_S)   # stopped before this ends; a driver that does not stop it gets the trial's error


def trainable(params: dict, chain_steps: int = 9000, state_root: str | None = None, mark: str | None = None,
              datasets: dict | None = None) -> None:
    """mark: the token the driver wrote in the study's folder (studies/reach.py), checked on this node first;
    datasets: the study's dataset files on its storage, for a node that lacks one."""
    cfg = config_from_params(params)
    artifacts = params.get(R.PHASE) != R.SEARCH   # a search trial is a means to a choice: no samples drawn
    context = tune.get_context()
    where = {NODE_ID: ray.get_runtime_context().get_node_id(), HOSTNAME: socket.gethostname()}   # who ran it
    if mark and state_root and (problem := mark_problem(state_root.rsplit("/", 1)[0], mark)):
        stop_study(STORAGE_UNREACHED, f"trial {context.get_trial_id()} on node {socket.gethostname()}: {problem}", where)
        raise RuntimeError(problem)
    cfg.device = trial_device(cfg)
    if datasets:
        cfg.data_dir = on_this_node(cfg.dataset, cfg.data_dir, datasets)
    data = load_for(cfg, cfg.device)
    seeds = parts(cfg)
    own = TrialState(state_root, R.state_key(params, context.get_trial_id())) if state_root else None
    saved = (own and own.load(cfg.device)) or {"states": None, "history": []}
    resume, history = saved["states"], saved["history"]
    if (ckpt := tune.get_checkpoint()) is not None:   # Tune restored the trial's final checkpoint
        with ckpt.as_directory() as d:
            final = [load_checkpoint(Path(d) / s.folder / M.STATE, map_location=cfg.device) for s in seeds]
        if resume is None or final[0]["epoch"] > resume[0]["epoch"]:
            resume = final
    # The trial's state can be ahead of what the driver recorded: a driver that dies takes the results
    # it had not yet handled with it. Report the past epochs again, marked; the tracking layer logs
    # each epoch once, and ASHA, whose rungs a resumed study rebuilds, sees them all.
    for past in history:
        tune.report({**past, REPLAYED: True})

    gpu = context.get_trial_resources().required_resources.get("GPU", 0.0)
    if own is not None and own.damaged:
        where[STATE_RESET] = own.damaged

    def report(metrics: dict, checkpoint) -> None:
        t0 = time.perf_counter()
        states = checkpoint()
        if own is not None:
            history.append({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})
            own.save(states, history)
        final = M.TEST_DISTORTION in metrics
        with tempfile.TemporaryDirectory() as d:
            for s, state in zip(seeds, states):
                if final:                     # Tune's one checkpoint: the final states
                    save_checkpoint(state, Path(d) / s.folder / M.STATE)
            share = (time.perf_counter() - t0) / len(seeds)
            for s, state in zip(seeds, states):
                metrics[s.prefix + M.CHECKPOINT_SECONDS] = share
                if final and artifacts:       # ... with the artifacts of the best model
                    t0 = time.perf_counter()
                    _, enc, dec = models_from_state(state, device=cfg.device)
                    write_artifacts(Path(d) / s.folder, s.cfg, enc, dec, data.test, chain_steps)
                    metrics[s.prefix + M.ARTIFACT_SECONDS] = time.perf_counter() - t0
            for prefix in {"", *(s.prefix for s in seeds)}:
                metrics[prefix + M.GPU_SECONDS] = metrics[prefix + M.WALL_SECONDS] * gpu
                if cfg.device == "cuda":  # what packing several trials on one GPU has to fit
                    metrics[prefix + M.GPU_PEAK_MB] = torch.cuda.max_memory_allocated() / 2**20
            try:   # Tune copies the final checkpoint to the study's storage here
                tune.report({**metrics, **where}, checkpoint=tune.Checkpoint.from_directory(d) if final else None)
            except OSError as e:
                raise no_room(e, "the trial's final checkpoint", state_root or "the storage") or e

    try:
        run(cfg, report, resume=resume, data=data)
    except Diverged as e:  # end the trial here: Ray's retry from the checkpoint would diverge again
        tune.report({M.EPOCH: e.epoch, M.VAL_DISTORTION: float("nan"), M.TRAIN_LOSS: float("nan"), R.FAILURE: str(e)})
    except StorageFull as e:   # not Tune's retry (the storage is as full for it): the driver stops the study
        stop_study(STORAGE_FULL, f"trial {context.get_trial_id()}: {e}", where)
        raise
