"""The RF ODE sampler: from the noisy start ``x_t0`` to ``x_1`` with the fused ``rf_step`` op.

Specification (docs/design.md, method M3 and M4): ``x_t0 = t0 y + (1 - t0) eps`` with ``eps`` drawn in the kernel
from ``(seed, offset)`` (:func:`mcgr.ops.rf_step.rf_start`), then ``steps`` updates of
``dx/dt = v(x, t, s)`` on the uniform grid ``t_k = t0 + k (1 - t0) / steps`` (``t_steps = 1``)
with the constant step ``dt = (1 - t0) / steps``:

* Euler: ``x_{k+1} = x_k + dt v(x_k, t_k)``; one velocity evaluation per step.
* Heun (explicit trapezoid, second order): ``v1 = v(x_k, t_k)``, ``x_pred = x_k + dt v1``,
  ``v2 = v(x_pred, t_{k+1})``, ``x_{k+1} = x_k + dt / 2 (v1 + v2)``; two evaluations per step.

``t0 = 1`` returns a copy of ``y`` without evaluating the velocity. The state lives in one buffer
updated in place (Heun adds one predictor buffer), and the time tensor is allocated once: fresh
large allocations cost page faults, and TT-GPR runs this per tile batch and outer iteration.
"""
from __future__ import annotations

from typing import Callable

import torch

from mcgr._validate import check_range, check_same_device
from mcgr.ops.rf_step import METHODS, rf_start, rf_step

__all__ = ["sample", "time_grid"]


def time_grid(t0: float, steps: int) -> list[float]:
    """The ``steps + 1`` times ``t0 + k (1 - t0) / steps``, k = 0..steps, ending exactly at 1."""
    return [t0 + (1.0 - t0) * k / steps for k in range(steps)] + [1.0]


def _check_velocity(v, x: torch.Tensor, call: str) -> torch.Tensor:
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"velocity_fn must return a tensor, got {type(v).__name__} ({call})")
    if v.shape != x.shape:
        raise ValueError(f"velocity_fn must return the shape of x {tuple(x.shape)}, got {tuple(v.shape)} ({call})")
    if v.device != x.device:
        raise ValueError(f"velocity_fn returned a tensor on {v.device}, x is on {x.device} ({call})")
    if not v.is_floating_point():
        raise TypeError(f"velocity_fn must return a floating-point tensor, got {v.dtype} ({call})")
    # lower precision (e.g. bf16 under autocast) is widened: the state is integrated in float32
    return v if v.dtype == torch.float32 else v.float()


def sample(velocity_fn: Callable, y: torch.Tensor, seed_map, t0: float = 0.5, steps: int = 4,
           method: str = "euler", seed: int = 0, offset: int = 0, backend: str = "auto",
           out: torch.Tensor | None = None) -> torch.Tensor:
    """Integrate the RF ODE from ``t0`` to 1 starting at ``t0 y + (1 - t0) eps`` (module docstring).

    velocity_fn: ``velocity_fn(x, t, seed_map) -> v`` with x ``[B, ...]`` float32 (y's shape), t
        ``[B]`` float32 (every entry the current time), v shaped like x (float32; a lower-precision
        floating result, e.g. under autocast, is widened). It must return a new tensor each call
        (Heun keeps the first velocity while the second is evaluated).
    y: ``[B, ..., H, W]`` float32 torch tensor, at least 2-D, finite, in the generator's
        standardised scale; typically ``[B, 1, T, T]`` (M projections batched along B).
    seed_map: passed to velocity_fn unchanged (a tensor must be on y's device).
    t0: start time in [0, 1]. steps: number of steps N >= 1. method: "euler" or "heun".
    seed, offset: the noise stream and the counter of y's element 0 (see ``rf_start``).
    backend: for the fused ops ("auto", "reference", "cpu", "triton", "cuda").
    out: optional float32 tensor shaped like y that receives the result (buffer reuse).

    Returns ``x_1`` shaped like y (float32, computed under ``torch.inference_mode``).
    """
    if not callable(velocity_fn):
        raise TypeError(f"velocity_fn must be callable, got {type(velocity_fn).__name__}")
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch tensor, got {type(y).__name__}")
    if y.dim() < 2:
        raise ValueError(f"y must be [B, ..., H, W] (at least 2-D), got shape {tuple(y.shape)}")
    if y.dtype != torch.float32:
        raise TypeError(f"y must be float32, got {y.dtype}")
    if isinstance(seed_map, torch.Tensor):
        check_same_device("y", y, "seed_map", seed_map)
    t0 = check_range("t0", t0, 0.0, 1.0)
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an integer >= 1, got {steps!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if y.numel() and not bool(torch.isfinite(y).all()):
        bad = (~torch.isfinite(y)).nonzero()[0].tolist()
        raise ValueError(f"y holds NaN or inf (first at index {bad})")
    with torch.inference_mode():
        if t0 == 1.0:
            if out is None:
                return y.clone()
            out.copy_(y)
            return out
        x = rf_start(y, t0, seed, offset, out=out, backend=backend)
        grid = time_grid(t0, steps)
        dt = (1.0 - t0) / steps
        t = torch.empty(y.shape[0], dtype=torch.float32, device=y.device)
        x_pred = torch.empty_like(x) if method == "heun" else None
        for k in range(steps):
            t.fill_(grid[k])
            v1 = _check_velocity(velocity_fn(x, t, seed_map), x, f"step {k}, t = {grid[k]:.6g}")
            if method == "euler":
                rf_step(x, v1, dt, out=x, backend=backend)
                continue
            rf_step(x, v1, dt, out=x_pred, backend=backend)
            t.fill_(grid[k + 1])
            v2 = _check_velocity(velocity_fn(x_pred, t, seed_map), x, f"step {k} corrector, t = {grid[k + 1]:.6g}")
            if v2.data_ptr() == v1.data_ptr() and v1.numel():
                raise ValueError("velocity_fn returned the same buffer twice in a Heun step; it must return a new tensor")
            rf_step(x, v2, dt, method="heun", v_prev=v1, out=x, backend=backend)
        return x

