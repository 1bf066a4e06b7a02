"""Rectified-flow ODE updates and the noisy start, fused (docs/design.md, method M3, M4 and M6).

Rectified flow: ``x_t = t x1 + (1 - t) x0`` with ``x0 ~ N(0, I)``; a sample is drawn by
integrating ``dx/dt = v(x, t, s)`` from ``t0`` to 1 (:func:`mcgr.models.sampling.sample`). This
module holds the elementwise parts of that integration as one fused op with three modes. With
``fp32(.)`` rounding to float32 and every product and sum rounded to float32 in the order written
(no fused multiply-add on any backend):

* **start** ``rf_start(y, t0, seed, offset)``::

      a = fp32(t0), b = fp32(1 - t0)           (1 - t0 computed in double, then rounded)
      x_t0[i] = y[i] * a + eps[i] * b,   eps[i] = rng_normal(seed, (offset + i) mod 2**32)

  where ``i`` is the row-major linear index of the element in ``y``'s logical shape (whatever its
  strides) and ``rng_normal`` is the counter-based generator of :mod:`mcgr.ops._rng` /
  ``csrc/common.h``. The noise integers are identical on every backend, so ``x_t0`` is a pure
  function of ``(y, t0, seed, offset)``; no noise tensor is materialised by the kernels. Batches
  of M projections ``[M * P, 1, T, T]`` get distinct noise per projection from the index alone;
  separate calls that must not share noise use disjoint ``[offset, offset + numel)`` ranges (the
  counter space of one seed holds ``2**32`` numbers; a call that would wrap raises).
* **euler** ``rf_step(x, v, dt)``::

      x_new[i] = x[i] + v[i] * fp32(dt)

* **heun** ``rf_step(x, v2, dt, method="heun", v_prev=v1)``::

      x_new[i] = x[i] + (v_prev[i] + v[i]) * fp32(dt) / 2

  A full Heun step is two calls, each one pass: ``v1 = v(x, t)``; ``x_pred = rf_step(x, v1, dt)``;
  ``v2 = v(x_pred, t + dt)``; ``x = rf_step(x, v2, dt, method="heun", v_prev=v1, out=x)``.
  The predictor reads 2 and writes 1 tensor, the corrector reads 3 and writes 1.

Why no fused "start + first Euler step": the first velocity is evaluated on ``x_t0``, so ``x_t0``
must exist in memory before the network runs; folding the start into the update would only swap
the read of ``x_t0`` for a read of ``y`` and save nothing.

Backends: ``reference`` (PyTorch, the functions ``rf_start_ref`` / ``rf_step_ref`` below: the
specification), ``cpu`` (C++/OpenMP), ``cuda``, ``triton``. Euler and Heun results are bitwise
equal to the reference on every backend. The start differs only through the float functions
inside ``rng_normal`` (log, sqrt, cos: the cpu backend uses vectorisable Cephes polynomials, CUDA
``logf``/``cospif``, Triton its own), which agree to a few ulp: at most ~2e-6 absolute on ``eps``
(tolerances in ``tests/tolerances.py``).

``out=`` takes a preallocated float32 tensor of the same shape (in-place updates: ``out=x``, or
``out`` the same buffer as ``v`` / ``v_prev``); a fresh large allocation costs page faults, so hot
loops reuse buffers. ``out`` may be exactly one of the inputs but must not partially overlap one.
Inputs may be non-contiguous (the native backends then work on contiguous copies). Finiteness is
not checked here: this is the inner loop, a check would double the memory traffic (and sync a
GPU), and a NaN only propagates to its own element; :func:`mcgr.models.sampling.sample` checks
its input once.
"""
from __future__ import annotations

import operator
import struct
from dataclasses import dataclass

import torch

from mcgr import _backends
from mcgr._interop import as_tensor, to_kind
from mcgr._validate import check_range, check_same_device
from mcgr.ops._rng import rng_normal

__all__ = ["RfStepParams", "rf_start", "rf_start_ref", "rf_step", "rf_step_ref", "METHODS"]

METHODS = ("euler", "heun")
MODES = {"start": 0, "euler": 1, "heun": 2}
COUNTER_SPACE = 2**32
_F32_MAX = 3.4028234663852886e38


def fp32(value: float) -> float:
    """``value`` rounded to the nearest float32 (returned as a Python float)."""
    return struct.unpack("f", struct.pack("f", float(value)))[0]


@dataclass(frozen=True)
class RfStepParams:
    """Kernel parameters (mirrors ``mcgr::RfStepParams`` in ``csrc/rf_step/rf_step.h``).

    mode: "start" (``a y + b eps``), "euler" (``x + a v``) or "heun" (``x + a (v_prev + v)``).
    a, b: the float32 coefficients (``t0``, ``1 - t0``; ``dt``; ``dt / 2``). Build them with
    :meth:`start`, :meth:`euler`, :meth:`heun`, which do the rounding of the specification.
    seed: noise stream in [0, 2**32); offset: counter of element 0 in [0, 2**32).
    """

    mode: str
    a: float
    b: float = 0.0
    seed: int = 0
    offset: int = 0

    @classmethod
    def start(cls, t0: float, seed: int, offset: int) -> "RfStepParams":
        return cls("start", fp32(t0), fp32(1.0 - float(t0)), int(seed), int(offset))

    @classmethod
    def euler(cls, dt: float) -> "RfStepParams":
        return cls("euler", fp32(dt))

    @classmethod
    def heun(cls, dt: float) -> "RfStepParams":
        return cls("heun", fp32(dt) * 0.5)

    def validated(self) -> "RfStepParams":
        if self.mode not in MODES:
            raise ValueError(f"params.mode must be one of {tuple(MODES)}, got {self.mode!r}")
        check_range("params.a", self.a, -_F32_MAX, _F32_MAX)
        check_range("params.b", self.b, -_F32_MAX, _F32_MAX)
        _check_uint32("params.seed", self.seed)
        _check_uint32("params.offset", self.offset)
        return self

    def native(self, C):
        p = C.RfStepParams()
        p.mode, p.a, p.b, p.seed, p.offset = MODES[self.mode], self.a, self.b, self.seed, self.offset
        return p


def _check_uint32(name: str, value) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer in [0, 2**32), got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer in [0, 2**32), got {value!r}") from None
    if not 0 <= v < COUNTER_SPACE:
        raise ValueError(f"{name} must be an integer in [0, 2**32), got {v}")
    return v


# --------------------------------------------------------------------------------------------
# The specification


def rf_noise_ref(seed: int, offset: int, shape, device=None) -> torch.Tensor:
    """The start's noise ``eps`` (float32, ``shape``): ``rng_normal(seed, offset + row-major index)``."""
    n = 1
    for s in shape:
        n *= int(s)
    counter = int(offset) + torch.arange(n, dtype=torch.int64, device=device)
    return rng_normal(int(seed), counter).view(tuple(shape))


def rf_start_ref(y: torch.Tensor, t0: float, seed: int, offset: int = 0) -> torch.Tensor:
    """Reference noisy start ``x_t0 = t0 y + (1 - t0) eps`` (module docstring): y [..., H, W] float32."""
    p = RfStepParams.start(t0, seed, offset)
    return y * p.a + rf_noise_ref(seed, offset, y.shape, y.device) * p.b


def rf_step_ref(x: torch.Tensor, v: torch.Tensor, dt: float, method: str = "euler",
                v_prev: torch.Tensor | None = None) -> torch.Tensor:
    """Reference update: Euler ``x + v dt``, or the Heun corrector ``x + (v_prev + v) dt / 2``."""
    if method == "euler":
        return x + v * RfStepParams.euler(dt).a
    return x + (v_prev + v) * RfStepParams.heun(dt).a


@_backends.register("rf_step", "reference")
def _launch_reference(params: RfStepParams, x, v, w, out):
    """Launcher form shared by every backend: ``(params, x, v, w, out) -> result`` (``out`` or new)."""
    if params.mode == "start":
        res = x * params.a + rf_noise_ref(params.seed, params.offset, x.shape, x.device) * params.b
    elif params.mode == "euler":
        res = x + v * params.a
    else:
        res = x + (w + v) * params.a
    if out is None:
        return res
    out.copy_(res)
    return out


# --------------------------------------------------------------------------------------------
# Native launchers: contiguous inputs, a contiguous output (allocated here when none is given)


def _native_args(x, v, w, out):
    x = x.contiguous()
    v = None if v is None else v.contiguous()
    w = None if w is None else w.contiguous()
    res = out if out is not None and out.is_contiguous() else torch.empty(x.shape, dtype=torch.float32, device=x.device)
    ptr = lambda t: 0 if t is None else t.data_ptr()  # noqa: E731
    return x, v, w, res, (ptr(res), ptr(x), ptr(v), ptr(w), x.numel())


def _finish(res, out):
    if out is not None and res is not out:
        out.copy_(res)
        return out
    return res


@_backends.register("rf_step", "cpu")
def _launch_cpu(params: RfStepParams, x, v, w, out):
    C = _backends.native()
    x, v, w, res, args = _native_args(x, v, w, out)
    C.rf_step_cpu(*args, params.native(C))
    return _finish(res, out)


@_backends.register("rf_step", "cuda")
def _launch_cuda(params: RfStepParams, x, v, w, out):
    C = _backends.native()
    x, v, w, res, args = _native_args(x, v, w, out)
    stream = torch.cuda.current_stream(x.device).cuda_stream
    C.rf_step_cuda(*args, params.native(C), stream)
    return _finish(res, out)


@_backends.register("rf_step", "triton")
def _launch_triton(params: RfStepParams, x, v, w, out):
    from mcgr.kernels.rf_step import rf_step_triton

    return rf_step_triton(params, MODES[params.mode], x, v, w, out)


# --------------------------------------------------------------------------------------------
# Public functions


def _check_field(t: torch.Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.dim() < 2:
        raise ValueError(f"{name} must be [..., H, W] (at least 2-D), got shape {tuple(t.shape)}")
    if t.dtype != torch.float32:
        raise TypeError(f"{name} must be float32, got {t.dtype}")


def _check_like(name: str, t, ref_name: str, ref: torch.Tensor) -> torch.Tensor:
    t, _ = as_tensor(t, name)
    if t.dtype != torch.float32:
        raise TypeError(f"{name} must be float32, got {t.dtype}")
    check_same_device(ref_name, ref, name, t)
    if t.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(t.shape)}")
    return t


def _check_out(out, ref: torch.Tensor, inputs: dict) -> torch.Tensor | None:
    if out is None:
        return None
    out = _check_like("out", out, next(iter(inputs)), ref)
    if out.numel() == 0:
        return out
    if any(st == 0 and sz > 1 for st, sz in zip(out.stride(), out.shape)):
        raise ValueError("out must not be an expanded view (some elements would be written twice)")
    lo, hi = _byte_span(out)
    for name, t in inputs.items():
        if t is None or t is out or t.numel() == 0:
            continue
        same = t.data_ptr() == out.data_ptr() and t.stride() == out.stride()
        tlo, thi = _byte_span(t)
        if not same and tlo < hi and lo < thi:
            raise ValueError(f"out partially overlaps {name}: pass the same tensor (in place) or a separate buffer")
    return out


def _byte_span(t: torch.Tensor) -> tuple[int, int]:
    """[first, last + 1) byte addresses a strided tensor can touch."""
    if t.is_contiguous():
        return t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()
    extent = sum((sz - 1) * st for sz, st in zip(t.shape, t.stride()))
    return t.data_ptr(), t.data_ptr() + (extent + 1) * t.element_size()


def rf_start(y, t0: float, seed: int, offset: int = 0, *, out=None, backend: str = "auto"):
    """Noisy start of the RF ODE: ``x_t0 = t0 y + (1 - t0) eps`` with in-kernel noise (module docstring).

    y: [..., H, W] float32 (torch, NumPy or CuPy), standardised image scale; typically tiles
        [P, 1, T, T] or images [B, 1, H, W]. t0: start time in [0, 1] (1 returns y).
    seed: noise stream, integer in [0, 2**32). offset: counter of y's element 0; ``offset +
        y.numel()`` must be <= 2**32. out: optional float32 tensor shaped like y to write into
        (may be y itself). backend: "auto", "reference", "cpu", "triton" or "cuda".

    Returns x_t0 shaped like y (float32, the caller's array kind).
    """
    yt, kind = as_tensor(y, "y")
    _check_field(yt, "y")
    t0 = check_range("t0", t0, 0.0, 1.0)
    seed = _check_uint32("seed", seed)
    if isinstance(offset, bool):
        raise TypeError(f"offset must be a non-negative integer, got {offset!r}")
    try:
        offset = operator.index(offset)
    except TypeError:
        raise TypeError(f"offset must be a non-negative integer, got {offset!r}") from None
    if offset < 0 or offset + yt.numel() > COUNTER_SPACE:
        raise ValueError(f"offset must be >= 0 with offset + y.numel() <= 2**32 (the noise counter space), "
                         f"got offset={offset} for {yt.numel()} elements")
    o = _check_out(out, yt, {"y": yt})
    params = RfStepParams.start(t0, seed, offset).validated()
    choice = _backends.choose("rf_step", yt.device, backend)
    return to_kind(choice.fn(params, yt, None, None, o), kind)


def rf_step(x, v, dt: float, *, method: str = "euler", v_prev=None, out=None, backend: str = "auto"):
    """One elementwise RF ODE update (module docstring).

    x: [..., H, W] float32 state at time t (torch, NumPy or CuPy). v: velocity, float32, x's shape
    and device. dt: time step (t -> t + dt), a finite float. method: "euler" (``x + v dt``) or
    "heun" (the corrector ``x + (v_prev + v) dt / 2``: v_prev = v(x, t), v = v(x + v_prev dt, t + dt)).
    v_prev: required for "heun", rejected for "euler". out: optional float32 tensor shaped like x
    (may be x, v or v_prev itself: in-place). backend: "auto", "reference", "cpu", "triton", "cuda".

    Returns the state at t + dt, shaped like x (float32, the caller's array kind).
    """
    xt, kind = as_tensor(x, "x")
    _check_field(xt, "x")
    vt = _check_like("v", v, "x", xt)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    dt = check_range("dt", dt, -_F32_MAX, _F32_MAX)
    if method == "heun":
        if v_prev is None:
            raise ValueError("v_prev (the velocity at the start of the step) is required for method='heun'")
        wt = _check_like("v_prev", v_prev, "x", xt)
        params = RfStepParams.heun(dt)
    else:
        if v_prev is not None:
            raise ValueError("v_prev is only used by method='heun'; pass method='heun' or drop v_prev")
        wt = None
        params = RfStepParams.euler(dt)
    o = _check_out(out, xt, {"x": xt, "v": vt, "v_prev": wt})
    choice = _backends.choose("rf_step", xt.device, backend)
    return to_kind(choice.fn(params.validated(), xt, vt, wt, o), kind)
