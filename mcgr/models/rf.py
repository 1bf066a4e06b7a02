"""RF generator v(x_t, t, seed_map): the rectified-flow objective (DESIGN.md 3) and the sampler.

Images are standardised to ``x = 2 I - 1``. Rectified flow: ``x_t = t x1 + (1 - t) x0`` with
``x0 ~ N(0, I)`` and ``x1`` a synthetic patch; the network regresses the constant velocity
``x1 - x0`` (MSE). At test time (TT-GPR) a tile ``y`` is noised to ``x_t0 = t0 y + (1 - t0) eps`` and
integrated to t = 1 with :func:`sample`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mcgr.models.unet import UNet, UNetConfig

TIME_SAMPLING = ("uniform", "logit_normal")


def generator_config(width: int = 16, depth: int = 3, time_dim: int = 64, **kw) -> UNetConfig:
    """The generator's U-Net: 2 channels in (``x_t``, seed map), 1 velocity out, time embedding on."""
    return UNetConfig(in_channels=2, out_channels=1, width=width, depth=depth, time_embedding=True,
                      time_dim=time_dim, **kw)


def velocity(model: UNet, x: torch.Tensor, t: torch.Tensor | float, seed_map: torch.Tensor) -> torch.Tensor:
    """``v(x, t, seed_map)``: x ``[B, 1, H, W]`` (standardised scale), t scalar or ``[B]`` in [0, 1],
    seed_map ``[B, 1, H, W]``; returns ``[B, 1, H, W]``."""
    return model(torch.cat([x, seed_map.to(x.dtype)], dim=1), t)


def sample_times(n: int, generator: torch.Generator, mode: str = "uniform", mean: float = 0.0,
                 std: float = 1.0) -> torch.Tensor:
    """Training times ``[n]`` in (0, 1): uniform, or logit-normal (``sigmoid(N(mean, std))``, which
    spends more steps at mid t, where the velocity is hardest to predict)."""
    if mode == "uniform":
        return torch.rand(n, generator=generator)
    if mode == "logit_normal":
        return torch.sigmoid(mean + std * torch.randn(n, generator=generator))
    raise ValueError(f"time sampling must be one of {TIME_SAMPLING}, got {mode!r}")


def rf_loss(model: UNet, x1: torch.Tensor, seed_map: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Rectified-flow MSE ``|v(x_t, t, s) - (x1 - x0)|^2`` with ``x_t = t x1 + (1 - t) x0``.

    x1, x0, seed_map ``[B, 1, H, W]``; t ``[B]``."""
    tb = t.view(-1, 1, 1, 1).to(x1.dtype)
    xt = tb * x1 + (1 - tb) * x0
    v = velocity(model, xt, t, seed_map)
    return F.mse_loss(v.float(), (x1 - x0).float())


from mcgr.models.sampling import sample  # noqa: E402,F401  (the fused rf_step sampler, re-exported here)
