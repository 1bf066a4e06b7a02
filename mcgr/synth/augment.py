"""Site augmentation of real MC-free backgrounds: what mammograms from other sites differ by.

A harvested patch (:func:`mcgr.synth.harvest.harvest_backgrounds`) shows one scanner, one film,
one presentation LUT. Before calcifications are injected into it, :func:`site_augment` redraws
what varies between sites and that the segmentor must not read as a calcification:

* geometry: a random 90-degree turn and flip (the crop itself is resampled over +-20 % pixel
  spacing by :func:`resampled_crop`);
* system blur: a Gaussian of sigma 0 to ``blur_px`` px (a softer detector or scanner);
* presentation: a window (``lo``, ``hi``) and either a gamma or a sigmoid LUT;
* storage: the patch written as MONOCHROME1 or MONOCHROME2 integers of 10, 12, 14 or 16 bits and
  read back (quantisation, and the inversion round trip of MONOCHROME1);
* noise re-synthesised at a dose: signal-dependent Gaussian noise ``sigma sqrt(I + 0.05)``;
* film grain: Gaussian noise correlated over ``grain_px`` px;
* scanner lines: a few 1-2 px rows or columns shifted by a small constant;
* dust: a few sharp bright specks (:func:`mcgr.synth.anatomy.specks`), added after the blur.

Labels are untouched: calcifications are injected after this (docs/design.md, method M2), so the injector
stays the only source of masks. Every draw comes from the caller's generator.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mcgr.ops._filters import gaussian_blur

DEFAULT_AUGMENT = {
    "blur_px": 1.0,  # max Gaussian sigma of the extra blur (drawn in [0, blur_px] half the time)
    "window": 0.12,  # window ends drawn within +-window of (0, 1)
    "gamma": (0.6, 1.7),  # log-uniform presentation gamma
    "sigmoid_fraction": 0.3,  # share of patches given a sigmoid LUT instead of a gamma
    "dose_noise": 0.015,  # max sigma of the re-synthesised quantum noise at I = 1
    "grain": 0.012,  # max amplitude of film grain
    "grain_px": (0.5, 1.3),  # grain correlation (Gaussian sigma, px)
    "line_probability": 0.3,  # share of patches with scanner lines
    "line_amplitude": 0.03,  # max shift of a scanner line
    "bits": (10, 12, 14, 16),
    "scale": (0.8, 1.2),  # pixel-spacing resampling factor of the crop
    "speck_probability": 0.5,  # share of patches given 1-4 sharp dust specks (mcgr.synth.anatomy.specks)
}


def resampled_crop(src: torch.Tensor, index: int, size: int, g: torch.Generator, scale=(0.8, 1.2),
                   centred: bool = False, where: list | None = None) -> torch.Tensor:
    """A ``size`` x ``size`` crop of ``src[index]`` seen at a pixel spacing ``s`` times the source's,
    ``s`` log-uniform in ``scale`` (clipped to what the source holds): a window of ``round(size * s)``
    px resampled to ``size`` (area mean when shrinking, bilinear when enlarging). ``centred``: the
    window holds the source's centre pixel at least a quarter window from its edges. ``where``: a list
    that receives ``(oy, ox, w)``, the window's origin and side in source pixels (no random draw
    depends on it)."""
    _, Hs, Ws = src.shape
    lo, hi = scale
    s = math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * float(torch.rand(1, generator=g)))
    w = max(2, min(Hs, Ws, int(round(size * s))))
    if centred:
        m = w // 4
        (ylo, yhi), (xlo, xhi) = ((max(0, c - w + 1 + m), min(n - w, c - m)) for c, n in ((Hs // 2, Hs), (Ws // 2, Ws)))
        oy = int(torch.randint(ylo, max(ylo, yhi) + 1, (1,), generator=g))
        ox = int(torch.randint(xlo, max(xlo, xhi) + 1, (1,), generator=g))
    else:
        oy = int(torch.randint(0, Hs - w + 1, (1,), generator=g))
        ox = int(torch.randint(0, Ws - w + 1, (1,), generator=g))
    win = src[index, oy:oy + w, ox:ox + w]
    if where is not None:
        where.append((oy, ox, w))
    if w == size:
        return win.clone()
    mode = {"mode": "area"} if w > size else {"mode": "bilinear", "align_corners": False}
    return F.interpolate(win[None, None], size=(size, size), **mode)[0, 0]


def site_augment(x: torch.Tensor, g: torch.Generator, options: dict | None = None,
                 turns: list | None = None) -> torch.Tensor:
    """Redraw the site of each background patch ``x`` [B, P, P] (float32 in [0, 1], square);
    returns a new [B, P, P] tensor in [0, 1]. ``options`` override :data:`DEFAULT_AUGMENT`.
    ``turns``: a list that receives, per patch, ``(k, flipped)``: the patch was turned by
    ``torch.rot90(., k, (0, 1))`` and then mirrored left-right when ``flipped`` (see :func:`turned_point`)."""
    o = dict(DEFAULT_AUGMENT)
    if options:
        unknown = sorted(set(options) - set(o))
        if unknown:
            raise ValueError(f"site_augment: unknown options {unknown}; known: {sorted(o)}")
        o.update(options)
    if x.dim() != 3 or x.shape[1] != x.shape[2]:
        raise ValueError(f"x must be square patches [B, P, P], got shape {tuple(x.shape)}")
    B, P, _ = x.shape
    out = torch.empty_like(x)
    for b in range(B):
        u = torch.rand(12, generator=g).tolist()
        y = torch.rot90(x[b], int(u[0] * 4) % 4, (0, 1))
        if u[1] < 0.5:
            y = y.flip(1)
        if turns is not None:
            turns.append((int(u[0] * 4) % 4, u[1] < 0.5))
        y = y[None]
        if u[2] < 0.5:
            y = gaussian_blur(y, u[3] * o["blur_px"])
        # presentation: window, then gamma or sigmoid
        lo = (2 * u[4] - 1) * o["window"]
        hi = 1 + (2 * u[5] - 1) * o["window"]
        y = ((y - lo) / (hi - lo)).clamp(0, 1)
        if u[6] < o["sigmoid_fraction"]:
            k = 4 + 6 * u[7]
            c = 0.35 + 0.3 * u[8]
            s0, s1 = torch.sigmoid(torch.tensor(-k * c)), torch.sigmoid(torch.tensor(k * (1 - c)))
            y = (torch.sigmoid(k * (y - c)) - s0) / (s1 - s0)
        else:
            glo, ghi = o["gamma"]
            y = y.clamp(min=0) ** math.exp(math.log(glo) + (math.log(ghi) - math.log(glo)) * u[7])
        # quantum noise at a new dose, film grain, scanner lines
        n = torch.randn(y.shape, generator=g)
        y = y + (u[9] * o["dose_noise"]) * n * torch.sqrt(y + 0.05)
        gl, gh = o["grain_px"]
        grain = gaussian_blur(torch.randn(y.shape, generator=g), gl + (gh - gl) * u[10])
        grain = grain / grain.std().clamp(min=1e-6)
        y = y + (u[11] * o["grain"]) * grain
        if float(torch.rand(1, generator=g)) < o["line_probability"]:
            y = _scanner_lines(y, g, o["line_amplitude"])
        if float(torch.rand(1, generator=g)) < o["speck_probability"]:  # after the blur: dust is sharp
            from mcgr.synth.anatomy import specks

            y = specks(y, g, int(torch.randint(1, 5, (1,), generator=g)))
        # storage: MONOCHROME1 or 2 integers of some bit depth, read back to the canonical domain
        v = torch.rand(2, generator=g).tolist()
        bits = o["bits"][int(v[0] * len(o["bits"])) % len(o["bits"])]
        q = float(2**bits - 1)
        y = y.clamp(0, 1)
        y = 1 - torch.round((1 - y) * q) / q if v[1] < 0.5 else torch.round(y * q) / q
        out[b] = y[0]
    return out


def turned_point(y: float, x: float, size: int, k: int, flipped: bool) -> tuple[float, float]:
    """Where pixel ``(y, x)`` of a ``size`` px square lands after ``torch.rot90(., k, (0, 1))`` and,
    when ``flipped``, a left-right mirror (the geometry of :func:`site_augment`)."""
    for _ in range(k % 4):
        y, x = size - 1 - x, y
    if flipped:
        x = size - 1 - x
    return y, x


def _scanner_lines(y: torch.Tensor, g: torch.Generator, amplitude: float) -> torch.Tensor:
    """1 to 3 straight lines (rows or columns, 1-2 px wide) shifted by up to ``amplitude``, the
    shift drifting slowly along the line as a digitiser's does."""
    _, P, _ = y.shape
    y = y.clone()
    for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
        u = torch.rand(5, generator=g).tolist()
        pos = int(u[0] * (P - 2))
        width = 1 + int(u[1] < 0.4)
        amp = (2 * u[2] - 1) * amplitude
        drift = 1 + 0.3 * torch.sin(torch.linspace(0, 2 * math.pi * (0.5 + u[3]), P) + 6.28 * u[4])
        if u[4] < 0.5:
            y[0, pos:pos + width, :] += amp * drift
        else:
            y[0, :, pos:pos + width] += amp * drift[:, None]
    return y
