"""The MC pattern sampler against independent geometry: each primitive's outline is traced from
its analytic definition (ellipse / stadium), and extents are measured on those points."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial import ConvexHull
from scipy.spatial.distance import pdist

from mcgr.synth.patterns import sample_calcifications


def outline(prims: np.ndarray, n: int = 256) -> np.ndarray:
    """Points [P * n, 2] (y, x) on the outlines of primitives [P, 8] (ellipse, or a capsule's end circles)."""
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    pts = []
    for _, cy, cx, ry, rx, a, _, shape in prims:
        ux, uy = math.cos(a), math.sin(a)  # u axis in (x, y)
        vx, vy = -uy, ux
        if shape == 0:
            x = cx + rx * np.cos(t) * ux + ry * np.sin(t) * vx
            y = cy + rx * np.cos(t) * uy + ry * np.sin(t) * vy
        else:
            s = np.where(np.arange(n) % 2 == 0, rx, -rx)  # both end circles
            x = cx + s * ux + ry * np.cos(t)
            y = cy + s * uy + ry * np.sin(t)
        pts.append(np.stack((y, x), 1))
    return np.concatenate(pts)


def diameter(points: np.ndarray) -> float:
    if len(points) > 64:
        points = points[ConvexHull(points).vertices]
    return float(pdist(points).max())


@pytest.mark.parametrize("spacing", [0.07, 0.1])
def test_sizes_extents_and_counts(spacing):
    H, W = 256, 240
    s = sample_calcifications(12, H, W, spacing, torch.Generator().manual_seed(11))
    prims = s.prims.numpy()
    cen = s.centres.numpy()
    ci = s.calc_index.numpy()
    assert prims.dtype == np.float32 and prims.shape[1] == 8
    assert cen.shape == (s.kind.shape[0], 3) and ci.shape == (prims.shape[0],)
    assert np.all(np.diff(cen[:, 0]) >= 0), "centres are sorted by batch"
    assert np.all(prims[:, 6] > 0) and np.all(prims[:, 3] > 0) and np.all(prims[:, 4] > 0)
    assert np.array_equal(prims[:, 0], cen[ci, 0]), "a primitive's batch index is its calcification's"
    for k in range(cen.shape[0]):
        p = prims[ci == k]
        pts = outline(p)
        d_mm = diameter(pts) * spacing
        assert 0.1 * (1 - 2e-3) <= d_mm <= 0.7 * (1 + 1e-4), f"calcification {k}: extent {d_mm:.4f} mm"
        assert abs(d_mm - float(s.extent_mm[k])) <= 2e-3 * float(s.extent_mm[k])
        reach = np.hypot(pts[:, 0] - cen[k, 1], pts[:, 1] - cen[k, 2]).max()
        assert reach * spacing <= float(s.extent_mm[k]) / 2 * (1 + 1e-4), "a calcification stays in its disc"
        # the whole calcification inside the patch
        assert pts[:, 0].min() >= -0.5 and pts[:, 0].max() <= H - 0.5
        assert pts[:, 1].min() >= -0.5 and pts[:, 1].max() <= W - 0.5
        # morphology: the primitives each kind is built from
        kind = int(s.kind[k])
        if kind == 0:
            assert len(p) == 1 and p[0, 7] == 0
        elif kind == 1:
            assert 3 <= len(p) <= 4 and np.all(p[:, 7] == 0)
        else:
            assert 1 <= len(p) <= 3 and np.all(p[:, 7] == 1)
        # the first primitive sits on the centre (so inject marks the centre pixel)
        assert np.allclose(p[0, 1:3], cen[k, 1:3], atol=1e-4)
    # clusters: 3..30 members within a 10 mm disc; 0..2 clusters and 0..4 isolated per patch
    cl = s.cluster.numpy()
    batch = cen[:, 0].astype(int)
    for c in np.unique(cl[cl >= 0]):
        members = np.nonzero(cl == c)[0]
        assert 3 <= len(members) <= 30
        assert len(np.unique(batch[members])) == 1
        pts = outline(prims[np.isin(ci, members)])
        assert diameter(pts) * spacing <= 10.0 * (1 + 1e-4), f"cluster {c} spans {diameter(pts) * spacing:.2f} mm"
    for b in range(12):
        assert len(np.unique(cl[(batch == b) & (cl >= 0)])) <= 2
        assert np.sum((batch == b) & (cl < 0)) <= 4
    assert set(np.unique(s.kind.numpy())) <= {0, 1, 2}


def test_counts_follow_the_ranges():
    s = sample_calcifications(40, 128, 128, 0.07, torch.Generator().manual_seed(2),
                              clusters=(1, 1), isolated=(2, 2), cluster_size=(5, 5))
    batch = s.centres[:, 0].long()
    assert torch.equal(torch.bincount(batch, minlength=40), torch.full((40,), 7))
    assert torch.equal(torch.bincount(batch[s.cluster < 0], minlength=40), torch.full((40,), 2))
    assert len(torch.unique(s.cluster[s.cluster >= 0])) == 40
    empty = sample_calcifications(3, 64, 64, 0.07, torch.Generator().manual_seed(2), clusters=(0, 0), isolated=(0, 0))
    assert empty.prims.shape == (0, 8) and empty.centres.shape == (0, 3)
    assert [c.shape for c in empty.centres_per_patch()] == [(0, 2)] * 3


def test_size_range_option_and_small_spacing():
    s = sample_calcifications(8, 200, 200, 0.05, torch.Generator().manual_seed(4), size_mm=(0.3, 0.4))
    for k in range(s.centres.shape[0]):
        d = diameter(outline(s.prims[s.calc_index == k].numpy())) * 0.05
        assert 0.3 * (1 - 2e-3) <= d <= 0.4 * (1 + 1e-4)


def test_reproducible_and_seed_dependent():
    a = sample_calcifications(6, 96, 96, 0.07, torch.Generator().manual_seed(5))
    b = sample_calcifications(6, 96, 96, 0.07, torch.Generator().manual_seed(5))
    c = sample_calcifications(6, 96, 96, 0.07, torch.Generator().manual_seed(6))
    for f in ("prims", "centres", "calc_index", "kind", "cluster"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert a.prims.shape != c.prims.shape or not torch.equal(a.prims, c.prims)


def test_select_keeps_rows_consistent():
    s = sample_calcifications(5, 96, 96, 0.07, torch.Generator().manual_seed(8), clusters=(1, 1))
    keep = torch.tensor([True, False, True, False, True])
    t = s.select(keep)
    assert set(t.centres[:, 0].long().tolist()) <= {0, 2, 4}
    assert torch.equal(t.prims[:, 0], t.centres[t.calc_index, 0])
    assert t.centres.shape[0] == int(keep[s.centres[:, 0].long()].sum())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"size_mm": (0.5, 0.2)}, "size_mm"),
        ({"size_mm": (0.0, 0.2)}, r"size_mm\[0\]"),
        ({"clusters": (2, 1)}, "clusters"),
        ({"cluster_size": (0, 3)}, "cluster_size"),
        ({"kind_probs": (0, 0, 0)}, "kind_probs"),
        ({"spacing_mm": -0.1}, "spacing_mm"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"spacing_mm": 0.07, **kwargs}
    with pytest.raises(ValueError, match=match):
        sample_calcifications(2, 64, 64, generator=torch.Generator().manual_seed(0), **args)


def test_patch_too_small_is_refused():
    with pytest.raises(ValueError, match="cannot hold"):
        sample_calcifications(1, 8, 64, 0.07)
    with pytest.raises(ValueError, match="height"):
        sample_calcifications(1, 0, 64, 0.07)
