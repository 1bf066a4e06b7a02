import math

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from mcgr.eval.metrics import aggregate, pixel_counts, pixel_metrics


@pytest.mark.parametrize("seed", range(5))
def test_pixel_metrics_match_sklearn_confusion_matrix(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
    truth = rng.random(shape) < rng.uniform(0.05, 0.5)
    pred = rng.random(shape) < rng.uniform(0.05, 0.5)
    tn, fp, fn, tp = confusion_matrix(truth.ravel(), pred.ravel(), labels=[False, True]).ravel()
    m = pixel_metrics(pred, truth)
    if tp + fn:
        assert m["recall"] == pytest.approx(tp / (tp + fn))
        assert m["fnr"] == pytest.approx(fn / (tp + fn))
    if tp + fp + fn:
        assert m["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert m["iou"] == pytest.approx(tp / (tp + fp + fn))
    if tn + fp:
        assert m["specificity"] == pytest.approx(tn / (tn + fp))
    if tp + fn and tn + fp:
        sens, spec = tp / (tp + fn), tn / (tn + fp)
        assert m["balanced_accuracy"] == pytest.approx((sens + spec) / 2)
        assert m["g_mean"] == pytest.approx(math.sqrt(sens * spec))


def test_hand_computed_values_and_region():
    truth = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)
    pred = np.array([[1, 0, 1, 0], [0, 0, 0, 1]], dtype=bool)
    # tp=1 fp=2 fn=1 tn=4
    m = pixel_metrics(pred, truth)
    assert m["dice"] == pytest.approx(2 / 5)
    assert m["precision"] == pytest.approx(1 / 3)
    assert m["recall"] == pytest.approx(0.5)
    assert m["specificity"] == pytest.approx(4 / 6)
    region = np.array([[1, 1, 1, 0], [0, 0, 0, 0]], dtype=bool)  # excludes the fp at (1, 3)
    c = pixel_counts(pred, truth, region)
    assert (c.tp, c.fp, c.fn, c.tn) == (1, 1, 1, 0)


def test_empty_cases_are_defined():
    z = np.zeros((4, 4), dtype=bool)
    m = pixel_metrics(z, z)
    assert m["dice"] == 1.0 and m["iou"] == 1.0
    assert math.isnan(m["recall"]) and math.isnan(m["precision"])
    one = z.copy()
    one[0, 0] = True
    m = pixel_metrics(z, one)  # missed everything
    assert m["dice"] == 0.0 and m["recall"] == 0.0 and m["fnr"] == 1.0 and math.isnan(m["precision"])


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        pixel_counts(np.zeros((3, 3), bool), np.zeros((3, 4), bool))


def test_aggregate_micro_is_pooled_counts_and_macro_mean():
    rng = np.random.default_rng(7)
    counts, dices = [], []
    allp, allt = [], []
    for _ in range(6):
        t = rng.random((20, 20)) < 0.2
        p = rng.random((20, 20)) < 0.2
        counts.append(pixel_counts(p, t))
        dices.append(pixel_metrics(p, t)["dice"])
        allp.append(p.ravel())
        allt.append(t.ravel())
    agg = aggregate(counts, n_boot=200)
    pooled = pixel_metrics(np.concatenate(allp), np.concatenate(allt))
    assert agg["micro"]["dice"] == pytest.approx(pooled["dice"])
    assert agg["macro"]["dice"]["mean"] == pytest.approx(np.mean(dices))
    lo, hi = agg["macro"]["dice"]["ci95"]
    assert min(dices) <= lo <= np.mean(dices) <= hi <= max(dices)
