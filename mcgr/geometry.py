"""Calcifications as objects: connected components of a mask, and clusters of their centroids.

Shared by inference (:mod:`mcgr.infer.detect` reports them) and evaluation (:mod:`mcgr.eval.objects`
matches them), so it sits below both: numpy and scipy only, no other mcgr module.

A calcification is an 8-connected component of a mask. A cluster follows the clinical rule "at
least 3 calcifications within 1 cm^2": calcifications are linked when their centroids lie within
``link_mm`` (single linkage) and linked groups of at least ``min_members`` are kept, flagged
``compact`` when their bounding box fits in ``area_cm2``.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

__all__ = ["components", "clusters_of"]

_EIGHT = np.ones((3, 3), dtype=bool)


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def components(mask) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """(labels, n, centroids [n, 2] (y, x) px, areas [n]) of the 8-connected components of ``mask``."""
    m = _np(mask).astype(bool)
    lab, n = ndimage.label(m, structure=_EIGHT)
    if n == 0:
        return lab, 0, np.zeros((0, 2)), np.zeros(0)
    cen, area = label_stats(lab, n)
    return lab, n, cen, area


def label_stats(lab: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(centroids [n, 2] (y, x) px, areas [n]) of labels 1..n of ``lab``."""
    # sums over the foreground pixels only: a mask is sparse, and ndimage.center_of_mass walks them all
    flat = lab.ravel()
    on = np.flatnonzero(flat)
    lb = flat[on]
    area = np.bincount(lb, minlength=n + 1)[1:].astype(np.float64)
    ys = np.bincount(lb, weights=(on // lab.shape[1]).astype(np.float64), minlength=n + 1)[1:]
    xs = np.bincount(lb, weights=(on % lab.shape[1]).astype(np.float64), minlength=n + 1)[1:]
    return np.stack([ys / area, xs / area], axis=1), area


def clusters_of(centroids, spacing_mm: float, link_mm: float = 5.0, min_members: int = 3,
                area_cm2: float = 1.0) -> list[dict]:
    """Clusters among calcifications at ``centroids`` [K, 2] ((y, x) px), the clinical rule shared
    by the pipeline (:func:`mcgr.infer.detect.clusters_from_detections`) and the evaluation: single linkage
    within ``link_mm``, groups of at least ``min_members``, ``compact`` when the bounding box fits in
    ``area_cm2``; a k-d tree keeps a poor model's thousands of false positives cheap. ``members`` are
    row indices into ``centroids``, ascending; clusters are ordered by their first member."""
    if not spacing_mm > 0:
        raise ValueError(f"spacing_mm must be > 0, got {spacing_mm}")
    c = np.asarray(centroids, dtype=np.float64).reshape(-1, 2)
    n = len(c)
    if n < min_members or n == 0:
        return []
    pts = c * spacing_mm
    pairs = cKDTree(pts).query_pairs(link_mm, output_type="ndarray")
    graph = csr_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, lab = connected_components(graph, directed=False)
    _, first, sizes = np.unique(lab, return_index=True, return_counts=True)
    side_mm = math.sqrt(area_cm2) * 10.0
    clusters = []
    for f in np.sort(first[sizes >= min_members]):
        members = np.nonzero(lab == lab[f])[0]
        p = pts[members]
        ext = p.max(axis=0) - p.min(axis=0)
        cen = p.mean(axis=0)
        clusters.append({
            "id": len(clusters),
            "members": [int(i) for i in members],
            "n": int(len(members)),
            "y": round(float(cen[0] / spacing_mm), 2),
            "x": round(float(cen[1] / spacing_mm), 2),
            "y_mm": round(float(cen[0]), 3),
            "x_mm": round(float(cen[1]), 3),
            "extent_mm": [round(float(ext[0]), 3), round(float(ext[1]), 3)],
            "compact": bool(ext[0] <= side_mm and ext[1] <= side_mm),
        })
    return clusters
