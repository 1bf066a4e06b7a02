"""read_mammogram on DICOMs written here from known stored values: every flavour reads back exactly."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from dicom_factory import breast_phantom, can_encode, write_dicom

from mcgr.io import DEFAULT_FILM_SPACING_MM, MammogramReadError, read_mammogram
from mcgr.io.errors import MammogramWarning


def expected_image(stored: np.ndarray, slope=1.0, intercept=0.0, mono1=False) -> np.ndarray:
    """The specification, computed in float64: Modality rescale, then min-max onto [0, 1], MONO1 inverted."""
    v = stored.astype(np.float64) * slope + intercept
    lo, hi = v.min(), v.max()
    out = (v - lo) / (hi - lo)
    return 1.0 - out if mono1 else out


def assert_image(actual: np.ndarray, expected: np.ndarray, stored: np.ndarray) -> None:
    """Equal up to float32 rounding, and exactly equal once mapped back to integer stored steps
    (``expected * steps`` is an integer for a linear map of integers spanning ``steps``)."""
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    worst = np.unravel_index(np.argmax(np.abs(actual - expected)), expected.shape)
    assert np.abs(actual - expected).max() <= 3e-7, f"worst at {worst}: {actual[worst]} vs {expected[worst]}"
    steps = float(stored.max()) - float(stored.min())
    np.testing.assert_array_equal(np.rint(actual.astype(np.float64) * steps), np.rint(expected * steps))


SYNTAXES = ["native", "rle", "j2k", "jpegls", "jpeg_lossless"]


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("bits", [12, 14, 16])
def test_stored_values_read_back_exactly(tmp_path, syntax, bits):
    ok, why = can_encode(syntax)
    if not ok:
        pytest.skip(why)
    rng = np.random.default_rng(bits * 7 + len(syntax))
    stored = breast_phantom(64, 48, bits, rng)
    path = write_dicom(tmp_path / "a.dcm", stored, bits_stored=bits, syntax=syntax)
    m = read_mammogram(path, canonical=False)
    assert_image(m.image, expected_image(stored), stored)
    assert m.meta["bits_stored"] == bits
    assert m.source_shape == (64, 48) and m.spacing_mm == 0.07 and m.spacing_source == "PixelSpacing"
    assert (m.laterality, m.view) == ("L", "CC")
    assert m.dicom is not None and m.dicom.path == path


@pytest.mark.parametrize("syntax", ["native", "rle"])
def test_monochrome1_is_inverted(tmp_path, syntax):
    stored = breast_phantom(50, 40, 14, np.random.default_rng(1))
    path = write_dicom(tmp_path / "m1.dcm", stored, bits_stored=14, photometric="MONOCHROME1", syntax=syntax)
    m = read_mammogram(path, canonical=False)
    assert_image(m.image, expected_image(stored, mono1=True), stored)
    assert m.meta["photometric"] == "MONOCHROME1"
    # On MONOCHROME1 low stored values are bright: the minimum stored value must read as 1.
    assert m.image.flat[np.argmin(stored)] == 1.0 and m.image.flat[np.argmax(stored)] == 0.0


def test_rescale_slope_intercept(tmp_path):
    stored = breast_phantom(40, 30, 12, np.random.default_rng(2))
    path = write_dicom(tmp_path / "r.dcm", stored, bits_stored=12, slope=0.5, intercept=-100.0)
    m = read_mammogram(path, canonical=False)
    assert_image(m.image, expected_image(stored, 0.5, -100.0), stored)
    assert m.meta["rescale"] == (0.5, -100.0)


def test_negative_slope_reverses_contrast(tmp_path):
    stored = breast_phantom(40, 30, 12, np.random.default_rng(3))
    path = write_dicom(tmp_path / "r.dcm", stored, bits_stored=12, slope=-2.0, intercept=5000.0)
    m = read_mammogram(path, canonical=False)
    assert_image(m.image, expected_image(stored, -2.0, 5000.0), stored)


def test_signed_pixels(tmp_path):
    stored = breast_phantom(40, 30, 16, np.random.default_rng(4), signed=True)
    path = write_dicom(tmp_path / "s.dcm", stored, bits_stored=16)
    m = read_mammogram(path, canonical=False)
    assert_image(m.image, expected_image(stored), stored)


def test_bits_above_bits_stored_are_ignored(tmp_path):
    """Overlay planes or junk in the unused high bits must not reach the image (PS3.5 8.1.1)."""
    stored = breast_phantom(40, 30, 12, np.random.default_rng(5))
    junk = stored | np.uint16(0xA000)
    path = write_dicom(tmp_path / "j.dcm", junk, bits_stored=12)
    m = read_mammogram(path, canonical=False)
    assert_image(m.image, expected_image(stored), stored)


def _window_linear(x, c, w, ymin, ymax):
    """PS3.3 C.11.2.1.2.1, written out independently of pydicom."""
    y = ((x - (c - 0.5)) / (w - 1) + 0.5) * (ymax - ymin) + ymin
    y = np.where(x <= c - 0.5 - (w - 1) / 2, ymin, y)
    return np.where(x > c - 0.5 + (w - 1) / 2, ymax, y)


def test_voi_window_off_by_default_and_applied_on_request(tmp_path):
    stored = breast_phantom(40, 30, 12, np.random.default_rng(6))
    path = write_dicom(tmp_path / "w.dcm", stored, bits_stored=12, window=(2000.0, 1500.0))
    raw = read_mammogram(path, canonical=False)
    assert_image(raw.image, expected_image(stored), stored)
    assert raw.meta["voi_applied"] is False
    win = read_mammogram(path, canonical=False, voi=True)
    y = _window_linear(stored.astype(np.float64), 2000.0, 1500.0, 0.0, 4095.0)
    exp = (y - y.min()) / (y.max() - y.min())
    assert np.abs(win.image - exp).max() < 1e-6


def test_voi_lut_sequence_wins_over_window(tmp_path):
    stored = breast_phantom(40, 30, 12, np.random.default_rng(7))
    first, n = 100, 2048
    lut = (np.sqrt(np.arange(n) / (n - 1)) * 4095).astype(np.int64)
    path = write_dicom(tmp_path / "l.dcm", stored, bits_stored=12, window=(2000.0, 100.0),
                       voi_lut=([n, first, 12], lut))
    m = read_mammogram(path, canonical=False, voi=True)
    y = lut[np.clip(stored.astype(np.int64) - first, 0, n - 1)].astype(np.float64)
    exp = (y - y.min()) / (y.max() - y.min())
    assert np.abs(m.image - exp).max() < 1e-6


@pytest.mark.parametrize("laterality", ["L", "R"])
@pytest.mark.parametrize("keyword", ["ImageLaterality", "Laterality"])
def test_laterality_and_canonical_orientation(tmp_path, laterality, keyword):
    wall = "left" if laterality == "L" else "right"
    stored = breast_phantom(60, 44, 16, np.random.default_rng(8), chest_wall=wall)
    path = write_dicom(tmp_path / "o.dcm", stored, laterality=laterality, laterality_keyword=keyword, view="MLO")
    m = read_mammogram(path)
    exp = expected_image(stored)
    if laterality == "R":
        exp = exp[:, ::-1]
    assert_image(m.image, np.ascontiguousarray(exp), stored)
    assert m.flipped == (laterality == "R") and m.laterality == laterality and m.view == "MLO"
    assert m.meta["orientation_from"] == "image"
    np.testing.assert_array_equal(m.to_source(m.image), read_mammogram(path, canonical=False).image)


def test_patient_orientation_decides_the_mirror_unless_the_image_contradicts_it(tmp_path):
    """Row direction P puts the chest wall on the right; a header the image agrees with (or cannot
    judge) decides, one the image contradicts is overruled with a warning."""
    rng = np.random.default_rng(9)
    right = breast_phantom(60, 44, 16, rng, chest_wall="right")
    path = write_dicom(tmp_path / "agree.dcm", right, laterality="R", patient_orientation="P\\L")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = read_mammogram(path)
    assert m.flipped and m.meta["orientation_from"] == "PatientOrientation"
    # tissue across the whole width: the image cannot tell, the header decides
    flat = rng.integers(20000, 40000, size=(60, 44)).astype(np.uint16)
    path = write_dicom(tmp_path / "flat.dcm", flat, laterality="R", patient_orientation="P\\L")
    assert read_mammogram(path).flipped
    # the header says right, the pixels say left: the image wins and the reader says so
    left = breast_phantom(60, 44, 16, rng, chest_wall="left")
    path = write_dicom(tmp_path / "po.dcm", left, laterality="R", patient_orientation="P\\L")
    with pytest.warns(MammogramWarning, match="PatientOrientation.*contradict|shows it on the left"):
        m = read_mammogram(path)
    assert not m.flipped and "contradicted" in m.meta["orientation_from"]
    assert any("PatientOrientation" in w for w in m.meta["warnings"])
    path = write_dicom(tmp_path / "pa.dcm", left[:, ::-1].copy(), laterality="L", patient_orientation="A\\R")
    with pytest.warns(MammogramWarning):
        assert read_mammogram(path).flipped


def test_laterality_from_image_and_text_when_tags_missing(tmp_path):
    stored = breast_phantom(60, 44, 16, np.random.default_rng(10), chest_wall="right")
    m = read_mammogram(write_dicom(tmp_path / "n.dcm", stored, laterality=None, view=None))
    assert m.laterality == "R" and m.flipped and m.meta["laterality_from"] == "image" and m.view == ""
    m = read_mammogram(write_dicom(tmp_path / "t.dcm", stored, laterality=None, view=None,
                                   extra={"SeriesDescription": "Calc-Training_P_0001_LEFT_MLO"}))
    assert m.laterality == "L" and m.view == "MLO" and m.meta["laterality_from"] == "text"


def test_spacing_sources(tmp_path):
    stored = breast_phantom(40, 30, 12, np.random.default_rng(11))
    p = write_dicom(tmp_path / "a.dcm", stored, pixel_spacing=0.1, imager_spacing=0.085, emf=1.1)
    m = read_mammogram(p)
    assert (m.spacing_mm, m.spacing_source) == (0.1, "PixelSpacing")
    p = write_dicom(tmp_path / "b.dcm", stored, pixel_spacing=None, imager_spacing=0.085, emf=1.0625)
    m = read_mammogram(p)
    assert m.spacing_source == "ImagerPixelSpacing" and m.spacing_mm == pytest.approx(0.085 / 1.0625)
    assert m.meta["magnification"] == pytest.approx(1.0625)
    p = write_dicom(tmp_path / "c.dcm", stored, pixel_spacing=None)
    with pytest.warns(UserWarning, match="no pixel spacing"):
        m = read_mammogram(p)
    assert (m.spacing_mm, m.spacing_source) == (DEFAULT_FILM_SPACING_MM, "default")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = read_mammogram(p, spacing=0.042)
    assert (m.spacing_mm, m.spacing_source) == (0.042, "argument")
    m = read_mammogram(write_dicom(tmp_path / "d.dcm", stored, pixel_spacing=0.1), spacing=0.05)
    assert (m.spacing_mm, m.spacing_source) == (0.05, "argument")


def test_spacing_argument_is_validated(tmp_path):
    p = write_dicom(tmp_path / "a.dcm", breast_phantom(40, 30, 12, np.random.default_rng(12)))
    with pytest.raises(ValueError, match="spacing"):
        read_mammogram(p, spacing=-1)
    with pytest.raises(TypeError, match="spacing"):
        read_mammogram(p, spacing="fine")


def test_png_tiff_npy(tmp_path):
    from PIL import Image
    import tifffile

    rng = np.random.default_rng(13)
    stored = breast_phantom(50, 36, 16, rng)
    Image.fromarray(stored).save(tmp_path / "img_RCC.png")
    tifffile.imwrite(tmp_path / "img.tif", stored)
    np.save(tmp_path / "img.npy", stored.astype(np.float32) / 7.0)
    exp = expected_image(stored)
    for name in ("img_RCC.png", "img.tif", "img.npy"):
        m = read_mammogram(tmp_path / name, spacing=0.05, canonical=False)
        assert np.abs(m.image - exp).max() < 1e-6, name
        assert (m.spacing_mm, m.spacing_source, m.dicom) == (0.05, "argument", None)
        with pytest.raises(MammogramReadError, match=f"{name}.*spacing"):
            read_mammogram(tmp_path / name)
    assert read_mammogram(tmp_path / "img_RCC.png", spacing=0.05).laterality == "R"
    g8 = (stored >> 8).astype(np.uint8)
    Image.fromarray(np.stack([g8] * 3, -1)).save(tmp_path / "rgb.png")
    m = read_mammogram(tmp_path / "rgb.png", spacing=0.1, canonical=False)
    assert np.abs(m.image - expected_image(g8)).max() < 1e-6
