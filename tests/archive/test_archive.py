"""Archive runs: inputs are streamed, a run killed midway is completed by --resume with nothing lost,
nothing listed twice and no partial file left, and every crash state of the commit protocol is
recognised and redone."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from archive_factory import SPACING, assert_same_result, expected_outputs, leftovers, make_folder, make_models, manifest

from mcgr.archive.inputs import iter_inputs
from mcgr.archive.layout import STAGING
from mcgr.archive.run_folder import RunFolder
from mcgr.archive.store import verify_result
from mcgr.cli import main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("arch")
    models = make_models(root / "models")
    inputs = make_folder(root / "in", n_extra=3)
    want = expected_outputs(models, inputs["good"], root / "want")
    return {"root": root, "models": models, "inputs": inputs, "want": want}


def _argv(data, out, *extra, inputs=()):
    return ["infer", str(data["root"] / "in"), *map(str, inputs), "--out", str(out), "--spacing", str(SPACING), "--models",
            str(data["models"]), "--device", "cpu", "--no-refine", "--threads", "1", "--quiet", *extra]


def _check_complete(data, out):
    """One line per input, every good result equal to the API's, the bad one an error, no leftovers."""
    lines = manifest(out)
    inputs = [r["input"] for r in lines]
    assert len(inputs) == len(set(inputs)), "an input is listed twice"
    good = data["inputs"]["good"]
    assert sorted(inputs) == sorted([str(p) for p in good.values()] + [str(data["inputs"]["bad"])])
    for r in lines:
        if r["input"] == str(data["inputs"]["bad"]):
            assert r["status"] == "error"
        else:
            assert r["status"] == "ok", r
            assert verify_result(out / r["key"], r)
            assert_same_result(out / r["key"], data["want"] / r["key"])
    assert leftovers(out) == []
    return lines


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_then_resume_loses_and_duplicates_nothing(data, tmp_path, sig):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "mcgr", *_argv(data, out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    committed = None
    try:
        deadline = time.monotonic() + 60
        while committed is None and time.monotonic() < deadline and proc.poll() is None:
            if (out / "manifest.jsonl").exists():
                for line in (out / "manifest.jsonl").read_text().splitlines():
                    r = json.loads(line) if line.endswith("}") else {}
                    if r.get("status") == "ok" and (out / r["key"] / ".done").exists():
                        committed = r
                        break
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be killed: make the archive larger"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    if sig == signal.SIGTERM:
        assert proc.returncode == 143 and "SIGTERM" in err and "Traceback" not in err
    else:
        assert proc.returncode == -signal.SIGKILL
    n_first = len(manifest(out))
    assert 1 <= n_first < 8, "the kill came too late to test anything"

    assert main(_argv(data, out, "--resume")) == 3  # bad.dcm fails
    lines = _check_complete(data, out)
    again = {r["key"]: r.get("result_id") for r in lines}
    assert again[committed["key"]] == committed["result_id"], "a result committed before the kill was redone"


def _completed_run(data, tmp_path):
    out = tmp_path / "out"
    assert main(_argv(data, out)) == 3  # bad.dcm fails
    return out, {r["key"]: r for r in manifest(out)}


def test_every_crash_state_is_redone_by_resume(data, tmp_path):
    out, recs = _completed_run(data, tmp_path)
    ids = {k: r.get("result_id") for k, r in recs.items()}
    # 1. a folder whose manifest line was written but that was never moved into place
    staged = out / STAGING / "r-crashed"
    shutil.move(str(out / "a"), str(staged))
    # 2. a result file cut short after the commit (disk trouble, a careless copy)
    p = out / "sub" / "b" / "b.mask.png"
    p.write_bytes(p.read_bytes()[:100])
    # 3. a result folder whose .done is missing
    (out / "sub" / "c" / ".done").unlink()
    # 4. a manifest line cut by a kill
    with open(out / "manifest.jsonl", "a") as fh:
        fh.write('{"input": "/x", "status": "ok", "key": "e0", "resu')
    assert main(_argv(data, out, "--resume")) == 3  # bad.dcm fails
    lines = _check_complete(data, out)
    new = {r["key"]: r.get("result_id") for r in lines}
    for k in ("a", "sub/b", "sub/c"):
        assert new[k] != ids[k], f"{k} was not redone"
    for k in ("sub/deep/d", "e0", "e1", "e2"):
        assert new[k] == ids[k], f"{k} was redone although complete"


def test_resume_retries_failures_and_adds_new_inputs(data, tmp_path):
    out, recs = _completed_run(data, tmp_path)
    extra = tmp_path / "late.npy"
    shutil.copy(data["inputs"]["good"]["a"], extra)
    assert main(_argv(data, out, "--resume", inputs=[extra])) == 3
    lines = manifest(out)
    assert [r["status"] for r in lines if r["key"] == "bad"] == ["error"]
    assert sum(r["key"] == "bad" for r in lines) == 1
    late = [r for r in lines if r["input"] == str(extra)]
    assert len(late) == 1 and late[0]["status"] == "ok" and late[0]["key"] == "late"
    assert (out / "late" / "late.mask.png").read_bytes() == (data["want"] / "a" / "a.mask.png").read_bytes()
    assert len(lines) == len(recs) + 1


def test_concurrent_runs_into_one_folder_are_refused(data, tmp_path, capsys):
    out = tmp_path / "out"
    with RunFolder(out, {"refine": False}, resume=False):
        assert main(_argv(data, out)) == 1
    assert "another mcgr infer is writing" in capsys.readouterr().err


def test_a_foreign_folder_is_never_replaced(data, tmp_path):
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "mine.txt").write_text("user data")
    assert main(_argv(data, out)) == 3  # bad.dcm fails
    rec = next(r for r in manifest(out) if r["key"] == "a")
    assert rec["status"] == "error" and "not an mcgr result folder" in rec["error"]
    assert (out / "a" / "mine.txt").read_text() == "user data"
    assert leftovers(out) == []


# ---------------------------------------------------------------- inputs

def test_folder_walk_keys_and_exclusions(tmp_path):
    root = tmp_path / "in"
    (root / "p1" / "s").mkdir(parents=True)
    (root / "out").mkdir()
    (root / ".cache").mkdir()
    for name in ("p1/x.DCM", "p1/y.tiff", "z.png", "out/r.npy", ".cache/c.png", "p1/.h.png"):
        (root / name).write_bytes(b"x")
    (root / "p1" / "s" / "1.2.840.10008.5.1.4.1.1.1.2.777").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 8)
    (root / "readme.md").write_text("not an image, no DICOM preamble")
    items = list(iter_inputs([str(root)], exclude=[str(root / "out")]))
    assert [(i.key, i.error) for i in items] == [
        ("z", None), ("p1/x", None), ("p1/y", None), ("p1/s/1.2.840.10008.5.1.4.1.1.1.2.777", None)]
    assert all(os.path.isabs(i.path) for i in items)


def test_inputs_are_streamed_not_listed(tmp_path, monkeypatch):
    root = tmp_path / "in"
    for d in ("a", "b", "c"):
        (root / d).mkdir(parents=True)
        (root / d / "img.npy").write_bytes(b"x")
    listed = []
    real = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p: (listed.append(os.path.basename(p)), real(p))[1])
    it = iter_inputs([str(root)])
    first = next(it)
    assert first.key == "a/img" and listed == ["in", "a"], listed
    assert [i.key for i in it] == ["b/img", "c/img"] and listed == ["in", "a", "b", "c"]

    fifo = tmp_path / "stream.jsonl"
    os.mkfifo(fifo)
    import threading

    go = threading.Event()

    def producer():
        with open(fifo, "w") as fh:
            fh.write(json.dumps(str(root / "a" / "img.npy")) + "\n")
            fh.flush()
            go.wait(20)
            fh.write(json.dumps(str(root / "b" / "img.npy")) + "\n")

    t = threading.Thread(target=producer, daemon=True)
    t.start()
    it = iter_inputs([str(fifo)])
    try:
        assert next(it).key == "img"  # read while the producer still holds the rest back
        go.set()
        assert [i.key for i in it] == ["img"]
    finally:
        go.set()
        if t.is_alive():  # the reader never opened the pipe: unblock the producer's open()
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        t.join(20)


def test_manifest_parsing(tmp_path):
    (tmp_path / "f.npy").write_bytes(b"x")
    (tmp_path / "m1.csv").write_text("f.npy\n# comment\n\nf.npy,0.1\n")
    (tmp_path / "m2.csv").write_text("Filename,Spacing_mm\nf.npy,0.05\n,0.1\n")
    (tmp_path / "m3.jsonl").write_text('"f.npy"\n{"input": "f.npy", "spacing_mm": 0.2, "id": "../up"}\n[1]\n')
    got = [(i.key, i.spacing, i.error) for i in iter_inputs([str(tmp_path / m) for m in ("m1.csv", "m2.csv", "m3.jsonl")])]
    assert got[0] == ("f", None, None) and got[1] == ("f", 0.1, None) and got[2] == ("f", 0.05, None)
    assert got[3][2].startswith("m2.csv line 3: no path")
    assert got[4] == ("f", None, None)
    assert "'.', '..'" in got[5][2]
    assert got[6][2].startswith("m3.jsonl line 3")
    assert len(got) == 7
