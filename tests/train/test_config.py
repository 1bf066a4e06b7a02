import dataclasses
from pathlib import Path

import pytest

from mcgr.train.cli import main
from mcgr.train.config import ConfigError, load_config, preset_names

# the research presets (not shipped): loaded by path, as a user loads any YAML
EXPERIMENT_PRESETS = Path(__file__).resolve().parents[2] / "experiments" / "presets"


def test_presets_exist_and_load():
    for kind in ("seg", "rf"):
        assert {"tiny", "default"} <= set(preset_names(kind))
        cfg = load_config(kind, "default")
        assert cfg.kind == kind and cfg.model.in_channels == (3 if kind == "rf" else 1)
    # the default generator is the shipped one's recipe: rf_enhance at 25000 steps
    enhance = load_config("rf", "enhance")
    assert load_config("rf", "default") == dataclasses.replace(
        enhance, optim=dataclasses.replace(enhance.optim, steps=25000))
    assert load_config("rf", EXPERIMENT_PRESETS / "rf_plain.yaml").model.in_channels == 2


def test_experiment_presets_load_by_path():
    files = sorted(EXPERIMENT_PRESETS.glob("*.yaml"))
    assert files
    for f in files:
        kind = f.stem.split("_")[0]
        assert load_config(kind, f).kind == kind


def test_file_overrides_a_preset(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("preset: tiny\noptim: {steps: 7}\nmodel: {width: 12}\n")
    cfg = load_config("seg", p)
    assert cfg.optim.steps == 7 and cfg.model.width == 12
    assert cfg.data.patch_size == load_config("seg", "tiny").data.patch_size


@pytest.mark.parametrize("text, match", [
    ("optim: {lrr: 0.1}\n", r"c\.yaml: unknown key 'optim\.lrr'"),
    ("modle: {}\n", r"c\.yaml: unknown key 'modle'"),
    ("data: {patch_size: 1.5}\n", r"c\.yaml: data\.patch_size must be an integer"),
    ("model: {norm: layer}\n", r"c\.yaml: model\.norm must be one of"),
    ("kind: rf\n", r"c\.yaml: kind is 'rf'"),
    ("preset: huge\n", r"c\.yaml: preset 'huge' is not one of"),
    ("optim: [1, 2]\n", r"c\.yaml: optim must be a mapping"),
])
def test_bad_config_names_file_and_key(tmp_path, text, match):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config("seg", p)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="neither a seg preset"):
        load_config("seg", "nonexistent")


def test_cli_trains_and_reports_errors(tmp_path, capsys):
    assert main(["seg", "--config", "tiny", "--out", str(tmp_path / "o"), "--steps", "4", "--no-progress"]) == 0
    assert (tmp_path / "o" / "model" / "model.safetensors").is_file()
    bad = tmp_path / "bad.yaml"
    bad.write_text("log: {every: 3}\n")
    assert main(["rf", "--config", str(bad), "--out", str(tmp_path / "p")]) == 2
    assert "bad.yaml: unknown key 'log.every'" in capsys.readouterr().err


def test_rf_seeds_only_at_visible_calcifications(tmp_path):
    import torch

    from mcgr.synth.dataset import SynthPairs
    from mcgr.synth.visibility import visible_centres
    from mcgr.train.trainer import rf_seed_map

    p = tmp_path / "r.yaml"
    p.write_text("preset: tiny\nrf: {decoys: 0, dropout: 0.0, jitter: 0.0, seed_min_cnr: 3.0}\n")
    cfg = load_config("rf", p)
    b = SynthPairs(patch_size=64, batch_size=6, seed=3, mc_free_fraction=0.0).batch(0)
    vis = visible_centres(b["image"], b["background"], b["centres"], 3.0)
    assert any(v.any() for v in vis) and any((~v).any() for v in vis)  # the batch has both kinds
    smap = rf_seed_map(b, cfg, torch.Generator().manual_seed(0))
    for k, (c, v) in enumerate(zip(b["centres"], vis)):
        at = smap[k, 0][c[:, 0].round().long(), c[:, 1].round().long()]
        far = [((c[v] - ci).norm(dim=1).min() > 6) if v.any() else True for ci in c]
        for a, vi, fi in zip(at.tolist(), v.tolist(), far):
            if vi:
                assert a > 0.9  # a seed dot's centre
            elif fi:
                assert a < 1e-3  # no seed on an invisible calcification (away from visible ones)
    p.write_text("preset: tiny\nrf: {seed_min_cnr: -1.0}\n")
    with pytest.raises(ConfigError, match="seed_min_cnr"):
        load_config("rf", p)


def test_seg_loss_leaves_invisible_calcifications_out(tmp_path):
    import torch

    from mcgr.models.segmentor import segmentation_loss
    from mcgr.synth.dataset import SynthPairs
    from mcgr.synth.visibility import difficult_weight
    from mcgr.train.trainer import compute_loss

    p = tmp_path / "s.yaml"
    p.write_text("preset: tiny\nloss: {ignore_below_cnr: 3.0}\n")
    cfg = load_config("seg", p)
    assert load_config("seg", EXPERIMENT_PRESETS / "seg_visible.yaml").loss.ignore_below_cnr == 3.0
    b = SynthPairs(patch_size=64, batch_size=4, seed=3, mc_free_fraction=0.0).batch(0)
    from mcgr.models.segmentor import segmentor_config
    from mcgr.models.unet import UNet, standardise

    torch.manual_seed(0)
    model = UNet(segmentor_config(width=8, depth=2, groups=4))
    w = difficult_weight(b["image"], b["background"], b["mask"], 3.0)
    assert 0 < float((w == 0).sum()) < w.numel()  # the batch has invisible calcifications
    with torch.no_grad():
        got = compute_loss(model, b, cfg, torch.Generator())
        want = segmentation_loss(model(standardise(b["image"])), b["mask"], cfg.loss.bce, cfg.loss.dice,
                                 cfg.loss.pos_weight, weight=w)
        plain = segmentation_loss(model(standardise(b["image"])), b["mask"], cfg.loss.bce, cfg.loss.dice,
                                  cfg.loss.pos_weight)
    assert float(got) == pytest.approx(float(want), rel=1e-6) and float(got) != pytest.approx(float(plain), rel=1e-6)
    p.write_text("preset: tiny\nloss: {ignore_below_cnr: -1.0}\n")
    with pytest.raises(ConfigError, match="ignore_below_cnr"):
        load_config("seg", p)
    # the faint band on top: its calcifications weigh faint_weight, the invisible ones still 0
    from mcgr.synth.visibility import band_weight

    p.write_text("preset: tiny\nloss: {ignore_below_cnr: 3.0, faint_below_cnr: 8.0, faint_weight: 4.0}\n")
    cfg = load_config("seg", p)
    wb = band_weight(b["image"], b["background"], b["mask"], 3.0, 8.0, 4.0)
    assert bool((wb == 4.0).any())
    with torch.no_grad():
        got = compute_loss(model, b, cfg, torch.Generator())
        want = segmentation_loss(model(standardise(b["image"])), b["mask"], cfg.loss.bce, cfg.loss.dice,
                                 cfg.loss.pos_weight, weight=w * wb)
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    for bad, key in (("{ignore_below_cnr: 3.0, faint_below_cnr: 2.0}", "faint_below_cnr"),
                     ("{faint_below_cnr: 6.0, faint_weight: -1.0}", "faint_weight")):
        p.write_text(f"preset: tiny\nloss: {bad}\n")
        with pytest.raises(ConfigError, match=key):
            load_config("seg", p)
