"""write_outputs: every file on the input's own grid and orientation, the SEG readable by pydicom."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from dicom_factory import breast_phantom, write_dicom
from PIL import Image

from mcgr.io import read_mammogram, to_model_spacing
from mcgr.io import read_prob_map
from mcgr.io.writers import DEFAULT_OUTPUTS, OUTPUT_KINDS, write_outputs


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
    dets[0].update(base_prob=0.8123456, generator_vote=0.25)  # a TT-GPR detection's two numbers
    unc = np.full(t.model_shape, 0.25, np.float32)
    paths = write_outputs(tmp_path / "out", "case", m, prob, mask, dets, clusters, uncertainty=unc,
                          outputs=OUTPUT_KINDS)
    assert set(paths) == {"mask", "prob", "overlay", "json", "seg", "uncertainty"}
    assert not [f for f in os.listdir(tmp_path / "out") if f.endswith(".tmp")]

    png = np.asarray(Image.open(paths["mask"]))
    assert png.shape == m.source_shape and png.dtype == np.uint8 and set(np.unique(png)) <= {0, 255}
    for r, c in points:
        assert png[r, c] == 255, (r, c)
        window = png[r - 2:r + 3, c - 2:c + 3]
        assert window.sum() == png[max(0, r - 3):r + 4, max(0, c - 3):c + 4].sum()  # nothing strays further
    prob_src = read_prob_map(paths["prob"])
    assert prob_src.dtype == np.float32 and prob_src.shape == m.source_shape
    assert all(prob_src[r, c] > 0.3 for r, c in points)
    assert np.allclose(read_prob_map(paths["uncertainty"]), 0.25, atol=0.25 / 65535)

    doc = json.load(open(paths["json"]))
    assert doc["source"] == m.source and doc["spacing_mm"] == 0.05 and doc["laterality"] == laterality
    assert doc["n_detections"] == 3 and doc["clusters"][0]["members"] == [1, 2, 3]
    for d, (r, c) in zip(doc["detections"], points):
        assert abs(d["row"] - r) <= 0.7 and abs(d["col"] - c) <= 0.7, (d, r, c)
        assert d["y_mm"] == pytest.approx(d["row"] * 0.05) and d["x_mm"] == pytest.approx(d["col"] * 0.05)
        assert d["area_mm2"] == pytest.approx(0.07**2) and d["cluster"] == 1 and d["peak_prob"] == 0.9
    assert doc["detections"][0]["base_prob"] == 0.812346 and doc["detections"][0]["generator_vote"] == 0.25
    assert "base_prob" not in doc["detections"][1] and "generator_vote" not in doc["detections"][1]

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


_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "AccessionNumber")


def _seg_case(tmp_path, laterality, *, anonymise=False, patient_orientation=None):
    """A DICOM at the model spacing (no resampling) and a mask on its canonical grid with a known source image."""
    wall = "left" if laterality == "L" else "right"
    stored = breast_phantom(120, 90, 12, np.random.default_rng(3), chest_wall=wall)
    path = write_dicom(tmp_path / f"src-{laterality}.dcm", stored, bits_stored=12, laterality=laterality,
                       pixel_spacing=0.07, patient_orientation=patient_orientation)
    if anonymise:
        ds = pydicom.dcmread(path)
        for kw in _TYPE2 + ("FrameOfReferenceUID",):
            delattr(ds, kw)
        ds.save_as(path)
    m = read_mammogram(path)
    rng = np.random.default_rng(4)
    canon = np.zeros(m.image.shape, bool)
    canon[rng.integers(0, 120, 40), rng.integers(0, 90, 40)] = True
    canon[30:36, 10:13] = True
    # Stored chest wall on the right: the reader mirrored the image, so source column c is canonical w - 1 - c.
    expected = canon[:, ::-1] if wall == "right" else canon
    assert m.flipped == (wall == "right")
    return path, m, canon, expected


@pytest.mark.parametrize("laterality,anonymise", [("L", False), ("R", False), ("R", True)])
def test_seg_reads_back_in_highdicom_on_the_source_grid(tmp_path, laterality, anonymise):
    """highdicom (an independent reader) reads the SEG back to the same mask and finds the source it names."""
    hd = pytest.importorskip("highdicom")
    path, m, canon, expected = _seg_case(tmp_path, laterality, anonymise=anonymise)
    src = pydicom.dcmread(path, stop_before_pixels=True)
    paths = write_outputs(tmp_path / "out", "case", m, canon.astype(np.float32), canon, [], [])
    seg = hd.seg.segread(paths["seg"])
    assert seg.get_source_image_uids() == [(src.StudyInstanceUID, src.SeriesInstanceUID, src.SOPInstanceUID)]
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == src.SeriesInstanceUID
    assert ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert seg.StudyInstanceUID == src.StudyInstanceUID and seg.SeriesInstanceUID != src.SeriesInstanceUID
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[src.SOPInstanceUID], segment_numbers=[1])
    assert pixels.shape == (1, src.Rows, src.Columns, 1)
    got = pixels[0, :, :, 0].astype(bool)
    bad = np.argwhere(got != expected)
    assert bad.size == 0, f"{len(bad)} pixels differ, first at {bad[0].tolist()}"
    assert seg.get_segment_description(1).segmented_property_type.value == "129748009"


def test_seg_of_a_resampled_input_equals_the_mask_png(tmp_path):
    """At 0.05 mm the mask is mapped back from the model grid: the SEG holds the PNG's pixels exactly."""
    hd = pytest.importorskip("highdicom")
    m = _case(tmp_path, "R")
    _, t = to_model_spacing(m)
    prob, mask, dets, clusters = _detections(t, [(100, 40), (104, 47), (97, 52)])
    paths = write_outputs(tmp_path / "out", "case", m, prob, mask, dets, clusters)
    seg = hd.seg.segread(paths["seg"])
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[m.dicom.sop_instance_uid],
                                               segment_numbers=[1])[0, :, :, 0].astype(bool)
    png = np.asarray(Image.open(paths["mask"])) > 0
    assert png.sum() >= 3
    np.testing.assert_array_equal(pixels, png)


@pytest.mark.skipif(shutil.which("dciodvfy") is None,
                    reason="dciodvfy (Debian package dicom3tools) is not installed: apt-get install dicom3tools")
@pytest.mark.parametrize("anonymise,orientation", [(False, "A\\F"), (False, None), (True, None)])
def test_seg_passes_dciodvfy(tmp_path, anonymise, orientation):
    """The SEG's IOD as David Clunie's validator checks it: warnings allowed, no errors."""
    path, m, canon, _ = _seg_case(tmp_path, "L", anonymise=anonymise, patient_orientation=orientation)
    paths = write_outputs(tmp_path / "out", "case", m, canon.astype(np.float32), canon, [], [])
    run = subprocess.run(["dciodvfy", paths["seg"]], capture_output=True, text=True, timeout=60)
    report = run.stdout + run.stderr
    assert "Segmentation" in report, report  # it recognised the IOD
    errors = [ln for ln in report.splitlines() if ln.startswith("Error")]
    assert not errors, "\n".join(errors)


def test_default_outputs_and_chosen_sets(tmp_path):
    """The default set is mask, JSON, SEG and overlay; a chosen set writes exactly its kinds, and the
    JSON lists what was written with the map's scale and box."""
    m = _case(tmp_path)
    _, t = to_model_spacing(m)
    prob, mask, dets, clusters = _detections(t, [(100, 40), (104, 47)])
    unc = np.full(t.model_shape, 0.1, np.float32)
    d = write_outputs(tmp_path / "d", "case", m, prob, mask, dets, clusters, uncertainty=unc)
    assert set(d) == set(DEFAULT_OUTPUTS) == {"mask", "json", "seg", "overlay"}
    assert sorted(os.listdir(tmp_path / "d")) == ["case.json", "case.mask.png", "case.overlay.png", "case.seg.dcm"]
    doc = json.load(open(d["json"]))
    assert doc["outputs"] == ["mask", "json", "seg", "overlay"] and doc["maps"] == {}

    c = write_outputs(tmp_path / "c", "case", m, prob, mask, dets, clusters, uncertainty=unc, outputs="json,prob")
    assert sorted(os.listdir(tmp_path / "c")) == ["case.json", "case.prob.png"]
    doc = json.load(open(c["json"]))
    rec = doc["maps"]["prob"]
    assert rec["file"] == "case.prob.png" and rec["scale"] == pytest.approx(1 / 65535) and rec["shape"] == list(m.source_shape)
    nz = np.argwhere(read_prob_map(c["prob"]) > 0)
    assert rec["box"] == [int(nz[:, 0].min()), int(nz[:, 0].max()) + 1, int(nz[:, 1].min()), int(nz[:, 1].max()) + 1]
    assert doc["files"] == {"prob": "case.prob.png"}

    only = write_outputs(tmp_path / "o", "case", m, prob, mask, dets, clusters, outputs=["uncertainty", "mask"])
    assert set(only) == {"mask"}  # no uncertainty given: nothing to write for it
    with pytest.raises(ValueError, match="outputs must be a non-empty subset of mask,json,seg,overlay,prob"):
        write_outputs(tmp_path / "x", "case", m, prob, mask, dets, clusters, outputs="mask,probability")
    with pytest.raises(ValueError, match="outputs"):
        write_outputs(tmp_path / "x", "case", m, prob, mask, dets, clusters, outputs=[])
