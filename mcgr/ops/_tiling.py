"""Tile grids over a full-field image and the Gaussian blending weights (docs/design.md, method M5).

Conventions:

* A tile of side ``T`` at origin ``(y0, x0)`` holds the canvas pixels ``[y0, y0 + T) x [x0, x0 + T)``.
* Along each axis of length ``L`` the origins are ``0, stride, 2 stride, ...`` and the last tile is
  flush with the far border (origin ``L - T``), so every pixel is covered and no tile leaves the
  image; the last step is then shorter than ``stride``.
* An axis shorter than the tile (``L < T``) gets the single origin 0: the tile hangs past the far
  border. :func:`mcgr.ops.gather_tiles` fills the part outside the image with zeros (pads the
  canvas) and :func:`mcgr.ops.stitch` drops it (clips the tile), so a model always sees ``T x T``.
* With a breast mask, tiles holding no breast pixel (or less than ``min_breast_fraction`` of their
  in-image area) are skipped; pixels that no kept tile covers stitch to 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mcgr._interop import as_tensor

__all__ = ["TileGrid", "tile_grid", "gaussian_weights", "axis_origins"]


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one image lie.

    tile: tile side T in px. stride: nominal step between neighbouring origins in px (the last
    step on each axis may be shorter, see the module doc). origins: int64 [P, 2] ``(y0, x0)`` of
    the tiles kept, in row-major order. image_shape: ``(H, W)`` of the canvas in px.
    """

    tile: int
    stride: int
    origins: torch.Tensor
    image_shape: tuple[int, int]

    def __post_init__(self):
        if not isinstance(self.tile, int) or self.tile < 1:
            raise ValueError(f"TileGrid.tile must be a positive integer, got {self.tile!r}")
        if not isinstance(self.stride, int) or self.stride < 1:
            raise ValueError(f"TileGrid.stride must be a positive integer, got {self.stride!r}")
        H, W = _shape2(self.image_shape, "TileGrid.image_shape")
        object.__setattr__(self, "image_shape", (H, W))
        o = self.origins
        if not isinstance(o, torch.Tensor) or o.dtype != torch.int64 or o.dim() != 2 or o.shape[1] != 2:
            raise ValueError(f"TileGrid.origins must be an int64 tensor [P, 2] of (y0, x0), got {_describe(o)}")
        if o.shape[0]:
            bad = (o[:, 0] < 0) | (o[:, 0] >= H) | (o[:, 1] < 0) | (o[:, 1] >= W)
            if bool(bad.any()):
                k = int(bad.nonzero()[0])
                raise ValueError(f"TileGrid.origins[{k}] = {tuple(o[k].tolist())} lies outside the image: "
                                 f"need 0 <= y0 < {H} and 0 <= x0 < {W}")

    @property
    def num_tiles(self) -> int:
        return int(self.origins.shape[0])

    def to(self, device) -> "TileGrid":
        """The same grid with its origins on ``device`` (keep it there for repeated stitching)."""
        return TileGrid(self.tile, self.stride, self.origins.to(device), self.image_shape)


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def _shape2(shape, name: str) -> tuple[int, int]:
    try:
        H, W = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (H, W), got {shape!r}") from None
    if H < 1 or W < 1 or H != shape[0] or W != shape[1]:
        raise ValueError(f"{name} must be two positive integers (H, W), got {tuple(shape)!r}")
    return H, W


def axis_origins(length: int, tile: int, stride: int) -> list[int]:
    """Tile origins along one axis: ``0, stride, ...`` with the last tile flush with the border."""
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / stride) + 1
    return sorted({min(i * stride, length - tile) for i in range(n)})


def tile_grid(image_shape, tile: int = 256, overlap: float | None = 0.25, stride: int | None = None,
              breast_mask=None, min_breast_fraction: float = 0.0) -> TileGrid:
    """Tiles of ``tile`` px covering an image of ``image_shape = (H, W)`` px.

    overlap: fraction of a tile shared by neighbours, in [0, 1); the stride is
        ``max(1, floor(tile * (1 - overlap)))`` (MONAI's rule; 256 px at 0.25 -> 192 px).
    stride: the step in px; when given it replaces ``overlap`` (leave overlap at its default or None).
    breast_mask: optional [H, W] bool (or 0/1) array (torch/NumPy); when given, tiles holding no
        breast pixel are skipped, and so are tiles whose breast fraction of their in-image area is
        below ``min_breast_fraction`` (in [0, 1]).

    Returns a :class:`TileGrid` whose origins (CPU, int64 [P, 2]) are in row-major order. An empty
    mask gives P = 0.
    """
    H, W = _shape2(image_shape, "image_shape")
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
        raise ValueError(f"tile must be a positive integer (px), got {tile!r}")
    if stride is not None:
        if overlap is not None and overlap != 0.25:
            raise ValueError("give either overlap or stride, not both")
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be a positive integer (px), got {stride!r}")
    else:
        if overlap is None:
            raise ValueError("one of overlap or stride is required")
        ov = float(overlap)
        if not (0.0 <= ov < 1.0):
            raise ValueError(f"overlap must be a fraction in [0, 1), got {overlap!r}")
        stride = max(1, int(math.floor(tile * (1.0 - ov) + 1e-9)))
    mf = float(min_breast_fraction)
    if not (0.0 <= mf <= 1.0):
        raise ValueError(f"min_breast_fraction must be in [0, 1], got {min_breast_fraction!r}")
    ys = torch.tensor(axis_origins(H, tile, stride), dtype=torch.int64)
    xs = torch.tensor(axis_origins(W, tile, stride), dtype=torch.int64)
    oy, ox = torch.meshgrid(ys, xs, indexing="ij")
    origins = torch.stack([oy.reshape(-1), ox.reshape(-1)], dim=1)
    if breast_mask is not None:
        m, _ = as_tensor(breast_mask, "breast_mask")
        if m.dim() != 2 or tuple(m.shape) != (H, W):
            raise ValueError(f"breast_mask must be [H, W] = {(H, W)}, got shape {tuple(m.shape)}")
        keep = _breast_fraction_keep(m.detach().to("cpu"), origins, tile, mf)
        origins = origins[keep]
    return TileGrid(tile=tile, stride=stride, origins=origins.contiguous(), image_shape=(H, W))


def _breast_fraction_keep(mask: torch.Tensor, origins: torch.Tensor, tile: int, min_fraction: float) -> torch.Tensor:
    """Tiles whose breast pixel count is > 0 and >= min_fraction of their in-image area (summed-area table)."""
    H, W = mask.shape
    sat = torch.zeros(H + 1, W + 1, dtype=torch.int64)
    sat[1:, 1:] = (mask != 0).to(torch.int64).cumsum(0).cumsum(1)
    y0, x0 = origins[:, 0], origins[:, 1]
    y1, x1 = (y0 + tile).clamp(max=H), (x0 + tile).clamp(max=W)
    count = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    area = (y1 - y0) * (x1 - x0)
    return (count > 0) & (count.double() >= min_fraction * area.double())


def gaussian_weights(tile: int, sigma_scale: float = 0.125, device=None) -> torch.Tensor:
    """Gaussian importance map [T, T] float32 for blending overlapping tiles.

    MONAI's convention: separable ``exp(-d^2 / (2 sigma^2))`` with ``sigma = sigma_scale * T`` and
    ``d`` the distance to the tile centre ``(T - 1) / 2`` (symmetric, so a tile and its mirror image
    blend alike), normalised to a maximum of 1, then clamped below at ``max(min, 1e-3)`` so that
    every weight is positive (a pixel covered only by tile corners is still defined).
    """
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
        raise ValueError(f"tile must be a positive integer (px), got {tile!r}")
    s = float(sigma_scale)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"sigma_scale must be a positive number, got {sigma_scale!r}")
    sigma = s * tile
    d = torch.arange(tile, dtype=torch.float64) - (tile - 1) / 2.0
    g = torch.exp(-(d * d) / (2.0 * sigma * sigma))
    w = g[:, None] * g[None, :]
    w = w / w.max()
    w = w.clamp(min=max(float(w.min()), 1e-3))
    return w.to(dtype=torch.float32, device=device)
