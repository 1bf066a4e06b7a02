"""Resampling between pixel spacings, and the transform between the model grid and the source grid.

Grids are corner-aligned in millimetres: source pixel ``i`` covers ``[i * from_mm, (i + 1) * from_mm)``
and output pixel ``j`` covers ``[j * to_mm, (j + 1) * to_mm)``. The scale is the exact ratio of the
spacings (not the ratio of the rounded shapes), so a position in mm means the same thing on every
grid and mapping model-grid results back lands on the source pixel they came from.

Each axis is a sparse 1-D operator (at most ``ceil(to/from) + 1`` taps per output pixel) applied as
gathers along rows then columns, so a 4k x 3k image resamples in tens of milliseconds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from mcgr import MODEL_SPACING_MM, _interop
from mcgr._validate import check_range

_MODES = ("area", "linear")
# The model grid a file is resampled to is checked BEFORE resampling (check_model_grid): a small
# image claiming large pixels (640 x 512 px at 2.0 mm) becomes a huge model grid (18286 x 14629 px).
# 8192 px is 573 mm at 0.07 mm, about twice the largest mammography detector (24 x 30 cm).
MAX_MODEL_SIDE_PX = 8192
# Peak memory of the full pipeline (TT-GPR on) per model-grid pixel. Measured 2026-12-05 (peak RSS
# over the loaded models, 1 CPU thread, shipped weights, a textured half-ellipse at 0.07 mm): 113 B/px
# at 2048 x 2048 (fixed costs weigh more on small grids), 65 B/px at 4096 x 3072; 13 B/px without
# TT-GPR at 4096 x 3072.
PIPELINE_BYTES_PER_PX = 64


def output_length(n_in: int, from_mm: float, to_mm: float) -> int:
    """Pixels along an axis of ``n_in`` pixels at ``from_mm`` resampled to ``to_mm`` (at least 1)."""
    return max(1, int(round(n_in * from_mm / to_mm)))


def regrid_px(c, from_mm: float, to_mm: float):
    """Pixel-centre coordinates ``c`` on a grid at ``from_mm`` as coordinates on the grid at ``to_mm``
    (both corner-aligned, module docstring): ``(c + 0.5) * from_mm / to_mm - 0.5``, where
    :func:`resample` puts what lay at ``c``. Any array kind that does arithmetic; no clamping."""
    return (c + 0.5) * (from_mm / to_mm) - 0.5


def _taps(n_in: int, n_out: int, from_mm: float, to_mm: float, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """``(idx [n_out, K] int64, w [n_out, K] float32)``: output ``j = sum_k w[j, k] * input[idx[j, k]]``."""
    r = to_mm / from_mm  # output pixel length in input pixels
    j = np.arange(n_out, dtype=np.float64)
    if mode == "linear":
        u = np.clip(regrid_px(j, to_mm, from_mm), 0.0, n_in - 1)  # the output centres on the input grid
        i0 = np.floor(u).astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        f = u - i0
        return np.stack([i0, i1], 1), np.stack([1.0 - f, f], 1).astype(np.float32)
    lo = j * r
    hi = np.minimum((j + 1) * r, n_in)
    k = int(math.ceil(r)) + 1
    first = np.minimum(np.floor(lo).astype(np.int64), n_in - 1)
    idx = first[:, None] + np.arange(k)[None, :]
    left = np.maximum(idx, lo[:, None])
    right = np.minimum(idx + 1, hi[:, None])
    w = np.clip(right - left, 0.0, None)
    w[idx >= n_in] = 0.0
    covered = w.sum(1, keepdims=True)
    # An output pixel past the source edge (rounded-up shape) repeats the last source pixel.
    empty = covered[:, 0] <= 0
    w[empty, 0] = 1.0
    idx[empty, 0] = n_in - 1
    covered[empty] = 1.0
    idx = np.minimum(idx, n_in - 1)
    return idx, (w / covered).astype(np.float32)


def _apply_axis(t: torch.Tensor, dim: int, idx: np.ndarray, w: np.ndarray) -> torch.Tensor:
    idx_t = torch.from_numpy(idx).to(t.device)
    w_t = torch.from_numpy(w).to(t.device)
    shape = [1] * t.dim()
    shape[dim] = -1
    out = None
    for k in range(idx.shape[1]):
        if not bool((w[:, k] != 0).any()):
            continue
        term = t.index_select(dim, idx_t[:, k]) * w_t[:, k].reshape(shape)
        out = term if out is None else out.add_(term)
    return out


def _check_spacings(from_mm: float, to_mm: float) -> tuple[float, float]:
    return (check_range("from_mm", from_mm, 0.0, lo_open=True),
            check_range("to_mm", to_mm, 0.0, lo_open=True))


def _operator(n_in: int, n_out: int, from_mm: float, to_mm: float, mode: str):
    from scipy import sparse

    idx, w = _taps(n_in, n_out, from_mm, to_mm, mode)
    k = idx.shape[1]
    return sparse.csr_matrix((w.ravel(), idx.ravel(), np.arange(0, n_out * k + 1, k)), shape=(n_out, n_in))


def _resample_tensor(t: torch.Tensor, from_mm: float, to_mm: float, mode: str,
                     out_shape: tuple[int, int] | None) -> torch.Tensor:
    h, w = t.shape[-2:]
    oh, ow = out_shape if out_shape is not None else (output_length(h, from_mm, to_mm), output_length(w, from_mm, to_mm))
    if (oh, ow) == (h, w) and from_mm == to_mm:
        return t.clone()
    if t.device.type == "cpu":
        # Sparse matrix products (scipy's CSR kernels) are ~7x faster on the CPU than gathers.
        ry = _operator(h, oh, from_mm, to_mm, mode)
        rx_t = _operator(w, ow, from_mm, to_mm, mode).T.tocsr()
        a = t.detach().numpy()
        planes = [np.ascontiguousarray(ry @ plane @ rx_t, dtype=np.float32)
                  for plane in (a.reshape(-1, h, w))]
        return torch.from_numpy(np.stack(planes).reshape(*t.shape[:-2], oh, ow))
    t = _apply_axis(t, t.dim() - 2, *_taps(h, oh, from_mm, to_mm, mode))
    return _apply_axis(t, t.dim() - 1, *_taps(w, ow, from_mm, to_mm, mode))


def resample(image, from_mm: float, to_mm: float, mode: str = "area", *, out_shape: tuple[int, int] | None = None):
    """Resample ``image`` ([H, W] or [B, H, W], float) from ``from_mm`` to ``to_mm`` pixel spacing.

    ``mode="area"``: each output pixel is the area-weighted mean of the input pixels it overlaps
    (the right filter for downsampling: it keeps the mean intensity and does not alias).
    ``mode="linear"``: bilinear interpolation at the output pixel centres (for upsampling maps).
    The output is ``round(H * from_mm / to_mm)`` x ``round(W * from_mm / to_mm)`` unless
    ``out_shape`` is given (used to land exactly on a known grid, e.g. the source grid). Returns
    float32 in the caller's array kind, on the input's device.
    """
    from_mm, to_mm = _check_spacings(from_mm, to_mm)
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    t, kind = _interop.as_tensor(image, "image")
    if t.dim() not in (2, 3) or t.shape[-1] == 0 or t.shape[-2] == 0:
        raise ValueError(f"image must be a non-empty [H, W] or [B, H, W] array, got shape {tuple(t.shape)}")
    if out_shape is not None:
        out_shape = _check_shape(out_shape)
    out = _resample_tensor(t.to(torch.float32), from_mm, to_mm, mode, out_shape)
    return _interop.to_kind(out, kind)


def _check_shape(out_shape) -> tuple[int, int]:
    try:
        oh, ow = (int(v) for v in out_shape)
    except (TypeError, ValueError):
        raise ValueError(f"out_shape must be (rows, cols), got {out_shape!r}") from None
    if oh < 1 or ow < 1:
        raise ValueError(f"out_shape must be positive, got {out_shape!r}")
    return oh, ow


def resample_mask(mask, from_mm: float, to_mm: float, *, out_shape: tuple[int, int] | None = None):
    """Resample a boolean ``mask`` [H, W] from ``from_mm`` to ``to_mm``, keeping area and every object.

    Upsampling (``to_mm <= from_mm``): each output pixel takes the input pixel that holds its centre,
    so every input pixel is covered by at least one output pixel and a pixel mapped down and back
    returns to where it came from. Downsampling: an output pixel is set where the input covers at
    least half of it (area kept on average); an object (8-connected) none of whose pixels falls in a
    set output pixel still sets the output pixel it covers most, so no object disappears. Returns bool in the
    caller's array kind (NumPy or CPU torch).
    """
    from_mm, to_mm = _check_spacings(from_mm, to_mm)
    t, kind = _interop.as_tensor(mask, "mask")
    if t.dim() != 2 or t.numel() == 0:
        raise ValueError(f"mask must be a non-empty [H, W] array, got shape {tuple(t.shape)}")
    if t.device.type != "cpu":
        raise ValueError(f"mask must be on the CPU (masks are resampled where the writers use them), got {t.device}")
    m = t.detach().numpy().astype(bool, copy=False)
    h, w = m.shape
    oh, ow = _check_shape(out_shape) if out_shape is not None else (output_length(h, from_mm, to_mm), output_length(w, from_mm, to_mm))
    if to_mm <= from_mm:
        r = to_mm / from_mm
        iy = np.minimum(((np.arange(oh) + 0.5) * r).astype(np.int64), h - 1)
        ix = np.minimum(((np.arange(ow) + 0.5) * r).astype(np.int64), w - 1)
        out = m[iy[:, None], ix[None, :]]
    else:
        cov = _resample_tensor(torch.from_numpy(m.astype(np.float32)), from_mm, to_mm, "area", (oh, ow)).numpy()
        out = cov >= 0.5 - 1e-6
        labels, n = ndimage.label(m, structure=np.ones((3, 3), bool))
        if n:
            # Each input pixel looks at the output pixel holding its centre; an object none of whose
            # pixels sees a set output pixel sets the one it covers most.
            r = to_mm / from_mm
            iy = np.minimum(((np.arange(h) + 0.5) / r).astype(np.int64), oh - 1)
            ix = np.minimum(((np.arange(w) + 0.5) / r).astype(np.int64), ow - 1)
            # over the objects' pixels only (ndimage's labelled reductions walk the whole field)
            on = np.flatnonzero(labels)
            lb = labels.ravel()[on]
            py, px = iy[on // w], ix[on % w]
            seen = np.zeros(n + 1, dtype=bool)
            seen[lb[out[py, px]]] = True
            lost = ~seen[lb]
            if lost.any():
                lb_l, py_l, px_l = lb[lost], py[lost], px[lost]
                o = np.lexsort((-np.arange(lb_l.size), cov[py_l, px_l], lb_l))  # first pixel of the max, per object
                last = np.r_[np.flatnonzero(np.diff(lb_l[o])), o.size - 1]
                out[py_l[o[last]], px_l[o[last]]] = True
    return _interop.to_kind(torch.from_numpy(np.ascontiguousarray(out)), kind)


@dataclass(frozen=True)
class ModelTransform:
    """Maps between the canonical image at the model spacing and the source image file's grid.

    ``source_shape``: (rows, cols) of the file's pixel array; ``model_shape``: (rows, cols) at
    ``model_mm``; ``flipped``: the canonical image is the source mirrored left-right.
    Pixel coordinates are pixel-centre indices (pixel ``i`` spans ``[i - 0.5, i + 0.5)``).
    """

    source_shape: tuple[int, int]
    model_shape: tuple[int, int]
    source_mm: float
    model_mm: float
    flipped: bool

    @property
    def scale(self) -> float:
        """Source pixels per model pixel."""
        return self.model_mm / self.source_mm

    def to_source(self, arr, kind: str = "auto"):
        """``arr`` ([rows, cols] on the canonical model grid) on the source grid and orientation.

        ``kind="mask"`` (default for bool arrays) uses :func:`resample_mask`; ``kind="map"`` (default
        for float arrays, e.g. probabilities) uses bilinear interpolation. Returns NumPy.
        """
        a = np.asarray(arr.detach().cpu() if isinstance(arr, torch.Tensor) else arr)
        if a.shape != tuple(self.model_shape):
            raise ValueError(f"arr must be on the model grid {tuple(self.model_shape)}, got shape {a.shape}")
        if kind == "auto":
            kind = "mask" if a.dtype == np.bool_ else "map"
        if kind not in ("mask", "map"):
            raise ValueError(f"kind must be 'auto', 'mask' or 'map', got {kind!r}")
        shape = tuple(self.source_shape)
        if kind == "mask":
            out = resample_mask(a.astype(bool, copy=False), self.model_mm, self.source_mm, out_shape=shape)
        elif a.shape == shape and self.model_mm == self.source_mm:
            out = a.astype(np.float32)
        else:
            out = resample(a.astype(np.float32, copy=False), self.model_mm, self.source_mm, "linear", out_shape=shape)
        return np.ascontiguousarray(out[:, ::-1]) if self.flipped else out

    def model_to_source_px(self, y, x):
        """Canonical model-grid pixel coordinates (y, x) -> source (row, col), float, same shapes."""
        row = regrid_px(np.asarray(y, dtype=np.float64), self.model_mm, self.source_mm)
        col = regrid_px(np.asarray(x, dtype=np.float64), self.model_mm, self.source_mm)
        if self.flipped:
            col = self.source_shape[1] - 1 - col
        return row, col

    def source_to_model_px(self, row, col):
        """Source (row, col) -> canonical model-grid (y, x), float; inverse of :meth:`model_to_source_px`."""
        row = np.asarray(row, dtype=np.float64)
        col = np.asarray(col, dtype=np.float64)
        if self.flipped:
            col = self.source_shape[1] - 1 - col
        return regrid_px(row, self.source_mm, self.model_mm), regrid_px(col, self.source_mm, self.model_mm)


def check_model_grid(shape, spacing_mm: float, model_mm: float = MODEL_SPACING_MM, *,
                     spacing_from: str = "", advice: str = "check the pixel spacing (or pass --spacing MM)") -> tuple[int, int]:
    """The model-grid shape of an image of ``shape`` (rows, cols) at ``spacing_mm``, checked before
    anything is resampled: a ValueError with the sizes and the memory when a side exceeds
    ``MAX_MODEL_SIDE_PX`` or the pipeline's estimated peak (``PIPELINE_BYTES_PER_PX`` per model-grid
    pixel) exceeds the memory this machine has available. ``spacing_from`` (e.g. "PixelSpacing")
    is named in the message, ``advice`` ends it."""
    from mcgr._memory import available_bytes, format_bytes

    h, w = (int(v) for v in shape[:2])
    spacing_mm, model_mm = _check_spacings(spacing_mm, model_mm)
    oh, ow = output_length(h, spacing_mm, model_mm), output_length(w, spacing_mm, model_mm)
    need = float(oh) * ow * PIPELINE_BYTES_PER_PX
    src = f" (from {spacing_from})" if spacing_from and spacing_from not in ("argument", "default") else ""
    what = (f"{h} x {w} px at {spacing_mm:g} mm{src} is {h * spacing_mm:.0f} x {w * spacing_mm:.0f} mm: "
            f"{oh} x {ow} px ({oh * ow / 1e6:.1f} Mpx) at the model spacing {model_mm:g} mm, about "
            f"{format_bytes(need)} of memory to segment")
    if max(oh, ow) > MAX_MODEL_SIDE_PX:
        raise ValueError(f"{what}; the model grid is limited to {MAX_MODEL_SIDE_PX} px a side "
                         f"({MAX_MODEL_SIDE_PX * model_mm:.0f} mm; a mammogram is at most about 300 mm): {advice}")
    avail = available_bytes()
    if avail is not None and need > avail:
        raise ValueError(f"{what}; this machine has {format_bytes(avail)} available: {advice}")
    return oh, ow


def to_model_spacing(m, model_mm: float = MODEL_SPACING_MM):
    """``(image, transform)``: the canonical image of Mammogram ``m`` resampled (area) to ``model_mm``.

    ``image`` is float32 NumPy [rows, cols] with rows = round(H * spacing / model_mm);
    ``transform`` (:class:`ModelTransform`) maps results on that grid back to the file's grid and
    orientation exactly (``transform.to_source``) and converts coordinates.
    """
    model_mm = check_range("model_mm", model_mm, 0.0, lo_open=True)
    src_mm = float(m.spacing_mm)
    img = np.asarray(m.image, dtype=np.float32)
    h, w = img.shape
    check_model_grid((h, w), src_mm, model_mm)
    if src_mm == model_mm:
        out = img
    else:
        out = resample(img, src_mm, model_mm, "area")
    transform = ModelTransform(source_shape=tuple(int(v) for v in m.source_shape), model_shape=tuple(out.shape),
                               source_mm=src_mm, model_mm=model_mm, flipped=bool(m.flipped))
    if transform.source_shape != (h, w):
        raise ValueError(f"m.image {img.shape} does not match m.source_shape {m.source_shape}")
    return out, transform
