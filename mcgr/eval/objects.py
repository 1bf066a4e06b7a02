"""Object-level evaluation: calcification matching, sensitivity, false positives, FROC.

Calcifications are connected components (8-connectivity) of a mask, or annotated points. A true
calcification is found when a predicted component's centroid lies within ``dist_mm`` (default
0.35 mm) of the true centroid, or their IoU is at least ``iou_min`` (0.3). Matching is one-to-one:
a maximum bipartite matching over the admissible pairs, so the count does not depend on the order
of either list. Unmatched predicted components are false positives.

FROC: the map is thresholded at each probability threshold, components re-extracted and matched;
sensitivity (pooled over images) is plotted against mean false positives per image. Sensitivities at
0.25, 0.5, 1, 2 and 4 FP/image are read off the curve by linear interpolation (the last point where
the curve stops short of a rate) and averaged.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching

FROC_RATES = (0.25, 0.5, 1.0, 2.0, 4.0)
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
    idx = np.arange(1, n + 1)
    cen = np.asarray(ndimage.center_of_mass(m, lab, idx), dtype=np.float64).reshape(-1, 2)
    area = np.bincount(lab.ravel(), minlength=n + 1)[1:].astype(np.float64)
    return lab, n, cen, area


def match_objects(truth, pred, spacing_mm: float, dist_mm: float = 0.35, iou_min: float = 0.3,
                  truth_points=None) -> dict:
    """Match predicted components of ``pred`` (bool mask) to true calcifications.

    truth: bool mask of true calcifications (its components), or None when ``truth_points``
    ([K, 2] (y, x) px) are given (points have no extent: only the distance criterion applies).
    Returns ``{"tp", "fn", "fp", "n_truth", "n_pred", "pairs": [(truth_i, pred_j), ...]}``.
    """
    if not spacing_mm > 0:
        raise ValueError(f"spacing_mm must be > 0, got {spacing_mm}")
    p_lab, n_p, p_cen, p_area = components(pred)
    if truth_points is not None:
        t_cen = np.asarray(truth_points, dtype=np.float64).reshape(-1, 2)
        n_t, t_lab = len(t_cen), None
    else:
        t = _np(truth).astype(bool)
        if t.shape != p_lab.shape:
            raise ValueError(f"truth and pred must have the same shape, got {t.shape} and {p_lab.shape}")
        t_lab, n_t, t_cen, t_area = components(t)
    if n_t == 0 or n_p == 0:
        return {"tp": 0, "fn": n_t, "fp": n_p, "n_truth": n_t, "n_pred": n_p, "pairs": []}
    d2 = ((t_cen[:, None, :] - p_cen[None, :, :]) ** 2).sum(-1) * spacing_mm**2
    ok = d2 <= dist_mm**2
    if t_lab is not None:
        both = (t_lab > 0) & (p_lab > 0)
        if both.any():
            ti, pj = t_lab[both] - 1, p_lab[both] - 1
            key, inter = np.unique(ti.astype(np.int64) * n_p + pj, return_counts=True)
            ti, pj = key // n_p, key % n_p
            iou = inter / (t_area[ti] + p_area[pj] - inter)
            sel = iou >= iou_min
            ok[ti[sel], pj[sel]] = True
    rows, cols = np.nonzero(ok)
    graph = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_t, n_p))
    m = maximum_bipartite_matching(graph, perm_type="column")  # m[i] = matched pred of truth i, or -1
    pairs = [(int(i), int(j)) for i, j in enumerate(m) if j >= 0]
    tp = len(pairs)
    return {"tp": tp, "fn": n_t - tp, "fp": n_p - tp, "n_truth": n_t, "n_pred": n_p, "pairs": pairs}


def object_metrics(results: list[dict], breast_area_cm2: list[float] | None = None) -> dict:
    """Pooled sensitivity and false positives from per-image :func:`match_objects` results."""
    tp = sum(r["tp"] for r in results)
    n_t = sum(r["n_truth"] for r in results)
    fp = sum(r["fp"] for r in results)
    out = {
        "sensitivity": tp / n_t if n_t else float("nan"),
        "tp": tp,
        "n_truth": n_t,
        "fp": fp,
        "fp_per_image": fp / len(results) if results else float("nan"),
        "images": len(results),
    }
    if breast_area_cm2 is not None:
        area = float(sum(breast_area_cm2))
        out["fp_per_cm2"] = fp / area if area > 0 else float("nan")
    return out


def froc(probs: list, truths: list, spacing_mm: float | list[float], thresholds=None, dist_mm: float = 0.35,
         iou_min: float = 0.3, rates=FROC_RATES, truth_points: list | None = None) -> dict:
    """FROC over probability thresholds for a dataset of probability maps and truth masks.

    Returns ``{"thresholds", "sensitivity", "fp_per_image", "at_rates": {rate: sens}, "mean_sensitivity"}``.
    """
    if len(probs) != len(truths):
        raise ValueError(f"probs and truths must have the same length, got {len(probs)} and {len(truths)}")
    if thresholds is None:
        thresholds = np.round(np.linspace(0.95, 0.05, 19), 4)
    spacings = spacing_mm if isinstance(spacing_mm, (list, tuple)) else [spacing_mm] * len(probs)
    sens, fpi = [], []
    for thr in thresholds:
        res = []
        for k, (p, t) in enumerate(zip(probs, truths)):
            pts = None if truth_points is None else truth_points[k]
            res.append(match_objects(t, _np(p) >= thr, spacings[k], dist_mm, iou_min, truth_points=pts))
        om = object_metrics(res)
        sens.append(om["sensitivity"])
        fpi.append(om["fp_per_image"])
    sens_a, fpi_a = np.asarray(sens, dtype=np.float64), np.asarray(fpi, dtype=np.float64)
    order = np.argsort(fpi_a, kind="stable")
    xs, ys = fpi_a[order], np.maximum.accumulate(sens_a[order])
    at = {}
    for r in rates:
        if len(xs) == 0 or np.all(np.isnan(ys)):
            at[r] = float("nan")
        elif r < xs[0]:
            at[r] = 0.0 if xs[0] > 0 else float(ys[0])
        else:
            at[r] = float(np.interp(r, xs, ys))
    vals = [v for v in at.values() if not np.isnan(v)]
    return {
        "thresholds": [float(t) for t in thresholds],
        "sensitivity": [float(s) for s in sens],
        "fp_per_image": [float(f) for f in fpi],
        "at_rates": {str(k): v for k, v in at.items()},
        "mean_sensitivity": float(np.mean(vals)) if vals else float("nan"),
    }
