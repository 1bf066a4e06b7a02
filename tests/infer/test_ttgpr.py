"""TT-GPR's seeding on the canvas against a scipy reference, and the seed region."""
import math

import numpy as np
import pytest
import torch
from archive_factory import make_models
from helpers import spy_run_field_seeds
from scipy import ndimage

from mcgr.ops._tiling import tile_grid
from mcgr.infer.seeds import seed_points
from mcgr.infer.ttgpr import TTGPRConfig, run_field
from mcgr.infer.ttgpr_config import SEED_RADIUS
from mcgr.models import load_model


def _scipy_seeds(a: np.ndarray, tau: float, r: int) -> set:
    peak = (a >= ndimage.maximum_filter(a, size=2 * r + 1, mode="constant", cval=-np.inf)) & (a >= tau)
    return {(int(y), int(x)) for y, x in zip(*np.nonzero(peak))}


def test_seed_points_are_the_local_maxima_above_tau_strongest_first():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 40, 36, generator=g)
    got = seed_points(a, 0.6, 2, max_seeds=1000)
    for p in range(2):
        want = _scipy_seeds(a[p].numpy(), 0.6, 2)
        pts = got[p].long()
        assert {(int(y), int(x)) for y, x in pts.tolist()} == want
        vals = a[p][pts[:, 0], pts[:, 1]]
        assert bool((vals[:-1] >= vals[1:]).all())  # strongest first
    capped = seed_points(a, 0.6, 2, max_seeds=3)
    assert all(torch.equal(c, s[:3]) for c, s in zip(capped, got))


def test_seeds_lie_only_in_the_seed_region(tmp_path):
    root = make_models(tmp_path / "m")
    seg, gen = load_model(root / "seg", kind="seg"), load_model(root / "rf", kind="rf")
    g = torch.Generator().manual_seed(1)
    img = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 200, 180, generator=g), 5, 1, 2)[0, 0]
    grid = tile_grid((200, 180), tile=128, overlap=0.25)
    cfg = TTGPRConfig(tau_seed=0.05, projections=1, steps=1, refine_steps=2, window=32, max_seeds=1000)
    full = run_field(img, grid, seg, gen, cfg, backend="reference")
    region = torch.zeros(200, 180, dtype=torch.bool)
    region[50:150, 40:120] = True
    part = run_field(img, grid, seg, gen, cfg, backend="reference", seed_region=region)
    # the seeds are the base canvas's logit maxima above logit(tau) (maxima of the whole canvas: the
    # region's border makes none of its own), counted inside the region only
    z = full.base_logits.numpy()
    want = _scipy_seeds(z, math.log(0.05 / 0.95), SEED_RADIUS)
    assert full.seeds == len(want) > 0
    assert part.seeds == sum(1 for y, x in want if region[y, x])
    assert 0 < part.seeds < full.seeds
    with pytest.raises(ValueError, match="seed_region must be"):
        run_field(img, grid, seg, gen, cfg, seed_region=region[:10])


class _StepSeg(torch.nn.Module):
    """Logit +15 on bright pixels (I > 0.9), else -15 + 55 I (a faint spot at 0.2 reads -4)."""

    def forward(self, x):  # x = 2 I - 1
        i = (x + 1) / 2
        return torch.where(i > 0.9, torch.full_like(x, 15.0), -15.0 + 55.0 * i)


class _BrightGen(torch.nn.Module):
    """One Euler step from t0 lands on the all-ones image: renders a calcification everywhere."""
    cfg = type("C", (), {"input_scale": "image"})()

    def forward(self, x, t):
        return (1.0 - x[:, :1]) / (1.0 - t.view(-1, 1, 1, 1))


def test_given_seeds_replace_the_maxima_and_map_from_the_input_grid(tmp_path, monkeypatch):
    from mcgr.infer.pipeline import Pipeline

    root = make_models(tmp_path / "m")
    seg, gen = load_model(root / "seg", kind="seg"), load_model(root / "rf", kind="rf")
    g = torch.Generator().manual_seed(2)
    img = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 150, 130, generator=g), 5, 1, 2)[0, 0]
    seen = spy_run_field_seeds(monkeypatch)
    cfg = TTGPRConfig(projections=1, steps=1, refine_steps=2, window=32)
    pipe = Pipeline(seg, gen, config=cfg, autocast=False, border_pad=32)
    pts = [[10.0, 20.0], [149.0, 0.0], [75.5, 64.0]]
    r = pipe(img, spacing=0.14, seeds=pts, breast_mask=torch.ones(150, 130, dtype=torch.bool))
    # 0.14 mm -> the 0.07 mm model grid (300 x 260) doubles each side; corner-aligned centres map
    # as (i + 0.5) * 2 - 0.5, then shift by the 32 px reflect padding
    want = torch.tensor([[20.5, 40.5], [298.5, 0.5], [151.5, 128.5]]) + 32
    assert torch.allclose(seen["seeds"], want)
    assert r.seeds == 3
    with pytest.raises(ValueError, match="seeds must be"):
        pipe(img, spacing=0.14, seeds=[[150.0, 3.0]])
    with pytest.raises(ValueError, match="seeds must be"):
        pipe(img, spacing=0.14, seeds=[[float("nan"), 3.0]])


def test_max_filter_equals_scipy_and_max_pool():
    from mcgr.infer.seeds import _max_filter

    a = torch.randn(2, 37, 29, generator=torch.Generator().manual_seed(4))
    for r in (1, 3):
        got = _max_filter(a, r)
        want = np.stack([ndimage.maximum_filter(x, size=2 * r + 1, mode="constant", cval=-np.inf) for x in a.numpy()])
        np.testing.assert_array_equal(got.numpy(), want)
        assert torch.equal(got, torch.nn.functional.max_pool2d(a[:, None], 2 * r + 1, 1, r)[:, 0])


def test_an_image_conditioned_generator_gets_the_window_it_projects():
    # a stand-in generator that renders exactly its conditioning channel (the observed window in
    # flow space): every projection is then the tile itself, so q is the base probability and
    # TT-GPR must leave the logits where they were
    from mcgr.ops import RefineParams

    seen = []

    class Seg(torch.nn.Module):
        def forward(self, x):
            return 30.0 * (x - 0.0)  # bright spot -> positive logits

    class Gen(torch.nn.Module):
        cfg = type("C", (), {"input_scale": "image", "image_condition": True})()

        def forward(self, x, t):
            assert x.shape[1] == 3
            seen.append(x[:, 2:3].clone())
            return (x[:, 2:3] - x[:, :1]) / (1.0 - t.view(-1, 1, 1, 1))

    rng = np.random.default_rng(0)
    img = torch.from_numpy((0.3 + 0.02 * rng.standard_normal((64, 64))).astype(np.float32))
    img[20, 30] = 0.55
    grid = tile_grid((64, 64), tile=64, overlap=0.25)
    cfg = TTGPRConfig(tau_seed=0.1, projections=2, steps=1, refine_steps=50, window=0,
                      refine=RefineParams(eta=1.0, lambda_a=0.05, lambda_e=0.0, lambda_o=0.0))
    r = run_field(img, grid, Seg(), Gen(), cfg, backend="reference")
    assert r.seeds >= 1 and seen
    for s in seen:  # both projections of the one tile see the tile as 2 I - 1
        torch.testing.assert_close(s[:, 0], (2 * img - 1).expand(s.shape[0], 64, 64))
    torch.testing.assert_close(r.logits, r.base_logits, atol=2e-3, rtol=0)


def _spot_field(size=96):
    img = torch.zeros(size, size)
    img[40, 50] = 0.2
    img[70, 20] = 0.2
    return img, tile_grid((size, size), tile=64, overlap=0.25)


def test_a_projector_replaces_the_rf_projections():
    from mcgr.ops import RefineParams

    img, grid = _spot_field()
    cfg = TTGPRConfig(tau_seed=0.01, projections=3, steps=1, refine_steps=30, window=32,
                      refine=RefineParams(eta=1.0, lambda_a=0.05, lambda_e=0.0, lambda_o=0.1))
    calls = []

    def bright(windows, origins, seeds):
        for w, (y0, x0), s in zip(windows, origins, seeds):
            assert torch.equal(w[0], img[y0 : y0 + w.shape[-2], x0 : x0 + w.shape[-1]])  # the canvas crop
            assert bool(((s >= 0) & (s <= w.shape[-1] - 1)).all()) and s.shape[0] >= 1
        calls.append(len(origins))
        return torch.ones_like(windows)  # one draw

    want = run_field(img, grid, _StepSeg(), _BrightGen(), cfg, backend="reference")
    got = run_field(img, grid, _StepSeg(), None, cfg, backend="reference", projector=bright)
    assert sum(calls) == 2 and got.seeds == want.seeds == 2
    torch.testing.assert_close(got.logits, want.logits, atol=1e-5, rtol=0)
    assert float(got.uncertainty.abs().max()) == 0.0  # one draw: no spread
    assert got.logits.is_inference() and want.logits.is_inference()  # no autograd graph on either path

    # two draws, one bright and one dark: q = 1/2 in the windows and the spread 1/2 (population std)
    def half(windows, origins, seeds):
        return torch.stack([torch.ones_like(windows), torch.zeros_like(windows)])

    two = run_field(img, grid, _StepSeg(), None, cfg, backend="reference", projector=half)
    assert float(two.uncertainty[40, 50]) == pytest.approx(0.5, abs=1e-4)
    assert float(two.uncertainty[0, 95]) == 0.0  # outside every window

    with pytest.raises(ValueError, match="projector must return"):
        run_field(img, grid, _StepSeg(), None, cfg, backend="reference",
                  projector=lambda w, o, s: torch.ones(2, 1, 8, 8))
    with pytest.raises(ValueError, match="NaN"):
        run_field(img, grid, _StepSeg(), None, cfg, backend="reference",
                  projector=lambda w, o, s: torch.full_like(w, float("nan")))


def test_the_pipeline_gives_a_projector_origins_in_input_pixels():
    from mcgr.infer.pipeline import Pipeline

    img, _ = _spot_field(150)
    seen = []

    def project(windows, origins, seeds):
        pad = torch.nn.functional.pad(img[None, None], (32,) * 4, mode="reflect")[0, 0]
        for w, (y0, x0) in zip(windows, origins):
            seen.append((y0, x0))
            assert torch.equal(w[0], pad[y0 + 32 : y0 + 32 + w.shape[-2], x0 + 32 : x0 + 32 + w.shape[-1]])
        return windows

    cfg = TTGPRConfig(tau_seed=0.01, projections=1, steps=1, refine_steps=2, window=32)
    pipe = Pipeline(_StepSeg(), _BrightGen(), config=cfg, autocast=False, border_pad=32, skin_margin_mm=0.0,
                    border_margin_mm=0.0, drop_scan_lines=False)
    pipe(img, spacing=0.07, breast_mask=torch.ones(150, 150, dtype=torch.bool), projector=project)
    # two spots, each window centred near its seed (clamped to the canvas)
    assert len(seen) == 2 and all(abs(y0 + 16 - sy) <= 8 and abs(x0 + 16 - sx) <= 8
                                  for (y0, x0), (sy, sx) in zip(sorted(seen), [(40, 50), (70, 20)]))


def test_verify_rule_detections_keep_the_base_probability_and_the_generator_vote():
    """refine_rule "verify" through the pipeline: a projector that returns each window as it is
    makes q = p at every pixel a window covers (the segmentor is pointwise), so the written score
    is p^2 there, and each detection's base_prob / generator_vote is the maximum of p over its
    pixels (closed form on the spot's known intensity)."""
    from mcgr.infer.pipeline import Pipeline

    img = torch.zeros(150, 150)
    img[60:63, 70:73] = 0.3   # logit -15 + 55 x 0.3 = 1.5: p = sigmoid(1.5) = 0.8176 on 9 px
    img[61, 71] = 0.32        # the peak: logit 2.6, p 0.9309
    cfg = TTGPRConfig(refine_rule="verify", tau_seed=0.05, projections=1, window=32, threshold=0.5)
    pipe = Pipeline(_StepSeg(), None, config=cfg, autocast=False, border_pad=32, skin_margin_mm=0.0,
                    border_margin_mm=0.0, drop_scan_lines=False)
    res = pipe(img, spacing=0.07, breast_mask=torch.ones(150, 150, dtype=torch.bool),
               projector=lambda windows, origins, seeds: windows)
    p_peak, p_ring = 1 / (1 + math.exp(-2.6)), 1 / (1 + math.exp(-1.5))
    assert float(res.base_prob[61, 71]) == pytest.approx(p_peak, abs=1e-4)
    assert float(res.prob[61, 71]) == pytest.approx(p_peak ** 2, abs=1e-4)
    assert float(res.prob[60, 70]) == pytest.approx(p_ring ** 2, abs=1e-4)
    assert len(res.detections) == 1
    d = res.detections[0]
    assert d["base_prob"] == pytest.approx(p_peak, abs=1e-4)
    assert d["generator_vote"] == pytest.approx(p_peak, abs=1e-4)
    assert d["peak_prob"] == pytest.approx(p_peak ** 2, abs=1e-4)
    base_only = pipe(img, spacing=0.07, breast_mask=torch.ones(150, 150, dtype=torch.bool), refine=False)
    assert "generator_vote" not in base_only.detections[0]  # without TT-GPR there is no vote to report
