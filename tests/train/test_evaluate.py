"""The model-card metrics against hand-made oracles with known answers."""
import numpy as np
import pytest
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


def test_duplicates_rule_and_cnr_bins_in_the_card():
    from mcgr.train.evaluate import _found_by_cnr

    truth = _discs(1, [[(10, 10), (40, 40)]], r=3.0)
    pred = truth.clone()
    pred[0, 0, 40, 44] = 1  # a 1-px spur joined to the second disc: same component, no duplicate
    pred[0, 0, 8:13, 12] = 0  # cuts column 12 of the first disc: its pixel (10, 13) becomes a fragment
    r = evaluate_segmentor(_Oracle(), {"image": pred, "mask": truth})
    # strict: the fragment is a false positive (1 per patch > 0.5); LUNA16: a duplicate of a found one
    assert r["sensitivity_at_0.5fp"] == 0.0
    assert r["duplicates_ignored"]["sensitivity_at_0.5fp"] == 1.0
    assert r["duplicates_ignored"]["fp_per_patch_at_threshold"] == 0.0
    # per-bin fractions against a hand count: CNRs 2.5 (found), 5 (missed), 12 (found), 12 (found)
    t = _discs(2, [[(10, 10), (40, 40)], [(20, 20), (50, 50)]])[:, 0].numpy() > 0
    p = t.copy()
    p[0][35:46, 35:46] = False
    bins = _found_by_cnr(list(p.astype(float)), list(t), [np.array([2.5, 5.0]), np.array([12.0, 12.0])], 0.07)
    assert bins["[0, 3)"] == {"n": 1, "found": 1.0}
    assert bins["[4, 6)"] == {"n": 1, "found": 0.0}
    assert bins["[10, inf)"] == {"n": 2, "found": 1.0}
    assert bins["[3, 4)"] == {"n": 0, "found": None}


def test_generator_card_reads_zero_for_a_copying_generator_and_one_for_a_painting_one():
    # stand-in generators with closed-form projections (one Euler step lands on the target):
    # "copy" renders the observed patch (its conditioning channel), so q = p0 and every rise is 0;
    # "paint" renders a bright image wherever the seed map is on, so the segmentor says ~1 at every
    # seed and the rise is 1 - p0 there. The segmentor is a closed form too.
    import torch

    from mcgr.synth.dataset import validation_set
    from mcgr.train.evaluate import evaluate_generator

    class Seg(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))  # the card reads the device from it

        def forward(self, x):  # x = 2 I - 1: bright pixels are calcifications
            return 40.0 * (x - 0.6)

    class Gen(torch.nn.Module):
        def __init__(self, mode):
            super().__init__()
            self.mode = mode
            self.unused = torch.nn.Parameter(torch.zeros(1))
            self.cfg = type("C", (), {"input_scale": "image", "image_condition": True})()

        def forward(self, x, t):
            xt, smap, y = x[:, :1], x[:, 1:2], x[:, 2:3]
            target = y if self.mode == "copy" else torch.where(smap > 0.5, torch.ones_like(y), y)
            return (target - xt) / (1 - t.view(-1, 1, 1, 1))

    val = validation_set(4, patch_size=64, seed=3)
    copy = evaluate_generator(Gen("copy"), Seg(), val, steps=1, draws=2)
    assert copy["n_true_seeds"] > 0 and copy["n_decoy_seeds"] > 0
    for k in ("rise_at_faint_true_seeds", "rise_at_decoy_seeds", "rise_at_all_true_seeds"):
        assert abs(copy[k]) < 1e-5, (k, copy[k])
    paint = evaluate_generator(Gen("paint"), Seg(), val, steps=1, draws=2)
    assert paint["rise_at_decoy_seeds"] == pytest.approx(1.0 - paint["p0_at_decoy_seeds"], abs=1e-3)
    assert paint["rise_at_faint_true_seeds"] == pytest.approx(1.0 - paint["p0_at_faint_true_seeds"], abs=1e-3)


def test_card_ideal_observer_finds_strong_calcifications_and_not_faint_ones():
    # white clutter (sigma 0.01) in 4 patches; a strong calcification (d' ~ 27) and one a tenth as
    # high (d' ~ 2.7, under the search threshold) in patch 0, a strong one in patch 2
    rng = np.random.default_rng(0)
    size = 256
    yy, xx = np.mgrid[0:size, 0:size]
    signal = np.zeros((4, 1, size, size), np.float32)
    for b, cy, cx, amp in ((0, 15, 15, 0.1), (0, 145, 145, 0.01), (2, 130, 30, 0.1)):
        signal[b, 0] += amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.5 ** 2))
    mask = torch.from_numpy((signal > 0.5 * np.array([0.1, 0, 0.1, 0])[:, None, None, None]).astype(np.float32))
    mask[0, 0, 144:147, 144:147] = 1
    background = torch.full((4, 1, size, size), 0.4) + torch.from_numpy(rng.normal(0, 0.01, (4, 1, size, size)).astype(np.float32))
    sig = torch.from_numpy(signal)
    val = {"image": background + sig, "mask": mask, "background": background, "signal": sig}
    r = evaluate_segmentor(_Oracle(), val)["ideal_observer"]
    by = r["by_cnr"]
    assert sum(v["n"] for v in by.values()) == 3
    assert by["[10, inf)"]["n"] == 2 and by["[10, inf)"]["p_detect"] > 0.999
    assert 0.05 < r["sensitivity_at_0.5fp"] < 0.99
    assert by["[10, inf)"]["median_dprime"] == pytest.approx(
        float(np.sqrt((signal[2, 0] ** 2).sum())) / 0.01, rel=0.1)


def test_seg_card_reading_states_the_operating_points_and_the_yardstick():
    from mcgr.train.ship import seg_reading

    point = {"sensitivity_at_0.5fp": 0.61, "threshold_at_0.5fp": 0.95, "fp_per_patch_at_threshold": 0.375}
    none = {"sensitivity_at_0.5fp": 0.0, "threshold_at_0.5fp": None, "fp_per_patch_at_threshold": None}
    figures = {**none, "duplicates_ignored": point, "visible": {**none, "duplicates_ignored": {**point, "sensitivity_at_0.5fp": 0.88}},
               "found_at_0.5_by_cnr": {"[0, 3)": {"n": 4, "found": 0.25}, "[3, 4)": {"n": 0, "found": None}},
               "ideal_observer": {"sensitivity_at_0.5fp": 0.7, "visible_sensitivity_at_0.5fp": 0.93,
                                  "by_cnr": {"[0, 3)": {"n": 4, "p_detect": 0.1}, "[3, 4)": {"n": 0, "p_detect": None}}}}
    text = "\n".join(seg_reading(figures))
    assert "strict rule (every unmatched component a false positive): no threshold up to 0.999" in text
    assert "0.610 at p >= 0.95 (0.38 FP per patch) over all" in text and "0.880 at p >= 0.95" in text
    assert "CNR [0, 3) 0.25 (n 4)." in text and "[3, 4)" not in text  # empty bins left out
    assert "**0.700** of all calcifications and **0.930** of the visible ones" in text
