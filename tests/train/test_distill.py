"""Distillation: the logit-matching loss against a closed form, the step's loss with a teacher, the
config's pairing of teacher and weight, and a short student training end to end."""
import json

import numpy as np
import pytest
import torch

from mcgr.train.config import ConfigError, load_config


def test_distillation_loss_is_the_mean_squared_clamped_logit_gap():
    from mcgr.models.segmentor import distillation_loss

    rng = np.random.default_rng(4)
    s = rng.normal(0, 12, (3, 1, 17, 9)).astype(np.float32)
    t = rng.normal(0, 12, (3, 1, 17, 9)).astype(np.float32)
    for clip in (10.0, 2.5):
        want = np.mean((np.clip(s, -clip, clip) - np.clip(t, -clip, clip)) ** 2)
        got = float(distillation_loss(torch.from_numpy(s), torch.from_numpy(t), clip))
        assert got == pytest.approx(float(want), rel=1e-5)
    # both beyond the clip on the same side: no gap, and no gradient pulls the student back
    st = torch.tensor([[[[30.0, -40.0]]]], requires_grad=True)
    loss = distillation_loss(st, torch.tensor([[[[12.0, -11.0]]]]), 10.0)
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(st.grad.abs().sum()) == 0.0
    with pytest.raises(ValueError, match="shape"):
        distillation_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3))
    with pytest.raises(ValueError, match="clip"):
        distillation_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), 0.0)


def _tiny_seg(seed: int):
    from mcgr.models.segmentor import segmentor_config
    from mcgr.models.unet import UNet

    torch.manual_seed(seed)
    return UNet(segmentor_config(width=8, depth=2, groups=4)).eval()


def test_step_loss_adds_the_weighted_gap_to_the_teacher(tmp_path):
    from mcgr.models.segmentor import segmentation_loss
    from mcgr.models.unet import standardise
    from mcgr.synth.dataset import SynthPairs
    from mcgr.train.trainer import compute_loss

    p = tmp_path / "s.yaml"
    p.write_text("preset: tiny\nteacher: some/folder\nloss: {distill: 0.3, distill_clip: 6.0}\n")
    cfg = load_config("seg", p)
    b = SynthPairs(patch_size=64, batch_size=2, seed=5).batch(0)
    student, teacher = _tiny_seg(0), _tiny_seg(1)
    with torch.no_grad():
        s = student(standardise(b["image"]))
        t = teacher(standardise(b["image"]))
        plain = float(segmentation_loss(s, b["mask"], cfg.loss.bce, cfg.loss.dice, cfg.loss.pos_weight))
        gap = float(((s.clamp(-6, 6) - t.clamp(-6, 6)) ** 2).mean())
        got = float(compute_loss(student, b, cfg, torch.Generator(), teacher))
        self_taught = float(compute_loss(student, b, cfg, torch.Generator(), student))
    assert gap > 0
    assert got == pytest.approx(plain + 0.3 * gap, rel=1e-5)
    assert self_taught == pytest.approx(plain, rel=1e-6)  # a teacher equal to the student adds nothing


@pytest.mark.parametrize("body, key", [
    ("teacher: some/folder\n", "go together"),             # a teacher with no weight
    ("loss: {distill: 1.0}\n", "go together"),             # a weight with no teacher
    ("teacher: x\nloss: {distill: -1.0}\n", "loss.distill"),
    ("teacher: x\nloss: {distill: 1.0, distill_clip: 0}\n", "distill_clip"),
])
def test_config_pairs_teacher_and_weight(tmp_path, body, key):
    p = tmp_path / "s.yaml"
    p.write_text("preset: tiny\n" + body)
    with pytest.raises(ConfigError, match=key):
        load_config("seg", p)


def test_generator_takes_no_teacher(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("preset: tiny\nteacher: x\nloss: {distill: 1.0}\n")
    with pytest.raises(ConfigError, match="segmentor"):
        load_config("rf", p)


def test_student_trains_toward_its_teacher(tmp_path):
    """A few steps with a large distillation weight bring a random student's logits closer to the
    teacher's on held-out patches than the same steps without the teacher do."""
    from mcgr.models import load_model
    from mcgr.models.checkpoint import save_model
    from mcgr.models.unet import standardise
    from mcgr.synth.dataset import SynthPairs
    from mcgr.train.trainer import train

    teacher = _tiny_seg(7)
    tdir = tmp_path / "teacher"
    save_model(teacher, tdir, "seg")
    held = SynthPairs(patch_size=64, batch_size=4, seed=999).batch(0)["image"]

    def gap_after(distill: float, name: str) -> float:
        p = tmp_path / f"{name}.yaml"
        extra = f"teacher: {tdir}\nloss: {{distill: {distill}}}\n" if distill else ""
        p.write_text("preset: tiny\nmodel: {width: 8, depth: 2, groups: 4}\noptim: {steps: 30, ema: 0.0, lr: 0.003}\n"
                     "data: {patch_size: 64, batch_size: 2}\nlog: {progress: false, val_every: 1000}\n" + extra)
        cfg = load_config("seg", p)
        train(cfg, tmp_path / name)
        m = load_model(tmp_path / name / "model", kind="seg").eval()
        with torch.no_grad():
            s, t = m(standardise(held)), teacher(standardise(held))
        return float(((s.clamp(-10, 10) - t.clamp(-10, 10)) ** 2).mean())

    taught, alone = gap_after(5.0, "taught"), gap_after(0.0, "alone")
    assert taught < 0.5 * alone, (taught, alone)
    cfg_json = json.loads((tmp_path / "taught" / "train_config.json").read_text())
    assert cfg_json["teacher"] == str(tdir) and cfg_json["loss"]["distill"] == 5.0


def test_stamped_student_loads_with_the_teachers_threshold(tmp_path):
    """The student's folder, stamped with the teacher's threshold and name, loads as a model folder
    and runs at that threshold (load_models reads it from the config)."""
    from mcgr.infer.loader import load_models
    from mcgr.models.checkpoint import save_model
    from mcgr.train.distill import stamp_student

    save_model(_tiny_seg(3), tmp_path / "student", "seg")
    stamp_student(tmp_path / "student", 0.987, "shipped")
    m = load_models(tmp_path / "student", refine=False)
    assert m.threshold == pytest.approx(0.987)
    assert json.loads((tmp_path / "student" / "config.json").read_text())["distilled_from"] == "shipped"


@pytest.mark.parametrize("hold_out", [None, "rmlo"])
def test_held_out_view_stays_out_of_the_students_data(tmp_path, monkeypatch, hold_out):
    """--hold-out VIEW: the fold's harvest and mining never see VIEW, and the summary says so."""
    import mcgr.train.real as real
    import mcgr.train.trainer as trainer
    from mcgr.train import distill

    seen = {}
    monkeypatch.setattr(real, "benign_views", lambda: {v: f"/films/{v}.dcm" for v in real.VIEWS})

    def fake_real_data(out, views, miner, phantoms, threads):
        seen["views"] = dict(views)
        return [f"{out}/{v}.npy" for v in views], out / "hard.npy"

    def fake_train(cfg, run, resume=False):
        seen["backgrounds"] = cfg.data.backgrounds
        return {"steps_done": 0}

    monkeypatch.setattr(real, "real_data", fake_real_data)
    monkeypatch.setattr(trainer, "train", fake_train)
    args = ["--out", str(tmp_path / "s"), "--steps", "1"] + (["--hold-out", hold_out] if hold_out else [])
    assert distill.main(args) == 0
    expect = [v for v in real.VIEWS if v != hold_out]
    assert sorted(seen["views"]) == sorted(expect)
    assert all(f"/films/{v}.dcm" == seen["views"][v] for v in expect)
    assert (hold_out or "none") not in seen["backgrounds"]
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["held_out_view"] == hold_out and summary["views"] == sorted(expect)
