"""A second calcification injector for validation, sharing no code or parameters with training.

Calcifications injected by the image formation model that trained the segmentor
(:func:`mcgr.ops.inject`: unions of ellipsoids, chord-length thickness, Gaussian PSF, contrast
``c (1 - L)^gamma``) are the easiest the segmentor will ever see. This injector draws them from
other families, so a validation scored with it says how far the segmentor generalises:

* **placement**: clusters are Gaussian clouds (sd 0.8-2.5 mm, 4-16 members, each at least 0.3 mm from
  the others) around centres inside the search region; isolated calcifications uniform over it;
* **shapes**: star-shaped grains (radius ``r(th) = r0 (1 + sum_k a_k cos(k th + phi_k))``, k = 2..5,
  equivalent diameter 0.15-0.8 mm) and, for a fifth of them, rods (capsules 0.1-0.25 mm thick,
  0.5-2.5 mm long);
* **thickness profile**: a flat-topped dome ``t = T0 (1 - rho^2)^0.25`` over the shape's normalised
  radius ``rho`` (an ellipsoid's chord goes as ``(1 - rho^2)^0.5``), area-averaged over 4 x 4
  sub-pixels;
* **blur law**: an exponential (Laplacian) kernel ``exp(-r / b)``, b 0.3-0.6 px: heavier tails than
  a Gaussian, as a phosphor screen's;
* **contrast law**: each calcification's peak contrast is set to a target contrast-to-noise ratio,
  log-uniform in [1.5, 15], against the local noise of the image (the robust sd of its high-pass
  residual within 2 mm), and the profile follows ``1 - exp(-k t)`` (saturating attenuation):
  no density law at all;
* **truth**: pixels whose sub-pixel coverage is >= 0.5, and the centre pixel of any calcification
  too small to cover half a pixel.

All in NumPy / SciPy; the random stream is ``numpy.random.default_rng(seed)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

SUB = 4  # sub-pixels per axis for the area average


@dataclass
class Injected:
    """``image`` float32 [H, W]; ``truth`` bool [H, W]; ``centres`` float [K, 2] (row, col);
    ``cluster`` int [K] (-1: isolated); ``background`` the image before injection."""

    image: np.ndarray
    truth: np.ndarray
    centres: np.ndarray
    cluster: np.ndarray
    background: np.ndarray


def _local_noise(img: np.ndarray, spacing_mm: float) -> np.ndarray:
    r = img - ndimage.uniform_filter(img, 3)
    k = max(3, int(round(2.0 / spacing_mm)) | 1)
    mad = ndimage.median_filter(np.abs(r[::4, ::4]), size=max(3, k // 4))
    sd = 1.4826 * mad * 1.22  # the 3 x 3 mean removes 1/9 of the variance; robust sd of the rest
    return np.maximum(ndimage.zoom(sd, (img.shape[0] / sd.shape[0], img.shape[1] / sd.shape[1]), order=1), 1e-4)


def _shape(rng, spacing_mm: float):
    """One calcification: (sub-pixel coverage function, half-size in px)."""
    if rng.random() < 0.2:  # rod
        thick = rng.uniform(0.1, 0.25) / spacing_mm
        length = rng.uniform(0.5, 2.5) / spacing_mm
        ang = rng.uniform(0, np.pi)
        half = length / 2 + thick

        def rho(yy, xx):
            u = xx * np.cos(ang) + yy * np.sin(ang)
            v = -xx * np.sin(ang) + yy * np.cos(ang)
            du = np.maximum(np.abs(u) - length / 2, 0)
            return np.hypot(du, v) / (thick / 2)
        return rho, half
    r0 = rng.uniform(0.15, 0.8) / 2 / spacing_mm
    ks = np.arange(2, 6)
    amp = rng.uniform(0, 0.25, len(ks)) / ks
    phase = rng.uniform(0, 2 * np.pi, len(ks))

    def rho(yy, xx):
        th = np.arctan2(yy, xx)
        r = r0 * (1 + sum(a * np.cos(k * th + ph) for a, k, ph in zip(amp, ks, phase)))
        return np.hypot(yy, xx) / r
    return rho, r0 * (1 + amp.sum()) + 1


def _place(rng, region: np.ndarray, spacing_mm: float, clusters, isolated):
    ys, xs = np.nonzero(region)
    if ys.size == 0:
        raise ValueError("the search region is empty: nowhere to inject")
    cen, cid = [], []
    min_d = 0.3 / spacing_mm
    for c in range(int(rng.integers(clusters[0], clusters[1] + 1))):
        i = int(rng.integers(ys.size))
        cy, cx = ys[i], xs[i]
        sd = rng.uniform(0.8, 2.5) / spacing_mm
        n = int(rng.integers(4, 17))
        pts = []
        for _ in range(20 * n):
            if len(pts) == n:
                break
            y, x = rng.normal(cy, sd), rng.normal(cx, sd)
            yi, xi = int(round(y)), int(round(x))
            if not (0 <= yi < region.shape[0] and 0 <= xi < region.shape[1]) or not region[yi, xi]:
                continue
            if all(np.hypot(y - a, x - b) >= min_d for a, b in pts) and all(np.hypot(y - a, x - b) >= min_d for a, b in cen):
                pts.append((y, x))
        if len(pts) >= 3:
            cen += pts
            cid += [c] * len(pts)
    for _ in range(int(rng.integers(isolated[0], isolated[1] + 1))):
        i = int(rng.integers(ys.size))
        y, x = ys[i] + rng.uniform(-0.5, 0.5), xs[i] + rng.uniform(-0.5, 0.5)
        if all(np.hypot(y - a, x - b) >= 3 * min_d for a, b in cen):
            cen.append((y, x))
            cid.append(-1)
    return np.asarray(cen, np.float64).reshape(-1, 2), np.asarray(cid, np.int64)


def independent_inject(image: np.ndarray, region: np.ndarray, spacing_mm: float, seed: int,
                       clusters=(3, 5), isolated=(10, 20), cnr=(1.5, 15.0)) -> Injected:
    """Inject calcifications into ``image`` (canonical, bright = attenuating, [0, 1]) inside
    ``region`` (bool, same shape) at ``spacing_mm``; see the module doc for the laws."""
    img = np.asarray(image, np.float64)
    if img.ndim != 2 or region.shape != img.shape:
        raise ValueError(f"image and region must be [H, W] of one shape, got {img.shape} and {region.shape}")
    rng = np.random.default_rng(seed)
    centres, cid = _place(rng, region, spacing_mm, clusters, isolated)
    H, W = img.shape
    noise = _local_noise(img, spacing_mm)
    delta = np.zeros_like(img)
    truth = np.zeros((H, W), bool)
    b = rng.uniform(0.3, 0.6)
    kr = int(np.ceil(5 * b))
    yy, xx = np.mgrid[-kr:kr + 1, -kr:kr + 1]
    kern = np.exp(-np.hypot(yy, xx) / b)
    kern /= kern.sum()
    off = (np.arange(SUB) + 0.5) / SUB - 0.5
    for (cy, cx) in centres:
        rho_fn, half = _shape(rng, spacing_mm)
        r = int(np.ceil(half)) + kr + 1
        y0, x0 = int(round(cy)) - r, int(round(cx)) - r
        n = 2 * r + 1
        py = (y0 + np.arange(n))[:, None, None, None] + off[None, None, :, None]
        px = (x0 + np.arange(n))[None, :, None, None] + off[None, None, None, :]
        rho = rho_fn(py - cy, px - cx)
        inside = rho < 1
        t = np.where(inside, (1 - np.minimum(rho, 1) ** 2) ** 0.25, 0.0).mean(axis=(2, 3))
        cover = inside.mean(axis=(2, 3))
        k = rng.uniform(0.5, 3.0)
        prof = ndimage.convolve(1 - np.exp(-k * t), kern, mode="constant")
        if prof.max() <= 0:
            continue
        ys, xs = slice(max(0, y0), min(H, y0 + n)), slice(max(0, x0), min(W, x0 + n))
        sy, sx = slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0)
        iy, ix = min(max(int(round(cy)), 0), H - 1), min(max(int(round(cx)), 0), W - 1)
        target = np.exp(rng.uniform(np.log(cnr[0]), np.log(cnr[1]))) * noise[iy, ix]
        delta[ys, xs] = np.maximum(delta[ys, xs], prof[sy, sx] * (target / prof.max()))
        m = cover[sy, sx] >= 0.5
        if not m.any():
            truth[iy, ix] = True
        truth[ys, xs] |= m
    out = np.clip(img + delta, 0.0, 1.0).astype(np.float32)
    return Injected(out, truth, centres, cid, np.asarray(image, np.float32))
