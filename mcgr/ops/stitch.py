"""Stitching: Gaussian-weighted blending of per-tile maps into a canvas, and its inverse gather.

``stitch_ref`` is the specification; ``stitch`` dispatches to the fused kernels (C++/OpenMP, CUDA,
Triton) which must equal it. Conventions (every backend):

* Tile ``p`` of side ``T`` at origin ``o_p = (y0, x0)`` covers canvas pixels
  ``[y0, y0 + T) x [x0, x0 + T)``; the part of a tile past the bottom or right border is dropped
  (tiles larger than the image, see :mod:`mcgr.ops._tiling`). Origins must lie in the canvas:
  ``0 <= y0 < H``, ``0 <= x0 < W``.
* ``canvas(x) = sum_p w(x - o_p) tiles_p(x - o_p) / sum_p w(x - o_p)`` over the tiles that cover
  ``x`` (the sliding-window average with importance weights ``w``, MONAI's
  ``sliding_window_inference``); a pixel that no tile covers is 0. Weights must be > 0, so a
  covered pixel always has a positive denominator.
* Batches: tiles ``[B, P, T, T]`` with one origins list ``[P, 2]`` give canvases ``[B, H, W]``
  (B images tiled alike: several maps of one mammogram, or the same grid over a batch).
* ``gather_tiles`` is the inverse: ``tiles_p(i, j) = canvas(y0 + i, x0 + j)``, 0 outside the canvas
  (zero padding). ``gather_tiles(stitch(t))`` returns ``t`` wherever the tiles agree on overlaps.
* The kernels compute the weighted sum and the normalisation in one pass: every canvas pixel is
  written once, from numerator and denominator held in registers or a per-thread row buffer;
  no weight-sum canvas is ever materialised. NaN or inf in a tile propagate to the pixels it covers.
* Summation order differs between backends (float rounding only; tolerances in tests/tolerances.py).
"""
from __future__ import annotations

import weakref

import torch

from mcgr import _backends
from mcgr._interop import as_tensor, to_kind
from mcgr.ops._tiling import TileGrid

__all__ = ["stitch", "stitch_ref", "gather_tiles", "gather_tiles_ref"]


def _tile_coords(origins: torch.Tensor, T: int, H: int, W: int):
    """Flat canvas index [P, T, T] of every tile pixel and whether it lies inside the canvas."""
    i = torch.arange(T, device=origins.device, dtype=torch.int64)
    rows = origins[:, 0, None] + i  # [P, T]
    cols = origins[:, 1, None] + i
    inside = (rows < H)[:, :, None] & (cols < W)[:, None, :]
    flat = rows[:, :, None] * W + cols[:, None, :]
    return flat, inside


def stitch_ref(tiles: torch.Tensor, origins, weights: torch.Tensor, out_shape) -> torch.Tensor:
    """Reference stitching (the specification): scatter-add of ``w * tile`` and of ``w``, then divide.

    tiles: [P, T, T] or [B, P, T, T] float32; origins: int64 [P, 2] ``(y0, x0)`` (or a TileGrid);
    weights: [T, T] float32 > 0; out_shape: (H, W). Returns [H, W] or [B, H, W] float32, 0 where
    no tile covers. Materialises the weight-sum canvas: written for clarity, the kernels never do.
    """
    origins = (origins.origins if isinstance(origins, TileGrid) else origins).to(tiles.device)
    squeeze = tiles.dim() == 3
    t = tiles.unsqueeze(0) if squeeze else tiles
    B, P, T = t.shape[0], t.shape[1], t.shape[-1]
    H, W = (int(v) for v in out_shape)
    flat, inside = _tile_coords(origins, T, H, W)
    idx = flat[inside]
    wt = weights.to(torch.float32)
    num = torch.zeros(B, H * W, dtype=torch.float32, device=t.device)
    num.index_add_(1, idx, (t * wt)[:, inside])
    den = torch.zeros(H * W, dtype=torch.float32, device=t.device)
    den.index_add_(0, idx, wt.expand(P, T, T)[inside])
    canvas = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))
    canvas = canvas.view(B, H, W)
    return canvas[0] if squeeze else canvas


def gather_tiles_ref(canvas: torch.Tensor, origins, tile: int) -> torch.Tensor:
    """Reference gather: tiles [P, T, T] (or [B, P, T, T] from [B, H, W]) cut from the canvas at the
    origins, 0 where a tile hangs past the border."""
    origins = (origins.origins if isinstance(origins, TileGrid) else origins).to(canvas.device)
    squeeze = canvas.dim() == 2
    c = canvas.unsqueeze(0) if squeeze else canvas
    B, H, W = c.shape
    T = int(tile)
    flat, inside = _tile_coords(origins, T, H, W)
    vals = c.reshape(B, H * W)[:, torch.where(inside, flat, torch.zeros_like(flat))]
    tiles = torch.where(inside, vals, torch.zeros_like(vals))
    return tiles[0] if squeeze else tiles


# --- validation (once, at the public functions) ---------------------------------------------

def _grid_attr(grid, name: str):
    """``grid.<name>`` for a TileGrid, None for a bare origins array."""
    return getattr(grid, name) if isinstance(grid, TileGrid) else None


def _origins_from(grid, device: torch.device, num_tiles: int | None, H: int, W: int) -> torch.Tensor:
    """origins as a contiguous int64 [P, 2] on ``device``, checked to lie in the H x W canvas."""
    o = grid.origins if isinstance(grid, TileGrid) else grid
    if not isinstance(o, torch.Tensor):
        o, _ = as_tensor(o, "origins")
    if o.dim() != 2 or o.shape[1] != 2:
        raise ValueError(f"origins must be an integer tensor [P, 2] of (y0, x0), got shape {tuple(o.shape)}")
    if o.dtype.is_floating_point or o.dtype == torch.bool or o.dtype.is_complex:
        raise TypeError(f"origins must be integer (int64), got {o.dtype}")
    if num_tiles is not None and o.shape[0] != num_tiles:
        raise ValueError(f"origins has {o.shape[0]} rows but tiles holds {num_tiles} tiles (tiles [.., P, T, T])")
    if o.device.type != "cpu" and o.device != device:
        raise ValueError(f"origins is on {o.device} but the data is on {device}; mcgr never moves data silently")
    if o.shape[0] and not isinstance(grid, TileGrid):  # a TileGrid checked its origins when it was made
        bad = (o[:, 0] < 0) | (o[:, 0] >= H) | (o[:, 1] < 0) | (o[:, 1] >= W)
        if bool(bad.any()):
            k = int(bad.nonzero()[0])
            raise ValueError(f"origins[{k}] = {tuple(o[k].tolist())} lies outside the canvas: need 0 <= y0 < {H} and 0 <= x0 < {W}")
    # origins are index metadata ([P, 2]), not image data: CPU origins follow the tiles' device
    return o.to(device=device, dtype=torch.int64).contiguous()


def _out_shape(out_shape, grid) -> tuple[int, int]:
    if out_shape is None:
        if not isinstance(grid, TileGrid):
            raise ValueError("out_shape (H, W) is required when grid is an origins tensor")
        out_shape = grid.image_shape
    try:
        H, W = (int(v) for v in out_shape)
    except (TypeError, ValueError):
        raise ValueError(f"out_shape must be (H, W), got {out_shape!r}") from None
    if H < 1 or W < 1:
        raise ValueError(f"out_shape must be two positive integers (H, W), got {tuple(out_shape)!r}")
    gshape = _grid_attr(grid, "image_shape")
    if gshape is not None and tuple(gshape) != (H, W):
        raise ValueError(f"out_shape {(H, W)} differs from grid.image_shape {tuple(gshape)}")
    return H, W


def _check_tiles(t: torch.Tensor, name: str) -> None:
    if t.dim() not in (3, 4) or t.shape[-1] != t.shape[-2]:
        raise ValueError(f"{name} must be [P, T, T] or [B, P, T, T], got shape {tuple(t.shape)}")
    if t.dtype != torch.float32:
        raise TypeError(f"{name} must be float32, got {t.dtype}")
    if t.shape[-1] < 1 or (t.dim() == 4 and t.shape[0] < 1):
        raise ValueError(f"{name} must have a positive tile size and batch, got shape {tuple(t.shape)}")


def _check_weights(w: torch.Tensor, T: int, device: torch.device) -> torch.Tensor:
    if w.dim() != 2 or tuple(w.shape) != (T, T):
        raise ValueError(f"weights must be [T, T] = [{T}, {T}] to match the tiles, got shape {tuple(w.shape)}")
    if w.dtype != torch.float32:
        raise TypeError(f"weights must be float32, got {w.dtype}")
    if w.device != device:
        raise ValueError(f"weights is on {w.device} but tiles is on {device}; mcgr never moves data silently")
    if not _weights_checked(w):
        ok = torch.isfinite(w) & (w > 0)
        if not bool(ok.all()):
            k = tuple((~ok).nonzero()[0].tolist())
            raise ValueError(f"weights must be finite and > 0 everywhere, got {float(w[k])} at {k}")
        if not w.is_inference():  # inference tensors have no version counter: checked every call
            _LAST_WEIGHTS[:] = [weakref.ref(w), w._version]
    return w.contiguous()


# The weights last found valid (the tensor and its version counter): TT-GPR stitches with the same
# weights at every iteration, and the check would cost a device synchronisation each time.
_LAST_WEIGHTS: list = [None, -1]


def _weights_checked(w: torch.Tensor) -> bool:
    ref, version = _LAST_WEIGHTS
    return ref is not None and ref() is w and w._version == version


def _check_out(out, shape: tuple, device: torch.device, name: str = "out"):
    if out is None:
        return None, None
    o, kind = as_tensor(out, name)
    if tuple(o.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(o.shape)}")
    if o.dtype != torch.float32:
        raise TypeError(f"{name} must be float32, got {o.dtype}")
    if o.device != device:
        raise ValueError(f"{name} is on {o.device} but the data is on {device}")
    if not o.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    return o, kind


def stitch(tiles, grid, weights, out_shape=None, *, out=None, backend: str = "auto"):
    """Blend per-tile maps into one canvas with overlap weights (docs/design.md, method M5, TT-GPR's zbar).

    tiles: [P, T, T] or [B, P, T, T] float32 (torch, NumPy or CuPy): per-tile maps (logits or
        probabilities). grid: a :class:`mcgr.ops._tiling.TileGrid` or origins int64 [P, 2]
        ``(y0, x0)`` in px, each inside the canvas (CPU origins are copied to the tiles' device;
        keep a ``grid.to(device)`` for repeated calls). weights: [T, T] float32, every weight > 0
        (:func:`mcgr.ops._tiling.gaussian_weights`). out_shape: canvas ``(H, W)`` in px (may be
        omitted with a TileGrid). out: optional contiguous float32 [H, W] / [B, H, W] to write
        into (reuse it in loops: a fresh full-field canvas costs page faults).
    backend: "auto", "reference", "cpu", "triton" or "cuda".

    Returns the canvas [H, W] (or [B, H, W]) float32: ``sum_p w t_p / sum_p w`` over the tiles
    covering each pixel, 0 where none does; the caller's array kind (``out`` when given).
    """
    t, kind = as_tensor(tiles, "tiles")
    _check_tiles(t, "tiles")
    H, W = _out_shape(out_shape, grid)
    T = int(t.shape[-1])
    gtile = _grid_attr(grid, "tile")
    if gtile is not None and gtile != T:
        raise ValueError(f"tiles are {T} px but grid.tile is {gtile}")
    w, _ = as_tensor(weights, "weights")
    w = _check_weights(w, T, t.device)
    t4 = t.unsqueeze(0) if t.dim() == 3 else t
    B, P = int(t4.shape[0]), int(t4.shape[1])
    o = _origins_from(grid, t.device, P, H, W)
    shape = (H, W) if t.dim() == 3 else (B, H, W)
    dst, out_kind = _check_out(out, shape, t.device)
    if dst is None:
        dst = torch.empty(shape, dtype=torch.float32, device=t.device)
    if P == 0:
        dst.zero_()
    else:
        choice = _backends.choose("stitch", t.device, backend)
        choice.fn(t4.contiguous(), o, w, dst.view(B, H, W))
    if out is not None:
        return out if out_kind != "torch" else dst
    return to_kind(dst, kind)


def gather_tiles(canvas, grid, tile: int | None = None, *, out=None, backend: str = "auto"):
    """Cut tiles from a canvas (the inverse of :func:`stitch`).

    canvas: [H, W] or [B, H, W] float32. grid: a TileGrid or origins int64 [P, 2] ``(y0, x0)``
    inside the canvas. tile: T in px (may be omitted with a TileGrid). out: optional contiguous
    float32 [P, T, T] / [B, P, T, T] to write into.
    Returns tiles [P, T, T] (or [B, P, T, T]) float32, 0 where a tile hangs past the border.
    Backends follow the stitch op's (``backend`` and MCGR_BACKEND pick both).
    """
    c, kind = as_tensor(canvas, "canvas")
    if c.dim() not in (2, 3):
        raise ValueError(f"canvas must be [H, W] or [B, H, W], got shape {tuple(c.shape)}")
    if c.dtype != torch.float32:
        raise TypeError(f"canvas must be float32, got {c.dtype}")
    if c.numel() == 0:
        raise ValueError(f"canvas must be non-empty, got shape {tuple(c.shape)}")
    if tile is None:
        tile = _grid_attr(grid, "tile")
        if tile is None:
            raise ValueError("tile (T in px) is required when grid is an origins tensor")
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
        raise ValueError(f"tile must be a positive integer (px), got {tile!r}")
    gtile = _grid_attr(grid, "tile")
    if gtile is not None and gtile != tile:
        raise ValueError(f"tile {tile} differs from grid.tile {gtile}")
    H, W = int(c.shape[-2]), int(c.shape[-1])
    gshape = _grid_attr(grid, "image_shape")
    if gshape is not None and tuple(gshape) != (H, W):
        raise ValueError(f"canvas is {(H, W)} but grid.image_shape is {tuple(gshape)}")
    o = _origins_from(grid, c.device, None, H, W)
    c3 = c.unsqueeze(0) if c.dim() == 2 else c
    B, P = int(c3.shape[0]), int(o.shape[0])
    shape = (P, tile, tile) if c.dim() == 2 else (B, P, tile, tile)
    dst, out_kind = _check_out(out, shape, c.device)
    if dst is None:
        dst = torch.empty(shape, dtype=torch.float32, device=c.device)
    if P:
        choice = _backends.choose("stitch", c.device, backend)
        _GATHER[choice.backend](c3.contiguous(), o, dst.view(B, P, tile, tile))
    if out is not None:
        return out if out_kind != "torch" else dst
    return to_kind(dst, kind)


# --- launchers: (tiles [B, P, T, T], origins [P, 2] int64, weights [T, T], out [B, H, W]), all contiguous


@_backends.register("stitch", "reference")
def _stitch_reference(tiles, origins, weights, out):
    out.copy_(stitch_ref(tiles, origins, weights, out.shape[-2:]))
    return out


def _params(B: int, P: int, T: int, H: int, W: int):
    p = _backends.native().StitchParams()
    p.batch, p.num_tiles, p.tile, p.height, p.width = B, P, T, H, W
    return p


@_backends.register("stitch", "cpu")
def _stitch_cpu(tiles, origins, weights, out):
    B, P, T, _ = tiles.shape
    H, W = out.shape[-2:]
    _backends.native().stitch_cpu(tiles.data_ptr(), origins.data_ptr(), weights.data_ptr(), out.data_ptr(),
                                  _params(B, P, T, H, W))
    return out


@_backends.register("stitch", "cuda")
def _stitch_cuda(tiles, origins, weights, out):
    B, P, T, _ = tiles.shape
    H, W = out.shape[-2:]
    stream = torch.cuda.current_stream(tiles.device).cuda_stream
    with torch.cuda.device(tiles.device):
        _backends.native().stitch_cuda(tiles.data_ptr(), origins.data_ptr(), weights.data_ptr(), out.data_ptr(),
                                       _params(B, P, T, H, W), stream)
    return out


@_backends.register("stitch", "triton")
def _stitch_triton(tiles, origins, weights, out):
    from mcgr.kernels.stitch import stitch_triton

    return stitch_triton(tiles, origins, weights, out)


# gather launchers: (canvas [B, H, W], origins [P, 2] int64, out [B, P, T, T]), picked by stitch's backend


def _gather_reference(canvas, origins, out):
    out.copy_(gather_tiles_ref(canvas, origins, out.shape[-1]))
    return out


def _gather_cpu(canvas, origins, out):
    B, H, W = canvas.shape
    _, P, T, _ = out.shape
    _backends.native().gather_tiles_cpu(canvas.data_ptr(), origins.data_ptr(), out.data_ptr(), _params(B, P, T, H, W))
    return out


def _gather_cuda(canvas, origins, out):
    B, H, W = canvas.shape
    _, P, T, _ = out.shape
    stream = torch.cuda.current_stream(canvas.device).cuda_stream
    with torch.cuda.device(canvas.device):
        _backends.native().gather_tiles_cuda(canvas.data_ptr(), origins.data_ptr(), out.data_ptr(),
                                             _params(B, P, T, H, W), stream)
    return out


def _gather_triton(canvas, origins, out):
    from mcgr.kernels.stitch import gather_tiles_triton

    return gather_tiles_triton(canvas, origins, out)


_GATHER = {"reference": _gather_reference, "cpu": _gather_cpu, "cuda": _gather_cuda, "triton": _gather_triton}
