import pytest

from mcgr.train.cli import main
from mcgr.train.config import ConfigError, load_config, preset_names


def test_presets_exist_and_load():
    for kind in ("seg", "rf"):
        assert {"tiny", "default"} <= set(preset_names(kind))
        cfg = load_config(kind, "default")
        assert cfg.kind == kind and cfg.model.in_channels == (2 if kind == "rf" else 1)


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
