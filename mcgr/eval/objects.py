"""Object-level evaluation: calcification matching, sensitivity, false positives, FROC.

Calcifications are connected components (8-connectivity) of a mask, or annotated points. A true
calcification is found when a predicted component's centroid lies within ``dist_mm`` (default
0.35 mm) of the true centroid, or their IoU is at least ``iou_min`` (0.3). Matching is one-to-one:
a maximum bipartite matching over the admissible pairs, so the count does not depend on the order
of either list. Unmatched predicted components are false positives; with ``duplicates="ignore"``
(the LUNA16 / ANODE09 rule) those that hit an already found calcification are not.

FROC: the map is thresholded at each probability threshold, components re-extracted and matched;
sensitivity (pooled over images) is plotted against mean false positives per image. Sensitivities at
0.25, 0.5, 1, 2 and 4 FP/image are read off the curve by linear interpolation (the last point where
the curve stops short of a rate) and averaged.

Clusters (:func:`match_clusters`): calcifications are grouped on each side (truth and prediction)
by the pipeline's clinical rule, :func:`mcgr.geometry.clusters_of` (at least 3 within 1 cm^2, linked
within 5 mm); a true cluster is found when a predicted cluster's centroid lies within 5 mm of its centroid or the
two share at least 2 matched calcifications, again one-to-one.
"""
from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching

from mcgr.geometry import _np, clusters_of, components

FROC_RATES = (0.25, 0.5, 1.0, 2.0, 4.0)
DUPLICATE_RULES = ("fp", "ignore")


def match_objects(truth, pred, spacing_mm: float, dist_mm: float = 0.35, iou_min: float = 0.3,
                  truth_points=None, truth_ignore=None, duplicates: str = "fp") -> dict:
    """Match predicted components of ``pred`` (bool mask) to true calcifications.

    truth: bool mask of true calcifications (its components), or None when ``truth_points``
    ([K, 2] (y, x) px) are given (points have no extent: only the distance criterion applies).
    Returns ``{"tp", "fn", "fp", "n_truth", "n_pred", "pairs": [(truth_i, pred_j), ...],
    "truth_centroids": [n_truth, 2], "pred_centroids": [n_pred, 2]}`` (centroids (y, x) in px).

    truth_ignore: optional bool per true calcification (component label order, or point order):
    "difficult" ones (PASCAL VOC's rule; e.g. invisible, mcgr.synth.visibility). They are neither
    found nor missed (left out of ``n_truth``), and a predicted component that is admissible for one
    of them and not matched to a counted calcification is not a false positive (``ignored_pred``).

    duplicates: ``"fp"`` (default) counts every unmatched predicted component as a false positive;
    ``"ignore"`` applies the rule of the LUNA16 / ANODE09 FROC: an unmatched component that hits a
    counted calcification already found by another component (admissible for it, or sharing a pixel
    with its mask) is a duplicate detection of that calcification, neither a hit nor a false
    positive (``duplicate_pred``). A component on a calcification that nothing found still has to
    pass the match criterion; without it, it stays a false positive.
    """
    if duplicates not in DUPLICATE_RULES:
        raise ValueError(f"duplicates must be one of {DUPLICATE_RULES}, got {duplicates!r}")
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
    cents = {"truth_centroids": t_cen, "pred_centroids": p_cen}
    ign = np.zeros(n_t, dtype=bool)
    if truth_ignore is not None:
        ign = np.asarray(truth_ignore, dtype=bool).reshape(-1)
        if ign.shape != (n_t,):
            raise ValueError(f"truth_ignore needs one flag per true calcification ({n_t}), got {ign.shape[0]}")
    n_c = int(n_t - ign.sum())
    if n_t == 0 or n_p == 0:
        return {"tp": 0, "fn": n_c, "fp": n_p, "n_truth": n_c, "n_pred": n_p, "pairs": [], "ignored_pred": 0,
                "duplicate_pred": 0, **cents}
    d2 = ((t_cen[:, None, :] - p_cen[None, :, :]) ** 2).sum(-1) * spacing_mm**2
    ok = d2 <= dist_mm**2
    touch = ok.copy()
    if t_lab is not None:
        both = (t_lab > 0) & (p_lab > 0)
        if both.any():
            ti, pj = t_lab[both] - 1, p_lab[both] - 1
            key, inter = np.unique(ti.astype(np.int64) * n_p + pj, return_counts=True)
            ti, pj = key // n_p, key % n_p
            iou = inter / (t_area[ti] + p_area[pj] - inter)
            sel = iou >= iou_min
            ok[ti[sel], pj[sel]] = True
            touch[ti, pj] = True
    counted = ok & ~ign[:, None]
    rows, cols = np.nonzero(counted)
    graph = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_t, n_p))
    m = maximum_bipartite_matching(graph, perm_type="column")  # m[i] = matched pred of truth i, or -1
    pairs = [(int(i), int(j)) for i, j in enumerate(m) if j >= 0]
    tp = len(pairs)
    free = np.ones(n_p, dtype=bool)
    free[[j for _, j in pairs]] = False
    ign_p = free & ok[ign].any(axis=0) if ign.any() else np.zeros(n_p, dtype=bool)
    dup_p = np.zeros(n_p, dtype=bool)
    if duplicates == "ignore" and pairs:
        found = np.zeros(n_t, dtype=bool)
        found[[i for i, _ in pairs]] = True
        dup_p = free & ~ign_p & touch[found].any(axis=0)
    ignored_pred, duplicate_pred = int(ign_p.sum()), int(dup_p.sum())
    return {"tp": tp, "fn": n_c - tp, "fp": n_p - tp - ignored_pred - duplicate_pred, "n_truth": n_c, "n_pred": n_p,
            "pairs": pairs, "ignored_pred": ignored_pred, "duplicate_pred": duplicate_pred, **cents}


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
    if results and all("duplicates" in r for r in results):
        # second components on found calcifications (match_objects(duplicates="ignore")), inside fp
        out["duplicates_per_image"] = sum(r["duplicates"] for r in results) / len(results)
    if breast_area_cm2 is not None:
        area = float(sum(breast_area_cm2))
        out["fp_per_cm2"] = fp / area if area > 0 else float("nan")
    return out


DEFAULT_FROC_THRESHOLDS = tuple(float(t) for t in np.round(np.linspace(0.95, 0.05, 19), 4))


def froc_counts(prob, truth, spacing_mm: float, thresholds=DEFAULT_FROC_THRESHOLDS, dist_mm: float = 0.35,
                iou_min: float = 0.3, truth_points=None, truth_ignore=None, duplicates: str = "fp") -> dict:
    """One image's FROC counts: ``{"tp": [T], "fp": [T], "n_truth"}`` at each of the T ``thresholds``
    (``prob`` [H, W]; ``truth`` mask or None with ``truth_points``). Sum them over images and pass
    the sums to :func:`froc_from_counts`, so that a dataset's maps need not be held together."""
    p = _np(prob)
    tp, fp, n_t = [], [], 0
    for thr in thresholds:
        r = match_objects(truth, p >= thr, spacing_mm, dist_mm, iou_min, truth_points=truth_points,
                          truth_ignore=truth_ignore, duplicates=duplicates)
        tp.append(r["tp"])
        fp.append(r["fp"])
        n_t = r["n_truth"]
    return {"tp": tp, "fp": fp, "n_truth": n_t}


def froc_from_counts(thresholds, tp, fp, n_truth: int, n_images: int, rates=FROC_RATES) -> dict:
    """The FROC of a dataset from its summed per-threshold counts (see :func:`froc`)."""
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    tp_a, fp_a = np.asarray(tp, dtype=np.float64), np.asarray(fp, dtype=np.float64)
    if tp_a.shape != (len(thresholds),) or fp_a.shape != tp_a.shape:
        raise ValueError(f"tp and fp need one count per threshold ({len(thresholds)}), got {tp_a.shape} and {fp_a.shape}")
    sens_a = tp_a / n_truth if n_truth else np.full(tp_a.shape, np.nan)
    fpi_a = fp_a / n_images
    order = np.argsort(fpi_a, kind="stable")
    xs, ys = fpi_a[order], np.maximum.accumulate(sens_a[order]) if n_truth else sens_a
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
        "sensitivity": [float(s) for s in sens_a],
        "fp_per_image": [float(f) for f in fpi_a],
        "at_rates": {str(k): v for k, v in at.items()},
        "mean_sensitivity": float(np.mean(vals)) if vals else float("nan"),
    }


def froc(probs: list, truths: list, spacing_mm: float | list[float], thresholds=None, dist_mm: float = 0.35,
         iou_min: float = 0.3, rates=FROC_RATES, truth_points: list | None = None,
         truth_ignore: list | None = None, duplicates: str = "fp") -> dict:
    """FROC over probability thresholds for a dataset of probability maps and truth masks.

    Returns ``{"thresholds", "sensitivity", "fp_per_image", "at_rates": {rate: sens}, "mean_sensitivity"}``.
    truth_ignore: optional per image the "difficult" flags of :func:`match_objects`; duplicates: its
    duplicate rule.
    """
    if len(probs) != len(truths):
        raise ValueError(f"probs and truths must have the same length, got {len(probs)} and {len(truths)}")
    if thresholds is None:
        thresholds = DEFAULT_FROC_THRESHOLDS
    spacings = spacing_mm if isinstance(spacing_mm, (list, tuple)) else [spacing_mm] * len(probs)
    tp = np.zeros(len(thresholds), dtype=np.int64)
    fp = np.zeros(len(thresholds), dtype=np.int64)
    n_t = 0
    for k, (p, t) in enumerate(zip(probs, truths)):
        pts = None if truth_points is None else truth_points[k]
        ig = None if truth_ignore is None else truth_ignore[k]
        c = froc_counts(p, t, spacings[k], thresholds, dist_mm, iou_min, truth_points=pts, truth_ignore=ig,
                        duplicates=duplicates)
        tp += c["tp"]
        fp += c["fp"]
        n_t += c["n_truth"]
    return froc_from_counts(thresholds, tp, fp, n_t, max(1, len(probs)), rates)


def match_clusters(truth_centroids, pred_centroids, spacing_mm: float, pairs=(), *, link_mm: float = 5.0,
                   min_members: int = 3, area_cm2: float = 1.0, dist_mm: float = 5.0, min_shared: int = 2) -> dict:
    """Cluster-level matching of predicted to true calcification clusters.

    truth_centroids / pred_centroids: [K, 2] (y, x) px centroids of the true and predicted
    calcifications (as returned by :func:`match_objects`); pairs: its calcification-level pairs
    (truth_i, pred_j). Clusters are formed on each side by :func:`clusters_of`. A true and a predicted
    cluster may match when their centroids lie within ``dist_mm`` or when at least ``min_shared`` of
    their members are matched calcification pairs; the matching is one-to-one (maximum bipartite).
    Returns ``{"tp", "fn", "fp", "n_truth", "n_pred", "pairs", "truth_clusters", "pred_clusters"}``.
    """
    if not spacing_mm > 0:
        raise ValueError(f"spacing_mm must be > 0, got {spacing_mm}")
    if not (isinstance(min_shared, int) and min_shared >= 1):
        raise ValueError(f"min_shared must be an integer >= 1, got {min_shared!r}")
    tc = clusters_of(truth_centroids, spacing_mm, link_mm, min_members, area_cm2)
    pc = clusters_of(pred_centroids, spacing_mm, link_mm, min_members, area_cm2)
    n_t, n_p = len(tc), len(pc)
    out = {"n_truth": n_t, "n_pred": n_p, "truth_clusters": tc, "pred_clusters": pc}
    if n_t == 0 or n_p == 0:
        return {"tp": 0, "fn": n_t, "fp": n_p, "pairs": [], **out}
    t_of = np.full(len(np.asarray(truth_centroids).reshape(-1, 2)), -1)
    p_of = np.full(len(np.asarray(pred_centroids).reshape(-1, 2)), -1)
    for k, c in enumerate(tc):
        t_of[c["members"]] = k
    for k, c in enumerate(pc):
        p_of[c["members"]] = k
    shared = np.zeros((n_t, n_p), dtype=np.int64)
    for i, j in pairs:
        if t_of[i] >= 0 and p_of[j] >= 0:
            shared[t_of[i], p_of[j]] += 1
    tcen = np.array([[c["y"], c["x"]] for c in tc])
    pcen = np.array([[c["y"], c["x"]] for c in pc])
    d2 = ((tcen[:, None, :] - pcen[None, :, :]) ** 2).sum(-1) * spacing_mm**2
    ok = (d2 <= dist_mm**2) | (shared >= min_shared)
    rows, cols = np.nonzero(ok)
    graph = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_t, n_p))
    m = maximum_bipartite_matching(graph, perm_type="column")
    cp = [(int(i), int(j)) for i, j in enumerate(m) if j >= 0]
    return {"tp": len(cp), "fn": n_t - len(cp), "fp": n_p - len(cp), "pairs": cp, **out}
