"""Stacked seeds: S seeds of one configuration trained together as one model (`Config.stack`).

The S copies of each network are stacked along a new leading dimension
(`torch.func.stack_module_state`) and the per-seed objective of `losses.py` runs unchanged under
`torch.func.vmap`: one batched kernel per layer for all seeds, one Python step instead of S. Adam
is elementwise, so one Adam over the stacked weights is S independent Adams.

Each seed keeps what makes it a seed: its own initialisation (drawn exactly as its separate run
draws it), its own batch order, its own validation and test noise, its own best epoch and its own
checkpoint (a normal single-seed one). Two things differ from S separate runs, so stacked and
separate results agree statistically, not bit for bit:
- random draws inside vmap come from the global generator (vmap's randomness="different":
  independent per seed, but not the stream that a run's own torch.Generator would give);
- the adversary's gradient with respect to the bits (eq. 24) is taken outside vmap on the stacked
  decoder (autograd.grad cannot run inside vmap); per seed it is the same computation.

MLP datasets only: the conv models' BatchNorm updates running statistics in place, which vmap
cannot batch (Config refuses stack > 1 for them). `train.run` drives the epochs for any number of
seeds; this module is the step, the stacking and the unstacking for more than one.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from . import metrics as M
from .channels import bernoulli
from .config import Config
from .losses import adversary, discriminator_loss, objective, tc_input
from .precision import autocast

NAMES = ("encoder", "decoder", "discriminator")


class Bound:
    """One seed's network as the objective sees it: its module called with that seed's slice of
    the stacked weights (inside vmap), and `named_parameters` for the weight penalty."""

    def __init__(self, module: nn.Module, params: dict):
        self.module, self.params = module, params

    def __call__(self, x):
        return functional_call(self.module, self.params, (x,))

    def named_parameters(self):
        return iter(self.params.items())


def batched(module: nn.Module, params: dict):
    """The stacked network as one function of (S, ...) inputs, for use outside vmap."""
    return lambda x: vmap(lambda p, xs: functional_call(module, p, (xs,)))(params, x)


def stack_models(models: list[dict], lr: float) -> tuple[dict, dict, dict]:
    """S seeds' {encoder, decoder, discriminator} -> (skeleton: the modules without weights, to call;
    params: model -> name -> (S, ...) stacked weights; opts: the two Adams of train.run over them)."""
    skeleton = {k: copy.deepcopy(models[0][k]).to("meta") for k in NAMES}
    params = {k: stack_module_state([m[k] for m in models])[0] for k in NAMES}
    opts = {"model": torch.optim.Adam([*params["encoder"].values(), *params["decoder"].values()], lr=lr),
            "discriminator": torch.optim.Adam(params["discriminator"].values(), lr=lr)}
    return skeleton, params, opts


def train_step(x: torch.Tensor, skeleton: dict, params: dict, opts: dict, binary: bool, cfg: Config) -> dict:
    """Algorithm 1 for every seed at once. x: (S, B, *image), seed i's batch in row i. Returns
    detached (S,) statistics."""
    enc, dec, disc = (skeleton[k] for k in NAMES)
    P = params
    with autocast(cfg.precision, x.device):
        p = torch.sigmoid(batched(enc, P["encoder"])(x).float())                 # (S, B, M), float32 (precision.py)
    y = None if cfg.method == "necst" else bernoulli(p.detach())              # line 5
    stats = {}
    if cfg.method == "iabf":  # lines 6-8: the classifiers first
        with autocast(cfg.precision, x.device):
            d_loss = vmap(lambda q, t: discriminator_loss(Bound(disc, q), t), randomness="different")(
                P["discriminator"], tc_input(p, y, cfg.tc_input).detach())
        opts["discriminator"].zero_grad(set_to_none=True)
        d_loss.sum().backward()
        opts["discriminator"].step()
        stats["disc_loss"] = d_loss.detach()
    # eq. 24-26, 30 outside vmap (see the module docstring); budget flips draw nothing, top-k does
    with autocast(cfg.precision, x.device):
        eps = None if cfg.method == "necst" else adversary(batched(dec, P["decoder"]), x, y, binary, cfg)

    def per_seed(pe, pd, pc, xs, ps, ys, es):                                   # lines 9-10, eq. 29
        return objective(Bound(dec, pd), Bound(disc, pc), Bound(enc, pe), xs, ps, ys, binary, cfg, eps=es)

    in_dims = (0, 0, 0, 0, 0, None if y is None else 0, None if eps is None else 0)       # necst: no y, no eps*
    with autocast(cfg.precision, x.device):
        loss, more = vmap(per_seed, in_dims, randomness="different")(P["encoder"], P["decoder"], P["discriminator"],
                                                                     x, p, y, eps)
    opts["model"].zero_grad(set_to_none=True)
    loss.sum().backward()   # the seeds share no weights: each gets its own gradient
    opts["model"].step()
    return {**stats, **more}


def stack_optimizer_states(states: list[dict]) -> dict:
    """S single-seed Adam state_dicts -> the state_dict of one Adam over the stacked weights."""
    out = copy.deepcopy(states[0])
    for i, st in out["state"].items():
        for k, v in st.items():
            if k != "step":  # one shared step count: every seed takes every step
                st[k] = torch.stack([s["state"][i][k] for s in states])
    return out


def unstack_optimizer_state(state: dict, i: int) -> dict:
    """Seed i's share of a stacked Adam state_dict: a normal single-seed one."""
    return {"state": {j: {k: v if k == "step" else v[i].clone() for k, v in st.items()}
                      for j, st in state["state"].items()},
            "param_groups": copy.deepcopy(state["param_groups"])}


def rng_state(device: torch.device) -> torch.Tensor:
    """The global generator that draws the stack's noise on `device` (CUDA has its own)."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def set_rng_state(device: torch.device, state: torch.Tensor) -> None:
    state = state.cpu()   # a checkpoint loaded onto the GPU brings its byte tensors along
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def seed_metrics(per_seed: list[dict], seeds: list[int]) -> dict:
    """One flat result for Tune: the mean over seeds under the usual names (what ASHA and the
    searcher compare) and each seed's own values under seed<N>/... One seed: its metrics as they are."""
    if len(per_seed) == 1:
        return per_seed[0]
    out = {k: per_seed[0][k] if all(m[k] == per_seed[0][k] for m in per_seed) else   # the epoch stays an int
           sum(m[k] for m in per_seed) / len(per_seed) for k in per_seed[0]}
    for s, m in zip(seeds, per_seed):
        out.update({M.seed_key(s, k): v for k, v in m.items()})
    return out


def engine(models: list[dict], cfg: Config, resume: list[dict] | None, device: torch.device):
    """The stacked seeds as train.run drives them: (step, sync, optimizer_states, extra_state).
    The stack's channel noise comes from the global generator, seeded with the first seed (or
    restored from the checkpoints' `rng`)."""
    if resume is None:
        torch.manual_seed(cfg.seed)
    else:
        set_rng_state(device, resume[0]["rng"])
    skeleton, params, opts = stack_models(models, cfg.lr)
    if resume is not None:
        for k, o in opts.items():
            o.load_state_dict(stack_optimizer_states([st["optimizer"][k] for st in resume]))

    def step(x: torch.Tensor, binary: bool) -> dict:
        return train_step(x, skeleton, params, opts, binary, cfg)

    def sync() -> None:  # the stacked weights into each seed's own modules (for evaluation, checkpoints)
        with torch.no_grad():
            for k in NAMES:
                for name, w in params[k].items():
                    for i, m in enumerate(models):
                        m[k].get_parameter(name).copy_(w[i])

    def optimizer_states() -> list[dict]:
        stacked_states = {k: o.state_dict() for k, o in opts.items()}     # once, not once per seed
        return [{k: unstack_optimizer_state(st, i) for k, st in stacked_states.items()} for i in range(len(models))]

    return step, sync, optimizer_states, lambda: {"rng": rng_state(device)}
