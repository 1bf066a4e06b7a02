"""`mcgr infer` / `eval` / `demo` / `synth` under hostile input: --resume against replaced inputs and
overwritten results, folder scans that must stay in the tree and skip mcgr's own outputs, exit
statuses, unusable --out folders, and sizes that cannot fit. Every file is made here."""
from __future__ import annotations

import errno
import hashlib
import os
import pathlib

import numpy as np
import pytest
from PIL import Image
from archive_factory import SPACING, SHAPE, make_models, manifest
from dicom_factory import breast_phantom, write_dicom

from mcgr.archive.inputs import iter_inputs
from mcgr.archive.layout import STAGING
from mcgr.archive.store import verify_result
from mcgr.cli import main


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_models(tmp_path_factory.mktemp("models"))


def _image(path, seed, chest_wall="left"):
    np.save(path, breast_phantom(*SHAPE, 12, np.random.default_rng(seed), chest_wall=chest_wall).astype(np.float32))
    return path


def _infer(models, *args):
    return main(["infer", *map(str, args), "--models", str(models), "--device", "cpu", "--no-refine",
                 "--threads", "1", "--quiet", "--spacing", str(SPACING)])


def _sha(path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------- --resume trusts content, not sizes

def test_resume_redoes_a_replaced_input_and_an_overwritten_result(models, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i, name in enumerate(("a", "b", "c")):
        _image(src / f"{name}.npy", i)
    out = tmp_path / "out"
    assert _infer(models, src, "--out", out) == 0
    first = {r["key"]: r for r in manifest(out)}
    for key, r in first.items():  # the recorded digests are the files' sha256
        assert r["input_sha256"] == _sha(src / f"{key}.npy")
        assert r["sha256"] == {n: _sha(out / key / n) for n in r["files"]}
    # a: the input replaced by another image of the same size; b: a result overwritten with zeros
    _image(src / "a.npy", 99, chest_wall="right")
    assert (src / "a.npy").stat().st_size == os.stat(first["a"]["input"]).st_size
    mask = out / "b" / "b.mask.png"
    size = mask.stat().st_size
    mask.write_bytes(b"\0" * size)
    assert _infer(models, src, "--out", out, "--resume") == 0
    lines = manifest(out)
    assert sorted(r["key"] for r in lines) == ["a", "b", "c"], "an input is listed twice or lost"
    now = {r["key"]: r for r in lines}
    assert now["a"]["result_id"] != first["a"]["result_id"] and now["a"]["input_sha256"] == _sha(src / "a.npy")
    assert now["b"]["result_id"] != first["b"]["result_id"]
    assert np.asarray(Image.open(out / "b" / "b.mask.png")).shape == tuple(SHAPE)
    assert now["c"]["result_id"] == first["c"]["result_id"], "an unchanged result was redone"
    for key, r in now.items():
        assert verify_result(out / key, r)


# ---------------------------------------------------------------- folder scanning

def test_scan_stays_in_the_tree_and_skips_mcgr_outputs(tmp_path):
    root, outside = tmp_path / "in", tmp_path / "elsewhere"
    (root / "p1").mkdir(parents=True)
    outside.mkdir()
    _image(root / "p1" / "x.npy", 0)
    _image(outside / "far.npy", 1)
    (root / "link_out").symlink_to(outside, target_is_directory=True)
    (root / "link_in").symlink_to(root / "p1", target_is_directory=True)
    (root / "link_root").symlink_to(tmp_path, target_is_directory=True)
    for name in ("x.prob.png", "x.uncertainty.png", "x.prob.npy", "x.uncertainty.npy", "x.mask.png", "x.overlay.png", "x.seg.dcm",
                 "phantom.truth.png", "phantom.compare.png", "manifest.jsonl", "run.json"):
        (root / "p1" / name).write_bytes(b"\0" * 128 + b"DICM")
    done = root / "old_result"  # a result folder of an earlier run inside the input folder
    done.mkdir()
    _image(done / "old_result.npy", 2)
    (done / ".done").write_text("{}")
    keys = sorted(i.key for i in iter_inputs([str(root)]))
    # x once: link_in and p1 are one folder of the tree (walked in name order, link_in first)
    assert keys == ["link_in/x"], keys


def test_pointed_at_a_results_folder_finds_no_mammogram(models, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    _image(src / "a.npy", 0)
    out = tmp_path / "out"
    assert _infer(models, src, "--out", out) == 0
    capsys.readouterr()
    assert _infer(models, out, "--out", tmp_path / "out2") == 1
    assert "no mammogram found" in capsys.readouterr().err


# ---------------------------------------------------------------- exit status and --out

def test_not_mammograms_fail_per_file_and_the_exit_status_says_so(models, tmp_path, capsys):
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    np.save(src / "one.npy", np.array([[0.5]], np.float32))
    write_dicom(src / "blank.dcm", np.full((300, 250), 1000, np.uint16))
    Image.fromarray(np.random.default_rng(0).random((300, 250)) < 0.5).save(src / "mask.png")
    out = tmp_path / "out"
    assert _infer(models, src, "--out", out) == 1  # every input failed
    recs = {r["key"]: r for r in manifest(out)}
    assert {k: r["status"] for k, r in recs.items()} == {"one": "error", "blank": "error", "mask": "error"}
    assert "too small" in recs["one"]["error"] and "blank" in recs["blank"]["error"]
    assert "binary" in recs["mask"]["error"]
    _image(src / "good.npy", 3)
    assert _infer(models, src, "--out", tmp_path / "out2") == 3  # some failed, the rest done
    err = capsys.readouterr().err
    assert "3 input(s) failed" in err and "Traceback" not in err


def test_reader_warnings_reach_the_manifest_and_the_terminal(models, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    write_dicom(src / "b.dcm", breast_phantom(*SHAPE, 16, np.random.default_rng(5)), bits_stored=12)
    assert _infer(models, src, "--out", tmp_path / "out") == 0
    rec = manifest(tmp_path / "out")[0]
    assert rec["status"] == "ok" and "BitsStored (0028,0101) is 12" in rec["warnings"][0]
    assert "warning: b.dcm: BitsStored" in capsys.readouterr().err


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and all(w in err for w in words), err


def test_out_under_a_regular_file(models, tmp_path, capsys):
    a = _image(tmp_path / "a.npy", 0)
    (tmp_path / "file").write_text("x")
    assert _infer(models, a, "--out", tmp_path / "file" / "out") == 1
    _one_line_error(capsys, "--out", "cannot be written", "Not a directory")
    assert main(["eval", "--synthetic", "1", "--size", "128x128", "--methods", "dog", "--quiet",
                 "--out", str(tmp_path / "file" / "rep")]) == 1
    _one_line_error(capsys, "--out", "cannot be written")


def test_out_on_a_read_only_filesystem(models, tmp_path, capsys, monkeypatch):
    a = _image(tmp_path / "a.npy", 0)

    def read_only(self, *args, **kw):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
    assert _infer(models, a, "--out", tmp_path / "ro") == 1
    _one_line_error(capsys, "--out", "Read-only file system")
    assert main(["eval", "--synthetic", "1", "--size", "128x128", "--methods", "dog", "--quiet",
                 "--out", str(tmp_path / "ro2")]) == 1
    _one_line_error(capsys, "--out", "Read-only file system")


def test_out_equal_to_the_input_folder_is_refused_and_leaves_nothing(models, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    _image(src / "a.npy", 0)
    assert _infer(models, src, "--out", src) == 1
    _one_line_error(capsys, "is the input folder")
    assert sorted(os.listdir(src)) == ["a.npy"]
    # an --out inside the input folder is excluded from the scan
    assert _infer(models, src, "--out", src / "results") == 0
    assert [r["key"] for r in manifest(src / "results")] == ["a"]
    assert not (src / "results" / STAGING).exists()


def test_sigterm_exit_status_is_documented_in_the_help(capsys):
    assert main(["infer", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "3 some inputs" in out and "143 stopped by SIGTERM" in out


# ---------------------------------------------------------------- demo and synth

def test_demo_keeps_the_users_files_and_refuses_huge_sizes(tmp_path, capsys):
    from mcgr.demo import check_demo_out

    out = tmp_path / "d"
    out.mkdir()
    (out / "phantom.json").write_text('{"mine": 1}')
    assert main(["demo", "--out", str(out), "--size", "256x192"]) == 1
    _one_line_error(capsys, "phantom.json", "--force")
    assert (out / "phantom.json").read_text() == '{"mine": 1}'
    check_demo_out(out, force=True)  # --force lets it through
    assert main(["demo", "--out", str(tmp_path / "d2"), "--size", "99999x99999"]) == 1
    _one_line_error(capsys, "99999 x 99999 px", "GB", "--size")
    assert not (tmp_path / "d2").exists()


def test_synth_refuses_a_patch_that_cannot_fit(tmp_path, capsys, monkeypatch):
    import mcgr._memory

    assert main(["synth", "--out", str(tmp_path / "s"), "-n", "4", "--patch", "100000", "--quiet"]) == 1
    # 4 pairs (batch and shard capped at n) of 100000^2 px at 32 + 10 bytes per px
    need = 4 * 100000.0 ** 2 * (32 + 10)
    _one_line_error(capsys, "--patch 100000", mcgr._memory.format_bytes(need), "available")
    assert not (tmp_path / "s").exists()
