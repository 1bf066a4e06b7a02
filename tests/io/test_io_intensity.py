"""The reader's intensity window: outliers, padding and saturation do not move it (independent
expectation: the clean image's own min/max map)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from dicom_factory import write_dicom

from mcgr.io import read_mammogram
from mcgr.io.intensity import intensity_window


def _phantom(rng, rows=200, cols=150, top=4095):
    """Stored values: textured tissue in a half-ellipse on the left, noisy dark air elsewhere."""
    y, x = np.mgrid[0:rows, 0:cols]
    inside = ((y - rows / 2) / (0.45 * rows)) ** 2 + (x / (0.8 * cols)) ** 2 <= 1
    tissue = 1500 + 1200 * rng.random((rows, cols))
    air = 50 + 20 * rng.random((rows, cols))
    return np.where(inside, tissue, air).astype(np.uint16), inside


def _clean_map(a, inside):
    lo, hi = float(a.min()), float(a.max())
    return (a.astype(np.float64) - lo) / (hi - lo)


@pytest.mark.parametrize("factor", [4, 6, 10])
def test_a_hot_spot_does_not_move_the_window(tmp_path, factor):
    rng = np.random.default_rng(factor)
    a, inside = _phantom(rng)
    want = _clean_map(a, inside)
    hot = a.astype(np.uint32)
    hot[100:102, 40:42] = factor * int(a.max())
    path = write_dicom(tmp_path / "hot.dcm", np.minimum(hot, 65535).astype(np.uint16))
    m = read_mammogram(path)
    got = m.image.astype(np.float64)
    off = np.ones(a.shape, bool)
    off[100:102, 40:42] = False
    assert np.abs(got[off] - want[off]).max() < 1e-6
    assert (got[~off] == 1.0).all() and m.meta["intensity"]["outliers"]["pixels"] == 4


@pytest.mark.parametrize("tagged", [True, False])
def test_padded_air_is_air(tmp_path, tagged):
    rng = np.random.default_rng(3)
    a, inside = _phantom(rng)
    pad = a.copy()
    pad[:, 120:] = 65535  # the detector's unused columns
    want = _clean_map(np.where(pad == 65535, a.min(), a), inside)
    extra = {"PixelPaddingValue": 65535} if tagged else None
    path = write_dicom(tmp_path / "pad.dcm", pad, extra=extra)
    m = read_mammogram(path)
    got = m.image.astype(np.float64)
    keep = pad != 65535
    assert np.abs(got[keep] - want[keep]).max() < 1e-6
    assert (got[~keep] == 0.0).all()
    assert m.meta["intensity"]["padding"]["from"] == ("PixelPaddingValue" if tagged else "image")


def test_padding_in_monochrome1_is_air(tmp_path):
    rng = np.random.default_rng(4)
    a, inside = _phantom(rng)
    mono1 = (4095 - a).astype(np.uint16)  # bright = low values
    mono1[:10] = 65535
    path = write_dicom(tmp_path / "m1.dcm", mono1, photometric="MONOCHROME1")
    m = read_mammogram(path)
    want = _clean_map(a[10:], inside[10:])
    assert np.abs(m.image[10:] - want).max() < 1e-5 and (m.image[:10] == 0).all()


def test_a_saturated_marker_is_left_out_and_reads_white(tmp_path):
    rng = np.random.default_rng(5)
    a, inside = _phantom(rng)
    mk = a.copy()
    mk[20:40, 100:130] = 4095  # a burnt-in marker at full white, above every tissue value
    want = _clean_map(np.where(mk == 4095, a.min(), a), inside)
    m = read_mammogram(write_dicom(tmp_path / "mk.dcm", mk, bits_stored=12))
    keep = mk != 4095
    assert np.abs(m.image[keep] - want[keep]).max() < 1e-6 and (m.image[~keep] == 1.0).all()
    assert m.meta["intensity"]["saturated"]["pixels"] == 600


def test_clean_image_is_its_own_min_max():
    rng = np.random.default_rng(6)
    a, _ = _phantom(rng)
    w = intensity_window(a)
    assert (w.lo, w.hi) == (float(a.min()), float(a.max())) and w.padding is None


def test_tiff_min_is_white_is_inverted(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    rng = np.random.default_rng(7)
    a, inside = _phantom(rng)
    white = (4095 - a).astype(np.uint16)
    p1, p2 = tmp_path / "w.tif", tmp_path / "b.tif"
    tifffile.imwrite(p1, white, photometric="miniswhite")
    tifffile.imwrite(p2, a, photometric="minisblack")
    m1, m2 = read_mammogram(p1, spacing=0.07), read_mammogram(p2, spacing=0.07)
    assert m1.meta["photometric"] == "MinIsWhite" and np.abs(m1.image - m2.image).max() < 1e-6
    assert np.abs(m2.image - _clean_map(a, inside)).max() < 1e-6


def test_float_npy_in_unit_range_reads_as_stored(tmp_path):
    rng = np.random.default_rng(8)
    a = (0.2 + 0.5 * rng.random((64, 48))).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = read_mammogram(tmp_path / "a.npy", spacing=0.07, canonical=False)
    assert np.array_equal(m.image, a)
