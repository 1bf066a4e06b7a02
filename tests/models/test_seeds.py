import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from mcgr.models.seeds import decoy_seeds, make_seed_map, training_seeds


def test_seed_map_matches_closed_form_gaussians():
    cen = [torch.tensor([[3.0, 4.5], [10.2, 2.0]]), torch.zeros(0, 2), torch.tensor([[0.0, 0.0]])]
    s = make_seed_map(cen, (13, 9), sigma=1.5)
    assert s.shape == (3, 1, 13, 9) and s.dtype == torch.float32
    yy, xx = np.mgrid[0:13, 0:9]
    for b, c in enumerate(cen):
        exp = np.zeros((13, 9))
        for cy, cx in c.tolist():
            exp = np.maximum(exp, np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.5 ** 2)))
        np.testing.assert_allclose(s[b, 0].numpy(), exp, atol=1e-6)


def test_seed_map_many_seeds_chunks_and_stays_in_unit_range():
    g = torch.Generator().manual_seed(0)
    c = torch.rand(200, 2, generator=g) * 30
    s = make_seed_map([c], (31, 31), 1.0)
    assert float(s.max()) <= 1.0 + 1e-6
    ij = c.round().long()
    # a seed's own pixel is within half a pixel of the dot's centre: >= exp(-0.25)
    assert float(s[0, 0][ij[:, 0], ij[:, 1]].min()) >= math.exp(-0.25 / 1.0) - 1e-6


def test_seed_map_bad_input():
    with pytest.raises(ValueError, match=r"centres_list\[0\] must be \[K, 2\]"):
        make_seed_map([torch.zeros(3, 3)], (8, 8))
    with pytest.raises(ValueError, match="sigma"):
        make_seed_map([torch.zeros(1, 2)], (8, 8), sigma=0)


def test_decoys_are_bright_local_maxima_far_from_calcifications():
    g = torch.Generator().manual_seed(1)
    bg = torch.from_numpy(ndimage.gaussian_filter(np.random.default_rng(0).random((2, 64, 64)), (0, 2, 2))).float()[:, None]
    mask = torch.zeros_like(bg)
    mask[0, 0, 30:34, 30:34] = 1
    dec = decoy_seeds(bg, mask, n=5, min_dist=8, generator=g)
    assert len(dec) == 2
    for b, d in enumerate(dec):
        assert 0 < d.shape[0] <= 5
        ij = d.long()
        loc_max = ndimage.maximum_filter(bg[b, 0].numpy(), size=5)
        vals = bg[b, 0].numpy()[ij[:, 0], ij[:, 1]]
        np.testing.assert_array_equal(vals, loc_max[ij[:, 0], ij[:, 1]])
        assert (vals > np.quantile(bg[b, 0].numpy(), 0.6)).all()
        if b == 0:
            dist = np.sqrt(((d[:, None, :].numpy() - np.argwhere(mask[0, 0].numpy() > 0)[None]) ** 2).sum(-1)).min()
            assert dist > 8


def test_training_seeds_jitter_and_dropout_statistics():
    g = torch.Generator().manual_seed(2)
    c = torch.full((4000, 2), 50.0)
    s = training_seeds([c], (100, 100), g, jitter=1.0, dropout=0.2)[0]
    assert abs(s.shape[0] / 4000 - 0.8) < 0.03
    d = s - 50.0
    assert float(d.abs().max()) <= 1.0
    assert abs(float(d.var()) - 1 / 3) < 0.03  # U(-1, 1) variance
