"""TT-GPR logit refinement: gradient steps on the regularised energy of docs/design.md, method M4.

``refine_ref`` is the specification; ``refine`` dispatches to the fused kernels (C++/OpenMP,
CUDA, Triton) which must equal it. Every backend works on 2-D planes ``[H, W]`` stacked as
``[N, H, W]`` (tiles ``[P, T, T]`` or canvases ``[B, H, W]``); planes never interact.

The energy of one plane, with pixels i, 4-neighbour pairs ``i ~ j`` inside the plane (each
unordered pair counted once; neighbours outside the plane do not exist):

    E(z) = sum_i BCE(sigmoid(z_i), q_i) + (lambda_a / 2) |z - z0|^2
         + (lambda_e / 2) sum_{i~j} w_ij (z_i - z_j)^2 + (lambda_o / 2) |z - zbar|^2,
    w_ij = exp(-(y_i - y_j)^2 / (2 sigma_e^2)).

Its exact gradient (the pair term contributes ``lambda_e w_ij (z_i - z_j)`` to i and the opposite
to j, so the 1/2 cancels against counting each pair once) is

    dE/dz_i = sigmoid(z_i) - q_i + lambda_a (z_i - z0_i)
            + lambda_e sum_{j in N(i)} w_ij (z_i - z_j) + lambda_o (z_i - zbar_i),

and one step is ``z <- z - eta * dE/dz`` with every neighbour taken from the previous step.
``zbar=None`` switches the overlap term off.

How the backends fuse the steps (each reads z, q, z0, y, zbar once and writes z once per pass):

* cpu: temporal blocking. Up to 8 steps per pass stream down blocks of rows, each step keeping
  three rows of its predecessor in a cache-resident ring; the edge weights are computed once per
  row and pass. More steps take more passes, in place on ``out``.
* cuda: a 32 x 32 block per CTA loaded with a halo of S <= 4 pixels into shared memory; step s
  updates the region shrunk by s, so S steps take one launch; more steps take more launches
  ping-ponging between ``out`` and a scratch buffer.
* triton: one launch per step (neighbours read from global memory), ping-pong as on CUDA.

Non-finite inputs are detected inside the first pass (it reads every input anyway) and raise
ValueError naming the argument; no separate validation pass over the data is made.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from mcgr import _backends
from mcgr._interop import as_tensor, to_kind
from mcgr._validate import check_range, check_same_device

INPUT_NAMES = ("z", "q", "z0", "y", "zbar")
# Steps one CUDA launch fuses (its shared-memory halo width; kMaxSteps in csrc/refine/refine_cuda.cu).
CUDA_STEPS_PER_LAUNCH = 4


@dataclass(frozen=True)
class RefineParams:
    """Weights of the refinement energy and the step size (docs/design.md, method M4).

    eta: gradient step. Larger moves logits faster per step (fewer steps for the same change) but
        the step must stay below the stability bound ``eta * (1/4 + lambda_a + lambda_o +
        8 lambda_e) < 2`` (the energy's curvature bound), or the high-frequency part diverges;
        :meth:`validated` rejects steps past it.
    lambda_a: anchor to the base logits z0. Larger keeps the base segmentor's answer (fewer new
        false positives, less recall gained from the RF surrogate q); smaller follows q.
    lambda_e: edge-aware smoothness. Larger fills holes and smooths ragged calcification borders,
        but can merge close calcifications and blur the smallest ones; 0 turns it off.
    lambda_o: overlap consistency with the stitched canvas zbar. Larger makes overlapping tiles
        agree (no seams), at the cost of a tile's own evidence near its border.
    sigma_e: intensity scale of an edge, in image units ([0, 1]). Neighbours whose intensities
        differ by much more than sigma_e barely smooth into each other, so a calcification's bright
        rim stops the smoothing. Smaller keeps tiny calcifications sharp; larger smooths across them.
    """

    eta: float = 1.0
    lambda_a: float = 0.05
    lambda_e: float = 0.1
    lambda_o: float = 0.25
    sigma_e: float = 0.05

    def validated(self) -> "RefineParams":
        check_range("params.eta", self.eta, 0.0, None, lo_open=True)
        check_range("params.lambda_a", self.lambda_a, 0.0, 1e6)
        check_range("params.lambda_e", self.lambda_e, 0.0, 1e6)
        check_range("params.lambda_o", self.lambda_o, 0.0, 1e6)
        check_range("params.sigma_e", self.sigma_e, 0.0, 1e6, lo_open=True)
        if self.eta * self.curvature_bound >= 2.0:
            raise ValueError(
                f"params.eta = {self.eta} is past the stability bound: gradient descent on this energy "
                f"needs eta < 2 / (1/4 + lambda_a + lambda_o + 8 lambda_e) = {2.0 / self.curvature_bound:.6g}"
            )
        return self

    @property
    def curvature_bound(self) -> float:
        """Upper bound of the energy's Hessian eigenvalues: 1/4 (BCE) + lambda_a + lambda_o + 8 lambda_e."""
        return 0.25 + self.lambda_a + self.lambda_o + 8.0 * self.lambda_e

    def as_dict(self) -> dict:
        return asdict(self)


def edge_weights(y: torch.Tensor, sigma_e: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Edge-aware weights of the vertical pairs ``[N, H-1, W]`` and horizontal pairs ``[N, H, W-1]``."""
    inv = 1.0 / (2.0 * sigma_e * sigma_e)
    dv = y[..., 1:, :] - y[..., :-1, :]
    dh = y[..., :, 1:] - y[..., :, :-1]
    return torch.exp(-(dv * dv) * inv), torch.exp(-(dh * dh) * inv)


def refine_grad_ref(z, q, z0, wv, wh, zbar, params: RefineParams) -> torch.Tensor:
    """dE/dz for planes ``[N, H, W]`` given the edge weights of :func:`edge_weights`."""
    fv = wv * (z[..., :-1, :] - z[..., 1:, :])  # w_ij (z_i - z_j), i directly above j
    fh = wh * (z[..., :, :-1] - z[..., :, 1:])  # w_ij (z_i - z_j), i directly left of j
    # each pair adds its flux to the upper/left pixel and subtracts it from the lower/right one
    lap = F.pad(fv, (0, 0, 0, 1)) - F.pad(fv, (0, 0, 1, 0)) + F.pad(fh, (0, 1)) - F.pad(fh, (1, 0))
    g = torch.sigmoid(z) - q + params.lambda_a * (z - z0) + params.lambda_e * lap
    if zbar is not None:
        g = g + params.lambda_o * (z - zbar)
    return g


def refine_ref(z, q, z0, y, zbar, params: RefineParams, steps: int = 1, out=None) -> torch.Tensor:
    """Reference: ``steps`` gradient steps on the energy (module docstring). Planes ``[N, H, W]``
    (or ``[H, W]``) float32; returns the new logits (written into ``out`` when given)."""
    wv, wh = edge_weights(y, params.sigma_e)
    for _ in range(steps):
        z = z - params.eta * refine_grad_ref(z, q, z0, wv, wh, zbar, params)
    if out is not None:
        return out.copy_(z)
    return z.clone() if steps == 0 else z


def _span(t: torch.Tensor) -> tuple[int, int]:
    """Byte range [start, end) that ``t``'s elements occupy."""
    if t.numel() == 0:
        return t.data_ptr(), t.data_ptr()
    last = sum((s - 1) * st for s, st in zip(t.shape, t.stride()))
    return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()


def _overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    a0, a1 = _span(a)
    b0, b1 = _span(b)
    return a0 < b1 and b0 < a1


def _nonfinite_error(flags: int) -> ValueError:
    names = [n for i, n in enumerate(INPUT_NAMES) if flags >> i & 1]
    return ValueError(f"{', '.join(names)} {'holds' if len(names) == 1 else 'hold'} NaN or inf; "
                      "refine needs finite logits, targets, base logits, image and zbar")


def _nonfinite_flags(*planes) -> int:
    flags = 0
    for i, t in enumerate(planes):
        if t is not None and t.numel() and not bool(torch.isfinite(t).all()):
            flags |= 1 << i
    return flags


def _check_planes(z, q, z0, y, zbar, out) -> None:
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"z must be a tensor, got {type(z).__name__}")
    if z.dim() not in (2, 3):
        raise ValueError(f"z must be [H, W] or [N, H, W] (tiles [P, T, T] or canvases [B, H, W]), got shape {tuple(z.shape)}")
    for name, t in (("z", z), ("q", q), ("z0", z0), ("y", y), ("zbar", zbar), ("out", out)):
        if t is None and name in ("zbar", "out"):
            continue
        if t.dtype != torch.float32:
            raise TypeError(f"{name} must be float32, got {t.dtype}")
        if t.shape != z.shape:
            raise ValueError(f"{name} must have z's shape {tuple(z.shape)}, got {tuple(t.shape)}")
        check_same_device("z", z, name, t)
    if out is not None and out is not z:
        same_layout = out.data_ptr() == z.data_ptr() and out.stride() == z.stride()
        if _overlaps(out, z) and not same_layout:
            raise ValueError("out overlaps z without being z itself; pass out=z (in place) or a separate tensor")
        for name, t in (("q", q), ("z0", z0), ("y", y), ("zbar", zbar)):
            if t is not None and _overlaps(out, t):
                raise ValueError(f"out overlaps {name}; refine reads {name} while it writes out")


def refine(z, q, z0, y, zbar, params: RefineParams | None = None, steps: int = 1, *, out=None,
           backend: str = "auto"):
    """``steps`` gradient steps of TT-GPR's logit refinement (docs/design.md, method M4), fused in one pass.

    z: logits to refine, ``[P, T, T]`` tiles, ``[B, H, W]`` canvases or one ``[H, W]`` plane,
        float32. Every plane refines on its own: pixels outside a plane are not neighbours.
    q: surrogate target probabilities in [0, 1] (the mean segmentor output over the RF
        projections); z0: the base logits (the anchor); y: the image in [0, 1] (edge weights);
        zbar: the stitched canvas logits cut back to the same planes, or None (no overlap term).
        All shaped like z, on z's device (torch, NumPy or CuPy).
    params: :class:`RefineParams` (defaults when None). steps: gradient steps (>= 0), each using
        the previous step's logits at every neighbour.
    out: where to write the result; ``out=z`` updates z in place. In-place is safe with any step
        count: the kernels keep the previous step's neighbours (row rings and halo copies on the
        CPU, ping-pong buffers on CUDA and Triton) instead of reading rows they have overwritten.
        out must not overlap q, z0, y or zbar.
    backend: "auto", "reference", "cpu", "triton" or "cuda".

    Returns the refined logits shaped like z (``out`` when given), as the caller's array kind.
    Raises ValueError naming the argument when an input holds NaN or inf (checked inside the
    fused pass, which reads every input anyway; with ``out=z`` the logits are then already
    overwritten), on shape, dtype or device mismatches, and for parameters out of range.
    """
    zt, kind = as_tensor(z, "z")
    qt, _ = as_tensor(q, "q")
    z0t, _ = as_tensor(z0, "z0")
    yt, _ = as_tensor(y, "y")
    zbt = None if zbar is None else as_tensor(zbar, "zbar")[0]
    outt = None if out is None else as_tensor(out, "out")[0]
    params = (params if params is not None else RefineParams()).validated()
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    _check_planes(zt, qt, z0t, yt, zbt, outt)
    squeeze = zt.dim() == 2
    planes = [None if t is None else (t.unsqueeze(0) if squeeze else t) for t in (zt, qt, z0t, yt, zbt, outt)]
    choice = _backends.choose("refine", zt.device, backend)
    if zt.numel() == 0 or steps == 0:
        res = refine_ref(*planes[:5], params, steps=0, out=planes[5])
    else:
        res = choice.fn(*planes[:5], params, steps, planes[5])
    if outt is not None:
        return out
    return to_kind(res[0] if squeeze else res, kind)


@_backends.register("refine", "reference")
def _refine_reference(z, q, z0, y, zbar, params, steps, out):
    flags = _nonfinite_flags(z, q, z0, y, zbar)
    if flags:
        raise _nonfinite_error(flags)
    return refine_ref(z, q, z0, y, zbar, params, steps, out=out)


def _native_params(params: RefineParams):
    C = _backends.native()
    p = C.RefineParams()
    p.eta, p.lambda_a, p.lambda_e, p.lambda_o = params.eta, params.lambda_a, params.lambda_e, params.lambda_o
    p.inv_two_sigma2 = 1.0 / (2.0 * params.sigma_e * params.sigma_e)
    return p


def _row_strided(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its rows are contiguous (any plane and row strides), else a contiguous copy."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _strides(*planes) -> list[int]:
    """(plane, row) strides of each [N, H, W] array; a size-1 dim gets its dense stride (any value is legal there)."""
    out = []
    for t in planes:
        if t is None:
            out += [0, 0]
            continue
        sh = t.stride(1) if t.shape[1] > 1 else t.shape[2]
        sn = t.stride(0) if t.shape[0] > 1 else t.shape[1] * sh
        out += [sn, sh]
    return out


def _native_out(z: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    if out is None:
        return torch.empty(z.shape, dtype=z.dtype, device=z.device)
    return out if out.stride(-1) == 1 or out.shape[-1] == 1 else torch.empty(z.shape, dtype=z.dtype, device=z.device)


@_backends.register("refine", "cpu")
def _refine_cpu(z, q, z0, y, zbar, params, steps, out):
    z, q, z0, y = (_row_strided(t) for t in (z, q, z0, y))
    zbar = None if zbar is None else _row_strided(zbar)
    dst = _native_out(z, out)
    N, H, W = z.shape
    flags = _backends.native().refine_cpu(
        z.data_ptr(), q.data_ptr(), z0.data_ptr(), y.data_ptr(), 0 if zbar is None else zbar.data_ptr(),
        dst.data_ptr(), _strides(z, q, z0, y, zbar, dst), N, H, W, _native_params(params), steps)
    if flags:
        raise _nonfinite_error(flags)
    if out is not None and dst is not out:
        out.copy_(dst)
        return out
    return dst


@_backends.register("refine", "cuda")
def _refine_cuda(z, q, z0, y, zbar, params, steps, out):
    z, q, z0, y = (_row_strided(t) for t in (z, q, z0, y))
    zbar = None if zbar is None else _row_strided(zbar)
    dst = _native_out(z, out)
    N, H, W = z.shape
    launches = -(-steps // CUDA_STEPS_PER_LAUNCH)
    aliased = dst.data_ptr() == z.data_ptr()
    # ping-pong partner for multi-launch chains and for in-place updates (a launch never reads
    # the buffer it writes: other blocks still need the previous step's halo)
    scratch = torch.empty_strided(dst.shape, dst.stride(), dtype=dst.dtype, device=dst.device) if launches > 1 or aliased else None
    flags = torch.zeros(1, dtype=torch.int32, device=z.device)
    with torch.cuda.device(z.device):  # the kernels launch on the current device
        stream = torch.cuda.current_stream(z.device).cuda_stream
        _backends.native().refine_cuda(
            z.data_ptr(), q.data_ptr(), z0.data_ptr(), y.data_ptr(), 0 if zbar is None else zbar.data_ptr(),
            dst.data_ptr(), 0 if scratch is None else scratch.data_ptr(), flags.data_ptr(),
            _strides(z, q, z0, y, zbar, dst), N, H, W, _native_params(params), steps, stream)
    f = int(flags.item())
    if f:
        raise _nonfinite_error(f)
    if out is not None and dst is not out:
        out.copy_(dst)
        return out
    return dst


@_backends.register("refine", "triton")
def _refine_triton(z, q, z0, y, zbar, params, steps, out):
    from mcgr.kernels.refine import refine_triton

    res, f = refine_triton(z, q, z0, y, zbar, params, steps, out=out)
    if f:
        raise _nonfinite_error(f)
    return res
