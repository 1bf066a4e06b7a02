"""Hostile files the reader must refuse with a clear error, or read correctly: absurd pixel spacings,
a BitsStored smaller than the data, images that are not mammograms, a model grid too large for the
machine; and a property-based fuzz of the header fields and pixel data."""
from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from dicom_factory import breast_phantom, write_dicom
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcgr.io import MammogramReadError, read_mammogram
from mcgr.io.errors import MammogramWarning


def _stored(rows=64, cols=48, bits=12, seed=0):
    return breast_phantom(rows, cols, bits, np.random.default_rng(seed))


# ---------------------------------------------------------------- the model grid

def test_large_pixel_spacing_is_refused_before_resampling(tmp_path):
    p = write_dicom(tmp_path / "big.dcm", _stored(640, 512), bits_stored=12, pixel_spacing=2.0)
    t0 = time.perf_counter()
    with pytest.raises(MammogramReadError) as ei:
        read_mammogram(p)
    assert time.perf_counter() - t0 < 5.0
    msg = str(ei.value)
    rows, cols = round(640 * 2.0 / 0.07), round(512 * 2.0 / 0.07)  # the 0.07 mm model grid
    assert f"{rows} x {cols} px" in msg and "PixelSpacing" in msg and "GB" in msg, msg
    # the same through --spacing on a file without a spacing of its own
    np.save(tmp_path / "big.npy", _stored(640, 512).astype(np.float32))
    with pytest.raises(MammogramReadError, match=f"{rows} x {cols} px"):
        read_mammogram(tmp_path / "big.npy", spacing=2.0)


def test_a_model_grid_larger_than_the_free_memory_is_refused(tmp_path, monkeypatch):
    import mcgr._memory

    np.save(tmp_path / "a.npy", _stored(1000, 800).astype(np.float32))
    monkeypatch.setattr(mcgr._memory, "available_bytes", lambda: 10_000_000)
    with pytest.raises(MammogramReadError, match=r"1000 x 800 px \(0\.8 Mpx\).*51\.2 MB.*10\.0 MB available"):
        read_mammogram(tmp_path / "a.npy", spacing=0.07)
    monkeypatch.setattr(mcgr._memory, "available_bytes", lambda: 10_000_000_000)
    assert read_mammogram(tmp_path / "a.npy", spacing=0.07).image.shape == (1000, 800)


# ---------------------------------------------------------------- pixel spacing tags

@pytest.mark.parametrize("value, shown", [
    ([0.0, 0.0], "0.0\\0.0"), ([-0.1, -0.1], "-0.1\\-0.1"), ([0.001, 0.001], "0.001\\0.001"),
    (0.07, "0.07"), ([0.07, 0.07, 0.07], "0.07\\0.07\\0.07"),
])
def test_an_invalid_pixel_spacing_names_the_tag(tmp_path, value, shown):
    p = write_dicom(tmp_path / "s.dcm", _stored(), pixel_spacing=None, extra={"PixelSpacing": value})
    with pytest.raises(MammogramReadError) as ei:
        read_mammogram(p)
    msg = str(ei.value)
    assert "PixelSpacing (0028,0030)" in msg and repr(shown) in msg and "--spacing" in msg, msg
    # an explicit spacing overrides the damaged tag
    assert read_mammogram(p, spacing=0.07).spacing_mm == 0.07


def test_an_invalid_imager_pixel_spacing_names_the_tag(tmp_path):
    p = write_dicom(tmp_path / "s.dcm", _stored(), pixel_spacing=None, imager_spacing=0.0)
    with pytest.raises(MammogramReadError, match=r"ImagerPixelSpacing \(0018,1164\)"):
        read_mammogram(p)


@pytest.mark.parametrize("extra", [None, {"PixelSpacing": ""}])
def test_a_missing_pixel_spacing_is_guessed_with_a_warning(tmp_path, extra):
    p = write_dicom(tmp_path / "s.dcm", _stored(), pixel_spacing=None, extra=extra)
    with pytest.warns(MammogramWarning, match="no pixel spacing"):
        m = read_mammogram(p)
    assert m.spacing_mm == 0.05 and m.spacing_source == "default" and "no pixel spacing" in m.meta["warnings"][0]


# ---------------------------------------------------------------- BitsStored

def test_values_above_bits_stored_warn_and_keep_their_real_range(tmp_path):
    stored = _stored(80, 60, bits=16, seed=3)  # 16-bit data under a header claiming 12 bits
    assert stored.max() > 4095
    p = write_dicom(tmp_path / "b.dcm", stored, bits_stored=12)
    with pytest.warns(MammogramWarning, match=r"BitsStored \(0028,0101\) is 12 but the pixel values reach 65535"):
        m = read_mammogram(p, canonical=False)
    s = stored.astype(np.float64)
    want = (s - s.min()) / (s.max() - s.min())
    np.testing.assert_allclose(m.image, want, atol=1e-6)
    assert "BitsStored" in m.meta["warnings"][0]


def test_values_within_bits_stored_give_no_warning(tmp_path):
    p = write_dicom(tmp_path / "b.dcm", _stored(bits=12), bits_stored=12)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MammogramWarning)
        m = read_mammogram(p)
    assert "warnings" not in m.meta


# ---------------------------------------------------------------- not a mammogram

def _png(path, a):
    from PIL import Image

    Image.fromarray(a).save(path)
    return path


@pytest.mark.parametrize("case, word", [
    ("1x1.npy", "too small"), ("1x1.dcm", "too small"), ("const.dcm", "blank"), ("const.png", "blank"),
    ("bool.npy", "binary"), ("bool.png", "binary"), ("two.png", "binary"), ("two.dcm", "binary"),
])
def test_images_that_are_not_mammograms_are_refused(tmp_path, case, word):
    rng = np.random.default_rng(0)
    two = np.where(rng.random((64, 48)) < 0.3, 4000, 100).astype(np.uint16)
    p = tmp_path / case
    {
        "1x1.npy": lambda: np.save(p, np.array([[0.5]], np.float32)),
        "1x1.dcm": lambda: write_dicom(p, np.array([[1000]], np.uint16)),
        "const.dcm": lambda: write_dicom(p, np.full((64, 48), 1000, np.uint16)),
        "const.png": lambda: _png(p, np.full((64, 48), 128, np.uint8)),
        "bool.npy": lambda: np.save(p, rng.random((64, 48)) < 0.5),
        "bool.png": lambda: _png(p, rng.random((64, 48)) < 0.5),
        "two.png": lambda: _png(p, (two // 16).astype(np.uint8)),
        "two.dcm": lambda: write_dicom(p, two),
    }[case]()
    with pytest.raises(MammogramReadError) as ei:
        read_mammogram(p, spacing=0.07)
    assert "not a mammogram" in str(ei.value) and word in str(ei.value) and case in str(ei.value)


# ---------------------------------------------------------------- fuzz

_US = st.one_of(st.integers(0, 70), st.sampled_from([0, 1, 7, 8, 12, 15, 16, 17, 31, 32, 64, 65535]))
_DS = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32).map(lambda v: f"{v:.6g}"[:16]),
                st.sampled_from(["0", "-1", "0.001", "1e9", "", "2.0"]))
_HEADER = st.fixed_dictionaries({}, optional={
    "Rows": _US, "Columns": _US, "BitsAllocated": _US, "BitsStored": _US, "HighBit": _US,
    "PixelRepresentation": st.integers(0, 3), "SamplesPerPixel": st.integers(0, 4),
    "NumberOfFrames": st.sampled_from(["0", "1", "2", "-1", "abc"]),
    "PhotometricInterpretation": st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "", "X"]),
    "PixelSpacing": st.lists(_DS, min_size=0, max_size=3), "ImagerPixelSpacing": st.lists(_DS, min_size=1, max_size=2),
    "RescaleSlope": _DS, "RescaleIntercept": _DS, "WindowCenter": _DS, "WindowWidth": _DS,
    "EstimatedRadiographicMagnificationFactor": _DS,
})
_PIXELS = st.sampled_from(["keep", "cut", "extra", "empty", "random", "constant", "binary"])


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=150, deadline=3000, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(header=_HEADER, pixels=_PIXELS, seed=st.integers(0, 2**16))
def test_fuzz_header_and_pixel_data(tmp_path, header, pixels, seed):
    """Any damage to the header fields or pixel data gives a valid image or a MammogramReadError /
    ValueError that says why; never another exception, never a hang (hypothesis' deadline)."""
    from pydicom import config

    rng = np.random.default_rng(seed)
    stored = _stored(40, 30, 12, seed)
    if pixels == "constant":
        stored[:] = 700
    elif pixels == "binary":
        stored = np.where(stored > 1000, 4000, 0).astype(np.uint16)
    p = tmp_path / "f.dcm"
    old = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        write_dicom(p, stored, bits_stored=12, extra=header)
    except (ValueError, TypeError, OverflowError, AttributeError):
        return  # pydicom cannot even write this header: nothing to read
    finally:
        config.settings.writing_validation_mode = old
    data = p.read_bytes()
    n = stored.nbytes
    if pixels == "cut":
        data = data[: len(data) - n // 2]
    elif pixels == "extra":
        data = data + bytes(rng.integers(0, 256, 100, dtype=np.uint8))
    elif pixels == "empty":
        data = data[: len(data) - n]
    elif pixels == "random":
        data = data[: len(data) - n] + bytes(rng.integers(0, 256, n, dtype=np.uint8))
    p.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            m = read_mammogram(p)
        except (MammogramReadError, ValueError) as exc:
            assert str(exc).strip(), "an error without a message"
            return
    assert m.image.dtype == np.float32 and m.image.ndim == 2 and min(m.image.shape) >= 16
    assert np.isfinite(m.image).all() and m.image.min() >= 0.0 and m.image.max() <= 1.0
    assert 0.005 <= m.spacing_mm <= 2.0
