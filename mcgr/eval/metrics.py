"""Pixel metrics: Dice, IoU, Precision, Recall, FNR, Specificity, balanced accuracy, G-mean.

Definitions (tp, fp, fn, tn counted over the image, or within ``region`` such as the breast mask):

* Dice = 2 tp / (2 tp + fp + fn); IoU = tp / (tp + fp + fn). Both are 1 when truth and prediction
  are both empty (nothing to find, nothing claimed).
* Recall = tp / (tp + fn) and FNR = 1 - Recall: undefined (NaN) when the truth is empty.
* Precision = tp / (tp + fp): undefined (NaN) when the prediction is empty.
* Specificity = tn / (tn + fp): NaN without negatives.
* Balanced accuracy = (Recall + Specificity) / 2; G-mean = sqrt(Recall * Specificity).

Pooled ("micro") figures add the counts over a dataset first; per-image ("macro") figures average the
per-image values, skipping undefined ones, with the standard deviation and a percentile bootstrap 95%
confidence interval over images.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

METRICS = ("dice", "iou", "precision", "recall", "fnr", "specificity", "balanced_accuracy", "g_mean")


def _np_bool(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype != bool:
        if not np.all((a == 0) | (a == 1)):
            raise ValueError(f"{name} must be boolean or 0/1, got values outside {{0, 1}}")
        a = a.astype(bool)
    return a


@dataclass
class PixelCounts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: "PixelCounts") -> "PixelCounts":
        return PixelCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    def as_dict(self) -> dict:
        return asdict(self)


def pixel_counts(pred, truth, region=None) -> PixelCounts:
    """Confusion counts of boolean masks ``pred`` and ``truth`` (same shape), within ``region`` if given."""
    p = _np_bool(pred, "pred")
    t = _np_bool(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred and truth must have the same shape, got {p.shape} and {t.shape}")
    if region is not None:
        r = _np_bool(region, "region")
        if r.shape != p.shape:
            raise ValueError(f"region must have the prediction's shape {p.shape}, got {r.shape}")
        p, t = p[r], t[r]
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    tn = int(p.size - tp - fp - fn)
    return PixelCounts(tp, fp, fn, tn)


def _div(a: float, b: float) -> float:
    return a / b if b else math.nan


def metrics_from_counts(c: PixelCounts) -> dict:
    tp, fp, fn, tn = c.tp, c.fp, c.fn, c.tn
    empty = tp + fp + fn == 0
    recall = _div(tp, tp + fn)
    spec = _div(tn, tn + fp)
    return {
        "dice": 1.0 if empty else 2 * tp / (2 * tp + fp + fn),
        "iou": 1.0 if empty else tp / (tp + fp + fn),
        "precision": _div(tp, tp + fp),
        "recall": recall,
        "fnr": 1.0 - recall if not math.isnan(recall) else math.nan,
        "specificity": spec,
        "balanced_accuracy": (recall + spec) / 2,
        "g_mean": math.sqrt(recall * spec) if not (math.isnan(recall) or math.isnan(spec)) else math.nan,
    }


def pixel_metrics(pred, truth, region=None) -> dict:
    """All pixel metrics of one image (see the module docstring for the definitions)."""
    return metrics_from_counts(pixel_counts(pred, truth, region))


def bootstrap_ci(values, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (NaNs dropped); (nan, nan) when empty."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    if v.size == 1:
        return float(v[0]), float(v[0])
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def aggregate(per_image_counts: list[PixelCounts], n_boot: int = 2000, seed: int = 0) -> dict:
    """Pooled (micro) and per-image (macro: mean, std, 95% CI, n defined) metrics over a dataset."""
    total = PixelCounts()
    for c in per_image_counts:
        total = total + c
    per = [metrics_from_counts(c) for c in per_image_counts]
    macro = {}
    for m in METRICS:
        vals = [p[m] for p in per]
        ok = [x for x in vals if not math.isnan(x)]
        lo, hi = bootstrap_ci(vals, n_boot=n_boot, seed=seed)
        macro[m] = {
            "mean": float(np.mean(ok)) if ok else math.nan,
            "std": float(np.std(ok, ddof=1)) if len(ok) > 1 else (0.0 if ok else math.nan),
            "ci95": [lo, hi],
            "n": len(ok),
        }
    return {"micro": metrics_from_counts(total), "macro": macro, "counts": total.as_dict(), "images": len(per_image_counts)}
