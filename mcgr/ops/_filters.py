"""Two small image statistics shared by the injector's neighbours: the Gaussian blur (the detail
layer, visibility, site augmentation, anatomy, phantoms, image-evidence proposals) and a robust sigma."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mcgr.ops._inject_params import gaussian_taps


def gaussian_blur(x: torch.Tensor, sigma: float, mode: str = "reflect", truncate: float = 3.0) -> torch.Tensor:
    """Separable Gaussian blur of ``x`` ``[..., H, W]`` over its last two axes, in ``x``'s dtype.

    Taps :func:`mcgr.ops.inject.gaussian_taps` out to ``ceil(truncate * sigma)`` px (at least 1);
    ``mode`` pads ("reflect" is scipy's "mirror", "replicate" its "nearest"), so the result is
    ``scipy.ndimage.gaussian_filter`` with that radius. ``sigma <= 0`` returns ``x``.
    """
    if sigma <= 0:
        return x
    r = max(1, int(math.ceil(truncate * sigma)))
    H, W = x.shape[-2:]
    k = gaussian_taps(sigma, r, device=x.device).to(x.dtype)
    y = x.reshape(-1, 1, H, W)
    if y.is_cuda:  # two launches; the shifted sums below would be one per tap
        y = F.conv2d(F.pad(y, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
        y = F.conv2d(F.pad(y, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1))
        return y.reshape(x.shape)
    # shifted sums on a CPU: a 1-channel conv2d is 1.3-4.5x slower there (2-core box, 2026-12-07)
    taps = k.tolist()
    p = F.pad(y, (r, r, 0, 0), mode=mode)
    y = taps[0] * p[..., 0:W]
    for i in range(1, 2 * r + 1):
        y += taps[i] * p[..., i:i + W]
    p = F.pad(y, (0, 0, r, r), mode=mode)
    y = taps[0] * p[..., 0:H, :]
    for i in range(1, 2 * r + 1):
        y += taps[i] * p[..., i:i + H, :]
    return y.reshape(x.shape)


def robust_sigma(x: torch.Tensor) -> torch.Tensor:
    """``1.4826 * MAD`` of each item of ``x`` ``[B, ...]`` (torch's median: the lower middle value
    of an even count) -> ``[B]``."""
    flat = x.flatten(1)
    med = flat.median(dim=1, keepdim=True).values
    return 1.4826 * (flat - med).abs().median(dim=1).values
