"""Seed proposals from image evidence against closed forms, and TT-GPR's "add" refinement rule."""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from mcgr.infer.proposals import evidence_map, propose_seeds
from mcgr.infer.seeds import field_seeds, keep_found
from mcgr.infer.ttgpr import TTGPRConfig, run_field
from mcgr.ops._tiling import tile_grid


def _blob(shape, cy, cx, amp, s):
    yy, xx = torch.meshgrid(torch.arange(shape[0], dtype=torch.float32), torch.arange(shape[1], dtype=torch.float32),
                            indexing="ij")
    return amp * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))


def _dog_snr(amp, s, sigma, noise, k=1.6):
    """Closed form: a Gaussian blob amp exp(-r^2 / 2 s^2) under the scale-normalised DoG at its
    centre, over the DoG's standard deviation in white noise (integral g_a g_b = 1 / 2 pi (a^2 + b^2))."""
    peak = amp * s * s * (1 / (s * s + sigma * sigma) - 1 / (s * s + k * k * sigma * sigma)) / (k - 1)
    var = (1 / (4 * math.pi * sigma ** 2) + 1 / (4 * math.pi * k * k * sigma ** 2)
           - 2 / (2 * math.pi * (sigma ** 2 + k * k * sigma ** 2))) / (k - 1) ** 2
    return peak / (noise * math.sqrt(var))


def test_a_blob_in_white_noise_has_the_closed_form_snr_and_is_ranked_first():
    g = torch.Generator().manual_seed(0)
    shape, noise = (384, 320), 0.01
    img = 0.5 + noise * torch.randn(shape, generator=g) + _blob(shape, 190, 150, 0.05, 2.0)
    ev = evidence_map(img, filters=("dog",), sigmas=[2.0])
    want = _dog_snr(0.05, 2.0, 2.0, noise)  # ~15
    assert float(ev[188:193, 148:153].max()) == pytest.approx(want, rel=0.15)
    # the segmentor sees nothing (flat logits): the image proposes, and the blob comes first
    seeds = propose_seeds(torch.full(shape, -8.0), evidence_map(img), budget=3, cell=128, floor=4.0)
    assert seeds.shape[0] >= 1
    assert float(torch.dist(seeds[0], torch.tensor([190.0, 150.0]))) <= 1.5


def test_flat_and_pure_noise_images_propose_nothing_above_the_floor():
    flat = torch.full((200, 240), 0.37)
    ev = evidence_map(flat)
    assert float(ev.max()) < 1.0
    assert propose_seeds(torch.full_like(flat, -10.0), ev, floor=4.0).shape[0] == 0
    # white noise: P(z > 6) ~ 1e-9 per pixel and scale, so none of 65536 px x 4 scales clears 6 sigma
    g = torch.Generator().manual_seed(3)
    noise = 0.5 + 0.01 * torch.randn(256, 256, generator=g)
    ev = evidence_map(noise, filters=("dog",))
    assert propose_seeds(torch.full_like(noise, -10.0), ev, floor=6.0).shape[0] == 0
    # but the segmentor's own confident maxima still seed (p >= tau), whatever the image says
    z = torch.full_like(flat, -10.0)
    z[50, 60] = 3.0
    s = propose_seeds(z, evidence_map(flat), tau=0.3)
    assert s.tolist() == [[50.0, 60.0]]


def test_the_budget_per_cell_and_the_total_cap_are_respected():
    g = torch.Generator().manual_seed(1)
    shape = (400, 400)
    img = 0.5 + 0.005 * torch.randn(shape, generator=g)
    pts = torch.randint(8, 392, (80, 2), generator=g)
    for y, x in pts.tolist():
        img += _blob(shape, y, x, 0.04, 1.5)
    ev = evidence_map(img)
    z = torch.full(shape, -10.0)
    for budget in (1, 3):
        s = propose_seeds(z, ev, budget=budget, cell=100, floor=4.0)
        cells = (s[:, 0] // 100).long() * 4 + (s[:, 1] // 100).long()
        counts = torch.bincount(cells, minlength=16)
        assert int(counts.max()) <= budget
        assert int((counts == budget).sum()) >= 12  # 80 blobs over 16 cells: nearly every cell is full
    assert propose_seeds(z, ev, budget=3, cell=100, floor=4.0, max_total=5).shape[0] == 5


def test_the_fused_rank_trades_the_logits_against_the_evidence():
    g = torch.Generator().manual_seed(2)
    shape = (256, 256)
    img = 0.5 + 0.01 * torch.randn(shape, generator=g) + _blob(shape, 60, 60, 0.08, 2.0) + _blob(shape, 180, 190, 0.03, 2.0)
    ev = evidence_map(img)
    z = torch.full(shape, -10.0)
    z[180, 190] = 2.0  # the segmentor is sure of the fainter blob only
    by_logit = propose_seeds(z, ev, budget=1, cell=256, weight=1.0)
    by_image = propose_seeds(z, ev, budget=1, cell=256, weight=0.0)
    assert by_logit.tolist() == [[180.0, 190.0]]
    assert float(torch.dist(by_image[0], torch.tensor([60.0, 60.0]))) <= 1.5
    # a detection the base already has is not seeded when excluded
    ex = torch.zeros(shape, dtype=torch.bool)
    ex[50:71, 50:71] = True
    s = propose_seeds(z, ev, budget=8, cell=256, exclude=ex)
    assert not bool(((s[:, 0] >= 50) & (s[:, 0] <= 70) & (s[:, 1] >= 50) & (s[:, 1] <= 70)).any())


def test_bad_arguments_are_one_line_errors():
    z = torch.zeros(10, 10)
    with pytest.raises(ValueError, match="filters"):
        evidence_map(z, filters=("wavelet",))
    with pytest.raises(ValueError, match="budget"):
        propose_seeds(z, z, budget=-1)
    with pytest.raises(ValueError, match="one shape"):
        propose_seeds(z, torch.zeros(9, 10))
    with pytest.raises(ValueError, match="proposer"):
        TTGPRConfig(proposer="image").validated()
    with pytest.raises(ValueError, match="refine_rule"):
        TTGPRConfig(refine_rule="grow").validated()


def _components(mask: np.ndarray) -> list:
    lab, n = ndimage.label(mask, structure=np.ones((3, 3)))
    return [frozenset(map(tuple, np.argwhere(lab == i))) for i in range(1, n + 1)]


def test_keep_found_leaves_every_base_component_unchanged_pixel_for_pixel():
    g = torch.Generator().manual_seed(5)
    base = torch.nn.functional.avg_pool2d(torch.randn(1, 1, 96, 96, generator=g), 5, 1, 2)[0, 0] * 12 - 3
    refined = base + 4 * torch.randn(96, 96, generator=g)  # grows, erodes, splits and adds
    out = keep_found(refined, base, 0.5)
    b, o = base.numpy() >= 0, out.numpy() >= 0
    base_comps = _components(b)
    out_comps = _components(o)
    assert base_comps and all(c in out_comps for c in base_comps)  # each base component, exactly
    new = [c for c in out_comps if c not in base_comps]
    assert new  # something was added
    grown = ndimage.binary_dilation(b, structure=np.ones((3, 3)))
    assert not any(grown[tuple(np.array(list(c)).T)].any() for c in new)  # no new one touches a base one
    # away from the base components the refined logits are kept
    far = ~ndimage.binary_dilation(b, structure=np.ones((3, 3)))
    np.testing.assert_array_equal(out.numpy()[far], refined.numpy()[far])


class _StepSeg(torch.nn.Module):
    """Logit +15 on bright pixels (I > 0.9), else -15 + 25 I."""

    def forward(self, x):
        i = (x + 1) / 2
        return torch.where(i > 0.9, torch.full_like(x, 15.0), -15.0 + 25.0 * i)


class _BrightGen(torch.nn.Module):
    """One Euler step from t0 lands on the all-ones image: renders a calcification everywhere."""
    cfg = type("C", (), {"input_scale": "image"})()

    def forward(self, x, t):
        return (1.0 - x[:, :1]) / (1.0 - t.view(-1, 1, 1, 1))


def test_fused_seeds_reach_a_miss_and_add_keeps_the_found_one_whole():
    from mcgr.ops import RefineParams

    g = torch.Generator().manual_seed(7)
    img = (0.3 + 0.005 * torch.randn(128, 128, generator=g)).clamp(0, 1)
    img[40:43, 40:43] = 0.95  # found by the base (logit +15)
    img += _blob((128, 128), 90, 80, 0.06, 1.5)  # missed: logit ~ -6, but 6+ sigmas in the image
    grid = tile_grid((128, 128), tile=128, overlap=0.25)
    refine = RefineParams(eta=1.0, lambda_a=0.0, lambda_e=0.0, lambda_o=0.0)
    common = dict(projections=1, steps=1, refine_steps=60, window=32, refine=refine)
    cur = run_field(img, grid, _StepSeg(), _BrightGen(), TTGPRConfig(**common), backend="reference")
    new = run_field(img, grid, _StepSeg(), _BrightGen(),
                    TTGPRConfig(proposer="fused", refine_rule="add", seeds_per_tile=2, **common), backend="reference")
    base = cur.base_logits.numpy() >= 0
    assert float(torch.sigmoid(cur.logits[90, 80])) < 0.5  # the logit maxima never reach the miss
    assert float(torch.sigmoid(new.logits[90, 80])) > 0.5  # the image's evidence seeds it
    got = new.logits.numpy() >= 0
    assert (cur.logits.numpy() >= 0).sum() > base.sum()  # the free rule grows the found one
    for c in _components(base):
        assert c in _components(got)
    seeds = field_seeds(cur.base_logits, img, torch.ones(128, 128, dtype=torch.bool),
                        TTGPRConfig(proposer="fused", refine_rule="add", seeds_per_tile=2), grid,
                        base_logits=cur.base_logits)
    assert not bool(((seeds[:, 0] - 41).abs() <= 2).logical_and((seeds[:, 1] - 41).abs() <= 2).any())


def test_the_acceptance_gate_adds_only_where_the_projections_agree():
    from mcgr.ops import RefineParams

    g = torch.Generator().manual_seed(8)
    img = (0.3 + 0.005 * torch.randn(128, 128, generator=g)).clamp(0, 1)
    img += _blob((128, 128), 90, 80, 0.06, 1.5)
    grid = tile_grid((128, 128), tile=128, overlap=0.25)
    refine = RefineParams(eta=1.0, lambda_a=0.0, lambda_e=0.0, lambda_o=0.0)

    def half(windows, origins, seeds):  # two draws, one renders a calcification and one not: q = 1/2
        return torch.stack([torch.ones_like(windows), torch.zeros_like(windows)])

    def run(accept_q):
        cfg = TTGPRConfig(proposer="fused", refine_rule="add", accept_q=accept_q, seeds_per_tile=2, projections=2,
                          steps=1, refine_steps=60, window=32, refine=refine, surrogate="mean")
        return run_field(img, grid, _StepSeg(), None, cfg, backend="reference", projector=half)

    for accept_q, rises in ((0.4, True), (0.9, False)):
        r = run(accept_q)
        base = r.base_logits
        # refined towards q = 1/2 (logit 0) from far below: the pixel rises only when the gate lets it
        assert (float(r.logits[90, 80]) > float(base[90, 80]) + 1.0) is rises
        if not rises:  # the gate closed: no pixel anywhere rose above its base logit
            assert bool((r.logits <= base + 1e-5).all())
    with pytest.raises(ValueError, match="accept_q"):
        TTGPRConfig(accept_q=1.0).validated()
