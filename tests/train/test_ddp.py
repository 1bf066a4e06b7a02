"""Distributed training: a 2-process gloo DDP run of the tiny preset (torchrun, CPU) follows the loss
curve of a 1-process run with the same global batch and micro-batches, checkpoints from rank 0 and
resumes; the ranks' synthetic samples are disjoint and together make the 1-process stream."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from mcgr.synth.dataset import SynthPairs
from mcgr.train.config import load_config
from mcgr.train.distributed import local_micro_batches, micro_batch_stream, resolve_micro_batches
from mcgr.train.trainer import train


def _records(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _curve(out, key="loss"):
    return [(r["step"], r[key]) for r in _records(out) if key in r]


def _torchrun(tmp_path, kind, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "mcgr", "train", kind, "--config", str(tmp_path / "cfg.yaml"), "--no-progress", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


@pytest.mark.parametrize("world, m", [(1, 1), (2, 4), (4, 4)])
def test_ranks_take_disjoint_micro_batches_that_make_the_one_process_stream(world, m):
    cfg = load_config("seg", "tiny")
    B = cfg.data.batch_size
    assert resolve_micro_batches(m, None, world, B) == m
    ranks = [local_micro_batches(m, r, world) for r in range(world)]
    assert sorted(j for rg in ranks for j in rg) == list(range(m))
    for k in (3,):
        seen = []
        for r in range(world):
            parts = next(micro_batch_stream(cfg, k, m, ranks[r]))
            assert [j for j, _ in parts] == list(ranks[r])
            for j, b in parts:
                # independently: batch k m + j of the stream with B / m pairs per batch
                ref = SynthPairs(seed=cfg.seed, patch_size=cfg.data.patch_size, batch_size=B // m,
                                 spacing_mm=cfg.data.spacing_mm, mc_free_fraction=cfg.data.mc_free_fraction).batch(k * m + j)
                assert torch.equal(b["image"], ref["image"]) and torch.equal(b["mask"], ref["mask"])
                seen += b["index"].tolist()
        assert sorted(seen) == list(range(k * B, (k + 1) * B)), "samples repeated or missing across ranks"


def test_micro_batch_errors():
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        resolve_micro_batches(3, None, 2, 12)
    with pytest.raises(ValueError, match="batch_size=4 must be a multiple of micro_batches=8"):
        resolve_micro_batches(8, None, 2, 4)
    with pytest.raises(ValueError, match="checkpoint was written with micro_batches=2"):
        resolve_micro_batches(4, 2, 2, 4)
    assert resolve_micro_batches(None, None, 2, 4) == 2 and resolve_micro_batches(None, 4, 2, 8) == 4


def _assert_same_run(a, b, rtol):
    ca, cb = _curve(a), _curve(b)
    assert [s for s, _ in ca] == [s for s, _ in cb]
    torch.testing.assert_close(torch.tensor([v for _, v in cb]), torch.tensor([v for _, v in ca]), rtol=rtol, atol=1e-6)
    va, vb = _curve(a, "val_loss"), _curve(b, "val_loss")
    assert [s for s, _ in va] == [s for s, _ in vb] and va
    torch.testing.assert_close(torch.tensor([v for _, v in vb]), torch.tensor([v for _, v in va]), rtol=rtol, atol=1e-6)
    wa, wb = load_file(str(a / "model" / "model.safetensors")), load_file(str(b / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=rtol, atol=1e-5, msg=lambda m: f"{k}: {m}")


def test_two_process_gloo_ddp_with_resume_equals_one_process(tmp_path):
    (tmp_path / "cfg.yaml").write_text("preset: tiny\noptim: {steps: 12}\n"
                                       "log: {log_every: 1, val_every: 6, ckpt_every: 4, progress: false}\n")
    cfg = load_config("seg", tmp_path / "cfg.yaml")
    train(cfg, tmp_path / "one", micro_batches=2, progress=False)

    # killed-and-resumed 2-process run: stops (with a rank-0 checkpoint) after step 6, then --resume
    _torchrun(tmp_path, "seg", "--out", "two", "--stop-after", "6")
    state = json.loads((tmp_path / "two" / "ckpt" / "state.json").read_text())
    assert state["step"] == 6 and state["micro_batches"] == 2
    assert not (tmp_path / "two" / "model").exists()
    p = _torchrun(tmp_path, "seg", "--out", "two", "--resume")
    assert p.stdout.count('"steps_done": 12') == 2  # both ranks finished (their lines may interleave)
    recs = _records(tmp_path / "two")
    assert [r["step"] for r in recs if "loss" in r] == list(range(1, 13)), "a rank other than 0 wrote metrics"
    _assert_same_run(tmp_path / "one", tmp_path / "two", rtol=1e-4)


@pytest.mark.slow
def test_two_process_rf_generator_equals_one_process(tmp_path):
    (tmp_path / "cfg.yaml").write_text("preset: tiny\noptim: {steps: 4}\n"
                                       "log: {log_every: 1, val_every: 4, ckpt_every: 4, progress: false}\n")
    cfg = load_config("rf", tmp_path / "cfg.yaml")
    train(cfg, tmp_path / "one", micro_batches=2, progress=False)
    _torchrun(tmp_path, "rf", "--out", "two")
    _assert_same_run(tmp_path / "one", tmp_path / "two", rtol=1e-4)
