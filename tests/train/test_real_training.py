"""Fine-tuning from a start model, hard-negative mining and the leave-one-view-out injection."""
import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from mcgr.models import load_model
from mcgr.train.config import ConfigError, load_config
from mcgr.train.mine import _patches_at, mine_image
from mcgr.train.trainer import train
from mcgr.train.validate_real import _dice, inject_field


def test_patches_are_centred_on_the_detection():
    img = np.arange(100 * 120, dtype=np.float32).reshape(100, 120)
    for y, x in [(50, 60), (3, 4), (99, 119)]:
        p = _patches_at(img, [(y, x)], 16)[0]
        assert p.shape == (16, 16)
        assert p[8, 8] == img[y, x]


def test_real_data_keys_are_range_checked(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("preset: tiny\ndata: {real_fraction: 1.5}\n")
    with pytest.raises(ConfigError, match="real_fraction"):
        load_config("seg", f)
    f.write_text("preset: tiny\ndata: {anatomy: -0.1}\n")
    with pytest.raises(ConfigError, match="anatomy"):
        load_config("seg", f)


def test_init_starts_from_the_given_weights(tmp_path):
    cfg = load_config("seg", "tiny")
    cfg.optim.steps = 2
    train(cfg, tmp_path / "a", progress=False)
    src = load_model(tmp_path / "a" / "model", kind="seg")
    cfg2 = load_config("seg", "tiny")
    cfg2.optim.steps = 1
    cfg2.optim.lr = 1e-12  # one step that cannot move the weights measurably
    cfg2.optim.warmup = 0
    cfg2.init = str(tmp_path / "a" / "model")
    train(cfg2, tmp_path / "b", progress=False)
    got = load_model(tmp_path / "b" / "model", kind="seg")
    for (k, v), (k2, v2) in zip(src.state_dict().items(), got.state_dict().items()):
        assert k == k2
        torch.testing.assert_close(v2, v, atol=1e-6, rtol=0)
    import dataclasses

    cfg3 = load_config("seg", "tiny")
    cfg3.model = dataclasses.replace(cfg3.model, width=12)  # another architecture
    cfg3.init = str(tmp_path / "a" / "model")
    with pytest.raises(ValueError, match="architecture"):
        train(cfg3, tmp_path / "c", progress=False)


class _FakePipe:
    """Reports a detection at each given point (peak 0.9) and no cluster."""

    def __init__(self, points):
        self.points = points

    def __call__(self, image, spacing=None, refine=False):
        class R:
            pass

        r = R()
        r.detections = [{"y": float(y), "x": float(x), "peak_prob": 0.9, "area_px": 3} for y, x in self.points]
        r.clusters = []
        return r


def test_mine_image_keeps_at_most_per_image_and_skips_guarded_spots():
    img = np.random.default_rng(0).random((200, 200)).astype(np.float32)
    pts = [(20, 20), (100, 100), (150, 40), (60, 170)]
    guard = np.zeros((200, 200), bool)
    guard[100, 101] = True  # a calcification-like spot next to the second detection
    patches, recs, summary = mine_image(_FakePipe(pts), img, "x", 32, per_image=2, guard=guard)
    assert summary == {"source": "x", "detections": 4, "clusters": 0, "guarded_as_spots": 1, "kept": 2}
    assert [(r["y"], r["x"]) for r in recs] == [(20.0, 20.0), (150.0, 40.0)]
    assert patches[1][16, 16] == img[150, 40]


def test_injected_calcifications_lie_in_the_region():
    rng = np.random.default_rng(1)
    img = (0.4 + 0.05 * rng.standard_normal((600, 500))).clip(0, 1).astype(np.float32)
    region = np.zeros((600, 500), bool)
    region[100:500, 50:300] = True
    im, truth, bg, centres = inject_field(img, region, 900001)
    assert len(centres) >= 5
    c = centres.round().long()
    assert bool(torch.from_numpy(region)[c[:, 0], c[:, 1]].all())
    assert bool((im >= bg - 1e-6).all())  # calcifications only add attenuation
    lab, n = ndimage.label(truth.numpy())
    assert n >= 3
    assert not truth.numpy()[~ndimage.binary_dilation(region, iterations=20)].any()


def test_dice_closed_form():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0, :3] = True
    b[0, 1:] = True
    assert _dice(a, b) == pytest.approx(2 * 2 / 6)
    assert _dice(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0


def test_counts_by_threshold_and_operating_threshold():
    from mcgr.train.validate_real import counts_by_threshold, operating_threshold

    p = np.zeros((400, 400), np.float32)
    # three blobs 2 mm apart (a cluster at 0.5) with peaks 0.55, 0.75, 0.95, and one isolated at 0.92
    for (y, x), v in zip([(100, 100), (100, 130), (130, 100), (300, 300)], [0.55, 0.75, 0.95, 0.92]):
        p[y - 1:y + 2, x - 1:x + 2] = v
    c = counts_by_threshold(p, thresholds=(0.5, 0.7, 0.9, 0.97))
    assert c == {"0.5": {"detections": 4, "clusters": 1}, "0.7": {"detections": 3, "clusters": 0},
                 "0.9": {"detections": 2, "clusters": 0}, "0.97": {"detections": 0, "clusters": 0}}
    views = [counts_by_threshold(p)] * 3
    # 0.5 keeps the cluster, 0.6 and 0.7 three detections; 0.8 leaves the two strongest
    assert operating_threshold(views) == 0.8
    assert operating_threshold(views, max_clusters=1, max_detections=4) == 0.5


def test_hard_weight_scales_the_hard_patches_in_the_loss():
    from mcgr.models.segmentor import segmentation_loss
    from mcgr.train.trainer import _loss_weight

    cfg = load_config("seg", "tiny")
    cfg.loss.hard_weight = 4.0
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(3, 1, 8, 8, generator=g) < 0.2).float()
    batch = {"mask": mask, "image": torch.rand(3, 1, 8, 8, generator=g), "background": torch.rand(3, 1, 8, 8, generator=g),
             "hard": torch.tensor([False, True, False])}
    w = _loss_weight(batch, cfg)
    assert torch.equal(w[:, 0, 0, 0], torch.tensor([1.0, 4.0, 1.0])) and bool((w == w[:, :, :1, :1]).all())
    cfg.loss.hard_weight = 1.0
    assert _loss_weight(batch, cfg) is None
    logits = torch.randn(3, 1, 8, 8, generator=g)
    # the weighted BCE is the weighted mean: the hard patch counts four times
    l_w = segmentation_loss(logits, mask, 1.0, 0.0, weight=w)
    rep = torch.cat([logits[:1], logits[1:2].repeat(4, 1, 1, 1), logits[2:]]), torch.cat([mask[:1], mask[1:2].repeat(4, 1, 1, 1), mask[2:]])
    torch.testing.assert_close(l_w, segmentation_loss(rep[0], rep[1], 1.0, 0.0))


def test_weighted_soft_dice_counts_a_weight_w_pixel_as_w_copies():
    from mcgr.models.segmentor import soft_dice

    g = torch.Generator().manual_seed(1)
    prob = torch.rand(2, 1, 6, 6, generator=g)
    target = (torch.rand(2, 1, 6, 6, generator=g) < 0.3).float()
    w = torch.tensor([1.0, 4.0]).view(2, 1, 1, 1).expand(2, 1, 6, 6)
    rep_p = torch.cat([prob[:1]] + [prob[1:2]] * 4)
    rep_t = torch.cat([target[:1]] + [target[1:2]] * 4)
    torch.testing.assert_close(soft_dice(prob, target, weight=w), soft_dice(rep_p, rep_t))
    perfect = soft_dice(target, target, smooth=0.0, weight=w)
    assert float(perfect) == pytest.approx(1.0)
