"""The overlapped local engine: the prefetch reader and the write-behind writer keep input order and
their bounds, a failing input is reported while the others complete, and an interrupt leaves every
result folder complete or absent (the work already through the networks committed)."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from archive_factory import SPACING, assert_same_result, expected_outputs, leftovers, make_folder, make_models, manifest

from mcgr.archive.engine import Prefetcher, Tally, WriteBehind, run_overlapped
from mcgr.archive.inputs import iter_inputs
from mcgr.archive.layout import DONE, STAGING
from mcgr.archive.run_folder import RunFolder
from mcgr.archive.store import verify_result
from mcgr.infer.pipeline import Pipeline
from mcgr.models import load_model


def test_prefetcher_keeps_input_order_whatever_each_load_takes():
    delays = [0.02, 0.0, 0.01, 0.0, 0.03, 0.0, 0.005, 0.0]

    def load(i):
        time.sleep(delays[i])
        return i * i

    got = [(i, v, e) for i, v, e in Prefetcher(range(len(delays)), load, depth=2)]
    assert got == [(i, i * i, None) for i in range(len(delays))]


def test_prefetcher_runs_at_most_depth_plus_one_loads_ahead():
    started = []

    def load(i):
        started.append(i)
        return i

    for depth in (1, 3):
        started.clear()
        pf = Prefetcher(range(100), load, depth=depth)
        time.sleep(0.3)  # the consumer takes nothing: the reader fills the queue and holds one more
        assert len(started) == depth + 1, (depth, started)
        it = iter(pf)
        assert next(it)[0] == 0
        time.sleep(0.3)  # one taken: exactly one more load
        assert len(started) == depth + 2, (depth, started)
        pf.close()
        assert len(started) <= depth + 3


def test_prefetcher_reports_a_failing_load_with_its_item_and_goes_on():
    def load(i):
        if i == 2:
            raise ValueError("corrupt")
        return i

    got = list(Prefetcher(range(5), load, depth=1))
    assert [g[0] for g in got] == [0, 1, 2, 3, 4]
    assert got[2][1] is None and isinstance(got[2][2], ValueError) and str(got[2][2]) == "corrupt"
    assert all(g[2] is None for k, g in enumerate(got) if k != 2)


def test_prefetcher_reraises_a_failing_listing():
    def items():
        yield 0
        raise OSError("folder vanished")

    it = iter(Prefetcher(items(), lambda i: i, depth=1))
    assert next(it)[0] == 0
    with pytest.raises(OSError, match="folder vanished"):
        next(it)


def test_write_behind_runs_jobs_in_order_and_blocks_beyond_its_bound():
    gate = threading.Event()
    done = []

    def job(i):
        gate.wait()
        done.append(i)

    w = WriteBehind(depth=2)
    for i in range(3):  # one running (held at the gate) + two queued: none of these block
        t = time.perf_counter()
        w.submit(job, i)
        assert time.perf_counter() - t < 0.5
    blocked = threading.Thread(target=w.submit, args=(job, 3))
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive(), "a fourth job was accepted while three were held"
    gate.set()
    blocked.join(5)
    assert not blocked.is_alive()
    for i in range(4, 10):
        w.submit(job, i)
    w.close(drain=True)
    assert done == list(range(10))


def test_write_behind_hands_a_job_failure_to_the_submitter():
    w = WriteBehind(depth=1)

    def bad():
        raise OSError("disk full")

    w.submit(bad)
    time.sleep(0.1)
    with pytest.raises(OSError, match="disk full"):
        w.submit(lambda: None)
    w.close()
    with pytest.raises(ValueError, match="depth"):
        WriteBehind(depth=0)


# ---------------------------------------------------------------- the engine on a real archive

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    models = make_models(root / "models")
    inputs = make_folder(root / "in", n_extra=3)
    want = expected_outputs(models, inputs["good"], root / "want")
    return {"root": root, "models": models, "inputs": inputs, "want": want}


class FailingAt(Pipeline):
    """The real pipeline, whose networks raise ``exc`` on the input named ``stem``."""

    def __init__(self, *a, stem: str, exc: BaseException, finish_s: float = 0.0, **kw):
        super().__init__(*a, **kw)
        self.stem, self.exc, self.finish_s = stem, exc, finish_s
        self.networks_done = []

    def finish(self, prep, fr):
        time.sleep(self.finish_s)  # a slow writer: finished images wait in the write-behind queue
        return super().finish(prep, fr)

    def network(self, prep, **kw):
        src = Path(prep.mammogram.source).name
        if src.startswith(self.stem):
            raise self.exc
        out = super().network(prep, **kw)
        self.networks_done.append(src)
        return out


def _run(data, out, pipe, resume=False):
    settings = {"refine": False, "spacing": SPACING}
    tally = Tally()
    with RunFolder(out, settings, resume=resume) as run:
        items = iter_inputs([str(data["root"] / "in")], exclude=[out])
        run_overlapped(items, pipe, run, tally, prefetch=1, write_behind=1)
    return tally


def _pipe(data, cls=Pipeline, **kw):
    torch.set_num_threads(1)
    return cls(load_model(data["models"] / "seg", kind="seg"), None, **kw)


def test_overlapped_engine_equals_the_api_and_reports_each_failure(data, tmp_path):
    out = tmp_path / "out"
    pipe = _pipe(data, FailingAt, stem="e1", exc=RuntimeError("network fault"))
    tally = _run(data, out, pipe)
    lines = manifest(out)
    good = {str(p): k for k, p in data["inputs"]["good"].items()}
    assert [r["input"] for r in lines] == [it.path for it in iter_inputs([str(data["root"] / "in")])]  # input order
    by_input = {r["input"]: r for r in lines}
    assert by_input[str(data["inputs"]["bad"])]["status"] == "error"  # unreadable: from the reader
    e1 = by_input[str(data["inputs"]["good"]["e1"])]
    assert e1["status"] == "error" and "network fault" in e1["error"]  # from the networks
    for path, key in good.items():
        if key == "e1":
            continue
        r = by_input[path]
        assert r["status"] == "ok" and verify_result(out / key, r)
        assert_same_result(out / key, data["want"] / key)
        assert r["timings"]["total"] >= r["timings"]["base"] + r["timings"]["write"]
    assert not (out / "e1").exists()
    assert (tally.ok, tally.error) == (len(good) - 1, 2)
    assert leftovers(out) == []


def test_an_interrupt_commits_what_the_networks_finished_and_leaves_no_partial_folder(data, tmp_path):
    out = tmp_path / "out"
    pipe = _pipe(data, FailingAt, stem="e2", exc=KeyboardInterrupt(), finish_s=0.5)
    with pytest.raises(KeyboardInterrupt):
        _run(data, out, pipe)
    lines = manifest(out)
    committed = {Path(r["input"]).name for r in lines if r["status"] == "ok"}
    # every input whose networks ran before the interrupt is written and committed (the writer drains)
    assert set(pipe.networks_done) == committed and committed
    for r in lines:
        if r["status"] == "ok":
            assert verify_result(out / r["key"], r)
    # no result folder without its manifest line, none for the interrupted input
    keys = {r["key"] for r in lines if r["status"] == "ok"}
    on_disk = {str(p.parent.relative_to(out)) for p in out.rglob(DONE) if STAGING not in p.parts}
    assert on_disk == keys and "e2" not in on_disk
    # --resume completes the run with the plain pipeline, nothing redone twice
    tally = _run(data, out, _pipe(data), resume=True)
    assert tally.complete == len(committed)
    final = manifest(out)
    assert len({r["input"] for r in final}) == len(final)
    for key in data["inputs"]["good"]:
        assert_same_result(out / key, data["want"] / key)
    assert leftovers(out) == []
