"""tile_grid and gaussian_weights against brute-force coverage counts and scipy's Gaussian window."""
import math

import numpy as np
import pytest
import torch
from scipy.signal.windows import gaussian as scipy_gaussian

from mcgr.ops._tiling import TileGrid, gaussian_weights, tile_grid


def coverage(grid: TileGrid) -> torch.Tensor:
    H, W = grid.image_shape
    c = torch.zeros(H, W, dtype=torch.int32)
    for y0, x0 in grid.origins.tolist():
        c[y0:y0 + grid.tile, x0:x0 + grid.tile] += 1
    return c


@pytest.mark.parametrize("shape,tile,overlap", [
    ((2560, 3328), 256, 0.25), ((7, 129), 16, 0.5), ((255, 257), 64, 0.25), ((1, 1), 8, 0.25),
    ((10, 300), 32, 0.0), ((97, 61), 20, 0.9), ((256, 256), 256, 0.25), ((257, 255), 256, 0.25),
])
def test_grid_covers_the_image_with_flush_last_tiles(shape, tile, overlap):
    g = tile_grid(shape, tile=tile, overlap=overlap)
    H, W = shape
    assert g.stride == max(1, math.floor(tile * (1 - overlap) + 1e-9))
    assert g.origins.dtype == torch.int64 and g.origins.shape[1] == 2
    assert bool((coverage(g) > 0).all()), "every pixel must be covered"
    for axis, L in ((0, H), (1, W)):
        vals = sorted(set(g.origins[:, axis].tolist()))
        assert vals[0] == 0
        assert vals[-1] == max(L - tile, 0), "the last tile is flush with the border"
        steps = np.diff(vals)
        assert all(0 < s <= g.stride for s in steps)
    # row-major order
    key = g.origins[:, 0] * (W + 1) + g.origins[:, 1]
    assert bool((key[1:] > key[:-1]).all())


def test_full_field_grid_size():
    g = tile_grid((2560, 3328), tile=256, overlap=0.25)
    assert g.stride == 192 and g.num_tiles == 13 * 17
    assert tile_grid((2560, 3328), tile=256, stride=128).num_tiles == 19 * 25


def test_breast_mask_keeps_exactly_the_tiles_holding_breast():
    gen = np.random.default_rng(0)
    H, W, T = 300, 220, 64
    yy, xx = np.mgrid[:H, :W]
    mask = ((yy - 150) ** 2 / 120 ** 2 + xx ** 2 / 150 ** 2) < 1  # a half-ellipse on the chest wall side
    mask[gen.integers(0, H, 5), gen.integers(150, W, 5)] = True  # isolated specks count too
    full = tile_grid((H, W), tile=T, overlap=0.25)
    g = tile_grid((H, W), tile=T, overlap=0.25, breast_mask=mask)
    expected = [o for o in full.origins.tolist() if mask[o[0]:o[0] + T, o[1]:o[1] + T].any()]
    assert g.origins.tolist() == expected
    assert g.num_tiles < full.num_tiles
    assert bool((coverage(g)[torch.from_numpy(mask)] > 0).all()), "every breast pixel stays covered"
    frac = 0.3
    g2 = tile_grid((H, W), tile=T, overlap=0.25, breast_mask=torch.from_numpy(mask), min_breast_fraction=frac)
    expected = []
    for y0, x0 in full.origins.tolist():
        win = mask[y0:y0 + T, x0:x0 + T]
        if win.any() and win.mean() >= frac:
            expected.append([y0, x0])
    assert g2.origins.tolist() == expected
    assert tile_grid((H, W), tile=T, breast_mask=np.zeros((H, W), bool)).num_tiles == 0


def test_gaussian_weights_follow_monai_convention():
    for T, s in ((256, 0.125), (31, 0.125), (16, 0.3), (1, 0.125)):
        w = gaussian_weights(T, sigma_scale=s)
        g = scipy_gaussian(T, std=s * T, sym=True)
        expected = np.outer(g, g)
        expected /= expected.max()
        expected = np.maximum(expected, max(expected.min(), 1e-3))
        assert w.dtype == torch.float32 and w.shape == (T, T)
        np.testing.assert_allclose(w.numpy(), expected, rtol=1e-6, atol=0)
        assert float(w.max()) == 1.0 and float(w.min()) >= 1e-3
        assert torch.equal(w, w.flip(0)) and torch.equal(w, w.t())


def test_bad_arguments():
    with pytest.raises(ValueError, match="tile must be a positive integer"):
        tile_grid((10, 10), tile=0)
    with pytest.raises(ValueError, match="overlap must be a fraction"):
        tile_grid((10, 10), tile=4, overlap=1.0)
    with pytest.raises(ValueError, match="stride must be a positive integer"):
        tile_grid((10, 10), tile=4, stride=0)
    with pytest.raises(ValueError, match="image_shape"):
        tile_grid((0, 10), tile=4)
    with pytest.raises(ValueError, match="breast_mask must be"):
        tile_grid((10, 10), tile=4, breast_mask=np.ones((10, 11), bool))
    with pytest.raises(ValueError, match="min_breast_fraction"):
        tile_grid((10, 10), tile=4, min_breast_fraction=1.5)
    with pytest.raises(ValueError, match="sigma_scale"):
        gaussian_weights(8, sigma_scale=0)
    with pytest.raises(ValueError, match="TileGrid.origins"):
        TileGrid(8, 4, torch.zeros(3, 2), (10, 10))
    with pytest.raises(ValueError, match=r"TileGrid.origins\[1\] = \(0, 10\) lies outside"):
        TileGrid(8, 4, torch.tensor([[0, 0], [0, 10]]), (10, 10))
    with pytest.raises(ValueError, match=r"TileGrid.origins\[0\].*outside"):
        TileGrid(8, 4, torch.tensor([[-1, 0]]), (10, 10))
