"""`mcgr infer` under the faults that used to end in a silent wrong answer: a SEG that cannot be made,
inputs replaced mid-run, changed manifest spacings, empty path cells, --out inside an input folder,
a vanished --out, results that would nest, a deleted lock, a full disk, a refused Ray run, a bogus
backend. Every file is made here."""
from __future__ import annotations

import errno
import json
import os
import shutil
import sys

import numpy as np
import pydicom
import pytest
from archive_factory import SHAPE, SPACING, make_models, manifest
from dicom_factory import breast_phantom, write_dicom

from mcgr._digest import file_sha256
from mcgr.archive import run_folder
from mcgr.archive.layout import ArchiveError
from mcgr.archive.run_folder import RunFolder
from mcgr.cli import main


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_models(tmp_path_factory.mktemp("models"))


def _npy(path, seed, chest_wall="left"):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, breast_phantom(*SHAPE, 12, np.random.default_rng(seed), chest_wall=chest_wall).astype(np.float32))
    return path


def _infer(models, *args, spacing=True):
    extra = ["--spacing", str(SPACING)] if spacing else []
    return main(["infer", *map(str, args), "--models", str(models), "--device", "cpu", "--no-refine",
                 "--threads", "1", "--quiet", *extra])


def test_a_seg_that_cannot_be_made_keeps_the_other_outputs(models, tmp_path):
    (tmp_path / "in").mkdir()
    p = write_dicom(tmp_path / "in" / "x.dcm", breast_phantom(*SHAPE, 12, np.random.default_rng(0)), bits_stored=12)
    ds = pydicom.dcmread(p)
    del ds.StudyInstanceUID
    ds.save_as(p)
    out = tmp_path / "out"
    assert _infer(models, p, "--out", out) == 0
    (rec,) = manifest(out)
    assert rec["status"] == "ok" and "StudyInstanceUID" in rec["failed_outputs"]["seg"]
    assert sorted(rec["files"]) == ["x.json", "x.mask.png", "x.overlay.png"]  # the default set, less the SEG
    doc = json.loads((out / "x" / "x.json").read_text())
    assert "StudyInstanceUID" in doc["failed_outputs"]["seg"]


def test_the_input_hash_is_of_the_bytes_read_so_resume_redoes_a_file_replaced_mid_run(models, tmp_path, monkeypatch,
                                                                                    capsys):
    src = _npy(tmp_path / "in" / "a.npy", 1)
    first = file_sha256(src)
    from mcgr.infer.pipeline import Pipeline

    real_finish = Pipeline.finish

    def finish_then_replace(self, prep, fr):  # the input replaced after it was read, before the save
        res = real_finish(self, prep, fr)
        _npy(src, 2, chest_wall="right")
        return res

    monkeypatch.setattr(Pipeline, "finish", finish_then_replace)
    out = tmp_path / "out"
    assert _infer(models, src, "--out", out) == 0
    monkeypatch.setattr(Pipeline, "finish", real_finish)
    (rec,) = manifest(out)
    assert rec["input_sha256"] == first != file_sha256(src)
    capsys.readouterr()
    assert _infer(models, src, "--out", out, "--resume") == 0
    assert "1 done" in capsys.readouterr().out
    (rec,) = manifest(out)
    assert rec["input_sha256"] == file_sha256(src)


def test_a_changed_manifest_spacing_is_redone_by_resume(models, tmp_path, capsys):
    _npy(tmp_path / "in" / "a.npy", 3)
    _npy(tmp_path / "in" / "b.npy", 4)
    man = tmp_path / "in" / "list.csv"
    man.write_text("path,spacing\na.npy,0.07\nb.npy,0.07\n")
    out = tmp_path / "out"
    assert _infer(models, man, "--out", out, spacing=False) == 0
    man.write_text("path,spacing\na.npy,0.1\nb.npy,0.07\n")
    capsys.readouterr()
    assert _infer(models, man, "--out", out, "--resume", spacing=False) == 0
    assert "1 done" in capsys.readouterr().out and "1 already complete"
    rows = {r["key"]: r for r in manifest(out)}
    assert len(manifest(out)) == 2 and rows["a"]["spacing_mm"] == 0.1 and rows["b"]["spacing_mm"] == 0.07


def test_an_empty_path_cell_is_an_error_naming_its_row(models, tmp_path, capsys):
    _npy(tmp_path / "in" / "a.npy", 5)
    man = tmp_path / "in" / "list.csv"
    man.write_text(",0.07\n")
    out = tmp_path / "out"
    assert _infer(models, man, "--out", out) == 1
    (rec,) = manifest(out)
    assert rec["status"] == "error" and "line 1" in rec["error"] and "empty path" in rec["error"]
    assert not (out / "a").exists()


def test_a_boolean_spacing_in_a_jsonl_manifest_is_an_error(models, tmp_path):
    _npy(tmp_path / "in" / "a.npy", 6)
    man = tmp_path / "in" / "list.jsonl"
    man.write_text(json.dumps({"path": "a.npy", "spacing": True}) + "\n")
    out = tmp_path / "out"
    assert _infer(models, man, "--out", out, spacing=False) == 1
    (rec,) = manifest(out)
    assert rec["status"] == "error" and "spacing must be a number" in rec["error"] and "true" in rec["error"]


def test_an_out_inside_an_input_folder_holding_images_is_refused(models, tmp_path, capsys):
    src = tmp_path / "in"
    _npy(src / "a.npy", 7)
    _npy(src / "res" / "mine.npy", 8)  # the user's own image inside the folder chosen as --out
    assert _infer(models, src, "--out", src / "res") == 1
    err = capsys.readouterr().err
    assert "inside the input folder" in err and "mine.npy" in err
    assert not (src / "res" / "manifest.jsonl").exists()
    # a new (or image-free) --out inside the input is excluded explicitly, and said
    assert _infer(models, src, "--out", src / "new") == 0
    assert "not searched" in capsys.readouterr().err
    assert sorted(r["key"] for r in manifest(src / "new")) == ["a", "res/mine"]


def test_a_vanished_output_folder_is_an_error_exit(models, tmp_path, monkeypatch):
    src = tmp_path / "in"
    for i in range(3):
        _npy(src / f"e{i}.npy", 10 + i)
    out = tmp_path / "out"
    from mcgr.infer.pipeline import Pipeline

    real_finish = Pipeline.finish
    calls = []

    def finish(self, prep, fr):
        calls.append(1)
        if len(calls) == 2:
            shutil.rmtree(out)
        return real_finish(self, prep, fr)

    monkeypatch.setattr(Pipeline, "finish", finish)
    assert _infer(models, src, "--out", out) == 1
    assert not (out / "manifest.jsonl").exists()


def test_results_of_case_dcm_and_case_folder_never_nest(models, tmp_path, capsys):
    src = tmp_path / "in"
    _npy(src / "case.npy", 20)
    _npy(src / "case" / "x.npy", 21)
    out = tmp_path / "out"
    assert _infer(models, src, "--out", out) == 0
    keys = sorted(r["key"] for r in manifest(out))
    assert keys == ["case.npy", "case/x"]
    assert not any(k.startswith(other + "/") for k in keys for other in keys)
    _npy(src / "case.npy", 22)  # changed: --resume redoes it (it used to fail forever)
    capsys.readouterr()
    assert _infer(models, src, "--out", out, "--resume") == 0
    assert "1 done" in capsys.readouterr().out


def test_a_manifest_id_that_would_nest_is_an_error(models, tmp_path):
    _npy(tmp_path / "in" / "a.npy", 23)
    _npy(tmp_path / "in" / "b.npy", 24)
    man = tmp_path / "in" / "list.csv"
    man.write_text("path,id\na.npy,p\nb.npy,p/q\n")
    out = tmp_path / "out"
    assert _infer(models, man, "--out", out) == 3
    rows = {r["key"]: r for r in manifest(out)}
    assert rows["p"]["status"] == "ok" and "never nest" in rows["p/q"]["error"]


def test_deleting_the_lock_file_cannot_let_a_second_run_in(tmp_path):
    out = tmp_path / "out"
    with RunFolder(out, {"refine": False}, resume=False):
        for stale in out.glob(".mcgr*lock*"):
            stale.unlink()
        with pytest.raises(ArchiveError, match="another mcgr infer"):
            RunFolder(out, {"refine": False}, resume=True).open()
    assert not [p.name for p in out.iterdir() if "lock" in p.name]


def test_a_full_disk_while_resuming_leaves_no_temporary(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with RunFolder(out, {"refine": False}, resume=False) as run:
        run.manifest.append({"status": "ok", "key": "a", "input": "/nowhere", "result_id": "x"})

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_folder, "verify_result", full)  # where RunFolder looks it up
    with pytest.raises(ArchiveError, match="No space left"):
        RunFolder(out, {"refine": False}, resume=True).open()
    assert sorted(p.name for p in out.iterdir()) == ["manifest.jsonl", "run.json"]


def test_a_ray_run_refused_before_it_starts_leaves_nothing(models, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as without Ray
    src = tmp_path / "in"
    _npy(src / "a.npy", 30)
    out = tmp_path / "out"
    assert main(["infer", str(src), "--out", str(out), "--models", str(models), "--no-refine", "--quiet",
                 "--spacing", str(SPACING), "--engine", "ray"]) == 1
    assert "needs Ray" in capsys.readouterr().err
    assert not out.exists()
    assert _infer(models, src, "--out", out) == 0  # the next plain run is not refused


def test_a_run_stopped_before_its_first_line_leaves_nothing(models, tmp_path, monkeypatch):
    src = tmp_path / "in"
    _npy(src / "a.npy", 31)
    out = tmp_path / "out"
    from mcgr.infer.pipeline import Pipeline

    def stop(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(Pipeline, "network", stop)
    assert _infer(models, src, "--out", out) == 130
    assert not out.exists()


@pytest.mark.parametrize("env", ["cuda", "bogus"])
def test_a_backend_that_cannot_run_is_refused_before_any_compute(models, tmp_path, monkeypatch, capsys, env):
    import torch

    if env == "cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    monkeypatch.setenv("MCGR_BACKEND", env)
    src = tmp_path / "in"
    _npy(src / "a.npy", 32)
    assert _infer(models, src, "--out", tmp_path / "out") == 1
    assert "MCGR_BACKEND" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
