"""Procedural backgrounds: spectrum slope (numpy fit of the radially averaged power spectrum),
range, realistic means, bright decoy structures, reproducibility."""
import math

import numpy as np
import pytest
import torch

from mcgr.synth.backgrounds import procedural_backgrounds


def spectrum_slope(patches: np.ndarray, f_lo: float = 0.02, f_hi: float = 0.25) -> float:
    x = patches.astype(np.float64)
    x = x - x.mean(axis=(1, 2), keepdims=True)
    P = (np.abs(np.fft.fft2(x)) ** 2).mean(0)
    H, W = P.shape
    f = np.hypot(np.fft.fftfreq(H)[:, None], np.fft.fftfreq(W)[None, :]).ravel()
    edges = np.geomspace(f_lo, f_hi, 16)
    fr, pr = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (f >= lo) & (f < hi)
        fr.append(f[sel].mean())
        pr.append(P.ravel()[sel].mean())
    return float(np.polyfit(np.log(fr), np.log(pr), 1)[0])


@pytest.mark.parametrize("beta", [2.5, 3.0, 3.5])
def test_power_spectrum_slope_is_minus_beta(beta):
    b = procedural_backgrounds(8, 256, 256, torch.Generator().manual_seed(1), beta=beta)
    slope = spectrum_slope(b.numpy())
    assert abs(slope + beta) < 0.3, f"beta={beta}: fitted slope {slope:.3f}"


def test_range_means_and_odd_sizes():
    for n, H, W in ((7, 129, 255), (1, 7, 9), (3, 64, 64)):
        b = procedural_backgrounds(n, H, W, torch.Generator().manual_seed(n))
        assert b.shape == (n, H, W) and b.dtype == torch.float32
        assert bool(torch.isfinite(b).all()) and float(b.min()) >= 0.0 and float(b.max()) <= 1.0
    b = procedural_backgrounds(64, 128, 128, torch.Generator().manual_seed(3))
    means = b.mean(dim=(1, 2))
    assert float(means.min()) >= 0.15 and float(means.max()) <= 0.75
    assert float(means.max() - means.min()) > 0.2, "fatty and dense patches both occur"
    assert float(b.std(dim=(1, 2)).min()) > 0.01, "every patch is textured"


def test_mean_option_sets_the_level():
    b = procedural_backgrounds(8, 64, 64, torch.Generator().manual_seed(0), mean=(0.3, 0.3),
                               texture_std=(0.0, 0.0), density_std=(0.0, 0.0), fibres=(0, 0))
    assert torch.allclose(b, torch.full_like(b, 0.3), atol=1e-6)


def test_fibres_are_bright_thin_structures():
    flat = dict(mean=(0.5, 0.5), texture_std=(0.0, 0.0), density_std=(0.0, 0.0))
    b = procedural_backgrounds(6, 128, 128, torch.Generator().manual_seed(2), fibres=(3, 3), **flat)
    peak = b.amax(dim=(1, 2))
    # strength >= 0.5 logit at a crest; less where a curve fades or only grazes the patch
    assert float(peak.min()) > 0.53 and float(peak.max()) > 1 / (1 + math.exp(-0.5)), f"peaks {peak.tolist()}"
    bright = (b > 0.52).float().mean(dim=(1, 2))
    assert float(bright.max()) < 0.25, "curvilinear structures, not a bright patch"
    assert float(b.min()) > 0.45, "fibres only add brightness"


def test_reproducible_and_seed_dependent():
    a = procedural_backgrounds(3, 32, 48, torch.Generator().manual_seed(7))
    b = procedural_backgrounds(3, 32, 48, torch.Generator().manual_seed(7))
    c = procedural_backgrounds(3, 32, 48, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1]), "the two patches of an FFT pair are independent"


@pytest.mark.parametrize(
    "kwargs, match",
    [({"beta": -1.0}, "beta"), ({"mean": (0.2, 1.0)}, "mean"), ({"fibres": (3, 1)}, "fibres"),
     ({"spacing_mm": 0.0}, "spacing_mm"), ({"density_scale_mm": -2.0}, "density_scale_mm")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        procedural_backgrounds(2, 32, 32, **kwargs)
    with pytest.raises(ValueError, match="height"):
        procedural_backgrounds(2, 1, 32)
