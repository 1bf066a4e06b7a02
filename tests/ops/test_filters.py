"""The one Gaussian blur (mcgr.ops._filters.gaussian_blur) against scipy.ndimage.gaussian_filter."""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from mcgr.ops._filters import gaussian_blur

SCIPY_MODE = {"reflect": "mirror", "replicate": "nearest"}


@pytest.mark.parametrize("mode", ["reflect", "replicate"])
@pytest.mark.parametrize("truncate", [3.0, 4.0])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.3, 5.0])
@pytest.mark.parametrize("shape", [(33, 40), (2, 17, 65), (3, 1, 64, 64)])
def test_gaussian_blur_matches_scipy(device, mode, truncate, sigma, shape):
    r = max(1, math.ceil(truncate * sigma))
    if mode == "reflect" and min(shape[-2:]) <= r:
        pytest.skip("reflect padding needs the pad under the size")
    x = torch.rand(shape, generator=torch.Generator().manual_seed(3))
    got = gaussian_blur(x.to(device), sigma, mode, truncate=truncate).cpu()
    assert got.shape == x.shape and got.dtype == x.dtype
    flat = x.reshape(-1, *shape[-2:]).numpy().astype(np.float64)
    want = np.stack([ndimage.gaussian_filter(f, sigma, mode=SCIPY_MODE[mode], radius=r) for f in flat])
    err = np.abs(got.reshape(want.shape).numpy() - want)
    i = np.unravel_index(int(err.argmax()), err.shape)
    assert err[i] <= 2e-6, f"worst at {i}: got {got.reshape(want.shape).numpy()[i]}, scipy {want[i]}"


def test_gaussian_blur_keeps_dtype_and_sigma_zero_is_identity():
    x = torch.rand(2, 20, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    assert gaussian_blur(x, 0.0) is x
    y = gaussian_blur(x, 1.5, "replicate")
    assert y.dtype == torch.float64
    want = np.stack([ndimage.gaussian_filter(f, 1.5, mode="nearest", radius=5) for f in x.numpy()])
    np.testing.assert_allclose(y.numpy(), want, atol=1e-7)  # the taps are float32
