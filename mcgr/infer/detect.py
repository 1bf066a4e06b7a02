"""From a probability map to calcifications and clusters.

A calcification is an object of ``prob >= threshold``: its 8-connected pixels, grouped through the
fainter pixels ``prob >= HYSTERESIS_LOW`` around them (hysteresis), so one calcification is one
detection however its peak breaks up; it is reported
with its centroid (px and mm), area (px and mm^2), peak probability and, when an uncertainty map is
given, a confidence ``1 - mean uncertainty`` over the component, its length and width (4 sigma along
its principal axes) and a morphology tag (linear, branching, coarse >= 1 mm, punctate). Clusters follow the clinical rule
"at least 3 calcifications within 1 cm^2": calcifications are linked when their centroids lie within
``link_mm`` (default 5 mm) of each other, and a linked group with at least ``min_members`` members
whose bounding box fits in ``area_cm2`` forms a cluster (larger groups are still reported, flagged
``"compact": false``).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from mcgr.geometry import clusters_of, components

# Objects (docs/design.md, "Objects"): fragments of one calcification joined through pixels of
# prob >= HYSTERESIS_LOW; on 4 held-out regular phantoms (seeds 1000-1003, shipped segmentor, base,
# threshold 0.99) plain components split 3 of 89 found calcifications (3.4 %), hysteresis at 0.5
# 1 (1.1 %) and joined no two; a 2 px merge gap split none but joined 2 distinct ones (2.4 %).
HYSTERESIS_LOW = 0.5
MERGE_MM = 0.0


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def object_labels(prob: np.ndarray, threshold: float, low: float | None = None, merge_px: float = 0.0,
                  support: bool = False):
    """Calcifications as objects: the 8-connected pixels ``prob >= threshold`` grouped by the
    components of ``prob >= low`` that hold them (hysteresis: the fragments of one calcification are
    joined through its fainter pixels) and merged when fewer than ``merge_px`` px apart (a disc
    dilation of radius ``merge_px / 2`` on each joins them). Returns (labels [H, W] int, n,
    centroids [n, 2], areas [n]) over the ``>= threshold`` pixels, as :func:`mcgr.geometry.components`;
    with ``support=True`` also the labels of each object's extent (its ``>= threshold`` pixels and the
    ``>= low`` pixels joined to them), the calcification's outline for its size and shape."""
    from mcgr.geometry import _EIGHT, label_stats

    hi = prob >= threshold
    if (low is None or low >= threshold) and merge_px <= 0:
        out = components(hi)
        return (*out, out[0]) if support else out
    joined = hi | (prob >= low) if low is not None and low < threshold else hi.copy()
    if merge_px > 0 and hi.any():
        r = merge_px / 2.0
        k = int(np.floor(r))
        yy, xx = np.mgrid[-k:k + 1, -k:k + 1]
        joined |= ndimage.binary_dilation(hi, structure=(yy * yy + xx * xx) <= r * r + 1e-9)
    slab, ns = ndimage.label(joined, structure=_EIGHT)
    used = np.zeros(ns + 1, dtype=bool)
    used[slab[hi]] = True
    used[0] = False
    remap = np.cumsum(used) * used  # support components holding a >= threshold pixel, numbered 1..n
    grp = np.where(hi, remap[slab], 0)
    n = int(used.sum())
    ext = None
    if support:
        faint = hi | (prob >= low) if low is not None and low < threshold else hi
        ext = np.where(faint, remap[slab], 0)
    if n == 0:
        out = grp, 0, np.zeros((0, 2)), np.zeros(0)
        return (*out, ext) if support else out
    cen, area = label_stats(grp, n)
    out = grp, n, cen, area
    return (*out, ext) if support else out


# Size and shape of a calcification (BI-RADS words), in this order: linear when its longest axis is
# >= 0.5 mm and >= LINEAR_ELONGATION times its width; branching when >= 0.5 mm long and its pixels
# fill under BRANCHING_SOLIDITY of their convex hull (a V, Y or crooked cast); coarse when its longest
# axis is >= COARSE_MM and it is neither (a round or oval lump: benign, reported once, no cluster);
# else punctate. Linear and branching ones of any length stay in clusters (casting calcifications).
COARSE_MM = 1.0
LINEAR_ELONGATION = 3.0
BRANCHING_SOLIDITY = 0.6
SHAPE_MIN_MM = 0.5


def _shapes(lab: np.ndarray, n: int, spacing_mm: float):
    """(length_mm, width_mm) per object of ``lab`` (labels 1..n): 4 sigma along the principal axes of
    its pixels (a filled ellipse of semi-axes a, b has sigmas a / 2, b / 2), at least one pixel."""
    flat = lab.ravel()
    on = np.flatnonzero(flat)
    lb = flat[on]
    area = np.bincount(lb, minlength=n + 1)[1:].astype(np.float64)
    yy = (on // lab.shape[1]).astype(np.float64)
    xx = (on % lab.shape[1]).astype(np.float64)
    cy = np.bincount(lb, weights=yy, minlength=n + 1)[1:] / area
    cx = np.bincount(lb, weights=xx, minlength=n + 1)[1:] / area
    y, x = yy - cy[lb - 1], xx - cx[lb - 1]
    syy = np.bincount(lb, weights=y * y, minlength=n + 1)[1:] / area + 1.0 / 12
    sxx = np.bincount(lb, weights=x * x, minlength=n + 1)[1:] / area + 1.0 / 12
    sxy = np.bincount(lb, weights=x * y, minlength=n + 1)[1:] / area
    tr, det = syy + sxx, syy * sxx - sxy * sxy
    disc = np.sqrt(np.maximum(tr * tr / 4 - det, 0.0))
    l1, l2 = tr / 2 + disc, np.maximum(tr / 2 - disc, 0.0)
    return 4.0 * np.sqrt(l1) * spacing_mm, np.maximum(4.0 * np.sqrt(l2), 1.0) * spacing_mm


def _solidity(lab: np.ndarray, k: int, box) -> float:
    """Pixels of object ``k`` over the area of the convex hull of their squares."""
    from scipy.spatial import ConvexHull, QhullError

    ys, xs = np.nonzero(lab[box] == k)
    if ys.size < 3:
        return 1.0
    corners = np.concatenate([np.stack([ys + dy, xs + dx], 1) for dy in (-0.5, 0.5) for dx in (-0.5, 0.5)])
    try:
        return float(min(1.0, ys.size / ConvexHull(corners).volume))
    except QhullError:  # a straight run of pixels: as solid as it gets
        return 1.0


def morphology(length_mm: float, width_mm: float, solidity: float = 1.0) -> str:
    """"linear", "branching", "coarse" or "punctate" from an object's size and shape (see ``COARSE_MM``)."""
    if length_mm >= SHAPE_MIN_MM and length_mm >= LINEAR_ELONGATION * width_mm:
        return "linear"
    if length_mm >= SHAPE_MIN_MM and solidity < BRANCHING_SOLIDITY:
        return "branching"
    if length_mm >= COARSE_MM:
        return "coarse"
    return "punctate"


def detections_from_prob(prob, spacing_mm: float, threshold: float = 0.5, uncertainty=None,
                         min_area_px: int = 1, low: float | None = None, merge_mm: float = 0.0,
                         evidence: dict | None = None) -> list[dict]:
    """Calcifications in a probability map ``prob`` [H, W] with pixel size ``spacing_mm``.

    ``low`` / ``merge_mm``: fragments of one calcification are one detection when joined by pixels of
    ``prob >= low`` or fewer than ``merge_mm`` apart (:func:`object_labels`; the pipeline passes
    ``HYSTERESIS_LOW`` and ``MERGE_MM``; the defaults keep plain components).
    Returns a list of dicts ``{"id", "y", "x", "y_mm", "x_mm", "area_px", "area_mm2", "peak_prob",
    "length_mm", "width_mm", "morphology", ["confidence"]}`` sorted by decreasing peak probability
    (ids follow that order). ``evidence``: ``{name: map [H, W]}`` of further per-pixel scores, each
    reported per detection as its maximum over the object's pixels (TT-GPR passes the base model's
    probability ``base_prob`` and the generator's vote ``generator_vote``, so a detection keeps the
    numbers its score was made of).
    """
    if not spacing_mm > 0:
        raise ValueError(f"spacing_mm must be > 0, got {spacing_mm}")
    if not merge_mm >= 0:
        raise ValueError(f"merge_mm must be >= 0 mm, got {merge_mm}")
    p = _np(prob).astype(np.float32, copy=False)
    if p.ndim != 2:
        raise ValueError(f"prob must be [H, W], got shape {p.shape}")
    lab, n, cents, area, ext = object_labels(p, threshold, low, merge_mm / spacing_mm, support=True)
    if n == 0:
        return []
    # size and shape from the object's extent (its fragments and the fainter pixels joining them)
    length, width = _shapes(ext, n, spacing_mm)
    boxes = ndimage.find_objects(ext) if (length >= SHAPE_MIN_MM).any() else []
    solidity = np.ones(n)
    for k in np.flatnonzero(length >= SHAPE_MIN_MM):
        solidity[k] = _solidity(ext, int(k) + 1, boxes[k])
    keep = area >= min_area_px
    # peak and confidence over the foreground pixels only (ndimage's labelled reductions each walk
    # the whole field: ~2 s for four of them at 3328 x 2560)
    flat = lab.ravel()
    on = np.flatnonzero(flat)
    lb = flat[on]
    pv = p.ravel()[on]
    o = np.lexsort((pv, lb))  # by label, then by probability: the last of each label is its peak
    last = np.r_[np.flatnonzero(np.diff(lb[o])), len(o) - 1]
    peak = pv[o][last]
    conf = None
    if uncertainty is not None:
        u = _np(uncertainty).astype(np.float32, copy=False)
        if u.shape != p.shape:
            raise ValueError(f"uncertainty must match prob's shape {p.shape}, got {u.shape}")
        conf = 1.0 - np.bincount(lb, weights=u.ravel()[on].astype(np.float64), minlength=n + 1)[1:] / area
    extra = {}
    if evidence:
        by_label = np.argsort(lb, kind="stable")
        starts = np.r_[0, np.flatnonzero(np.diff(lb[by_label])) + 1]
        for name, m in evidence.items():
            m = _np(m).astype(np.float32, copy=False)
            if m.shape != p.shape:
                raise ValueError(f"evidence[{name!r}] must match prob's shape {p.shape}, got {m.shape}")
            extra[name] = np.maximum.reduceat(m.ravel()[on][by_label], starts)
    order = np.argsort(-np.asarray(peak), kind="stable")
    dets = []
    for k in order:
        if not keep[k]:
            continue
        y, x = float(cents[k, 0]), float(cents[k, 1])
        d = {
            "id": len(dets),
            "y": round(y, 2),
            "x": round(x, 2),
            "y_mm": round(y * spacing_mm, 3),
            "x_mm": round(x * spacing_mm, 3),
            "area_px": int(area[k]),
            "area_mm2": round(float(area[k]) * spacing_mm**2, 4),
            "peak_prob": round(float(peak[k]), 4),
            "length_mm": round(float(length[k]), 3),
            "width_mm": round(float(width[k]), 3),
            "morphology": morphology(float(length[k]), float(width[k]), float(solidity[k])),
        }
        if conf is not None:
            d["confidence"] = round(float(np.clip(conf[k], 0.0, 1.0)), 4)
        for name, v in extra.items():
            d[name] = round(float(v[k]), 6)
        dets.append(d)
    return dets


def clusters_from_detections(dets: list[dict], spacing_mm: float, link_mm: float = 5.0, min_members: int = 3,
                             area_cm2: float = 1.0) -> list[dict]:
    """Group calcifications into clusters; sets ``det["cluster"]`` (-1 when in none).

    A cluster is at least ``min_members`` distinct calcifications (the clinical rule); a coarse one
    (``det["morphology"] == "coarse"``: >= 1 mm, benign-looking, reported on its own) takes part in
    none, so one large calcification and its neighbours never make a cluster by themselves.
    Returns ``[{"id", "members", "n", "y", "x", "y_mm", "x_mm", "extent_mm", "compact"}]``.
    """
    for d in dets:
        d["cluster"] = -1
    pool = [i for i, d in enumerate(dets) if d.get("morphology") != "coarse"]
    pts = np.array([[dets[i]["y"], dets[i]["x"]] for i in pool], dtype=np.float64).reshape(-1, 2)
    clusters = clusters_of(pts, spacing_mm, link_mm, min_members, area_cm2)
    for c in clusters:
        for j in c["members"]:
            dets[pool[j]]["cluster"] = c["id"]
        c["members"] = [dets[pool[j]]["id"] for j in c["members"]]
        c["n"] = len(c["members"])
    return clusters
