"""`mcgr infer`'s output sets: the default set an archive keeps, --save-prob / --outputs, the maps
read back equal to the pipeline's float maps within half a quantisation step, and --resume
redoing every result written with another set (the set is part of a result's identity)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from archive_factory import SPACING, SHAPE, make_models, manifest
from dicom_factory import breast_phantom, write_dicom

from mcgr.archive.store import verify_result
from mcgr.cli import main
from mcgr.io import read_prob_map


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("outsets")
    models = make_models(root / "models")
    src = root / "in"
    src.mkdir()
    rng = np.random.default_rng(5)
    np.save(src / "a.npy", breast_phantom(*SHAPE, 12, rng).astype(np.float32))
    write_dicom(src / "c.dcm", breast_phantom(*SHAPE, 12, rng, chest_wall="right"), bits_stored=12,
                laterality="R", pixel_spacing=SPACING)
    return {"root": root, "models": models, "src": src}


def _infer(data, out, *extra, refine=False):
    return main(["infer", str(data["src"]), "--out", str(out), "--models", str(data["models"]), "--device", "cpu",
                 "--threads", "1", "--quiet", "--spacing", str(SPACING), *(("--refine",) if refine else ("--no-refine",)),
                 *map(str, extra)])


def _files(out, key):
    return sorted(p.name for p in (out / key).iterdir() if not p.name.startswith("."))


def test_default_set_is_mask_json_seg_overlay(data, tmp_path):
    out = tmp_path / "out"
    assert _infer(data, out) == 0
    assert _files(out, "a") == ["a.json", "a.mask.png", "a.overlay.png"]  # no SEG for a non-DICOM input
    assert _files(out, "c") == ["c.json", "c.mask.png", "c.overlay.png", "c.seg.dcm"]
    for r in manifest(out):
        assert r["settings"]["outputs"] == ["mask", "json", "seg", "overlay"]
        assert set(r["sha256"]) == set(r["files"]) == set(_files(out, r["key"]))
    assert json.loads((out / "run.json").read_text())["settings"]["outputs"] == ["mask", "json", "seg", "overlay"]


def test_saved_maps_equal_the_pipelines_within_half_a_step(data, tmp_path):
    from mcgr.infer.pipeline import Pipeline
    from mcgr.models import load_model

    out = tmp_path / "out"
    assert _infer(data, out, "--save-prob", refine=True) == 0
    assert _files(out, "c") == ["c.json", "c.mask.png", "c.overlay.png", "c.prob.png", "c.seg.dcm", "c.uncertainty.png"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pipe = Pipeline(load_model(data["models"] / "seg", kind="seg"), load_model(data["models"] / "rf", kind="rf"))
        r = pipe(str(data["src"] / "c.dcm"), spacing=SPACING, canonical=True, refine=True)
    finally:
        torch.set_num_threads(threads)
    assert r.mammogram.flipped  # a right breast: the maps on the file's grid are the canonical ones mirrored
    doc = json.loads((out / "c" / "c.json").read_text())
    for kind, want in (("prob", r.prob), ("uncertainty", r.uncertainty)):
        want = want.numpy()[:, ::-1].astype(np.float64)
        got = read_prob_map(out / "c" / f"c.{kind}.png")
        assert got.shape == SHAPE
        scale = doc["maps"][kind]["scale"]
        assert scale == pytest.approx((1.0 if kind == "prob" else max(want.max(), 1e-30)) / 65535, rel=1e-6)
        err = np.abs(got - want)
        assert err.max() <= scale / 2 + 1e-7, f"{kind}: worst |diff| {err.max()} at {np.unravel_index(err.argmax(), SHAPE)}"


def test_resume_with_another_set_redoes_the_inputs(data, tmp_path):
    out = tmp_path / "out"
    assert _infer(data, out) == 0
    first = {r["key"]: r for r in manifest(out)}
    assert _infer(data, out, "--resume", "--save-prob") == 0
    second = {r["key"]: r for r in manifest(out)}
    assert sorted(second) == ["a", "c"], "an input is listed twice or lost"
    for key, r in second.items():
        assert r["result_id"] != first[key]["result_id"], f"{key} was kept although written with another set"
        assert r["settings"]["outputs"] == ["mask", "json", "seg", "overlay", "prob"]
        assert f"{key}.prob.png" in _files(out, key) and verify_result(out / key, r)
        assert set(r["sha256"]) == set(_files(out, key))
    assert _infer(data, out, "--resume", "--save-prob") == 0  # the same set: nothing redone
    assert {r["key"]: r["result_id"] for r in manifest(out)} == {k: r["result_id"] for k, r in second.items()}
    assert _infer(data, out, "--resume", "--outputs", "mask,json") == 0
    third = {r["key"]: r for r in manifest(out)}
    assert all(third[k]["result_id"] != second[k]["result_id"] for k in third)
    assert _files(out, "c") == ["c.json", "c.mask.png"]


def test_bad_output_sets_are_refused(data, tmp_path, capsys):
    assert _infer(data, tmp_path / "o1", "--outputs", "mask,probs") == 1
    assert "--outputs must be a comma-separated subset of mask,json,seg,overlay,prob,uncertainty" in capsys.readouterr().err
    assert _infer(data, tmp_path / "o2", "--outputs", "mask,uncertainty") == 1
    assert "--outputs uncertainty needs TT-GPR" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
