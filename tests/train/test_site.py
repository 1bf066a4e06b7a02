"""Site measurement (mcgr.train.site) against images whose blur and noise are known by construction."""
import numpy as np
import pytest
from scipy import ndimage

from mcgr.train.site import (DEFAULT_PSF, PSF_LIMITS, SiteEstimate, combine, inject_ranges, noise_model, nps,
                             psf_from_nps, psf_measured)


def _texture(rng, n, beta=3.0):
    """Power-law (1/f^beta) random field, unit sd: the anatomy the fit has to look past."""
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij"))
    f[0, 0] = 1.0
    field = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(n, n))) * f ** (-beta / 2)))
    return (field - field.mean()) / field.std()


@pytest.mark.parametrize("sigma", [0.45, 0.7, 1.1])
def test_psf_sigma_recovered_from_blurred_noise(sigma):
    rng = np.random.default_rng(int(sigma * 100))
    n = 512
    quantum = ndimage.gaussian_filter(rng.normal(size=(n, n)), sigma)
    quantum *= 0.01 / quantum.std()
    img = 0.45 + 0.05 * _texture(rng, n) + quantum + rng.normal(0, 0.001, (n, n))  # + a weak white floor
    f, p = nps(img, np.ones((n, n), bool))
    est, err = psf_from_nps(f, p)
    assert abs(est - sigma) <= 0.1, (est, sigma, err)
    assert psf_measured(est)


def test_noise_model_recovers_signal_dependent_variance():
    rng = np.random.default_rng(3)
    a, b = 2e-5, 8e-5
    # eight flat bands of different levels, each with noise var a + b * level
    levels = np.linspace(0.2, 0.8, 8)
    img = np.concatenate([np.full((64, 512), lv) for lv in levels])
    img = img + rng.normal(size=img.shape) * np.sqrt(a + b * img)
    nm = noise_model(img, np.ones(img.shape, bool))
    # the high-pass residual y - G_1.5 y keeps a known share of white noise's variance
    k = np.zeros((41, 41))
    k[20, 20] = 1
    share = float(((k - ndimage.gaussian_filter(k, 1.5)) ** 2).sum())
    assert nm["b"] / share == pytest.approx(b, rel=0.25)
    assert nm["a"] / share == pytest.approx(a, rel=0.35, abs=5e-6)


def test_noise_free_texture_has_no_measurable_psf():
    rng = np.random.default_rng(5)
    img = 0.5 + 0.05 * _texture(rng, 512, beta=3.5)
    f, p = nps(img, np.ones(img.shape, bool))
    est, _ = psf_from_nps(f, p)
    assert not psf_measured(est)
    assert inject_ranges({"psf_sigma_px": est}) == {"psf_sigma": DEFAULT_PSF}


def test_inject_ranges_follow_the_estimate_and_stay_in_limits():
    assert inject_ranges({"psf_sigma_px": 0.6}) == {"psf_sigma": (0.51, 0.69)}
    lo, hi = inject_ranges({"psf_sigma_px": 1.7})["psf_sigma"]
    assert PSF_LIMITS[0] <= lo <= hi <= PSF_LIMITS[1]


def test_combine_is_the_median_and_small_breasts_are_refused():
    per = [{"psf_sigma_px": s, "noise": {"a": 1e-5, "b": 1e-4, "median_level": 0.5}} for s in (0.5, 0.6, 1.5)]
    est = combine(per, [{"format": "npy"}] * 3)
    assert isinstance(est, SiteEstimate)
    assert est.psf_sigma_px == 0.6 and est.psf_spread_px == pytest.approx(1.0)
    assert est.mtf_nyquist == pytest.approx(np.exp(-np.pi ** 2 * 0.36 / 2))
    with pytest.raises(ValueError, match="too little breast"):
        noise_model(np.zeros((20, 20)), np.ones((20, 20), bool))
