"""RF generator v(x_t, t, seed_map): the rectified-flow objective (docs/design.md, method M3) and the sampler.

The flow runs in the generator's ``input_scale`` (:func:`to_flow`): ``x = 2 I - 1``, or the detail
layer ``x = (I - G_s * I) / sigma`` (``sigma`` the robust std of ``I - G_s * I`` over each patch),
where calcifications have amplitudes of a few units against unit-variance noise. Rectified flow: ``x_t = t x1 + (1 - t) x0`` with
``x0 ~ N(0, I)`` and ``x1`` a synthetic patch; the network regresses the constant velocity
``x1 - x0`` (MSE). At test time (TT-GPR) a tile ``y`` is noised to ``x_t0 = t0 y + (1 - t0) eps`` and
integrated to t = 1 with :func:`sample`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mcgr.models.unet import DETAIL_SIGMA, UNet, UNetConfig, config_of, detail_layer, standardise, unstandardise  # noqa: F401

TIME_SAMPLING = ("uniform", "logit_normal")


def generator_config(width: int = 16, depth: int = 3, time_dim: int = 64, image_condition: bool = False,
                     **kw) -> UNetConfig:
    """The generator's U-Net: 2 channels in (``x_t``, seed map; 3 with ``image_condition``: and the
    observed patch), 1 velocity out, time embedding on."""
    return UNetConfig(in_channels=3 if image_condition else 2, out_channels=1, width=width, depth=depth,
                      time_embedding=True, time_dim=time_dim, image_condition=image_condition, **kw)


def image_conditioned(model) -> bool:
    """Whether generator ``model`` (or a wrapper with ``.module``) takes the observed patch as input."""
    return bool(getattr(config_of(model), "image_condition", False))


def generator_condition(model, seed_map: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """What :func:`velocity` takes as its condition: the seed map ``[B, 1, H, W]``, with the observed
    patch ``y`` (flow space, ``[B, 1, H, W]``) appended as a second channel when the generator is
    :func:`image_conditioned`."""
    if not image_conditioned(model):
        return seed_map
    if y.shape != seed_map.shape:
        raise ValueError(f"y {tuple(y.shape)} and seed_map {tuple(seed_map.shape)} must have one shape")
    return torch.cat([seed_map, y.to(seed_map.dtype)], dim=1)


class FlowContext:
    """What :func:`from_flow` needs to map a flow-space tensor back to an image: the low-pass layer
    ``[B, 1, H, W]`` and the per-patch scale ``[B, 1, 1, 1]`` (None for the "image" scale)."""

    __slots__ = ("scale", "low", "sigma")

    def __init__(self, scale: str, low: torch.Tensor | None = None, sigma: torch.Tensor | None = None):
        self.scale, self.low, self.sigma = scale, low, sigma

    def repeat(self, m: int) -> "FlowContext":
        """The context of ``x.repeat(m, 1, 1, 1)``."""
        if self.scale == "image":
            return self
        return FlowContext(self.scale, self.low.repeat(m, 1, 1, 1), self.sigma.repeat(m, 1, 1, 1))


def to_flow(image: torch.Tensor, scale: str = "image") -> tuple[torch.Tensor, FlowContext]:
    """``(x, ctx)``: ``image`` ``[B, 1, H, W]`` in [0, 1] in the flow space of ``scale``.

    "image": ``x = 2 I - 1``. "detail": :func:`mcgr.models.unet.detail_layer`, ``x = (I - L) /
    sigma`` with ``L = G_5 * I`` and ``sigma`` the robust std of ``I - L`` per patch: texture and
    noise have unit spread, so a calcification at 5 texture sigmas stands 5 units high and survives the
    noising ``t0 x + (1 - t0) eps`` at t0 = 0.5, which the "image" scale (where the same
    calcification is ~0.05 units high) does not. :func:`from_flow` inverts it exactly."""
    if image.dim() != 4 or image.shape[1] != 1:
        raise ValueError(f"image must be [B, 1, H, W], got {tuple(image.shape)}")
    if scale == "image":
        return standardise(image), FlowContext("image")
    if scale != "detail":
        raise ValueError(f"scale must be 'image' or 'detail', got {scale!r}")
    x, low, sig = detail_layer(image)
    return x.to(image.dtype), FlowContext("detail", low, sig)


def flow_like(image: torch.Tensor, ctx: FlowContext) -> torch.Tensor:
    """``image`` ``[B, 1, H, W]`` in the flow space of another image's context ``ctx`` (the same
    low-pass layer and scale): the training target of an enhancing generator is expressed in the
    frame of the observed patch it is conditioned on, so :func:`from_flow` with that patch's context
    inverts it."""
    if ctx.scale == "image":
        return standardise(image)
    return ((image.float() - ctx.low) / ctx.sigma).to(image.dtype)


def from_flow(x: torch.Tensor, ctx: FlowContext) -> torch.Tensor:
    """The image (not clamped) of flow-space ``x`` under ``ctx`` (:func:`to_flow`'s inverse)."""
    if ctx.scale == "image":
        return unstandardise(x)
    return ctx.low + ctx.sigma * x.float()


def velocity(model: UNet, x: torch.Tensor, t: torch.Tensor | float, seed_map: torch.Tensor) -> torch.Tensor:
    """``v(x, t, seed_map)``: x ``[B, 1, H, W]`` (flow space), t scalar or ``[B]`` in [0, 1],
    seed_map ``[B, C, H, W]``: the seed map, and for an image-conditioned generator the observed
    patch as a second channel (:func:`generator_condition`); returns ``[B, 1, H, W]``."""
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


def rf_loss(model: UNet, x1: torch.Tensor, seed_map: torch.Tensor, t: torch.Tensor, x0: torch.Tensor,
            y: torch.Tensor | None = None) -> torch.Tensor:
    """Rectified-flow MSE ``|v(x_t, t, s) - (x1 - x0)|^2`` with ``x_t = t x1 + (1 - t) x0``.

    x1, x0 ``[B, 1, H, W]``; seed_map ``[B, C, H, W]`` (see :func:`velocity`); t ``[B]``.

    With ``y`` (the observed patch, for a target ``x1`` that differs from it: an enhancing
    generator), the state is built as TT-GPR builds its start, ``x_t = t y + (1 - t) x0``, and the
    loss is the endpoint error of one Euler step from it, ``|x_t + (1 - t) v - x1|^2``: the velocity
    ``(x1 - x_t) / (1 - t)`` that carries the noised observation straight to the target, under the
    rectified-flow loss weighted by ``(1 - t)^2`` (which keeps the target finite as t -> 1). Where
    ``x1 = y`` this is the plain objective at that weighting. Built from ``x1`` instead, the state
    would hold the enhanced calcification at every t, and the network would learn to keep what
    ``x_t`` shows rather than to enhance what the observation holds (measured: docs/design.md)."""
    tb = t.view(-1, 1, 1, 1).to(x1.dtype)
    if y is None:
        xt = tb * x1 + (1 - tb) * x0
        v = velocity(model, xt, t, seed_map)
        return F.mse_loss(v.float(), (x1 - x0).float())
    xt = tb * y + (1 - tb) * x0
    v = velocity(model, xt, t, seed_map)
    return F.mse_loss((xt + (1 - tb) * v).float(), x1.float())


from mcgr.models.sampling import sample  # noqa: E402,F401  (the fused rf_step sampler, re-exported here)
