"""Two small image statistics shared by the visibility measure and the networks' detail layer."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mcgr.ops.inject import gaussian_taps


def gaussian_blur(x: torch.Tensor, sigma: float, mode: str) -> torch.Tensor:
    """Separable Gaussian blur of ``x`` ``[B, 1, H, W]`` (taps to ``ceil(3 sigma)`` px, at least 1),
    padded with ``mode`` ("reflect", "replicate", ...), in ``x``'s dtype."""
    r = max(1, int(math.ceil(3 * sigma)))
    k = gaussian_taps(sigma, r, device=x.device).to(x.dtype)
    y = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(y, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1))


def robust_sigma(x: torch.Tensor) -> torch.Tensor:
    """``1.4826 * MAD`` of each item of ``x`` ``[B, ...]`` (torch's median: the lower middle value
    of an even count) -> ``[B]``."""
    flat = x.flatten(1)
    med = flat.median(dim=1, keepdim=True).values
    return 1.4826 * (flat - med).abs().median(dim=1).values
