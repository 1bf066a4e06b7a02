"""The inject op's parameters and primitive geometry (the specification is mcgr/ops/inject.py).

Shared by ``inject_ref`` and the Triton kernels (kernels/inject.py), as csrc/inject/inject.h is by the
C++ and CUDA ones; mcgr.ops.inject re-exports every name.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from mcgr._validate import check_range

CALC_FIELDS = ("batch", "cy", "cx", "ry", "rx", "angle", "thickness", "shape")
SHAPE_ELLIPSOID = 0
SHAPE_CAPSULE = 1
MAX_RADIUS_PX = 64.0
PSF_TRUNCATE = 4.0
LOCAL_TRUNCATE = 3.0


@dataclass(frozen=True)
class InjectParams:
    """Image formation parameters (docs/design.md, method M2).

    mu: attenuation of calcification per mm of chord (1/mm); hydroxyapatite at mammographic
        energies is about 1.2/mm.
    psf_sigma: system PSF Gaussian sigma in px (MTF at Nyquist = exp(-pi^2 sigma^2 / 2)); 0 = no blur.
    local_sigma: sigma in px of the local background mean L that modulates contrast.
    contrast: c in m = c (1 - L)^gamma, in [0, 1].
    gamma: how fast dense tissue hides calcifications.
    noise: signal-dependent noise std factor (I += noise sqrt(I) n); 0 = none.
    seed: noise stream (uint32).
    supersample: S, samples per pixel side for area averaging and coverage (1..8).
    """

    mu: float = 1.2
    psf_sigma: float = 0.6
    local_sigma: float = 8.0
    contrast: float = 0.8
    gamma: float = 1.0
    noise: float = 0.0
    seed: int = 0
    supersample: int = 4

    def validated(self) -> "InjectParams":
        check_range("params.mu", self.mu, 0.0, 100.0, lo_open=True)
        check_range("params.psf_sigma", self.psf_sigma, 0.0, 8.0)
        check_range("params.local_sigma", self.local_sigma, 0.25, 64.0)
        check_range("params.contrast", self.contrast, 0.0, 1.0)
        check_range("params.gamma", self.gamma, 0.0, 16.0)
        check_range("params.noise", self.noise, 0.0, 1.0)
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ValueError(f"params.seed must be an integer in [0, 2**32), got {self.seed!r}")
        if not isinstance(self.supersample, int) or not 1 <= self.supersample <= 8:
            raise ValueError(f"params.supersample must be an integer in 1..8, got {self.supersample!r}")
        return self

    @property
    def psf_radius(self) -> int:
        return int(PSF_TRUNCATE * self.psf_sigma + 0.5)

    @property
    def local_radius(self) -> int:
        return int(LOCAL_TRUNCATE * self.local_sigma + 0.5)

    def as_dict(self) -> dict:
        return asdict(self)


def gaussian_taps(sigma: float, radius: int, device=None) -> torch.Tensor:
    """Normalised sampled Gaussian ``exp(-d^2 / (2 sigma^2))``, d in [-radius, radius] (float32)."""
    d = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    if sigma <= 0 or radius == 0:
        w = (d == 0).to(torch.float64)
    else:
        w = torch.exp(-(d * d) / (2.0 * sigma * sigma))
    return (w / w.sum()).to(torch.float32)


def primitive_volume(calcs: torch.Tensor) -> torch.Tensor:
    """Analytic volume of each primitive (px^2 mm): ellipsoid 2/3 pi rx ry t, capsule pi rx ry t + 2/3 pi ry^2 t."""
    ry, rx, t, shape = calcs[:, 3], calcs[:, 4], calcs[:, 6], calcs[:, 7]
    ell = (2.0 / 3.0) * math.pi * rx * ry * t
    cap = math.pi * rx * ry * t + (2.0 / 3.0) * math.pi * ry * ry * t
    return torch.where(shape == SHAPE_CAPSULE, cap, ell)


def primitive_half_extent(calcs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Half height and half width (px) of each primitive's axis-aligned bounding box."""
    ry, rx, a, shape = calcs[:, 3], calcs[:, 4], calcs[:, 5], calcs[:, 7]
    c, s = torch.cos(a).abs(), torch.sin(a).abs()
    cap = shape == SHAPE_CAPSULE
    hx = torch.where(cap, rx * c + ry, torch.sqrt((rx * c) ** 2 + (ry * s) ** 2))
    hy = torch.where(cap, rx * s + ry, torch.sqrt((rx * s) ** 2 + (ry * c) ** 2))
    return hy, hx


def primitive_window(calcs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """First row, first column, rows and columns (int64) of each primitive's pixel window.

    The window holds every pixel any of whose samples can fall inside the primitive, with one
    pixel of margin so that rounding in the extent never clips a shape (samples outside a shape
    contribute nothing, so the margin does not change any result).
    """
    hy, hx = primitive_half_extent(calcs)
    cy, cx = calcs[:, 1], calcs[:, 2]
    i0 = torch.floor(cy - hy + 0.5).to(torch.int64) - 1
    i1 = torch.floor(cy + hy + 0.5).to(torch.int64) + 1
    j0 = torch.floor(cx - hx + 0.5).to(torch.int64) - 1
    j1 = torch.floor(cx + hx + 0.5).to(torch.int64) + 1
    return i0, j0, i1 - i0 + 1, j1 - j0 + 1
