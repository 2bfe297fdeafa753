"""The separation baseline (`method: separation`): Shannon's answer, against which joint coding is judged.

A source code of k bits (this project's encoder and decoder, trained with NECST's objective at
eps = 0 on k bits: a noiseless binary autoencoder) and a channel code that takes the k bits to the
cell's M bits, chosen by `channel_code`:
- ldpc: a 5G NR LDPC code (3GPP TS 38.212, Sionna's LDPC5GEncoder with its rate matching), the
  cell's channel, then belief propagation (Sionna's LDPC5GDecoder, `bp_iters` iterations) from the
  channel's log-likelihood ratios (iabf.channels: each channel's `llr`), hard decisions on the k
  information bits, then the source decoder. A failed decoding is not hidden: its wrong bits reach
  the source decoder, and the word error rate counts the images whose k bits arrived wrong.
- capacity: the bound, not a scheme: k = floor(M C(eps)) bits delivered error-free, as if a code
  of length M ran at capacity with no errors (impossible at finite M: optimistic by construction).
- none: uncoded, k = M bits straight through the channel (what training through the noise,
  NECST's eq. 16, buys over a code trained without it).
The k of each (iabf.capacity, Config.latent_bits): round(code_rate x M) within the 5G range, the
largest k below M C(eps) by default. Distortion is measured as for every other arm (train.evaluate).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import torch

from .channels import CHANNELS, bernoulli, transmit
from .config import Config

Send = Callable[..., tuple[torch.Tensor, torch.Tensor]]   # (p, gen) -> (sent bits, what the decoder gets)


def source_code(cfg: Config) -> Config:
    """What a run trains: for separation its noiseless source code, NECST's objective (eq. 16) at
    eps = 0 on its k bits (the encoder is built with Config.latent_bits); any other method as it is."""
    return dataclasses.replace(cfg, method="necst", eps=0.0) if cfg.method == "separation" else cfg


@functools.lru_cache(maxsize=32)
def ldpc(k: int, n: int, iters: int, device: str):
    """Sionna's 5G LDPC encoder (k -> n bits, rate matched) and its BP decoder (hard information bits)."""
    from sionna.phy.fec.ldpc import LDPC5GDecoder, LDPC5GEncoder   # on first use: importing Sionna takes seconds

    encoder = LDPC5GEncoder(k, n, device=device)
    return encoder, LDPC5GDecoder(encoder, num_iter=iters, hard_out=True, return_infobits=True, device=device)


def ldpc_transmit(y: torch.Tensor, n: int, eps: float, channel: str, iters: int,
                  gen: torch.Generator | None = None) -> torch.Tensor:
    """k bits per row of y (B, k) -> the 5G LDPC codeword (B, n) -> the channel -> BP -> decoded bits (B, k)."""
    encoder, decoder = ldpc(y.shape[-1], n, iters, str(y.device))
    ch = CHANNELS[channel]
    received = ch.corrupt(encoder(y.float()), eps, gen)
    return decoder(ch.llr(received, eps)).to(y.dtype)


def link(cfg: Config, eps: float | None = None) -> Send:
    """How a code reaches the decoder at evaluation (one draw per image): the channel itself, or for
    separation its channel code around it. eps: the channel's noise, default the run's test eps."""
    eps = cfg.eval_eps if eps is None else eps
    if cfg.method != "separation" or cfg.channel_code == "none":
        return lambda p, gen=None: transmit(p, eps, cfg.channel, gen)

    def send(p: torch.Tensor, gen: torch.Generator | None = None):
        y = bernoulli(p, gen)
        if cfg.channel_code == "capacity":   # the bound: delivered as sent
            return y, y
        return y, ldpc_transmit(y, cfg.bits, eps, cfg.channel, cfg.bp_iters, gen)

    return send
