"""The generator's flow spaces (mcgr.models.rf.to_flow / from_flow) against scipy and closed forms."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from mcgr.models.rf import DETAIL_SIGMA, from_flow, to_flow


def _scipy_detail(img: np.ndarray) -> tuple[np.ndarray, float]:
    r = int(np.ceil(3 * DETAIL_SIGMA))
    low = ndimage.gaussian_filter(img.astype(np.float64), DETAIL_SIGMA, mode="mirror", truncate=r / DETAIL_SIGMA)
    d = img - low
    return d, 1.4826 * float(np.median(np.abs(d - np.median(d))))


def test_detail_layer_matches_scipy_and_inverts_exactly():
    rng = np.random.default_rng(0)
    img = np.clip(0.5 + 0.1 * ndimage.gaussian_filter(rng.standard_normal((3, 48, 56)), (0, 3, 3))
                  + 0.01 * rng.standard_normal((3, 48, 56)), 0, 1).astype(np.float32)
    x, ctx = to_flow(torch.from_numpy(img)[:, None], "detail")
    for b in range(3):
        d, s = _scipy_detail(img[b])
        # torch's median of an even count is the lower middle value; np.median averages the two
        np.testing.assert_allclose(ctx.sigma[b].item(), s, rtol=2e-2)
        np.testing.assert_allclose(x[b, 0].numpy() * ctx.sigma[b].item(), d, atol=2e-5)
        assert abs(float(np.median(np.abs(x[b, 0].numpy()))) * 1.4826 - 1.0) < 0.05  # unit robust spread
    back = from_flow(x, ctx)
    np.testing.assert_allclose(back[:, 0].numpy(), img, atol=1e-6)
    # the context of M repeated projections maps each copy back to its own patch
    rep = from_flow(x.repeat(2, 1, 1, 1), ctx.repeat(2))
    np.testing.assert_allclose(rep[3:, 0].numpy(), img, atol=1e-6)


def test_a_spike_stands_its_cnr_high_in_the_detail_layer():
    rng = np.random.default_rng(1)
    img = (0.4 + 0.02 * rng.standard_normal((1, 1, 64, 64))).astype(np.float32)
    _, s = _scipy_detail(img[0, 0])
    img[0, 0, 30, 30] += 8 * s  # a one-pixel calcification at 8 sigmas
    x, _ = to_flow(torch.from_numpy(img), "detail")
    # the low-pass takes its share g(0) = 1 / (2 pi sigma^2) of the spike (plus a tiny change of sigma)
    assert x[0, 0, 30, 30].item() == pytest.approx(8 * (1 - 1 / (2 * np.pi * DETAIL_SIGMA**2)), abs=0.5)


def test_image_scale_is_the_standardisation_and_bad_input_is_named():
    img = torch.rand(2, 1, 16, 16)
    x, ctx = to_flow(img, "image")
    assert torch.equal(x, img * 2 - 1) and torch.equal(from_flow(x, ctx.repeat(3)), (x + 1) * 0.5)
    with pytest.raises(ValueError, match="scale must be"):
        to_flow(img, "band")
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        to_flow(img[:, 0], "detail")
    from mcgr.models.unet import UNetConfig

    with pytest.raises(ValueError, match="input_scale"):
        UNetConfig(input_scale="band").validated()
    assert UNetConfig.from_dict({"width": 8}).input_scale == "image"  # old checkpoints
