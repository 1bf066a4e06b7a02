"""The ideal linear observer (mcgr.eval.observer) against closed forms and dense linear algebra."""
import math

import numpy as np
import pytest
from scipy.stats import norm

from mcgr.eval.observer import calcification_detectability, noise_power_spectrum, prewhitened_dprime, search_threshold


def _blob(h, w, cy, cx, sigma, amp):
    y, x = np.mgrid[0:h, 0:w]
    return amp * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma ** 2))


def test_white_noise_dprime_is_signal_energy_over_sigma():
    rng = np.random.default_rng(0)
    sigma = 0.03
    fields = rng.normal(0, sigma, (96, 64, 64))
    s = _blob(64, 64, 30.3, 21.7, 1.2, 0.05)
    want = math.sqrt(float((s ** 2).sum())) / sigma
    got = prewhitened_dprime(s, noise_power_spectrum(fields))
    assert got == pytest.approx(want, rel=0.05)


def test_prewhitened_dprime_equals_dense_covariance_solve():
    # a circulant (periodic stationary) process with spectrum W has covariance c(d) = ifft2(W)[d] / N;
    # the ideal observer's d'^2 = s^T C^-1 s, solved here with a dense matrix, no FFT of s
    rng = np.random.default_rng(1)
    h, w = 12, 10
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    W = 1e-4 / (fy ** 2 + fx ** 2 + 0.01) ** 1.5 + 2e-5  # power law with a white floor
    c = np.real(np.fft.ifft2(W)) / (h * w)
    iy, ix = np.divmod(np.arange(h * w), w)
    C = c[(iy[:, None] - iy[None, :]) % h, (ix[:, None] - ix[None, :]) % w]
    s = rng.normal(size=(h, w)) * 0.01
    want = math.sqrt(float(s.ravel() @ np.linalg.solve(C, s.ravel())))
    assert prewhitened_dprime(s, W) == pytest.approx(want, rel=1e-9)


def test_search_threshold_on_iid_fields_matches_the_tail_count():
    # iid N(0, 1) pixels: above a high t almost every exceedance is its window's maximum, so the
    # expected count per field is H W (1 - Phi(t)); 0.5 per 128 x 128 field -> t = Phi^-1(1 - 0.5 / 16384)
    rng = np.random.default_rng(2)
    z = rng.normal(size=(400, 128, 128))
    t = search_threshold(z, 0.5, radius=2)
    assert t == pytest.approx(norm.isf(0.5 / 128 ** 2), abs=0.12)
    fresh = rng.normal(size=(400, 128, 128))
    assert 0.35 <= (fresh > t).sum() / 400 <= 0.65


def test_calcification_detectability_white_clutter():
    rng = np.random.default_rng(3)
    n, h, w, sigma = 8, 64, 64, 0.02
    clutter = rng.normal(0, sigma, (n, h, w))
    signal = np.zeros((n, h, w))
    mask = np.zeros((n, h, w), bool)
    # two calcifications in patch 0 (label order: top one first), one in patch 3, amplitudes 1 : 3
    for i, cy, cx, amp in ((0, 12, 40, 0.02), (0, 45, 20, 0.06), (3, 30, 30, 0.04)):
        signal[i] += _blob(h, w, cy, cx, 1.0, amp)
        mask[i, cy - 1:cy + 2, cx - 1:cx + 2] = True
    out = calcification_detectability(signal, clutter, mask)
    assert [len(o.get("dprime", [])) for o in out] == [2, 0, 0, 1, 0, 0, 0, 0]
    e = math.sqrt(float((_blob(h, w, 30, 30, 1.0, 1.0) ** 2).sum())) / sigma  # d' per unit amplitude
    np.testing.assert_allclose(out[0]["dprime"], [0.02 * e, 0.06 * e], rtol=0.08)
    assert out[3]["dprime"][0] == pytest.approx(0.04 * e, rel=0.08)
    np.testing.assert_allclose(out[0]["p_detect"], norm.cdf(out[0]["dprime"] - out[0]["threshold"]))
    assert np.all((out[0]["threshold"] > 2.5) & (out[0]["threshold"] < 4.5))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="fields"):
        noise_power_spectrum(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="nps"):
        prewhitened_dprime(np.ones((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="one shape"):
        prewhitened_dprime(np.ones((4, 4)), np.ones((4, 5)))
    with pytest.raises(ValueError, match="fp_per_field"):
        search_threshold(np.zeros((1, 8, 8)), 0.0)
    with pytest.raises(ValueError, match="groups"):
        calcification_detectability(np.zeros((2, 8, 8)), np.ones((2, 8, 8)), np.zeros((2, 8, 8)), groups=[0])
