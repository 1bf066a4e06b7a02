"""Classic baselines: bright blobs of calcification size are found on a flat noisy background,
few false positives, a bright line is ignored; the Hill map; argument checks."""
import math

import numpy as np
import pytest

from mcgr.eval.baselines import BASELINES, dog_hessian, hill, line_footprint, tophat
from mcgr.eval.objects import components, match_objects

SPACING = 0.07


def blob_field(seed: int, shape=(200, 184), noise=0.01, amp=0.12):
    """Flat background 0.4 + white noise; Gaussian blobs of 0.15 to 0.6 mm diameter (FWHM) on a
    grid; returns the image and the truth (each blob's pixels within its FWHM radius)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    img = np.full(shape, 0.4) + noise * rng.standard_normal(shape)
    truth = np.zeros(shape, bool)
    diam_mm = [0.15, 0.25, 0.35, 0.45, 0.6]
    k = 0
    for cy in range(25, h - 20, 37):
        for cx in range(25, w - 20, 35):
            fwhm = diam_mm[k % len(diam_mm)] / SPACING
            s = fwhm / 2.3548
            jy, jx = rng.uniform(-2, 2, 2)
            r2 = (yy - cy - jy) ** 2 + (xx - cx - jx) ** 2
            img += amp * np.exp(-r2 / (2 * s * s))
            truth |= r2 <= max(fwhm / 2, 0.75) ** 2
            k += 1
    return img.astype(np.float32), truth, k


@pytest.mark.parametrize("name", ["dog", "tophat"])
def test_finds_blobs_with_few_false_positives(name):
    fn = BASELINES[name]
    img, truth, n = blob_field(0)
    p = fn(img, SPACING)
    assert p.shape == img.shape and p.dtype == np.float32
    assert float(p.min()) >= 0 and float(p.max()) <= 1
    r = match_objects(truth, p >= 0.5, SPACING)
    assert r["n_truth"] == n == 20
    assert r["tp"] >= 0.9 * n, r
    assert r["fp"] <= 2, r


@pytest.mark.parametrize("name", ["dog", "tophat"])
@pytest.mark.parametrize("angle_deg", [0.0, 30.0, 72.0])
def test_ignores_a_bright_line(name, angle_deg):
    rng = np.random.default_rng(1)
    h, w = 160, 160
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    a = math.radians(angle_deg)
    # a vessel-like ridge through the centre: Gaussian profile (sigma 1 px), as bright as the blobs
    along = (xx - 80) * math.cos(a) - (yy - 80) * math.sin(a)
    across = (xx - 80) * math.sin(a) + (yy - 80) * math.cos(a)
    ridge = 0.12 * np.exp(-across**2 / 2.0) * (np.abs(along) <= 60)
    img = (0.4 + ridge + 0.01 * rng.standard_normal((h, w))).astype(np.float32)
    p = BASELINES[name](img, SPACING)
    lab, n, cen, _ = components(p >= 0.5)
    # no detection along the line's body (its two ends are blob-like and may answer)
    c_along = (cen[:, 1] - 80) * math.cos(a) - (cen[:, 0] - 80) * math.sin(a)
    c_across = (cen[:, 1] - 80) * math.sin(a) + (cen[:, 0] - 80) * math.cos(a)
    on_body = (np.abs(c_along) < 52) & (np.abs(c_across) < 4)
    assert not on_body.any(), cen[on_body]
    assert n <= 3, cen


def test_breast_mask_zeroes_the_outside_and_sets_the_noise_region():
    img, truth, _ = blob_field(2)
    breast = np.zeros(img.shape, bool)
    breast[:, :100] = True
    for fn in (dog_hessian, tophat):
        p = fn(img, SPACING, breast)
        assert not p[~breast].any()
        full = fn(img, SPACING)
        # the noise level is read inside the breast: same statistics here, so nearly the same map inside
        assert np.mean(np.abs(p[breast] - full[breast])) < 0.02


def test_hill_map_closed_form():
    r = np.array([-3.0, 0.0, 2.5, 5.0, 10.0, 1e30], np.float32)
    np.testing.assert_allclose(hill(r, 5.0), [0, 0, 1 / 17, 0.5, 16 / 17, 1.0], rtol=1e-6)
    x = np.linspace(0, 50, 101)
    assert np.all(np.diff(hill(x, 7.0)) >= 0)


def test_line_footprint_is_a_centred_segment():
    for ang in np.linspace(0, math.pi, 9):
        fp = line_footprint(15, ang)
        assert fp.shape == (15, 15) and fp[7, 7]
        ys, xs = np.nonzero(fp)
        # a segment of Euclidean length 15 px: one pixel per row or column along its longer extent
        assert fp.sum() == 2 * round(7 * max(abs(math.cos(ang)), abs(math.sin(ang)))) + 1
        assert np.hypot(ys - 7, xs - 7).max() == pytest.approx(7, abs=1.0)
        # every pixel lies within half a pixel (per axis) of the ideal line
        d = np.abs((xs - 7) * math.sin(ang) + (ys - 7) * math.cos(ang))
        assert d.max() <= 0.71


def test_bad_input():
    img = np.zeros((32, 32), np.float32)
    with pytest.raises(ValueError, match=r"image must be \[H, W\]"):
        dog_hessian(np.zeros((2, 32, 32)), SPACING)
    with pytest.raises(ValueError, match="spacing_mm must be > 0"):
        tophat(img, 0.0)
    with pytest.raises(ValueError, match="NaN"):
        tophat(np.full((32, 32), np.nan), SPACING)
    with pytest.raises(ValueError, match="breast must have the image's shape"):
        dog_hessian(img, SPACING, np.ones((31, 32), bool))
    with pytest.raises(ValueError, match="n_scales"):
        dog_hessian(img, SPACING, n_scales=0)
    with pytest.raises(ValueError, match="lines"):
        tophat(img, SPACING, lines=-1)
    # a flat image has no blob and no noise: an all-zero map, not NaN
    assert not dog_hessian(img + 0.5, SPACING).any()
    assert not tophat(img + 0.5, SPACING).any()
