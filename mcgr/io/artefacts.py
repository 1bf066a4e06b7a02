"""Scanner line artefacts: long straight bright streaks along the image rows or columns.

Film digitisers leave thin bright lines that run straight down (or across) a scan, often the whole
height. A line 1-2 px wide and a few hundredths brighter than its neighbours looks, to a segmentor
trained on calcifications, like a string of them: on the CBIS-DDSM film sfm-benign-0/1-130 one
such column carried 117 of 354 detections. No calcification, cluster or vessel is a straight
line one pixel wide over several centimetres, so these are found and left out of the outputs.

Method, per axis (columns shown; rows are the same on the transpose), on the canonical image:

1. ``r[y, x] = I[y, x] - (I[y, x - d] + I[y, x + d]) / 2``, the excess over the neighbours ``d``
   px away on each side (``d = 3``: wider than the line, narrower than tissue structure);
2. the median of ``r`` over blocks of ``block`` rows (in the breast only; blocks with fewer than
   half their rows in the breast are skipped): texture and noise average out to ~0 along a
   column, a streak keeps its contrast;
3. a (block, column) is flagged when that median exceeds ``k`` robust sigmas (1.4826 MAD over the
   block's columns) and ``min_contrast``, and the medians ``d`` px to either side are negative by
   at least a quarter of it (the side lobes of a line narrower than ``d``: a straight fibre or a
   vessel a few px wide has none); a column is a line where at least ``min_blocks``
   consecutive blocks are flagged (``min_blocks * block`` px, 2 x 256 px = 36 mm at 0.07 mm);
4. the mask is the flagged run's rows, over the line's column +- ``pad`` px.
"""
from __future__ import annotations

import numpy as np
import torch


def _axis_lines(img: torch.Tensor, inside: torch.Tensor, d: int, block: int, k: float, min_contrast: float,
                min_blocks: int, pad: int) -> np.ndarray:
    h, w = img.shape
    out = np.zeros((h, w), dtype=bool)
    if w < 2 * d + 1 or h < block * min_blocks:
        return out
    nb = h // block
    x = img[: nb * block]
    r = torch.full((nb * block, w), float("nan"))
    core = x[:, d:w - d] - 0.5 * (x[:, : w - 2 * d] + x[:, 2 * d:])
    r[:, d:w - d] = torch.where(inside[: nb * block, d:w - d], core, torch.tensor(float("nan")))
    rb = r.view(nb, block, w)
    # block medians in one call (the lower middle value of an even count)
    med = torch.nanmedian(rb, dim=1).values.numpy().copy()
    med[(torch.isfinite(rb).sum(1) < block // 2).numpy()] = np.nan
    flag = np.zeros((nb, w), dtype=bool)
    for b in range(nb):
        v = med[b][np.isfinite(med[b])]
        if v.size < 16:
            continue
        sig = 1.4826 * float(np.median(np.abs(v - np.median(v))))
        m = med[b]
        # a line 1-2 px wide has negative side lobes d px away (their neighbour is the line); a
        # straight fibre or vessel a few px wide does not
        left = np.full(w, np.nan, dtype=np.float32)
        right = np.full(w, np.nan, dtype=np.float32)
        left[d:] = m[:-d]
        right[:-d] = m[d:]
        with np.errstate(invalid="ignore"):
            flag[b] = (m > max(k * sig, min_contrast)) & (left < -0.25 * m) & (right < -0.25 * m)
    for c in np.flatnonzero(flag.any(0)):
        col = flag[:, c]
        b = 0
        while b < nb:
            if not col[b]:
                b += 1
                continue
            e = b
            while e < nb and col[e]:
                e += 1
            if e - b >= min_blocks:
                y1 = h if e == nb else e * block  # a run reaching the last block covers the remainder
                out[b * block:y1, max(0, c - pad):c + pad + 1] = True
            b = e
    return out


def scan_lines(image, breast=None, d: int = 3, block: int = 256, k: float = 6.0, min_contrast: float = 0.005,
               min_blocks: int = 2, pad: int = 2) -> np.ndarray:
    """Bool mask [H, W] of straight vertical and horizontal bright streaks (see the module doc).

    image: [H, W] in [0, 1] (NumPy or torch); breast: optional bool [H, W], where to look (default:
    everywhere)."""
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    img = np.ascontiguousarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"image must be [H, W], got shape {img.shape}")
    if breast is None:
        inside = np.ones(img.shape, dtype=bool)
    else:
        inside = np.ascontiguousarray(breast.detach().cpu().numpy() if hasattr(breast, "detach") else breast, dtype=bool)
        if inside.shape != img.shape:
            raise ValueError(f"breast must match the image shape {img.shape}, got {inside.shape}")
    if not (d >= 1 and block >= 8 and k > 0 and min_blocks >= 1 and pad >= 0):
        raise ValueError("scan_lines needs d >= 1, block >= 8, k > 0, min_blocks >= 1, pad >= 0")
    ti, tb = torch.from_numpy(img), torch.from_numpy(inside)
    cols = _axis_lines(ti, tb, d, block, k, min_contrast, min_blocks, pad)
    rows = _axis_lines(ti.t().contiguous(), tb.t().contiguous(), d, block, k, min_contrast, min_blocks, pad).T
    return cols | rows
