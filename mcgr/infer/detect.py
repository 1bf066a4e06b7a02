"""From a probability map to calcifications and clusters (DESIGN.md 5).

A calcification is a connected component (8-connectivity) of ``prob >= threshold``; it is reported
with its centroid (px and mm), area (px and mm^2), peak probability and, when an uncertainty map is
given, a confidence ``1 - mean uncertainty`` over the component. Clusters follow the clinical rule
"at least 3 calcifications within 1 cm^2": calcifications are linked when their centroids lie within
``link_mm`` (default 5 mm) of each other, and a linked group with at least ``min_members`` members
whose bounding box fits in ``area_cm2`` forms a cluster (larger groups are still reported, flagged
``"compact": false``).
"""
from __future__ import annotations

import numpy as np

from mcgr.geometry import clusters_of, components


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def detections_from_prob(prob, spacing_mm: float, threshold: float = 0.5, uncertainty=None,
                         min_area_px: int = 1) -> list[dict]:
    """Calcifications in a probability map ``prob`` [H, W] with pixel size ``spacing_mm``.

    Returns a list of dicts ``{"id", "y", "x", "y_mm", "x_mm", "area_px", "area_mm2", "peak_prob",
    ["confidence"]}`` sorted by decreasing peak probability (ids follow that order).
    """
    if not spacing_mm > 0:
        raise ValueError(f"spacing_mm must be > 0, got {spacing_mm}")
    p = _np(prob).astype(np.float32, copy=False)
    if p.ndim != 2:
        raise ValueError(f"prob must be [H, W], got shape {p.shape}")
    lab, n, cents, area = components(p >= threshold)
    if n == 0:
        return []
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
        }
        if conf is not None:
            d["confidence"] = round(float(np.clip(conf[k], 0.0, 1.0)), 4)
        dets.append(d)
    return dets


def clusters_from_detections(dets: list[dict], spacing_mm: float, link_mm: float = 5.0, min_members: int = 3,
                             area_cm2: float = 1.0) -> list[dict]:
    """Group calcifications into clusters; sets ``det["cluster"]`` (-1 when in none).

    Returns ``[{"id", "members", "y", "x", "y_mm", "x_mm", "extent_mm", "compact"}]``.
    """
    for d in dets:
        d["cluster"] = -1
    pts = np.array([[d["y"], d["x"]] for d in dets], dtype=np.float64).reshape(-1, 2)
    clusters = clusters_of(pts, spacing_mm, link_mm, min_members, area_cm2)
    for c in clusters:
        for i in c["members"]:
            dets[i]["cluster"] = c["id"]
        c["members"] = [dets[i]["id"] for i in c["members"]]
    return clusters
