"""The model-card metrics against hand-made oracles with known answers."""
import numpy as np
import torch
from scipy import ndimage

from mcgr.train.evaluate import evaluate_segmentor


class _Oracle(torch.nn.Module):
    """Logit +20 where the input image is 1, -20 where it is 0 (the image *is* the answer)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(20.0))

    def forward(self, x):
        return self.w * x


def _discs(n, centres, r=2.0, size=64):
    yy, xx = np.mgrid[0:size, 0:size]
    m = np.zeros((n, 1, size, size), np.float32)
    for b, cs in enumerate(centres):
        for cy, cx in cs:
            m[b, 0][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    return torch.from_numpy(m)


def test_perfect_prediction_scores_one():
    mask = _discs(3, [[(10, 10), (40, 30)], [], [(20, 50)]])
    r = evaluate_segmentor(_Oracle(), {"image": mask, "mask": mask})
    assert r["pixel_dice"] == 1.0
    assert r["sensitivity_at_0.5fp"] == 1.0 and r["fp_per_patch_at_threshold"] == 0.0
    assert r["n_calcifications"] == 3


def test_missed_and_false_objects_counted():
    truth = _discs(2, [[(10, 10), (40, 30), (50, 50)], [(20, 20)]])
    # predicts two of four calcifications, plus one false object on patch 1 and a shifted one
    pred = _discs(2, [[(10, 10), (40, 36)], [(20, 20), (55, 5)]])
    r = evaluate_segmentor(_Oracle(), {"image": pred, "mask": truth})
    inter = float((pred * truth).sum())
    assert abs(r["pixel_dice"] - 2 * inter / float(pred.sum() + truth.sum())) < 1e-9
    # (40, 36) is 6 px = 0.42 mm from (40, 30) and its disc does not overlap: a miss and an FP;
    # FPs = 2 over 2 patches = 1 per patch > 0.5, so no threshold meets the budget
    assert r["sensitivity_at_0.5fp"] == 0.0
    assert r["froc_at_rates"]["1.0"] == 0.5
    lab, n = ndimage.label(truth[0, 0].numpy())
    assert r["n_calcifications"] == n + 1
