"""Synthetic full-field mammograms with known calcifications (the demo and the benchmark set).

A phantom is a canonical image (chest wall on the left) of a breast outline (a half ellipse with a
wavy skin line, tissue thinning towards the skin, air outside), filled with the procedural power-law
texture of :mod:`mcgr.synth.backgrounds`, with clusters and isolated calcifications sampled by
:func:`mcgr.synth.patterns.sample_calcifications` inside the breast and injected by the image
formation model (:func:`mcgr.ops.inject`). The truth mask is inject's exact coverage mask.

``faint=True`` draws calcifications fainter than the training distribution's median (lower
attenuation and contrast, thinner calcifications): the shift on which TT-GPR is evaluated.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from mcgr.ops.inject import InjectParams, inject
from mcgr.synth.backgrounds import procedural_backgrounds
from mcgr.synth.patterns import CalcSample, sample_calcifications

# Training draws mu in (2, 8) /mm and contrast in (0.5, 1) (mcgr.synth.dataset.DEFAULT_INJECT_RANGES):
# medians 5 and 0.75. Regular phantoms sit at the median; faint ones well below it.
REGULAR = {"mu": 5.0, "contrast": 0.75, "thickness_jitter": (0.5, 1.3)}
FAINT = {"mu": 2.5, "contrast": 0.6, "thickness_jitter": (0.5, 0.9)}


@dataclass
class Phantom:
    """image, truth, breast: [H, W] (float32 in [0, 1], bool, bool); centres [K, 2] (cy, cx px);
    calcs: the sampled calcifications; cluster [K] (-1 isolated); params: the image formation used;
    background: [H, W] the image before the calcifications were injected (no noise)."""

    image: torch.Tensor
    truth: torch.Tensor
    breast: torch.Tensor
    centres: torch.Tensor
    cluster: torch.Tensor
    calcs: CalcSample
    params: InjectParams
    spacing_mm: float
    seed: int
    background: torch.Tensor | None = None

    def signal(self, backend: str = "auto") -> torch.Tensor:
        """The noise-free calcification signal ``I_clean - B`` [H, W] (one more inject, noise off)."""
        if self.background is None:
            raise ValueError("this phantom was built without its background")
        clean = inject(self.background, self.calcs.prims, replace(self.params, noise=0.0), backend=backend)[0]
        return clean - self.background


def _keep_calcs(s: CalcSample, keep_calc: torch.Tensor) -> CalcSample:
    new_row = torch.cumsum(keep_calc.long(), 0) - 1
    keep_prim = keep_calc[s.calc_index]
    return CalcSample(prims=s.prims[keep_prim], centres=s.centres[keep_calc],
                      calc_index=new_row[s.calc_index[keep_prim]], kind=s.kind[keep_calc],
                      cluster=s.cluster[keep_calc], extent_mm=s.extent_mm[keep_calc], n_patches=s.n_patches)


def breast_outline(height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Normalised breast radius rho [H, W] (breast where rho < 1; chest wall on the left)."""
    ys = torch.arange(height, dtype=torch.float32)[:, None]
    xs = torch.arange(width, dtype=torch.float32)[None, :]
    cy = height * (0.5 + 0.04 * (torch.rand((), generator=generator).item() - 0.5))
    a = width * (0.78 + 0.12 * torch.rand((), generator=generator).item())
    b = height * (0.44 + 0.04 * torch.rand((), generator=generator).item())
    dy, dx = (ys - cy) / b, xs / a
    theta = torch.atan2(dy, dx)
    wav = torch.zeros_like(theta)
    for k in (2, 3, 5, 7):
        amp = 0.03 / k ** 0.5 * torch.rand((), generator=generator).item()
        ph = 2 * math.pi * torch.rand((), generator=generator).item()
        wav = wav + amp * torch.sin(k * theta + ph)
    return torch.sqrt(dx * dx + dy * dy) / (1.0 + wav)


def breast_phantom(height: int = 1536, width: int = 1152, spacing_mm: float = 0.07, seed: int = 0, *,
                   clusters=(3, 5), isolated=(4, 10), faint: bool = False, noise: float = 0.005,
                   backend: str = "auto", anatomy: bool = False, texture: dict | None = None) -> Phantom:
    """A synthetic full-field mammogram ``height x width`` px at ``spacing_mm`` with known calcifications.

    The full-field size of a 0.07 mm detector is 3328 x 2560; the default is a smaller breast so that
    the CPU demo is quick. Every calcification lies inside the breast (rho < 0.88).
    ``anatomy``: an MLO view: a pectoral muscle in the upper chest-wall corner (no calcification in
    it), and vessels, ligaments, scratches, dust and a burnt-in label drawn by
    :func:`mcgr.synth.anatomy.add_anatomy` into random 256 px windows. ``texture``: keyword arguments
    of :func:`~mcgr.synth.backgrounds.procedural_backgrounds` overriding the phantom's tissue.
    """
    if min(height, width) < 128:
        raise ValueError(f"a phantom needs at least 128 px a side, got {height} x {width}")
    g = torch.Generator().manual_seed(int(seed))
    rho = breast_outline(height, width, g)
    breast = rho < 1.0
    tex_kw = {"fibres": (8, 20), "mean": (0.3, 0.55), **(texture or {})}
    tex = procedural_backgrounds(1, height, width, g, spacing_mm=spacing_mm, **tex_kw)[0]
    # tissue thins towards the skin line: intensity falls over the outer ~8 % of the radius
    prof = torch.clamp((1.0 - rho) / 0.08, 0.0, 1.0).sqrt()
    air = 0.02
    image = (air + (tex - air) * prof).clamp(0.0, 1.0)
    pectoral = torch.zeros_like(breast)
    if anatomy:
        image, pectoral = _mlo_anatomy(image, breast, g, spacing_mm)
    style = FAINT if faint else REGULAR
    s = sample_calcifications(1, height, width, spacing_mm, g, clusters=clusters, isolated=isolated,
                              thickness_jitter=style["thickness_jitter"])
    cy = s.centres[:, 1].round().long().clamp(0, height - 1)
    cx = s.centres[:, 2].round().long().clamp(0, width - 1)
    s = _keep_calcs(s, (rho[cy, cx] < 0.88) & ~pectoral[cy, cx])
    params = InjectParams(mu=style["mu"], contrast=style["contrast"], psf_sigma=0.6, local_sigma=8.0,
                          gamma=1.0, noise=noise, seed=int(seed) & 0xFFFFFFFF)
    img, truth = inject(image, s.prims, params, backend=backend)
    return Phantom(image=img, truth=truth, breast=breast, centres=s.centres[:, 1:3].clone(), cluster=s.cluster,
                   calcs=s, params=params, spacing_mm=spacing_mm, seed=int(seed), background=image)


def _mlo_anatomy(image: torch.Tensor, breast: torch.Tensor, g: torch.Generator, spacing_mm: float):
    """Pectoral muscle (a bright, striated triangle behind a slightly bowed edge from the top edge to
    the chest wall) and local artefacts in random windows; returns (image, pectoral mask)."""
    from mcgr.synth.anatomy import add_anatomy
    from mcgr.ops._filters import gaussian_blur

    H, W = image.shape
    u = torch.rand(6, generator=g).tolist()
    xt = (0.25 + 0.25 * u[0]) * W  # where the edge meets the top of the image
    yl = (0.35 + 0.3 * u[1]) * H  # where it meets the chest wall
    ys = torch.arange(H, dtype=torch.float32)[:, None]
    xs = torch.arange(W, dtype=torch.float32)[None, :]
    t = (ys / yl + xs / xt)  # < 1 inside the triangle
    bow = 0.06 * (u[2] - 0.5) * torch.sin(math.pi * (ys / yl).clamp(0, 1))
    d = (1 + bow - t) * min(xt, yl) / math.sqrt(2)  # ~ px inside the edge
    inside = torch.sigmoid(d / (0.5 + 1.5 * u[3]))
    stri = gaussian_blur(torch.randn(1, H, W, generator=g), 2.0)[0]
    muscle = (0.7 + 0.25 * u[4] + 0.04 * stri / stri.std().clamp(min=1e-6)).clamp(0, 1)
    image = image * (1 - inside) + (0.7 * muscle + 0.3 * image) * inside
    pectoral = (d > -2) & breast
    P = 256
    if min(H, W) > P:
        for _ in range(6):
            v = torch.rand(2, generator=g).tolist()
            y0, x0 = int(v[0] * (H - P)), int(v[1] * (W - P))
            win = image[y0:y0 + P, x0:x0 + P][None]
            kinds = ("vessel", "ligament", "scratch", "dust", "marker")
            image[y0:y0 + P, x0:x0 + P] = add_anatomy(win, g, 1.0, spacing_mm, kinds=kinds)[0][0]
    return image.clamp(0, 1), pectoral
