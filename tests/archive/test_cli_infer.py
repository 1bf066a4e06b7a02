"""`mcgr infer` on the local engine: every good file of a folder gives the same outputs as the Python
API, a corrupted file is one reported failure, manifests and globs are read, and user errors give
one clear line, never a traceback."""
from __future__ import annotations

import json
import os

import pytest
import torch
from archive_factory import SPACING, assert_same_result, expected_outputs, leftovers, make_folder, make_models, manifest

from mcgr.cli import main


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    models = make_models(root / "models")
    inputs = make_folder(root / "in")
    want = expected_outputs(models, inputs["good"], root / "want")
    return {"root": root, "models": models, "inputs": inputs, "want": want}


def _infer(archive, *args):
    return main(["infer", *map(str, args), "--models", str(archive["models"]), "--device", "cpu", "--no-refine",
                 "--threads", "1", "--quiet"])


def test_folder_with_a_corrupted_file(archive, tmp_path, capsys):
    out = tmp_path / "out"
    assert _infer(archive, archive["root"] / "in", "--out", out, "--spacing", SPACING) == 3  # some failed
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    assert "bad.dcm" in cap.err and "1 failed" in cap.out and "4 done" in cap.out
    lines = manifest(out)
    by_key = {r["key"]: r for r in lines}
    assert len(lines) == 5 and len(by_key) == 5
    bad = by_key.pop("bad")
    assert bad["status"] == "error" and bad["input"] == str(archive["inputs"]["bad"]) and "bad.dcm" in bad["error"]
    assert not (out / "bad").exists()
    assert sorted(by_key) == sorted(archive["inputs"]["good"])
    for key, rec in by_key.items():
        assert rec["status"] == "ok" and rec["error"] is None
        assert rec["input"] == str(archive["inputs"]["good"][key])
        assert_same_result(out / key, archive["want"] / key)
        doc = json.loads((out / key / f"{key.rsplit('/', 1)[-1]}.json").read_text())
        assert rec["n_detections"] == doc["n_detections"] and rec["n_clusters"] == doc["n_clusters"]
        assert rec["spacing_mm"] == SPACING and rec["refined_fraction"] == 0.0
        assert rec["settings"]["refine"] is False and rec["settings"]["device"] == "cpu"
        assert {"read", "base", "detect", "write", "total"} <= set(rec["timings"])
        assert all(v >= 0 for v in rec["timings"].values())
        assert rec["files"] == {p.name: p.stat().st_size for p in (out / key).iterdir() if not p.name.startswith(".")}
    assert (out / "sub" / "c" / "c.seg.dcm").exists() and not (out / "a" / "a.seg.dcm").exists()
    umask = os.umask(0)
    os.umask(umask)
    assert all((p.stat().st_mode & 0o777) == (0o666 & ~umask) for p in (out / "sub" / "c").iterdir())
    assert ((out / "sub" / "c").stat().st_mode & 0o777) == (0o777 & ~umask)
    assert leftovers(out) == []


def test_manifest_files_globs_and_per_row_spacing(archive, tmp_path):
    good = archive["inputs"]["good"]
    rel = os.path.relpath(good["sub/b"], tmp_path)
    (tmp_path / "list.csv").write_text(f"path,spacing,id\n{rel},0.1,case-b\n{good['a']},,\n{good['a']},abc,x\n")
    (tmp_path / "list.jsonl").write_text(json.dumps({"path": str(good["sub/c"]), "id": "site1/c"}) + "\n"
                                         + json.dumps(str(archive["root"] / "in" / "nothing.png")) + "\n{not json\n")
    out = tmp_path / "out"
    glob = str(archive["root"] / "in" / "sub" / "deep" / "*.dcm")
    assert _infer(archive, tmp_path / "list.csv", tmp_path / "list.jsonl", glob, "--out", out, "--spacing", SPACING) == 3
    lines = manifest(out)
    ok = {r["key"]: r for r in lines if r["status"] == "ok"}
    assert sorted(ok) == ["a", "case-b", "d", "site1/c"]
    assert ok["case-b"]["spacing_mm"] == 0.1 and ok["a"]["spacing_mm"] == SPACING
    assert ok["case-b"]["input"] == str(good["sub/b"])
    assert_same_result(out / "site1" / "c", archive["want"] / "sub" / "c")
    assert_same_result(out / "d", archive["want"] / "sub" / "deep" / "d")
    errors = sorted(r["error"] for r in lines if r["status"] == "error")
    assert len(errors) == 3
    assert any("list.csv line 4" in e and "spacing" in e for e in errors)
    assert any("no such file" in e for e in errors)
    assert any("list.jsonl line 3" in e and "JSON" in e for e in errors)


def test_same_file_twice_and_name_collisions(archive, tmp_path, capsys):
    a = archive["inputs"]["good"]["a"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.npy").write_bytes(a.read_bytes())
    out = tmp_path / "out"
    assert _infer(archive, a, a, "--out", out, "--spacing", SPACING) == 0
    st = [(r["status"], r["input"]) for r in manifest(out)]
    assert st == [("ok", str(a)), ("skipped", str(a))]
    assert json.loads((out / "a" / ".done").read_text())["input"] == str(a)
    # two files with one stem, given as files: refused before anything is computed or created
    out2 = tmp_path / "out2"
    assert _infer(archive, a, other / "a.npy", "--out", out2, "--spacing", SPACING) == 1
    assert "both map to the output folder 'a'" in capsys.readouterr().err
    assert not out2.exists()
    # the same collision through a manifest is found before the second input is computed
    (tmp_path / "two.jsonl").write_text(json.dumps(str(a)) + "\n" + json.dumps(str(other / "a.npy")) + "\n")
    out3 = tmp_path / "out3"
    assert _infer(archive, tmp_path / "two.jsonl", "--out", out3, "--spacing", SPACING) == 3
    rec = manifest(out3)[1]
    assert rec["status"] == "error" and "already holds the result of" in rec["error"] and "files" not in rec


def test_spacing_is_needed_for_png_and_nothing_done_exits_nonzero(archive, tmp_path, capsys):
    out = tmp_path / "out"
    assert _infer(archive, archive["inputs"]["good"]["sub/b"], "--out", out) == 1
    err = capsys.readouterr().err
    assert "--spacing" in err and "nothing could be done" in err and "Traceback" not in err


@pytest.mark.parametrize("args, message, code", [
    (["--spacing", "0"], "--spacing: expected a pixel spacing in mm", 2),
    (["--spacing", "-1"], "--spacing: expected a pixel spacing in mm", 2),
    (["--backend", "fastest"], "--backend must be auto or one of", 1),
    (["--device", "tpu"], "--device must be auto, cpu or cuda", 1),
    (["--workers", "2"], "need --engine ray", 1),
])
def test_user_errors_are_one_line(archive, tmp_path, capsys, args, message, code):
    argv = ["infer", str(archive["inputs"]["good"]["a"]), "--out", str(tmp_path / "out"), "--models",
            str(archive["models"]), "--no-refine", "--quiet", *args]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_input_is_reported_and_the_rest_done(archive, tmp_path, capsys):
    out = tmp_path / "out"
    assert _infer(archive, tmp_path / "MISSING.dcm", "--out", out, "--spacing", SPACING) == 1
    err = capsys.readouterr().err
    assert "MISSING.dcm: no such file or folder" in err and "Traceback" not in err
    assert _infer(archive, tmp_path / "MISSING2.dcm", archive["inputs"]["good"]["a"], "--out", tmp_path / "o2",
                  "--spacing", SPACING) == 3
    assert [r["status"] for r in manifest(tmp_path / "o2")] == ["error", "ok"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when CUDA is absent")
def test_cuda_without_cuda(archive, tmp_path, capsys):
    assert main(["infer", str(archive["inputs"]["good"]["a"]), "--out", str(tmp_path / "o"), "--device", "cuda",
                 "--models", str(archive["models"])]) == 1
    err = capsys.readouterr().err
    assert "torch sees no CUDA device" in err and "--device cpu" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_models_folder_errors(archive, tmp_path, capsys, monkeypatch):
    a = str(archive["inputs"]["good"]["a"])
    assert main(["infer", a, "--out", str(tmp_path / "o"), "--models", str(tmp_path / "nope")]) == 1
    assert "--models" in capsys.readouterr().err
    (tmp_path / "m" / "seg").mkdir(parents=True)
    assert main(["infer", a, "--out", str(tmp_path / "o"), "--models", str(tmp_path / "m"), "--no-refine"]) == 1
    assert "no seg model" in capsys.readouterr().err
    import mcgr.models

    monkeypatch.setattr(mcgr.models, "WEIGHTS_DIR", tmp_path / "weights")
    assert main(["infer", a, "--out", str(tmp_path / "o"), "--spacing", "0.07", "--refine"]) == 1
    err = capsys.readouterr().err
    assert "no shipped seg/rf weights" in err and "mcgr train seg" in err and "--models DIR" in err
    assert main(["infer", a, "--out", str(tmp_path / "o"), "--spacing", "0.07"]) == 1  # the base needs seg only
    assert "no shipped seg weights" in capsys.readouterr().err


def test_a_previous_run_needs_resume_and_resume_redoes_what_a_changed_setting_changes(archive, tmp_path, capsys):
    a = archive["inputs"]["good"]["a"]
    out = tmp_path / "out"
    assert _infer(archive, a, "--out", out, "--spacing", SPACING) == 0
    capsys.readouterr()
    assert _infer(archive, a, "--out", out, "--spacing", SPACING) == 1
    assert "pass --resume" in capsys.readouterr().err
    # another spacing changes the result: --resume redoes it (one line per input, at the new spacing)
    assert _infer(archive, a, "--out", out, "--spacing", "0.1", "--resume") == 0
    assert "1 done" in capsys.readouterr().out
    rows = manifest(out)
    assert len(rows) == 1 and rows[0]["spacing_mm"] == 0.1 and rows[0]["identity"]["spacing"] == 0.1
    assert _infer(archive, a, "--out", out, "--spacing", "0.1", "--resume") == 0
    assert "1 already complete" in capsys.readouterr().out
    assert len(manifest(out)) == 1


def test_inputs_may_follow_options(archive, tmp_path, capsys):
    out = tmp_path / "o"
    assert _infer(archive, tmp_path / "MISSING.dcm", "--out", out, archive["inputs"]["good"]["a"],
                  "--spacing", SPACING) == 3
    rows = manifest(out)
    assert [r["status"] for r in rows] == ["error", "ok"]
    assert main(["infer", str(archive["inputs"]["good"]["a"]), "--out", str(tmp_path / "o3"), "--bogus"]) == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_the_base_model_is_the_default_and_refine_turns_tt_gpr_on(archive, tmp_path, capsys):
    """`mcgr infer` runs the base segmentor unless --refine is given (docs/ttgpr_designs.md: TT-GPR
    left the FROC at <= 5 false objects per image where the base put it); the two flags together are
    a one-line error."""
    a = archive["inputs"]["good"]["a"]
    common = ["--models", str(archive["models"]), "--device", "cpu", "--threads", "1", "--quiet", "--spacing", SPACING]
    assert main(["infer", str(a), "--out", str(tmp_path / "base"), *map(str, common)]) == 0
    assert main(["infer", str(a), "--out", str(tmp_path / "tt"), "--refine", *map(str, common)]) == 0
    runs = {k: [r for r in manifest(tmp_path / k) if r.get("status") == "ok"] for k in ("base", "tt")}
    assert runs["base"][0]["settings"]["refine"] is False and runs["tt"][0]["settings"]["refine"] is True
    assert main(["infer", str(a), "--out", str(tmp_path / "both"), "--refine", "--no-refine", *map(str, common)]) == 1
    assert "contradict" in capsys.readouterr().err and not (tmp_path / "both").exists()
