"""benchmarks/compare.py: a slowdown beyond the threshold fails, an unchanged run passes."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from benchmarks import compare  # noqa: E402
from benchmarks._harness import Case, append_json, run  # noqa: E402

MACHINE = {"host": "box", "processor": "AMD EPYC", "cpu_count": 2, "device": "cpu", "git": "abc1234", "copy_gbps": 15.0}


def synth_rows(seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for op in ("stitch", "refine"):
        for shape in ("2560x3328", "64x256x256"):
            ref = float(1 + 100 * torch.rand((), generator=g))
            for backend, speedup in (("ref", 1.0), ("compiled", 2.0), ("cpu", 8.0)):
                ms = ref / speedup
                rows.append({"op": op, "backend": backend, "shape": shape, "median_ms": round(ms, 4),
                             "ratio_vs_ref": speedup, "gbps": round(1e-3 / ms, 3)})
    rows.append({"op": "refine", "backend": "cuda", "shape": "2560x3328", "median_ms": None,
                 "ratio_vs_ref": None, "gbps": None, "note": "no CUDA device is available to torch"})
    return rows


def write(path: Path, rows: list[dict], machine: dict = MACHINE) -> Path:
    path.write_text(json.dumps({"machine": machine, "rows": rows}))
    return path


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.compare", *args], cwd=ROOT, capture_output=True, text=True)


def test_unchanged_run_passes(tmp_path):
    rows = synth_rows()
    old, new = write(tmp_path / "old.json", rows), write(tmp_path / "new.json", [dict(r) for r in rows])
    res = cli(str(old), str(new))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 regression(s)" in res.stdout


def test_noise_within_threshold_passes(tmp_path):
    rows = synth_rows()
    noisy = [dict(r, median_ms=r["median_ms"] * (1.08 if i % 2 else 0.93)) if r["median_ms"] else dict(r)
             for i, r in enumerate(rows)]
    assert compare.main([str(write(tmp_path / "o.json", rows)), str(write(tmp_path / "n.json", noisy))]) == 0


@pytest.mark.parametrize("factor,threshold,fails", [(1.5, 0.10, True), (1.12, 0.10, True), (1.12, 0.15, False),
                                                    (1.0 / 1.5, 0.10, False)])
def test_artificial_slowdown_is_caught(tmp_path, factor, threshold, fails):
    rows = synth_rows(seed=3)
    slow = [dict(r) for r in rows]
    victim = next(i for i, r in enumerate(slow) if r["op"] == "stitch" and r["backend"] == "cpu" and r["shape"] == "2560x3328")
    slow[victim]["median_ms"] = rows[victim]["median_ms"] * factor
    res = cli(str(write(tmp_path / "old.json", rows)), str(write(tmp_path / "new.json", slow)), "--threshold", str(threshold))
    assert res.returncode == (1 if fails else 0), res.stdout + res.stderr
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("stitch") and " cpu " in ln and "2560x3328" in ln)
    if fails:
        assert "REGRESSION" in line and f"{100 * (factor - 1):+.1f}%" in line
        assert sum("REGRESSION" in ln for ln in res.stdout.splitlines()) == 1
    else:
        assert "REGRESSION" not in res.stdout


def test_provider_that_now_fails_is_a_regression_missing_rows_are_not(tmp_path):
    rows = synth_rows()
    new = [dict(r) for r in rows]
    i = next(i for i, r in enumerate(new) if r["backend"] == "compiled")
    new[i].update(median_ms=None, ratio_vs_ref=None, gbps=None, note="BackendCompilerFailed: boom")
    entries = compare.compare(compare.load_rows(write(tmp_path / "o.json", rows))[1],
                              compare.load_rows(write(tmp_path / "n.json", new))[1])
    assert [e["status"] for e in compare.regressions(entries)] == ["FAILED"]
    fewer = [r for r in rows if r["op"] != "refine"] + [dict(rows[0], op="new_op")]
    entries = compare.compare(compare.load_rows(tmp_path / "o.json")[1], compare.load_rows(write(tmp_path / "f.json", fewer))[1])
    assert not compare.regressions(entries)
    assert {e["status"] for e in entries} == {"ok", "removed", "added"}


def test_real_harness_runs_catch_a_real_slowdown(tmp_path):
    """Two genuine harness runs of the same op, the second sleeping 10x longer, written by append_json."""
    dev = torch.device("cpu")
    case = [Case(shape="sleep", make=lambda d: (), bytes=0)]
    fast = run("sleepy", lambda: time.sleep(0.002), None, case, dev, providers=("ref",), warmup=1, reps=3, log=lambda s: None)
    slow = run("sleepy", lambda: time.sleep(0.02), None, case, dev, providers=("ref",), warmup=1, reps=3, log=lambda s: None)
    append_json(tmp_path / "a.json", MACHINE, fast)
    append_json(tmp_path / "b.json", MACHINE, slow)
    assert compare.main([str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 1
    assert compare.main([str(tmp_path / "b.json"), str(tmp_path / "a.json")]) == 0


def test_bad_input_exits_2(tmp_path):
    (tmp_path / "x.json").write_text("[1, 2]")
    good = write(tmp_path / "g.json", synth_rows())
    assert cli(str(tmp_path / "x.json"), str(good)).returncode == 2
    res = cli(str(tmp_path / "missing.json"), str(good))
    assert res.returncode == 2 and "missing.json" in res.stderr
    assert cli(str(good), str(good), "--threshold", "-1").returncode == 2
