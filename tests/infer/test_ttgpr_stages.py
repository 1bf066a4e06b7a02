"""TT-GPR's stages called alone (mcgr.infer.ttgpr): base pass, surrogate, refine gating, accept."""
import math

import pytest
import torch

from mcgr.infer.seeds import keep_found
from mcgr.infer.ttgpr import (Projections, SurrogateField, TTGPRConfig, accept, base_pass, predict_batched,
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


def test_verified_logits_are_the_logit_of_p_times_q_in_windows_and_the_base_elsewhere():
    from mcgr.infer.ttgpr import verified_logits

    g = torch.Generator().manual_seed(5)
    base = torch.randn(40, 30, generator=g) * 6
    base[0, :5] = torch.tensor([16.0, 17.0, 18.0, 25.0, 40.0])  # p rounds to 1 in float32: ranks must survive
    vote = torch.rand(40, 30, generator=g)
    vote[1, :3] = torch.tensor([0.0, 1.0, 0.5])
    covered = torch.rand(40, 30, generator=g) > 0.3
    covered[:2] = True
    got = verified_logits(base, vote, covered).double()
    p = torch.sigmoid(base.double())
    pq = (p * vote.double()).clamp(1e-300, 1 - 1e-16)
    want = torch.where(covered, torch.log(pq) - torch.log1p(-pq), base.double())
    exact = covered & (vote > 0) & (base < 15)  # where float64's 1 - pq is itself exact enough
    torch.testing.assert_close(got[exact], want[exact], atol=1e-4, rtol=1e-4)
    assert torch.equal(got[~covered], base.double()[~covered])
    assert got[1, 0].item() == -40.0  # q = 0: the floor, not -inf
    assert got[1, 1].item() == pytest.approx(base[1, 1].item(), abs=1e-5)  # q = 1: p unchanged
    # q = 1 - 1e-3 on p -> 1: logit(pq) -> logit(q) = 6.9; p x q never above p
    v = torch.full((1, 5), 1 - 1e-3)
    z = verified_logits(base[:1, :5], v, torch.ones(1, 5, dtype=torch.bool))
    assert bool((z <= base[:1, :5] + 1e-5).all())
    assert bool((torch.diff(z[0]) >= 0).all())  # the order of p is kept at equal q
    assert z[0, -1].item() == pytest.approx(math.log(1 - 1e-3) - math.log(1e-3), abs=1e-3)


def test_run_field_verify_rescores_base_candidates_and_leaves_the_rest():
    """refine_rule "verify": a projector that erases the window's calcifications votes q = 0 there:
    every seeded maximum drops, pixels no window covers keep the base logits, nothing rises."""
    from mcgr.infer.ttgpr import run_field
    from mcgr.ops._tiling import tile_grid as grid_of

    img = torch.zeros(128, 128)
    img[30:33, 30:33] = 1.0   # two bright spots: candidates of the closed-form segmentor
    img[90:93, 100:103] = 1.0
    grid = grid_of((128, 128), tile=64, overlap=0.25)

    class Seg(torch.nn.Module):  # logits 10 x - 3: p >= 0.05 only on the spots
        def forward(self, x):
            return 10 * x - 3

    seen = []

    def erase(windows, origins, seeds):
        seen.append(len(origins))
        return torch.zeros_like(windows)

    cfg = TTGPRConfig(refine_rule="verify", tau_seed=0.05, window=32)
    fr = run_field(img, grid, Seg(), None, cfg, projector=erase, backend="reference")
    assert sum(seen) >= 2 and fr.seeds >= 2
    assert fr.logits[31, 31].item() < math.log(0.05 / 0.95)      # the spot's p x q with q = sigmoid(-3) ~ 0.047
    assert bool((fr.logits <= fr.base_logits + 1e-5).all())       # p x q <= p everywhere
    far = torch.zeros(128, 128, dtype=torch.bool)
    far[60:70, 0:10] = True                                       # no window reaches here
    assert torch.equal(fr.logits[far], fr.base_logits[far])
