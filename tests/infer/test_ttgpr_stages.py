"""TT-GPR's stages called alone (mcgr.infer.ttgpr): base pass, surrogate, refine gating, accept."""
import math

import pytest
import torch

from mcgr.infer.ttgpr import (Projections, SurrogateField, TTGPRConfig, accept, base_pass, keep_found, predict_batched,
                              propose, refine_stage, covered_region)
from mcgr.ops import gather_tiles, stitch
from mcgr.ops._tiling import gaussian_weights, tile_grid


def _pred(x):
    return 10 * x - 3  # a "segmentor" whose logits are known in closed form


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_predict_batched_equals_one_call(batch):
    x = torch.rand(7, 1, 9, 5, generator=torch.Generator().manual_seed(batch))
    torch.testing.assert_close(predict_batched(_pred, x, batch), _pred(x))


def test_base_pass_is_the_stitch_of_the_predictor_on_every_tile():
    img = torch.rand(150, 130, generator=torch.Generator().manual_seed(0))
    grid = tile_grid((150, 130), tile=64, overlap=0.25)
    bp = base_pass(img, grid, _pred, batch=2, backend="reference")
    Y = gather_tiles(img, grid, backend="reference")
    torch.testing.assert_close(bp.Z0, 10 * Y - 3)
    want = stitch(10 * Y - 3, grid, gaussian_weights(64), backend="reference")
    torch.testing.assert_close(bp.canvas, want)
    again = base_pass(img, grid, lambda x: 1 / 0, batch=2, backend="reference", base_tiles=bp.Z0)  # reused, not rerun
    torch.testing.assert_close(again.canvas, want)
    with pytest.raises(ValueError, match="base_tiles must be"):
        base_pass(img, grid, _pred, 2, "reference", base_tiles=bp.Z0[:1])


def test_surrogate_averages_overlapping_windows_and_marks_coverage():
    acc = SurrogateField((20, 20), "cpu")
    r = torch.zeros(2, 2, 1, 8, 8)
    r[0, 0], r[1, 0] = 0.2, 0.6  # window A: two draws
    r[:, 1] = 0.9                # window B
    wins = [(0, 0, 0, torch.zeros(1, 2)), (0, 4, 4, torch.zeros(1, 2))]
    acc.add(Projections(r, wins), lambda x: torch.logit(x.clamp(1e-6, 1 - 1e-6)))  # sigmoid(predictor) = identity
    s = acc.result()
    assert s.q[1, 1].item() == pytest.approx(0.4)          # A only: mean of 0.2 and 0.6
    assert s.u[1, 1].item() == pytest.approx(0.2)          # their spread
    assert s.q[6, 6].item() == pytest.approx((0.4 + 0.9) / 2)  # A and B overlap
    assert s.q[10, 10].item() == pytest.approx(0.9)
    assert not bool(s.covered[15, 15]) and s.q[15, 15].item() == 0.0


def test_refine_touches_only_tiles_a_window_covers():
    img = torch.rand(140, 140, generator=torch.Generator().manual_seed(2))
    grid = tile_grid((140, 140), tile=64, overlap=0.25)
    bp = base_pass(img, grid, _pred, 4, "reference")
    Z = bp.Z0.clone()
    cov = torch.zeros(140, 140, dtype=torch.bool)
    cov[5:20, 5:20] = True  # only the first tile
    from mcgr.infer.ttgpr import Surrogate

    sur = Surrogate(torch.where(cov, torch.ones(140, 140), torch.zeros(140, 140)), torch.zeros(140, 140), cov)
    gated = refine_stage(Z, bp.Z0, bp, sur, bp.canvas, TTGPRConfig(refine_steps=3), backend="reference")
    touches = [bool(((gather_tiles(cov.float(), grid, backend="reference")[p]) > 0).any()) for p in range(len(Z))]
    assert gated.tolist() == [p for p, t in enumerate(touches) if t]
    for p, t in enumerate(touches):
        if not t:
            assert torch.equal(Z[p], bp.Z0[p])
    assert not torch.equal(Z[gated[0]], bp.Z0[gated[0]])


def test_accept_add_rule_needs_the_vote_and_keeps_base_detections():
    base = torch.full((10, 10), -5.0)
    base[2, 2] = 5.0  # a base detection
    refined = torch.full((10, 10), 2.0)
    vote = torch.zeros(10, 10)
    vote[7:, 7:] = 0.95
    cfg = TTGPRConfig(refine_rule="add", accept_q=0.9, threshold=0.5)
    out = accept(refined, base, vote, cfg)
    assert out[8, 8].item() == 2.0                 # the projections voted yes: the rise is accepted
    assert out[5, 5].item() == -5.0                # no vote: never above the base logit
    torch.testing.assert_close(out[1:4, 1:4], base[1:4, 1:4])  # the base detection and its ring unchanged
    assert torch.equal(accept(refined, base, vote, TTGPRConfig(refine_rule="free")), refined)
    assert torch.equal(accept(refined, base, None, TTGPRConfig(accept_q=0.0)), keep_found(refined, base, 0.5))


def test_propose_given_seeds_windows_cover_them():
    img = torch.rand(100, 100)
    grid = tile_grid((100, 100), tile=64, overlap=0.25)
    inside, region = covered_region(grid, (100, 100), None, "cpu")
    seeds = torch.tensor([[10.0, 10.0], [12.0, 14.0], [80.0, 70.0]])
    prop = propose(torch.zeros(100, 100), torch.zeros(100, 100), img, inside, region, grid, TTGPRConfig(), 32, seeds)
    assert torch.equal(prop.seeds, seeds)
    for y, x in seeds.tolist():
        assert any(y0 <= y < y0 + 32 and x0 <= x < x0 + 32 for _, y0, x0, _ in prop.windows)
    with pytest.raises(ValueError, match="seed_region must be"):
        covered_region(grid, (100, 100), torch.zeros(5, 5, dtype=torch.bool), "cpu")
    assert math.isfinite(float(prop.seeds.sum()))
