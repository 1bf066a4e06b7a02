"""The grids of one full-field run and every map between them: :class:`FieldGeometry`.

* **stored**: the input as the file holds it (a right breast has its chest wall on the right);
* **source grid**: the input in the canonical orientation (chest wall on the left; a stored image
  mirrored left-right when ``flipped``), ``source_shape`` px at ``source_mm``;
* **model grid**: the same field at the model spacing ``model_mm`` (0.07 mm), ``model_shape`` px;
* **canvas**: the model grid reflect-padded by ``pad`` px on every side, where the networks run.

Points are (row, col) pixel-centre coordinates (pixel ``i`` spans ``[i - 0.5, i + 0.5)``,
docs/design.md "Conventions"). Grids are corner-aligned in millimetres, at the exact ratio of the
spacings: source px ``c`` lies ``(c + 0.5) source_mm`` mm from the field's edge, so at
``(c + 0.5) source_mm / model_mm - 0.5`` on the model grid (:func:`mcgr.io.resample.regrid_px`),
the convention of :func:`mcgr.io.resample.resample`, which moves the arrays: a point and the
map resampled with it stay together. The canvas is the model grid shifted by ``pad``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mcgr import MODEL_SPACING_MM
from mcgr._validate import check_range
from mcgr.io.resample import output_length, regrid_px, resample, resample_mask

_PAD_MODES = ("reflect", "replicate", "constant")


def _points(pts, name: str = "points"):
    """``pts`` ([..., 2] (row, col): a tensor, array or nested list) as a tensor or a NumPy array."""
    is_t = isinstance(pts, torch.Tensor)
    p = pts if is_t else np.asarray(pts)
    if (p.numel() if is_t else p.size) == 0:
        return p.reshape(-1, 2)
    numeric = not (p.dtype == torch.bool or p.is_complex()) if is_t else p.dtype.kind in "iuf"
    if not numeric or p.ndim < 1 or p.shape[-1] != 2:
        raise ValueError(f"{name} must be [..., 2] (row, col) numbers, got shape {tuple(p.shape)} of {p.dtype}")
    return p


def _float64(p):
    return p.double() if isinstance(p, torch.Tensor) else p.astype(np.float64)


@dataclass(frozen=True)
class FieldGeometry:
    """Where a pixel of one grid lies on the others (module docstring), for points and for arrays.

    ``source_shape`` / ``model_shape``: (rows, cols); ``source_mm`` / ``model_mm``: pixel spacings;
    ``pad``: the canvas's border on each side, in model px (0 <= pad < each model side, as reflection
    needs); ``flipped``: the source grid is the stored image mirrored left-right. Build it with
    :meth:`for_image`.
    """

    source_shape: tuple[int, int]
    source_mm: float
    model_shape: tuple[int, int]
    model_mm: float = MODEL_SPACING_MM
    pad: int = 0
    flipped: bool = False

    def __post_init__(self):
        for name in ("source_shape", "model_shape"):
            s = getattr(self, name)
            if len(s) != 2 or any(int(v) != v or v < 1 for v in s):
                raise ValueError(f"{name} must be (rows, cols) >= 1, got {s!r}")
        check_range("source_mm", self.source_mm, 0.0, lo_open=True)
        check_range("model_mm", self.model_mm, 0.0, lo_open=True)
        if not (int(self.pad) == self.pad and 0 <= self.pad < min(self.model_shape)):
            raise ValueError(f"pad must be an integer in [0, {min(self.model_shape)}) for the model grid "
                             f"{tuple(self.model_shape)} (reflection needs pad < each side), got {self.pad!r}")

    @classmethod
    def for_image(cls, source_shape, source_mm: float, model_mm: float = MODEL_SPACING_MM, border_pad: int = 0,
                  flipped: bool = False) -> "FieldGeometry":
        """The geometry of an image of ``source_shape`` px at ``source_mm``: the model grid of
        ``round(side * source_mm / model_mm)`` px a side (at least 1, :func:`mcgr.io.resample.output_length`)
        and a canvas border of ``border_pad`` px, less where the model grid is too small to reflect it."""
        h, w = (int(v) for v in source_shape)
        model_shape = (output_length(h, source_mm, model_mm), output_length(w, source_mm, model_mm))
        pad = max(0, min(int(border_pad), model_shape[0] - 1, model_shape[1] - 1))
        return cls((h, w), float(source_mm), model_shape, float(model_mm), pad, bool(flipped))

    @property
    def canvas_shape(self) -> tuple[int, int]:
        return self.model_shape[0] + 2 * self.pad, self.model_shape[1] + 2 * self.pad

    @property
    def downsamples(self) -> bool:
        """Whether the model grid is coarser than the source grid (the image is area-averaged onto it)."""
        return self.source_mm < self.model_mm

    # points: [..., 2] (row, col); a tensor comes back a tensor, anything else a NumPy array
    def source_to_model(self, pts, clamp: bool = False):
        """Source-grid points on the model grid (float64); ``clamp``: held to the model grid's pixel centres."""
        p = _float64(_points(pts))
        out = regrid_px(p, self.source_mm, self.model_mm)
        if clamp:
            hi = (self.model_shape[0] - 1, self.model_shape[1] - 1)
            out = (torch.stack([out[..., 0].clamp(0, hi[0]), out[..., 1].clamp(0, hi[1])], -1)
                   if isinstance(out, torch.Tensor) else np.clip(out, 0, hi))
        return out

    def model_to_source(self, pts):
        """Model-grid points on the source grid (float64); inverse of :meth:`source_to_model`."""
        return regrid_px(_float64(_points(pts)), self.model_mm, self.source_mm)

    def model_to_canvas(self, pts):
        """Model-grid points on the canvas: shifted by ``pad`` (an integer point stays an integer)."""
        return _points(pts) + self.pad

    def canvas_to_model(self, pts):
        """Canvas points on the model grid (those in the border come out negative or past the side)."""
        return _points(pts) - self.pad

    def source_to_canvas(self, pts, clamp: bool = False):
        """Source-grid points on the canvas; ``clamp`` holds them to the model grid first (not the border)."""
        return self.model_to_canvas(self.source_to_model(pts, clamp=clamp))

    def canvas_to_source(self, pts):
        return self.model_to_source(self.canvas_to_model(pts))

    def stored_to_source(self, pts):
        """Points of the stored image in the canonical orientation: columns mirrored when ``flipped``."""
        return self._mirror_points(pts)

    def source_to_stored(self, pts):
        """Inverse of :meth:`stored_to_source` (the mirror is its own inverse)."""
        return self._mirror_points(pts)

    def _mirror_points(self, pts):
        p = _float64(_points(pts))
        if not self.flipped:
            return p
        p = p.clone() if isinstance(p, torch.Tensor) else p.copy()
        p[..., 1] = self.source_shape[1] - 1 - p[..., 1]
        return p

    # arrays: [H, W] (or [B, H, W] for maps); the caller's kind and device come back
    def to_model(self, image, mode: str | None = None):
        """A source-grid map on the model grid (:func:`mcgr.io.resample.resample`, float32):
        ``mode`` "area" or "linear", default area where the model grid is coarser, else linear."""
        mode = mode or ("area" if self.downsamples else "linear")
        return self._resample(image, self.source_shape, self.source_mm, self.model_mm, self.model_shape, mode)

    def to_source(self, image, mode: str = "linear"):
        """A model-grid map on the source grid (:func:`mcgr.io.resample.resample`, float32)."""
        return self._resample(image, self.model_shape, self.model_mm, self.source_mm, self.source_shape, mode)

    @staticmethod
    def _resample(image, shape, from_mm, to_mm, out_shape, mode):
        if tuple(image.shape[-2:]) != tuple(shape):
            raise ValueError(f"image must be on the {tuple(shape)} grid, got shape {tuple(image.shape)}")
        return resample(image, from_mm, to_mm, mode, out_shape=out_shape)

    def mask_to_model(self, mask):
        """A source-grid bool mask [H, W] (CPU) on the model grid (:func:`mcgr.io.resample.resample_mask`)."""
        if tuple(mask.shape) != tuple(self.source_shape):
            raise ValueError(f"mask must be on the source grid {tuple(self.source_shape)}, got shape {tuple(mask.shape)}")
        return resample_mask(mask, self.source_mm, self.model_mm, out_shape=self.model_shape)

    def mask_to_source(self, mask):
        """A model-grid bool mask [H, W] (CPU) on the source grid (:func:`mcgr.io.resample.resample_mask`)."""
        if tuple(mask.shape) != tuple(self.model_shape):
            raise ValueError(f"mask must be on the model grid {tuple(self.model_shape)}, got shape {tuple(mask.shape)}")
        return resample_mask(mask, self.model_mm, self.source_mm, out_shape=self.source_shape)

    def to_canvas(self, t: torch.Tensor, mode: str = "reflect") -> torch.Tensor:
        """A model-grid tensor [H, W] padded to the canvas: ``mode`` "reflect" (the image),
        "replicate" or "constant" (zeros; a bool mask is padded with False). Bool stays bool."""
        if mode not in _PAD_MODES:
            raise ValueError(f"mode must be one of {_PAD_MODES}, got {mode!r}")
        if tuple(t.shape) != tuple(self.model_shape):
            raise ValueError(f"t must be on the model grid {tuple(self.model_shape)}, got shape {tuple(t.shape)}")
        if self.pad == 0:
            return t
        p = (self.pad,) * 4
        if t.dtype == torch.bool:
            if mode == "constant":
                return torch.nn.functional.pad(t, p)
            return torch.nn.functional.pad(t[None, None].float(), p, mode=mode)[0, 0] > 0.5
        return torch.nn.functional.pad(t[None, None], p, mode=mode)[0, 0].contiguous()

    def crop_canvas(self, t):
        """A canvas array [..., H + 2 pad, W + 2 pad] cropped to the model grid (a view)."""
        if tuple(t.shape[-2:]) != self.canvas_shape:
            raise ValueError(f"t must be on the canvas {self.canvas_shape}, got shape {tuple(t.shape)}")
        if self.pad == 0:
            return t
        return t[..., self.pad: self.pad + self.model_shape[0], self.pad: self.pad + self.model_shape[1]]

    def to_stored(self, t):
        """A source-grid array [..., H, W] in the stored orientation (mirrored when ``flipped``)."""
        if not self.flipped:
            return t
        return t.flip(-1) if isinstance(t, torch.Tensor) else np.ascontiguousarray(t[..., ::-1])
