"""write_outputs: every file on the input's own grid and orientation, the SEG readable by pydicom."""
from __future__ import annotations

import json
import os

import numpy as np
import pydicom
import pytest
from dicom_factory import breast_phantom, write_dicom
from PIL import Image

from mcgr.io import read_mammogram, to_model_spacing
from mcgr.io.writers import write_outputs


def _case(tmp_path, laterality="R", spacing=0.05):
    wall = "left" if laterality == "L" else "right"
    stored = breast_phantom(211, 157, 12, np.random.default_rng(0), chest_wall=wall)
    path = write_dicom(tmp_path / "in.dcm", stored, bits_stored=12, laterality=laterality, pixel_spacing=spacing)
    return read_mammogram(path)


def _detections(t, points):
    """Detections at source pixels ``points``: their canonical model-grid pixels by the written-out definition."""
    w = t.source_shape[1]
    mask = np.zeros(t.model_shape, bool)
    prob = np.zeros(t.model_shape, np.float32)
    dets = []
    for i, (r, c) in enumerate(points):
        cc = w - 1 - c if t.flipped else c
        y, x = int((r + 0.5) * t.source_mm / t.model_mm), int((cc + 0.5) * t.source_mm / t.model_mm)
        mask[y, x] = True
        prob[y, x] = 0.9
        dets.append({"id": i + 1, "y": float(y), "x": float(x), "area_px": 1, "peak_prob": 0.9, "cluster": 1})
    clusters = [{"id": 1, "members": [d["id"] for d in dets], "y": float(np.mean([d["y"] for d in dets])),
                 "x": float(np.mean([d["x"] for d in dets]))}]
    return prob, mask, dets, clusters


@pytest.mark.parametrize("laterality", ["L", "R"])
def test_outputs_line_up_with_the_source(tmp_path, laterality):
    m = _case(tmp_path, laterality)
    _, t = to_model_spacing(m)
    points = [(100, 40), (104, 47), (97, 52)]
    prob, mask, dets, clusters = _detections(t, points)
    unc = np.full(t.model_shape, 0.25, np.float32)
    paths = write_outputs(tmp_path / "out", "case", m, prob, mask, dets, clusters, uncertainty=unc)
    assert set(paths) == {"mask", "prob", "overlay", "json", "seg", "uncertainty"}
    assert not [f for f in os.listdir(tmp_path / "out") if f.endswith(".tmp")]

    png = np.asarray(Image.open(paths["mask"]))
    assert png.shape == m.source_shape and png.dtype == np.uint8 and set(np.unique(png)) <= {0, 255}
    for r, c in points:
        assert png[r, c] == 255, (r, c)
        window = png[r - 2:r + 3, c - 2:c + 3]
        assert window.sum() == png[max(0, r - 3):r + 4, max(0, c - 3):c + 4].sum()  # nothing strays further
    prob_src = np.load(paths["prob"])
    assert prob_src.dtype == np.float32 and prob_src.shape == m.source_shape
    assert all(prob_src[r, c] > 0.3 for r, c in points)
    assert np.allclose(np.load(paths["uncertainty"]), 0.25)

    doc = json.load(open(paths["json"]))
    assert doc["source"] == m.source and doc["spacing_mm"] == 0.05 and doc["laterality"] == laterality
    assert doc["n_detections"] == 3 and doc["clusters"][0]["members"] == [1, 2, 3]
    for d, (r, c) in zip(doc["detections"], points):
        assert abs(d["row"] - r) <= 0.7 and abs(d["col"] - c) <= 0.7, (d, r, c)
        assert d["y_mm"] == pytest.approx(d["row"] * 0.05) and d["x_mm"] == pytest.approx(d["col"] * 0.05)
        assert d["area_mm2"] == pytest.approx(0.07**2) and d["cluster"] == 1 and d["peak_prob"] == 0.9

    seg = pydicom.dcmread(paths["seg"])
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    ref = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert ref.ReferencedSOPInstanceUID == m.dicom.sop_instance_uid
    np.testing.assert_array_equal(seg.pixel_array.astype(bool), png > 0)

    over = Image.open(paths["overlay"])
    assert over.mode == "RGB" and over.width > 157 and over.height >= 211  # overview plus a cluster crop


def test_image_grid_inputs_and_png_source(tmp_path):
    """Maps on the image grid (no resampling) and a PNG source (no SEG)."""
    stored = breast_phantom(90, 70, 16, np.random.default_rng(1), chest_wall="right")
    Image.fromarray(stored).save(tmp_path / "x.png")
    m = read_mammogram(tmp_path / "x.png", spacing=0.07)
    assert m.flipped
    mask = np.zeros(m.image.shape, bool)
    mask[10, 5] = True  # canonical (10, 5) is source (10, 64)
    paths = write_outputs(tmp_path, "x", m, mask.astype(np.float32), mask, [], [])
    assert "seg" not in paths
    png = np.asarray(Image.open(paths["mask"]))
    assert np.argwhere(png).tolist() == [[10, 64]]


def test_validation(tmp_path):
    m = _case(tmp_path)
    _, t = to_model_spacing(m)
    prob, mask, dets, clusters = _detections(t, [(50, 50)])
    with pytest.raises(ValueError, match="prob_canonical"):
        write_outputs(tmp_path, "c", m, prob[:-1], mask[:-1], dets, clusters)
    with pytest.raises(ValueError, match="detections\\[0\\]"):
        write_outputs(tmp_path, "c", m, prob, mask, [{"id": 1}], clusters)
    with pytest.raises(ValueError, match="stem"):
        write_outputs(tmp_path, "a/b", m, prob, mask, dets, clusters)
    bad = prob.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_outputs(tmp_path, "c", m, bad, mask, dets, clusters)


def test_seg_is_written_for_a_source_without_patient_and_study_type2_attributes(tmp_path):
    stored = breast_phantom(120, 90, 12, np.random.default_rng(1), chest_wall="left")
    path = write_dicom(tmp_path / "anon.dcm", stored, bits_stored=12, laterality="L", pixel_spacing=0.07)
    ds = pydicom.dcmread(path)
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate", "StudyTime",
               "ReferringPhysicianName", "AccessionNumber"):
        delattr(ds, kw)
    ds.save_as(path)
    m = read_mammogram(path)
    _, t = to_model_spacing(m)
    prob, mask, dets, clusters = _detections(t, [(60, 40)])
    paths = write_outputs(tmp_path / "out", "anon", m, prob, mask, dets, clusters)
    seg = pydicom.dcmread(paths["seg"])
    assert seg.PatientID == "" and seg.StudyInstanceUID == ds.StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert seg.pixel_array.astype(bool).sum() == np.asarray(Image.open(paths["mask"])).astype(bool).sum() > 0
