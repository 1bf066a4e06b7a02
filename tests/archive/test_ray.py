"""`mcgr infer --engine ray` on a local Ray instance: the same outputs as the local engine for every
good file, the corrupted file one reported failure, and the same manifest and resume semantics."""
from __future__ import annotations

import shutil

import pytest
from archive_factory import SPACING, assert_same_result, expected_outputs, leftovers, make_folder, make_models, manifest

from mcgr.cli import main

ray = pytest.importorskip("ray", reason="the Ray engine needs ray (pip install 'mcgr[distributed]')")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    models = make_models(root / "models")
    inputs = make_folder(root / "in", n_extra=1)
    want = expected_outputs(models, inputs["good"], root / "want")
    # a cluster of its own, never one another test session on this machine started
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield {"root": root, "models": models, "inputs": inputs, "want": want}
    ray.shutdown()


def _argv(c, out, *extra):
    return ["infer", str(c["root"] / "in"), "--out", str(out), "--spacing", str(SPACING), "--models", str(c["models"]),
            "--no-refine", "--quiet", *extra]


def _summary(out):
    return sorted((r["key"], r["status"]) for r in manifest(out))


def test_ray_engine_equals_local_engine(cluster, tmp_path):
    local, dist = tmp_path / "local", tmp_path / "ray"
    assert main(_argv(cluster, local, "--device", "cpu", "--threads", "1")) == 3  # bad.dcm
    assert main(_argv(cluster, dist, "--engine", "ray", "--workers", "2", "--cpus-per-worker", "1")) == 3
    assert _summary(dist) == _summary(local)
    recs = {r["key"]: r for r in manifest(dist)}
    assert recs.pop("bad")["status"] == "error"
    assert sorted(recs) == sorted(cluster["inputs"]["good"])
    workers = set()
    for key, r in recs.items():
        assert r["status"] == "ok" and r["settings"]["engine"] == "ray"
        assert_same_result(dist / key, local / key)
        assert_same_result(dist / key, cluster["want"] / key)
        workers.add(r["worker"])
    assert len(workers) == 2, f"the work was not spread over both workers: {workers}"
    assert leftovers(dist) == []


def test_ray_resume_redoes_only_what_is_missing(cluster, tmp_path):
    out = tmp_path / "out"
    assert main(_argv(cluster, out, "--engine", "ray", "--workers", "2")) == 3
    before = {r["key"]: r.get("result_id") for r in manifest(out)}
    shutil.rmtree(out / "sub" / "b")
    p = out / "a" / "a.mask.png"
    p.write_bytes(p.read_bytes()[:-10])
    assert main(_argv(cluster, out, "--engine", "ray", "--workers", "2", "--resume")) == 3
    lines = manifest(out)
    assert sorted(r["key"] for r in lines) == sorted(before), "an input is missing or listed twice"
    after = {r["key"]: r.get("result_id") for r in lines}
    redone = sorted(k for k in after if k != "bad" and after[k] != before[k])
    assert redone == ["a", "sub/b"]
    for key in cluster["inputs"]["good"]:
        assert_same_result(out / key, cluster["want"] / key)
    assert leftovers(out) == []


def test_ray_errors_are_clear(cluster, tmp_path, capsys):
    assert main(_argv(cluster, tmp_path / "o", "--engine", "ray", "--workers", "3", "--cpus-per-worker", "1")) == 1
    err = capsys.readouterr().err
    assert "3 Ray workers need 3 CPU" in err and "Traceback" not in err
    assert main(_argv(cluster, tmp_path / "o2", "--engine", "ray", "--device", "cuda")) == 1
    assert "the Ray cluster has no GPU" in capsys.readouterr().err
