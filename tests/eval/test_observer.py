"""The ideal linear observer (mcgr.eval.observer) against closed forms and dense linear algebra."""
import math

import numpy as np
import pytest
from scipy.stats import norm

from mcgr.eval.observer import (calcification_detectability, gaussian_fields, noise_power_spectrum, prewhitened_dprime,
                                search_threshold, welch_blocks)


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
    # white clutter: d' = sqrt(sum S^2) / sigma whatever the spectrum estimate's window; each patch's
    # own clutter sets its model (patch 3's is 3x noisier)
    rng = np.random.default_rng(3)
    n, h, w, sigma = 4, 256, 256, 0.02
    clutter = rng.normal(0, sigma, (n, h, w))
    clutter[3] *= 3
    signal = np.zeros((n, h, w))
    mask = np.zeros((n, h, w), bool)
    # two calcifications in patch 0 (label order: top one first), one in patch 3 (one near a border),
    # amplitudes 1 : 3 : 3
    for i, cy, cx, amp in ((0, 12, 40, 0.02), (0, 145, 200, 0.06), (3, 250, 30, 0.06)):
        signal[i] += _blob(h, w, cy, cx, 1.0, amp)
        mask[i, cy - 1:cy + 2, cx - 1:cx + 2] = True
    out = calcification_detectability(signal, clutter, mask)
    assert [len(o["dprime"]) for o in out] == [2, 0, 0, 1]
    e = math.sqrt(float((_blob(64, 64, 32, 32, 1.0, 1.0) ** 2).sum())) / sigma  # d' per unit amplitude
    np.testing.assert_allclose(out[0]["dprime"], [0.02 * e, 0.06 * e], rtol=0.08)
    assert out[3]["dprime"][0] == pytest.approx(0.06 * e / 3, rel=0.08)
    for o in (out[0], out[3]):
        np.testing.assert_allclose(o["p_detect"], norm.cdf(o["dprime"] - o["threshold"]))
    # 0.5 false maxima per 256 x 256 patch: the matched filter of a sigma-1 blob in white noise is a
    # smooth Gaussian field with autocorrelation exp(-r^2 / 4), second spectral moment lambda = 1/2;
    # its expected count of maxima above u (Euler characteristic heuristic, exact as u grows) is
    # A lambda / (2 pi)^(3/2) u exp(-u^2 / 2); solve for 0.5 by bisection
    lo, hi = 2.0, 8.0
    for _ in range(60):
        u = (lo + hi) / 2
        lo, hi = (u, hi) if h * w * 0.5 / (2 * math.pi) ** 1.5 * u * math.exp(-u * u / 2) > 0.5 else (lo, u)
    np.testing.assert_allclose(out[0]["threshold"], lo, atol=0.3)


def test_gaussian_fields_have_the_asked_spectrum_and_welch_blocks_tile_the_field():
    fy = np.fft.fftfreq(16)[:, None]
    fx = np.fft.fftfreq(12)[None, :]
    W = 1e-3 / (fy ** 2 + fx ** 2 + 0.02) + 1e-3  # symmetric, as a real field's spectrum
    g = gaussian_fields(W, 4000, seed=5)
    assert g.shape == (4000, 16, 12) and np.isrealobj(g)
    np.testing.assert_allclose(np.mean(np.abs(np.fft.fft2(g)) ** 2, 0), W, rtol=0.1)
    f = np.arange(100 * 90, dtype=float).reshape(100, 90)
    b = welch_blocks(f, 40)  # rows at 0, 20, 40, 60 (flush), columns at 0, 20, 40, 50 (flush)
    assert b.shape == (16, 40, 40)
    np.testing.assert_allclose(b[-1], f[60:, 50:] - f[60:, 50:].mean())


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="fields"):
        noise_power_spectrum(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="nps"):
        prewhitened_dprime(np.ones((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="one shape"):
        prewhitened_dprime(np.ones((4, 4)), np.ones((4, 5)))
    with pytest.raises(ValueError, match="fp_per_field"):
        search_threshold(np.zeros((1, 8, 8)), 0.0)
    with pytest.raises(ValueError, match="block"):
        calcification_detectability(np.zeros((2, 32, 32)), np.ones((2, 32, 32)), np.zeros((2, 32, 32)), block=64)
    with pytest.raises(ValueError, match="clutter_model"):
        calcification_detectability(np.zeros((1, 8, 8)), np.ones((1, 8, 8)), np.zeros((1, 8, 8)), clutter_model="x")
