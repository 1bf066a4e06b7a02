"""Training: the tiny presets learn, and a killed run resumed from its checkpoint ends with the
same weights as an uninterrupted one."""
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

import mcgr.train.trainer as trainer
from mcgr.models import load_model
from mcgr.train.config import load_config
from mcgr.train.trainer import lr_at, train


def _losses(out):
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.parametrize("kind", ["seg", "rf"])
def test_tiny_preset_trains_and_loss_falls(tmp_path, kind):
    cfg = load_config(kind, "tiny")
    summary = train(cfg, tmp_path / "run")
    assert summary["steps_done"] == cfg.optim.steps
    losses = _losses(tmp_path / "run")
    assert len(losses) == cfg.optim.steps // cfg.log.log_every
    assert sum(losses[-2:]) / 2 < 0.9 * sum(losses[:2]) / 2, losses
    m = load_model(tmp_path / "run" / "model", kind=kind)
    assert m.cfg == cfg.model
    assert "val_loss" in m.config["metrics"]


class _Killed(Exception):
    pass


@pytest.mark.parametrize("kind", ["seg", "rf"])
def test_resume_after_kill_equals_uninterrupted(tmp_path, kind, monkeypatch):
    cfg = load_config(kind, "tiny")
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, steps=16),
                              log=dataclasses.replace(cfg.log, ckpt_every=5, val_every=8, log_every=2))
    train(cfg, tmp_path / "full")

    real_stream = trainer.batch_stream

    def dying_stream(c, start):
        for k, b in enumerate(real_stream(c, start)):
            if start + k == 13:  # killed while fetching step 13's batch; last checkpoint is step 10
                raise _Killed()
            yield b

    monkeypatch.setattr(trainer, "batch_stream", dying_stream)
    with pytest.raises(_Killed):
        train(cfg, tmp_path / "resumed")
    assert json.loads((tmp_path / "resumed" / "ckpt" / "state.json").read_text())["step"] == 10
    monkeypatch.setattr(trainer, "batch_stream", real_stream)
    train(cfg, tmp_path / "resumed", resume=True)

    for name in ("model/model.safetensors", "ckpt/model.safetensors", "ckpt/state.safetensors"):
        a = load_file(str(tmp_path / "full" / name))
        b = load_file(str(tmp_path / "resumed" / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}: {k} differs"
    ml = lambda p: [json.loads(x) for x in (p / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith(("elapsed", "pairs"))} for r in rs]  # noqa: E731
    assert strip(ml(tmp_path / "full")) == strip(ml(tmp_path / "resumed"))


def test_stop_after_then_resume_and_guards(tmp_path):
    cfg = load_config("seg", "tiny")
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, steps=8))
    s = train(cfg, tmp_path / "r", stop_after=3)
    assert s["steps_done"] == 3 and not (tmp_path / "r" / "model").exists()
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, tmp_path / "r")
    other = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=0.1))
    with pytest.raises(ValueError, match=r"different config \(sections \['optim'\]"):
        train(other, tmp_path / "r", resume=True)
    assert train(cfg, tmp_path / "r", resume=True)["steps_done"] == 8
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(cfg, tmp_path / "empty", resume=True)


def test_lr_schedule_closed_form():
    cfg = load_config("seg", "tiny")
    o = dataclasses.replace(cfg.optim, steps=110, warmup=10, lr=1.0, min_lr_ratio=0.1)
    cfg = dataclasses.replace(cfg, optim=o)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)  # half way: 0.1 + 0.9 * 0.5
    assert lr_at(110, cfg) == pytest.approx(0.1)


def test_enhancing_generator_trains_and_its_target_moves_only_seeded_calcifications(tmp_path):
    import numpy as np
    from scipy import ndimage

    from mcgr.models.rf import to_flow
    from mcgr.models.unet import UNet

    p = tmp_path / "c.yaml"
    p.write_text("preset: tiny\nmodel: {image_condition: true, in_channels: 3, input_scale: detail}\n"
                 "rf: {target: enhanced, seed_min_cnr: 3.0, decoys: 2, decoy_min_dist: 4}\n")
    cfg = load_config("rf", p)
    summary = train(cfg, tmp_path / "run")
    assert summary["steps_done"] == cfg.optim.steps
    losses = _losses(tmp_path / "run")
    assert sum(losses[-2:]) / 2 < 0.9 * sum(losses[:2]) / 2, losses
    assert load_model(tmp_path / "run" / "model", kind="rf").cfg.image_condition

    batch = next(trainer.batch_stream(cfg, 7))
    assert "signal" in batch
    model = UNet(cfg.model)
    x1, cond, y = trainer.rf_pair(model, batch, cfg, torch.Generator().manual_seed(0))
    xy = to_flow(batch["image"], "detail")[0]
    assert cond.shape[1] == 2 and torch.equal(cond[:, 1:], xy) and torch.equal(y, xy)
    changed = (x1 - xy).abs()[:, 0].numpy() > 1e-4
    dist = np.stack([ndimage.distance_transform_edt(m == 0) for m in batch["mask"][:, 0].numpy()])
    assert changed.any() and (dist[changed] <= 3).all()  # only calcifications (and their blur) move
    assert ((x1 - xy)[:, 0].numpy()[changed] > 0).all()  # and only brighter
