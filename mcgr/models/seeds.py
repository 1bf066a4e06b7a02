"""Seed maps for the RF generator, and the training seeds (true + decoy) of docs/design.md, method M3.

A seed map is ``[B, 1, H, W]`` float32 with a Gaussian dot of peak 1 (sigma ~1.5 px) at every seed;
dots combine by maximum so touching seeds stay in [0, 1]. The generator is trained with the true
calcification centres (jittered, some dropped) and with decoy seeds on bright MC-free texture
whose target image has no calcification there, so it learns to render a calcification at a seed
only where the image supports one (seed-consistent, not seed-obedient).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def make_seed_map(centres_list: Sequence[torch.Tensor], shape: tuple[int, int], sigma: float = 1.5,
                  device=None) -> torch.Tensor:
    """Seed map ``[B, 1, H, W]`` float32 from per-image seed positions.

    centres_list: B tensors ``[K_b, 2]`` of ``(cy, cx)`` in px (pixel ``(i, j)`` has its centre at
        ``(i, j)``); ``K_b`` may be 0. Seeds outside the image still contribute their tails.
    shape: ``(H, W)``.
    sigma: dot standard deviation in px (> 0).
    device: output device; defaults to the first non-empty centres tensor's device, else CPU.
    """
    if not isinstance(centres_list, (list, tuple)):
        raise TypeError(f"centres_list must be a list of [K, 2] tensors, got {type(centres_list).__name__}")
    if len(shape) != 2 or any(int(s) < 1 for s in shape):
        raise ValueError(f"shape must be (H, W) with H, W >= 1, got {shape!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 px, got {sigma!r}")
    h, w = int(shape[0]), int(shape[1])
    if device is None:
        device = next((torch.as_tensor(c).device for c in centres_list if len(c)), torch.device("cpu"))
    out = torch.zeros(len(centres_list), 1, h, w, dtype=torch.float32, device=device)
    ys = torch.arange(h, dtype=torch.float32, device=device)
    xs = torch.arange(w, dtype=torch.float32, device=device)
    inv = -0.5 / float(sigma) ** 2
    for b, c in enumerate(centres_list):
        c = torch.as_tensor(c, dtype=torch.float32, device=device)
        if c.numel() == 0:
            continue
        if c.dim() != 2 or c.shape[1] != 2:
            raise ValueError(f"centres_list[{b}] must be [K, 2] (cy, cx), got shape {tuple(c.shape)}")
        gy = torch.exp(inv * (ys[None, :] - c[:, 0:1]) ** 2)  # [K, H]
        gx = torch.exp(inv * (xs[None, :] - c[:, 1:2]) ** 2)  # [K, W]
        # max over K of the separable product, in chunks to bound memory for many seeds.
        acc = out[b, 0]
        for k0 in range(0, c.shape[0], 64):
            dots = gy[k0:k0 + 64, :, None] * gx[k0:k0 + 64, None, :]
            acc = torch.maximum(acc, dots.amax(dim=0))
        out[b, 0] = acc
    return out


def decoy_seeds(background: torch.Tensor, mask: torch.Tensor, n: int, min_dist: float,
                generator: torch.Generator, window: int = 5, min_quantile: float = 0.6) -> list[torch.Tensor]:
    """Decoy seeds on MC-free bright texture: up to ``n`` per image.

    Candidates are local maxima (``window`` x ``window``) of the MC-free background ``[B, 1, H, W]``
    that are brighter than its ``min_quantile`` quantile and at least ``min_dist`` px from every
    calcification pixel of ``mask`` ``[B, 1, H, W]``; ``n`` of them are drawn at random
    (``generator``). Returns B tensors ``[k_b, 2]`` (cy, cx) float32 on the background's device.
    """
    b, _, h, w = background.shape
    pad = window // 2
    peaks = background == F.max_pool2d(background, window, stride=1, padding=pad)
    q = torch.quantile(background.reshape(b, -1), min_quantile, dim=1).view(b, 1, 1, 1)
    near = F.max_pool2d(mask.float(), 2 * int(min_dist) + 1, stride=1, padding=int(min_dist)) > 0
    border = torch.zeros_like(peaks)
    border[..., pad:h - pad, pad:w - pad] = True
    cand = peaks & (background > q) & ~near & border
    out = []
    for i in range(b):
        idx = cand[i, 0].nonzero().float()
        if idx.shape[0] > n:
            pick = torch.randperm(idx.shape[0], generator=generator)[:n].to(idx.device)
            idx = idx[pick]
        out.append(idx)
    return out


def training_seeds(centres_list: Sequence[torch.Tensor], shape: tuple[int, int], generator: torch.Generator,
                   jitter: float = 1.0, dropout: float = 0.2) -> list[torch.Tensor]:
    """True seeds for training: each centre ``(cy, cx)`` moved by U(-jitter, jitter) px per axis and
    dropped with probability ``dropout`` (random draws from ``generator``, on the CPU)."""
    h, w = shape
    out = []
    for c in centres_list:
        c = torch.as_tensor(c, dtype=torch.float32).reshape(-1, 2)
        k = c.shape[0]
        keep = torch.rand(k, generator=generator) >= dropout
        jit = (torch.rand(k, 2, generator=generator) * 2 - 1) * jitter
        s = (c.cpu() + jit)[keep]
        s[:, 0].clamp_(0, h - 1)
        s[:, 1].clamp_(0, w - 1)
        out.append(s.to(c.device))
    return out
