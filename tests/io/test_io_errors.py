"""Bad input raises MammogramReadError naming the file and the reason; nothing else escapes."""
from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from dicom_factory import breast_phantom, write_dicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mcgr.io import MammogramReadError, read_mammogram


@pytest.fixture
def good(tmp_path):
    return write_dicom(tmp_path / "good.dcm", breast_phantom(64, 48, 12, np.random.default_rng(0)), bits_stored=12)


def _raises(path, *reason):
    with pytest.raises(MammogramReadError) as info:
        read_mammogram(path, spacing=0.07)
    msg = str(info.value)
    assert str(path).rsplit("/", 1)[-1] in msg, msg
    for r in reason:
        assert r.lower() in msg.lower(), msg
    return info.value


def test_truncated_dicom(tmp_path, good):
    data = open(good, "rb").read()
    p = tmp_path / "truncated.dcm"
    p.write_bytes(data[: len(data) - 1000])
    _raises(p)
    p.write_bytes(data[:200])
    _raises(p)


def test_garbage_and_empty_files(tmp_path):
    p = tmp_path / "garbage.dcm"
    p.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    _raises(p)
    e = tmp_path / "empty.dcm"
    e.write_bytes(b"")
    _raises(e, "empty")
    _raises(tmp_path / "absent.dcm", "no such file")


def test_non_image_dicom(tmp_path):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    p = tmp_path / "report.dcm"
    ds.save_as(p, enforce_file_format=True)
    _raises(p, "PixelData", "not an image")


def test_missing_pixel_data(tmp_path, good):
    import pydicom

    ds = pydicom.dcmread(good)
    del ds.PixelData
    p = tmp_path / "nopixels.dcm"
    ds.save_as(p)
    _raises(p, "PixelData")


@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2.4.100", "1.2.826.0.1.3680043.9.9999.1"])
def test_transfer_syntax_without_decoder(tmp_path, good, uid):
    """MPEG-2 (a DICOM syntax nothing here decodes) and a private syntax pydicom does not know."""
    import pydicom
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(good)
    ds.file_meta.TransferSyntaxUID = uid
    ds.PixelData = encapsulate([ds.PixelData])
    p = tmp_path / "other_syntax.dcm"
    ds.save_as(p)
    _raises(p, "transfer syntax", "decoder")


def test_missing_decoder_plugin(tmp_path, monkeypatch):
    """An installed syntax whose decoder plugins are all absent: the message says what to install."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEG2000Lossless

    p = write_dicom(tmp_path / "j2k.dcm", breast_phantom(64, 48, 12, np.random.default_rng(2)), bits_stored=12,
                    syntax="j2k")
    dec = get_decoder(JPEG2000Lossless)
    monkeypatch.setattr(type(dec), "is_available", property(lambda self: False))
    _raises(p, "JPEG 2000", "decoder", "install")


@pytest.mark.parametrize("rows,cols,why", [(0, 48, "zero-size"), (64, 0, "zero-size"), (30000, 48, "20000")])
def test_bad_sizes(tmp_path, good, rows, cols, why):
    import pydicom

    ds = pydicom.dcmread(good)
    ds.Rows, ds.Columns = rows, cols
    p = tmp_path / f"size_{rows}x{cols}.dcm"
    ds.save_as(p)
    _raises(p, why)


def test_colour_and_multiframe_dicom(tmp_path, good):
    import pydicom

    ds = pydicom.dcmread(good)
    ds.SamplesPerPixel = 3
    p = tmp_path / "rgb.dcm"
    ds.save_as(p)
    _raises(p, "samples per pixel")
    ds = pydicom.dcmread(good)
    ds.NumberOfFrames = 2
    p = tmp_path / "frames.dcm"
    ds.save_as(p)
    _raises(p, "frames")


def test_nan_and_bad_rasters(tmp_path):
    import tifffile
    from PIL import Image

    a = np.random.default_rng(3).random((40, 30)).astype(np.float32)
    a[5, 7] = np.nan
    np.save(tmp_path / "nan.npy", a)
    _raises(tmp_path / "nan.npy", "NaN")
    tifffile.imwrite(tmp_path / "nan.tif", a)
    _raises(tmp_path / "nan.tif", "NaN")
    b = a.copy()
    b[5, 7] = np.inf
    np.save(tmp_path / "inf.npy", b)
    _raises(tmp_path / "inf.npy", "inf")
    np.save(tmp_path / "cube.npy", np.zeros((4, 5, 6), np.float32))
    _raises(tmp_path / "cube.npy", "2-D")
    np.save(tmp_path / "empty.npy", np.zeros((0, 6), np.float32))
    _raises(tmp_path / "empty.npy", "zero-size")
    np.save(tmp_path / "huge.npy", np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), (25000, 2), (0, 0)))
    _raises(tmp_path / "huge.npy", "20000")
    Image.fromarray(np.zeros((10, 30), np.uint8)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    _raises(tmp_path / "cut.png", "PNG")


def _mutations(data: bytes, rng: np.random.Generator):
    """Byte flips (concentrated in the header, where damage changes the parse) and truncations."""
    while True:
        buf = bytearray(data)
        if rng.random() < 0.35:
            yield bytes(buf[: int(rng.integers(0, len(buf)))])
            continue
        n = int(rng.integers(1, 9))
        header = rng.random() < 0.7
        for _ in range(n):
            i = int(rng.integers(0, min(len(buf), 600) if header else len(buf)))
            buf[i] = int(rng.integers(0, 256)) if rng.random() < 0.5 else buf[i] ^ (1 << int(rng.integers(0, 8)))
        yield bytes(buf)


@pytest.mark.parametrize("syntax", ["native", "rle", "jpegls"])
def test_fuzz_reader(tmp_path, syntax):
    """Random flips and truncations of a valid file: success or MammogramReadError, within a time budget."""
    src = write_dicom(tmp_path / "src.dcm", breast_phantom(64, 48, 12, np.random.default_rng(4)), bits_stored=12,
                      syntax=syntax)
    data = open(src, "rb").read()
    rng = np.random.default_rng(1234 + len(syntax))
    p = tmp_path / "fuzz.dcm"
    t0 = time.perf_counter()
    outcomes = {"ok": 0, "error": 0}
    for n, mutated in enumerate(_mutations(data, rng)):
        if n >= 400 or time.perf_counter() - t0 > 2.0:
            break
        p.write_bytes(mutated)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                m = read_mammogram(p)
            except MammogramReadError as exc:
                assert "fuzz.dcm" in str(exc)
                outcomes["error"] += 1
                continue
        assert m.image.dtype == np.float32 and m.image.ndim == 2
        assert np.isfinite(m.image).all() and 0.0 <= m.image.min() and m.image.max() <= 1.0
        outcomes["ok"] += 1
    assert time.perf_counter() - t0 < 10.0
    assert outcomes["error"] > 10 and sum(outcomes.values()) > 50, outcomes
