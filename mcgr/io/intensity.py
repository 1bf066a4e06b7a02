"""The intensity window of a mammogram: which stored values map to 0 and 1, decided so that a few
bright outliers, padded air or a saturated marker cannot move it.

Every reader (DICOM, PNG, TIFF, NPY) maps stored values ``v`` (after the Modality LUT, and negated
for MONOCHROME1 / MinIsWhite so that larger = more attenuating) linearly onto [0, 1] through
``(v - lo) / (hi - lo)``, clipped. :func:`intensity_window` chooses ``lo`` and ``hi``:

1. **padding** is left out: the pixels equal to PixelPaddingValue (to PixelPaddingRangeLimit when
   given), and, without the tag, a value at either end of the stored range held by at least
   ``PAD_FRACTION`` of the pixels and 10 % of the image's border pixels, with an empty gap of more than ``FENCE`` times the tissue's spread
   to every other value (air padded with 65535 in a 12-bit image; real air is noisy and runs
   continuously into the skin line, so the blacked-out 0 of a scanned film stays data). Padding
   becomes air (0) in the canonical image;
2. **saturation** is left out of the statistics: the pixels at the stored maximum when at least
   ``MIN_SATURATED_PX`` hold it and no pixel lies in the 1 % of the range below it (a spike apart:
   burnt-in markers and text are drawn at full white); they read as 1;
3. **a fence from the breast tissue**: a rough breast mask (:func:`mcgr.io.breast_mask` on a ~0.5 mm
   subsample of the values provisionally scaled by their 0.01 % / 99.99 % quantiles) gives the
   tissue's 99.9 % quantile ``q_hi``; values above ``q_hi + FENCE * (q_hi - floor)`` (``floor``: the
   smallest value that is not padding) are outliers (hot pixels, bright specks) and read as 1;
4. ``lo`` is ``floor`` (air is darker than tissue by right: no fence below) and ``hi`` the largest
   value that is neither padding, saturation nor an outlier.

On an image without outliers this is its own minimum and maximum, the map every shipped model was
trained with (the harvested real windows and the training patches were read this way), so clean
images are read exactly as before. ``FENCE`` = 0.5 was set on the four ``sfm-benign-0`` films: their
brightest pixels (the burnt-in labels, 1.01 to 1.35 times the breast's 99.9 % quantile) lie inside
the fence (1.5 times it), and a hot spot at 4x the tissue maximum lies well outside.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PAD_FRACTION = 0.01
MIN_SATURATED_PX = 16
FENCE = 0.5
WORK_MM = 0.5


@dataclass
class IntensityWindow:
    """``lo`` / ``hi``: the values mapped to 0 / 1 (in the attenuation order of the values given);
    ``padding``: bool mask of padded pixels (None when there is none); ``info``: what was left out,
    for ``meta["intensity"]``."""

    lo: float
    hi: float
    padding: np.ndarray | None
    info: dict = field(default_factory=dict)


def _rough_breast(sub: np.ndarray, valid: np.ndarray, spacing_mm: float) -> np.ndarray:
    from mcgr.io.breast_mask import breast_mask

    v = sub[valid]
    a, b = np.quantile(v, [1e-4, 1 - 1e-4]) if v.size else (0.0, 1.0)
    prov = np.clip((sub - a) / (b - a if b > a else 1.0), 0, 1).astype(np.float32)
    prov[~valid] = 0.0
    # breast_mask wants the chest wall on the left; the file's orientation is not known yet
    third = max(1, prov.shape[1] // 3)
    flip = float(prov[:, -third:].sum()) > float(prov[:, :third].sum())
    try:
        bm = breast_mask(prov[:, ::-1] if flip else prov, spacing_mm)
    except ValueError:
        return valid
    return (bm[:, ::-1] if flip else bm) & valid


def intensity_window(values: np.ndarray, spacing_mm: float | None = None, *, padding_value=None,
                     padding_limit=None) -> IntensityWindow:
    """The window ``(lo, hi)`` of ``values`` [H, W] (real, larger = more attenuating), see the module doc.

    ``spacing_mm``: pixel size (for the rough breast mask; default 0.07 mm); ``padding_value`` /
    ``padding_limit``: PixelPaddingValue and PixelPaddingRangeLimit in the same order and units as
    ``values`` (None when absent).
    """
    v = np.asarray(values)
    if v.ndim != 2 or v.size == 0:
        raise ValueError(f"values must be a non-empty [H, W] array, got shape {v.shape}")
    spacing_mm = 0.07 if spacing_mm is None else float(spacing_mm)
    info: dict = {}
    vmin, vmax = float(v.min()), float(v.max())
    pad = None
    if padding_value is not None:
        p0 = float(padding_value)
        p1 = p0 if padding_limit is None else float(padding_limit)
        a, b = min(p0, p1), max(p0, p1)
        pad = (v >= a) & (v <= b)
        if pad.all():  # a padding value that covers everything is a wrong tag, not padding
            pad = None
        elif pad.any():
            info["padding"] = {"from": "PixelPaddingValue", "pixels": int(pad.sum())}
        else:
            pad = None
    # a ~0.5 mm subsample for the statistics: fast, and blind to a few hot pixels by construction
    step = max(1, int(round(WORK_MM / spacing_mm)))
    sub = np.asarray(v[::step, ::step], dtype=np.float64)
    valid = np.ones(sub.shape, bool) if pad is None else ~pad[::step, ::step]
    inferred = []
    if pad is None:
        for end in (vmax, vmin):
            if vmax > vmin and float((sub == end).mean()) >= PAD_FRACTION:
                inferred.append(end)
        for end in inferred:
            valid &= sub != end
    if not valid.any():
        valid = np.ones(sub.shape, bool)
        inferred = []
    breast = _rough_breast(sub, valid, spacing_mm * step)
    tissue = sub[breast] if breast.sum() >= 64 else sub[valid]
    q_lo, q_hi = np.quantile(tissue, [1e-3, 1 - 1e-3])
    floor = float(sub[valid].min())
    # inferred padding: an end value held by many pixels with an empty gap of more than FENCE times the
    # tissue's spread to every other value; real air is noisy and runs continuously into the skin line
    # (the blacked-out air of a scanned film is 0 next to 1, 2, 3 ...), padding is a constant apart
    gap_min = FENCE * max(float(q_hi - q_lo), 1e-12)
    pad_values = []
    edge = np.concatenate([v[0], v[-1], v[:, 0], v[:, -1]])
    for e in inferred:
        rest = sub[valid]
        nearest = float(rest.max()) if e == vmax else float(rest.min())
        # padding fills the image from its border (unused detector rows and columns, a rotated
        # image's corners); a marker at the same value sits inside and is saturation, not air
        if abs(e - nearest) > gap_min and float((edge == e).mean()) >= 0.1:
            pad_values.append(e)
    if pad is None and pad_values:
        pad = np.isin(v, pad_values)
        info["padding"] = {"from": "image", "value": pad_values[0] if len(pad_values) == 1 else pad_values,
                           "pixels": int(pad.sum())}
    sat_value = None
    n_top = int((v == vmax).sum()) if vmax not in pad_values else 0
    # saturation is a spike at the top standing apart: many pixels at the maximum and none in the 1 % of
    # the range below it (a marker drawn at full white). Values that run up into the maximum (a VOI
    # window's clipping, dense tissue saturating an 8-bit scan) are data: the map stays min..max there
    n_below = int(((v < vmax) & (v >= vmax - 0.01 * (vmax - vmin))).sum()) if n_top >= MIN_SATURATED_PX else 1
    if n_top >= MIN_SATURATED_PX and n_below == 0 and vmax > vmin:
        sat_value = vmax
    # hi: the largest value that is neither padding, saturation nor above the fence; lo: the smallest
    # value that is not padding (air is darker than tissue by right: no fence below)
    f_hi = q_hi + FENCE * max(float(q_hi - floor), 1e-12)
    keep = v <= f_hi
    if pad is not None:
        keep &= ~pad
    if sat_value is not None:
        keep &= v != sat_value
        info["saturated"] = {"value": sat_value, "pixels": n_top}
    if not keep.any():
        keep = np.ones(v.shape, bool) if pad is None else ~pad
    kv = v[keep]
    lo, hi = float(kv.min()), float(kv.max())
    above = v > f_hi
    if pad is not None:
        above &= ~pad
    if sat_value is not None:
        above &= v != sat_value
    if above.any():
        info["outliers"] = {"pixels": int(above.sum()), "above": round(float(f_hi), 6)}
    info["window"] = [lo, hi]
    return IntensityWindow(lo=lo, hi=hi, padding=pad, info=info)


def apply_window(values: np.ndarray, win: IntensityWindow, invert: bool = False) -> np.ndarray:
    """float32 [H, W] in [0, 1]: ``(v - lo) / (hi - lo)`` clipped (``invert``: ``(lo' - v) ...`` for
    values given in the reversed order, MONOCHROME1); padding set to 0 (air)."""
    lo, hi = win.lo, win.hi
    scale = 1.0 / (hi - lo) if hi > lo else 0.0
    out = np.empty(values.shape, np.float32)
    # two passes into one float32 buffer: a full-field image is 50 MB and every temporary costs
    ref = np.float64 if values.dtype == np.float64 else np.float32
    if invert:  # the window is in negated units: v' = -v, lo' = -hi_stored
        np.add(values, ref(lo), out=out, casting="unsafe")
        np.negative(out, out=out)
    else:
        np.subtract(values, ref(lo), out=out, casting="unsafe")
    np.multiply(out, np.float32(scale), out=out)
    np.clip(out, 0.0, 1.0, out=out)
    if win.padding is not None:
        out[win.padding] = 0.0
    return out
