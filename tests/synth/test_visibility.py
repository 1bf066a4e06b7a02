import numpy as np
import pytest
import torch
from scipy import ndimage

from mcgr.synth.visibility import centre_cnr, texture_sigma, visible_centres


def _scipy_sigma(b: np.ndarray) -> float:
    hp = b - ndimage.gaussian_filter(b, 2.0, mode="nearest", truncate=3.0)
    return 1.4826 * float(np.median(np.abs(hp - np.median(hp))))


def test_texture_sigma_matches_scipy_on_random_texture():
    rng = np.random.default_rng(0)
    bg = np.stack([0.4 + 0.05 * ndimage.gaussian_filter(rng.standard_normal((48, 40)), s) for s in (0.7, 1.5, 3.0)])
    got = texture_sigma(torch.from_numpy(bg).float()[:, None]).numpy()
    want = [_scipy_sigma(b.astype(np.float32)) for b in bg]
    # the torch median of an even count takes the lower middle value; scipy's np.median averages
    np.testing.assert_allclose(got, want, rtol=2e-2)


def test_centre_cnr_is_the_peak_over_the_texture_sigma():
    rng = np.random.default_rng(1)
    bg = (0.5 + 0.02 * rng.standard_normal((2, 1, 32, 32))).astype(np.float32)
    img = bg.copy()
    img[0, 0, 10, 12] += 0.3          # a spike at a centre
    img[1, 0, 20, 5] += 0.01          # a faint one, one pixel off the given centre (3 x 3 window)
    centres = [torch.tensor([[10.0, 12.0], [25.0, 25.0]]), torch.tensor([[20.4, 6.2]])]
    cnr = centre_cnr(torch.from_numpy(img), torch.from_numpy(bg), centres)
    s0, s1 = _scipy_sigma(bg[0, 0]), _scipy_sigma(bg[1, 0])
    assert cnr[0][0].item() == pytest.approx(0.3 / s0, rel=3e-2)
    assert cnr[0][1].item() == pytest.approx(0.0, abs=1e-6)  # no signal where nothing was injected
    assert cnr[1][0].item() == pytest.approx(0.01 / s1, rel=3e-2)
    vis = visible_centres(torch.from_numpy(img), torch.from_numpy(bg), centres, k=3.0)
    assert vis[0].tolist() == [True, False] and vis[1].tolist() == [0.01 / s1 >= 3.0]


def test_visibility_rejects_mismatched_inputs():
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match="same shape"):
        centre_cnr(x, torch.zeros(2, 1, 8, 9), [torch.zeros(0, 2)] * 2)
    with pytest.raises(ValueError, match="one centre list per patch"):
        centre_cnr(x, x, [torch.zeros(0, 2)])
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        texture_sigma(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="k must be"):
        visible_centres(x, x, [torch.zeros(0, 2)] * 2, k=-1.0)


def test_component_cnr_is_each_components_peak_over_sigma():
    from mcgr.synth.visibility import component_cnr

    rng = np.random.default_rng(2)
    bg = (0.4 + 0.03 * rng.standard_normal((2, 1, 40, 40))).astype(np.float32)
    mask = np.zeros_like(bg)
    mask[0, 0, 5:8, 5:9] = 1
    mask[0, 0, 30:32, 20:22] = 1
    mask[1, 0, 10, 10] = 1
    img = bg + mask * rng.uniform(0.0, 0.2, bg.shape).astype(np.float32)
    got = component_cnr(torch.from_numpy(img), torch.from_numpy(bg), torch.from_numpy(mask))
    for b in range(2):
        lab, n = ndimage.label(mask[b, 0] > 0.5, structure=np.ones((3, 3)))
        want = [float((img[b, 0] - bg[b, 0])[lab == i].max()) / _scipy_sigma(bg[b, 0]) for i in range(1, n + 1)]
        np.testing.assert_allclose(got[b], want, rtol=3e-2)
    assert len(got[0]) == 2 and len(got[1]) == 1


def test_difficult_weight_zeroes_invisible_calcifications_and_a_ring():
    from mcgr.synth.visibility import difficult_weight

    rng = np.random.default_rng(3)
    bg = (0.5 + 0.02 * rng.standard_normal((1, 1, 40, 40))).astype(np.float32)
    s = _scipy_sigma(bg[0, 0])
    mask = np.zeros_like(bg)
    mask[0, 0, 5:8, 5:8] = 1      # faint: peak 1 sigma
    mask[0, 0, 25:28, 25:28] = 1  # bright: peak 10 sigma
    img = bg.copy()
    img[0, 0, 5:8, 5:8] += 1.0 * s
    img[0, 0, 25:28, 25:28] += 10.0 * s
    w = difficult_weight(torch.from_numpy(img), torch.from_numpy(bg), torch.from_numpy(mask), k=3.0)
    want = np.ones((40, 40), np.float32)
    want[4:9, 4:9] = 0            # the faint one and its 1 px ring (8-connected dilation)
    np.testing.assert_array_equal(w[0, 0].numpy(), want)
    w0 = difficult_weight(torch.from_numpy(img), torch.from_numpy(bg), torch.from_numpy(mask), k=0.0)
    assert bool((w0 == 1).all())
    with pytest.raises(ValueError, match="k must be"):
        difficult_weight(torch.from_numpy(img), torch.from_numpy(bg), torch.from_numpy(mask), k=-1.0)


def test_band_weight_weighs_the_calcifications_in_the_cnr_band():
    from mcgr.synth.visibility import band_weight

    rng = np.random.default_rng(4)
    bg = (0.5 + 0.02 * rng.standard_normal((1, 1, 40, 40))).astype(np.float32)
    s = _scipy_sigma(bg[0, 0])
    mask = np.zeros_like(bg)
    img = bg.copy()
    for (y, x), k in (((5, 5), 1.0), ((15, 25), 4.5), ((28, 8), 12.0)):  # CNRs 1, 4.5, 12
        mask[0, 0, y:y + 3, x:x + 3] = 1
        img[0, 0, y:y + 3, x:x + 3] += k * s
    w = band_weight(torch.from_numpy(img), torch.from_numpy(bg), torch.from_numpy(mask), 3.0, 8.0, 5.0)
    want = np.ones((40, 40), np.float32)
    want[15:18, 25:28] = 5.0  # only the 4.5-sigma one, its mask pixels only
    np.testing.assert_array_equal(w[0, 0].numpy(), want)
    with pytest.raises(ValueError, match="lo <= hi"):
        band_weight(torch.from_numpy(img), torch.from_numpy(bg), torch.from_numpy(mask), 8.0, 3.0, 5.0)
