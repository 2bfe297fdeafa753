"""What a study will cost, before it runs: `studies/ablation.py --plan` (counted, no Ray, nothing
written) and `--plan --estimate` (timed on this machine).

The estimate times each distinct model a study trains (dataset, method, K, code length, channel,
adversary, seeds per trial) for a few steps of iabf.train.run on real data, at the threads a trial
gets (its `resources.cpu`), then prices every planned trial at its full budget: ASHA's early stops
are not counted (the worst case), and search trials use the first value of what they search (lambda
does not change the cost; a searched K would).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from studies.plan import cell_plan, grid_points, groups, n_configs, seed_groups


def describe(study) -> list[str]:
    """--plan: the cells, groups, trials per phase, trial-epochs against the full grid, resources."""
    cells, gs = cell_plan(study), groups(study)
    axes = list(cells[0]["values"]) if cells else []
    values = {a: list(dict.fromkeys(c["values"][a] for c in cells)) for a in axes}
    total = {k: sum(c[k] for c in cells) for k in ("search_trials", "search_epochs", "confirm_trials", "confirm_epochs",
                                                   "full_grid_epochs")}
    searched = [g for g in gs if n_configs(g, study) > 1]
    spent = total["search_epochs"] + total["confirm_epochs"]
    res = study.resources
    lines = [f"study {study.name} ({study.path}): {len(cells)} cells x {len(study.arms)} arms = {len(gs)} groups",
             "cells: " + "; ".join(f"{a} ({len(v)}): {', '.join(map(_text, v))}" for a, v in values.items()),
             f"arms: {', '.join(a.name for a in study.arms)}",
             f"searched: {len(searched)} groups"
             + (f" ({study.searcher}; " + ", ".join(sorted({f'{k}: {_space(s)}' for g in searched
                                                          for k, s in g.space.items()})) + ")" if searched else "")
             + f"; nothing to search: {len(gs) - len(searched)}",
             f"trials: {total['search_trials']} search (seeds {study.search_seeds}) + {total['confirm_trials']} "
             f"confirmation (seeds {study.seeds}) = {total['search_trials'] + total['confirm_trials']}"
             + ("" if study.confirm else " (confirm: false, every configuration on every seed)"),
             f"trial-epochs (one per seed and epoch): search {total['search_epochs']:,}"
             + (" at most (ASHA stops some)" if study.scheduler else "")
             + f", confirmation {total['confirm_epochs']:,}; the full grid without early stopping "
             f"{total['full_grid_epochs']:,} ({spent / max(total['full_grid_epochs'], 1):.0%} of it)",
             f"resources: {res['cpu']:g} CPU and {res['gpu']:g} GPU per trial"
             + (f", at most {study.max_concurrent} at once" if study.max_concurrent else "")]
    if study.adaptive:
        from studies.adaptive import plan_line
        lines.append(plan_line(study) + "; the counts above are the most")
    lines += node_fit(res, CLUSTER_YAML)
    if len(cells) <= 24:
        lines.append("per cell (search + confirmation trials, trial-epochs):")
        lines += [f"  {c['cell']}: {c['search_trials']} + {c['confirm_trials']} trials, "
                  f"{c['search_epochs'] + c['confirm_epochs']:,} epochs" for c in cells]
    return lines


CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


def node_fit(res: dict, cluster_yaml: Path) -> list[str]:
    """How a study's trials fill each node type of a Ray cluster launcher file (its declared `resources`):
    trials at once per node and per GPU, what a GPU leaves idle, and a study that no node type can run."""
    import yaml

    try:
        types = yaml.safe_load(cluster_yaml.read_text())["available_node_types"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return []
    cpu, gpu = float(res["cpu"]), float(res["gpu"])
    said, fits = [], False
    for name, node in types.items():
        have = node.get("resources") or {}
        n_cpu, n_gpu = float(have.get("CPU", 0)), float(have.get("GPU", 0))
        kind = node.get("node_config", {}).get("InstanceType", "?")
        n = int(min(n_cpu // cpu if cpu else math.inf, n_gpu // gpu if gpu else math.inf))
        what = f"{name} ({kind}: {n_cpu:g} CPUs, {n_gpu:g} GPUs): "
        if n < 1 or n == math.inf:
            said.append(what + "no trial")
            continue
        fits = True
        line = what + f"{n} trials per node" + (f", {n / n_gpu:g} per GPU" if n_gpu and gpu else "")
        if gpu and n * gpu < n_gpu:
            line += f" (leaves {1 - n * gpu / n_gpu:.0%} of its GPUs idle: {cpu:g} CPUs a trial is the limit)"
        said.append(line)
    lines = [f"on {cluster_yaml.name}'s node types: " + "; ".join(said)]
    if not fits:
        lines.append(f"warning: no node type of {cluster_yaml.name} can run a trial of {cpu:g} CPUs and {gpu:g} GPUs: "
                     f"on that cluster the study would wait forever")
    return lines


def _text(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _space(spec: dict) -> str:
    kind, args = next(iter(spec.items()))
    return f"{kind} of {len(args)}" if kind in ("grid", "choice") else f"{kind} {args}"


@dataclass
class Trial:
    """One planned trial, priced: its configuration (the first of its search) and its seeds."""
    cfg: object
    seeds: int
    confirm: bool


def planned_trials(study) -> list[Trial]:
    from iabf.config import Config

    out = []
    for g in groups(study):
        point = (grid_points(g.space) or [{}])[0] or {k: _first(s) for k, s in g.space.items()}
        cfg = Config.from_dict({**study.fixed_for(g.dataset), **g.base, **point, "stack": 1})
        stack = study.stack_for(g.dataset)
        n = n_configs(g, study)
        if not study.confirm:
            out += [Trial(cfg, len(s), False) for _ in range(n) for s in seed_groups(study.seeds, stack)]
            continue
        if n > 1:
            out += [Trial(cfg, len(study.search_seeds), False)] * n
        out += [Trial(cfg, len(s), True) for s in seed_groups(study.seeds, stack)]
    return out


def _first(spec: dict):
    kind, args = next(iter(spec.items()))
    if kind in ("grid", "choice"):
        return args[0]
    if kind == "loguniform":
        return math.sqrt(args[0] * args[1])
    return (args[0] + args[1]) / 2 if kind == "uniform" else int((args[0] + args[1]) // 2)


def profile_key(cfg, seeds: int) -> tuple:
    """What sets a trial's speed; lambda, eps and the seed do not."""
    return (cfg.dataset, cfg.method, cfg.K, cfg.bits, cfg.latent_bits, cfg.channel, cfg.channel_code, cfg.flip,
            cfg.flip_k, cfg.tc_input, cfg.vimco_signal, cfg.clean_weight > 0, seeds, cfg.device, cfg.compile,
            cfg.precision, cfg.likelihood)


def time_profile(cfg, seeds: int, threads: int, steps: int = 12) -> dict:
    """Seconds per training example (per stack), per validation image and per Markov-chain step, from a
    short run of the real loop on real data (two epochs; the second, warm, is the one kept)."""
    import torch

    from iabf import metrics as M
    from iabf.data import load_for, to_float
    from iabf.sampling import markov_chain
    from iabf.separation import link
    from iabf.train import resolve_device, run

    torch.set_num_threads(threads)
    device = resolve_device(cfg.device)
    data = load_for(replace(cfg, max_train_examples=cfg.batch_size * steps, download=False), device)
    val = min(len(data.val), cfg.val_subset or len(data.val), 1000)
    probe = replace(cfg, epochs=3, stack=seeds, seed=0, val_subset=val, val_batch=0)
    seen = []
    run(probe, lambda m, _: seen.append(m), data=data)
    warm = seen[1]
    out = {"train": 1.0 / warm[M.EXAMPLES_PER_S], "val": warm[M.EVAL_SECONDS] * seeds / val}
    from iabf.models import build

    enc, dec, _ = (m.to(device) for m in build(cfg.dataset, data.image_shape, cfg.latent_bits))
    x = to_float(data.test[:4])
    t = time.perf_counter()
    with torch.no_grad():
        markov_chain(enc, dec, x, cfg.eval_eps, cfg.channel, steps=50, every=50, send=link(cfg))
    out["chain"] = (time.perf_counter() - t) / 50
    return out


SPEEDS: dict = {}   # profile_key -> time_profile's: timed once per process (--estimate prices a study twice)


def estimate(study, chain_steps: int, concurrency: int | None = None, echo=print) -> dict:
    """Time every distinct model, price every planned trial; prints a line per model (echo)."""
    from iabf.data import load

    trials = planned_trials(study)
    threads = max(1, int(study.resources["cpu"]))
    sizes, speeds = {}, SPEEDS
    for t in trials:
        key = profile_key(t.cfg, t.seeds)
        if key not in speeds:
            started = time.perf_counter()
            speeds[key] = time_profile(t.cfg, t.seeds, threads)
            code = (f" ({t.cfg.channel_code}, k={t.cfg.latent_bits})" if t.cfg.method == "separation" else "")
            echo(f"  timed {t.cfg.dataset} {t.cfg.method}{code} K={t.cfg.K} {t.cfg.bits} bits {t.cfg.channel} "
                 f"flip={t.cfg.flip} {t.cfg.precision}, {t.seeds} seed(s) per trial: {1 / speeds[key]['train']:,.0f} training images/s per seed "
                 f"(all trained at once), validation {speeds[key]['val'] * 1e3:.3f} ms/image "
                 f"({time.perf_counter() - started:.1f} s)")
        if (t.cfg.dataset, t.cfg.n_valid) not in sizes:
            d = load(t.cfg.dataset, t.cfg.data_dir, n_valid=t.cfg.n_valid)
            sizes[t.cfg.dataset, t.cfg.n_valid] = (len(d.train), len(d.val), len(d.test))
    seconds = []
    for t in trials:
        s = speeds[profile_key(t.cfg, t.seeds)]
        n_train, n_val, n_test = sizes[t.cfg.dataset, t.cfg.n_valid]
        n_train = min(n_train, t.cfg.max_train_examples or n_train)
        n_val = min(n_val, t.cfg.val_subset or n_val) if not t.cfg.val_batch else t.cfg.val_batch
        per_epoch = n_train * s["train"] + n_val * s["val"]
        extra = n_test * s["val"] + (t.seeds * chain_steps * s["chain"] if t.confirm else 0.0)
        seconds.append(t.cfg.epochs * per_epoch + extra + OVERHEAD_S)
    slots = concurrency or max(1, int((os.cpu_count() or 1) // max(study.resources["cpu"], 1e-9)))
    slots = min(slots, study.max_concurrent or slots, len(trials))
    return {"trials": len(trials), "trial_hours": sum(seconds) / 3600, "slots": slots,
            "wall_hours": _wall(seconds, slots) / 3600}


# A trial's fixed cost in a study: its process, data load, MLflow run and checkpoints (measured here:
# 3-5 s for a digits trial of 2 epochs, most of it loading torch and the data once per actor)
OVERHEAD_S = 4.0


def _wall(seconds: list[float], slots: int) -> float:
    """Wall time of the trials run `slots` at a time in plan order (longest-first would be shorter)."""
    ends = [0.0] * slots
    for s in seconds:
        i = ends.index(min(ends))
        ends[i] += s
    return max(ends)
