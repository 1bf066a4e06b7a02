"""GroupNorm, a per-sample channel modulation, a residual and SiLU as one op: the tail of every
U-Net block (:class:`mcgr.models.unet.ResBlock`), ``silu(norm1(conv1(x)))`` and
``silu(norm2(conv2(h)) * (1 + scale) + shift + skip(x))``.

Unfused, PyTorch reads and writes the activations once per step (group_norm, the modulation, the
add, silu: 28 % of the shipped segmentor's bf16 time on one core of the 2-core EPYC, 49 % of the
width-8 student's, in ``torch.profiler``). The fused CPU kernel (``csrc/group_norm_silu``) reads them
twice (statistics, then output) and writes them once; the U-Net takes it at inference on CPU
(:func:`fused_available`).

``group_norm_silu_ref`` is the specification: every step in float32 on the inputs as given, the
result cast once to ``x``'s dtype. The kernel accumulates the statistics in float64 and rounds
once, so in bfloat16 it differs from the reference by at most one bfloat16 rounding step.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from mcgr import _backends

DTYPES = {torch.float32: 0, torch.bfloat16: 1}


def group_norm_silu_ref(x: torch.Tensor, groups: int, weight=None, bias=None, eps: float = 1e-5, *,
                        scale=None, shift=None, residual=None) -> torch.Tensor:
    """``silu(group_norm(x) * (1 + scale) + shift + residual)`` in float32, cast to ``x.dtype``.
    x [N, C, H, W]; weight, bias [C]; scale, shift [N, C] (or None); residual like x (or None)."""
    h = F.group_norm(x.float(), groups, None if weight is None else weight.float(),
                     None if bias is None else bias.float(), eps)
    if scale is not None:
        h = h * (1 + scale.float()[:, :, None, None])
    if shift is not None:
        h = h + shift.float()[:, :, None, None]
    if residual is not None:
        h = h + residual.float()
    return F.silu(h).to(x.dtype)


def _layout(t: torch.Tensor) -> int:
    """1 for channels-last memory, 0 for NCHW-contiguous, -1 for neither."""
    if t.is_contiguous():
        return 0
    if t.is_contiguous(memory_format=torch.channels_last):
        return 1
    return -1


def _check(x, groups, weight, bias, eps, scale, shift, residual):
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a [N, C, H, W] tensor, got {getattr(x, 'shape', type(x).__name__)}")
    if x.dtype not in DTYPES:
        raise ValueError(f"x must be float32 or bfloat16, got {x.dtype}")
    N, C = x.shape[:2]
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or C % groups:
        raise ValueError(f"groups must be an int >= 1 dividing C={C}, got {groups!r}")
    if not (isinstance(eps, (int, float)) and eps > 0 and eps < float("inf")):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    for name, t, shape in (("weight", weight, (C,)), ("bias", bias, (C,)), ("scale", scale, (N, C)), ("shift", shift, (N, C))):
        if t is not None and (not isinstance(t, torch.Tensor) or tuple(t.shape) != shape):
            raise ValueError(f"{name} must be a tensor of shape {list(shape)}, got {getattr(t, 'shape', type(t).__name__)}")
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device}, x on {x.device}")
    if residual is not None and (not isinstance(residual, torch.Tensor) or residual.shape != x.shape):
        raise ValueError(f"residual must be a tensor of x's shape {list(x.shape)}, got {getattr(residual, 'shape', None)}")
    if residual is not None and residual.device != x.device:
        raise ValueError(f"residual is on {residual.device}, x on {x.device}")


@_backends.register("group_norm_silu", "reference")
def _launch_reference(x, groups, weight, bias, eps, scale, shift, residual, inplace):
    y = group_norm_silu_ref(x, groups, weight, bias, eps, scale=scale, shift=shift, residual=residual)
    return x.copy_(y) if inplace else y


def _f32(t):
    return None if t is None else t.detach().to(torch.float32).contiguous()


@_backends.register("group_norm_silu", "cpu")
def _launch_cpu(x, groups, weight, bias, eps, scale, shift, residual, inplace):
    C = _backends.native()
    cl = _layout(x)
    target = x
    if cl < 0:
        x, cl = x.contiguous(), 0
    fmt = torch.channels_last if cl == 1 else torch.contiguous_format
    if residual is not None:
        residual = residual.to(x.dtype)
        if not residual.is_contiguous(memory_format=fmt):
            residual = residual.contiguous(memory_format=fmt)
    w, b, s, h = _f32(weight), _f32(bias), _f32(scale), _f32(shift)
    # in place: the kernel reads every element before writing it (a fresh output of a full-resolution
    # activation costs ~2 ms of page faults per call on this box, as much as the kernel saves)
    out = x if inplace else torch.empty_like(x, memory_format=fmt)
    p = C.NormActParams()
    p.n, p.c = int(x.shape[0]), int(x.shape[1])
    p.hw = int(x.shape[2] * x.shape[3])
    p.groups, p.eps, p.dtype, p.channels_last = int(groups), float(eps), DTYPES[x.dtype], int(cl)
    if x.numel() == 0:
        return target if inplace else out
    ptr = lambda t: 0 if t is None else t.data_ptr()  # noqa: E731
    C.group_norm_silu_cpu(x.data_ptr(), ptr(w), ptr(b), ptr(s), ptr(h), ptr(residual), out.data_ptr(), p)
    if inplace and out is not target:
        target.copy_(out)
        return target
    return out


def group_norm_silu(x: torch.Tensor, groups: int, weight=None, bias=None, eps: float = 1e-5, *, scale=None,
                    shift=None, residual=None, inplace: bool = False, backend: str = "auto") -> torch.Tensor:
    """``silu(group_norm(x, groups, weight, bias, eps) * (1 + scale) + shift + residual)`` in
    ``x``'s dtype and memory format (channels-last stays channels-last): a new tensor, or ``x``
    itself overwritten when ``inplace`` (``residual`` must then not share ``x``'s memory).
    Inference only: no autograd graph is recorded (use :func:`group_norm_silu_ref` to train)."""
    _check(x, groups, weight, bias, eps, scale, shift, residual)
    if inplace and residual is not None and residual.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
        raise ValueError("inplace: residual shares x's memory")
    choice = _backends.choose("group_norm_silu", x.device, backend)
    with torch.no_grad():
        return choice.fn(x, groups, weight, bias, eps, scale, shift, residual, bool(inplace))


def fused_available(x: torch.Tensor) -> bool:
    """Whether :class:`~mcgr.models.unet.ResBlock` should take the fused kernel for ``x``: a CPU
    tensor of float32 / bfloat16 with gradients off (``torch.no_grad`` / ``inference_mode``), outside
    tracing and compilation, the kernel built, and
    neither ``MCGR_FUSED_NORM=0`` nor a ``MCGR_BACKEND`` other than auto / cpu asking otherwise."""
    if x.device.type != "cpu" or x.dtype not in DTYPES or _DISABLED[0]:
        return False
    if torch.is_grad_enabled():  # training, or gradients through a frozen network: PyTorch's ops
        return False
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
        return False
    if os.environ.get("MCGR_FUSED_NORM", "1").strip() == "0":
        return False
    if _backends.requested_backend("auto") not in ("auto", "cpu"):
        return False
    return _backends.backend_status("group_norm_silu", "cpu", x.device)[0]


_DISABLED = [False]


class unfused:
    """Context manager: the U-Net runs PyTorch's own group_norm / silu inside it (benchmarks' peers,
    and the side-by-side checks of the fused path)."""

    def __enter__(self):
        self._prev = _DISABLED[0]
        _DISABLED[0] = True
        return self

    def __exit__(self, *exc):
        _DISABLED[0] = self._prev
        return False
