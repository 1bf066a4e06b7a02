import json

import pytest
import torch

from mcgr.models import load_model, save_model
from mcgr.models.checkpoint import CheckpointError
from mcgr.models.unet import UNet, UNetConfig


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return UNet(UNetConfig(width=8, depth=2, groups=4, **kw))


def test_round_trip_is_exact(tmp_path):
    m = _model(in_channels=2, time_embedding=True, time_dim=16)
    save_model(m, tmp_path / "m", "rf", extra={"metrics": {"val_loss": 0.5}})
    got = load_model(tmp_path / "m", kind="rf")
    assert got.kind == "rf" and got.config["metrics"] == {"val_loss": 0.5}
    for (k, a), (k2, b) in zip(m.state_dict().items(), got.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    x = torch.randn(1, 2, 12, 12)
    assert torch.equal(m.eval()(x, 0.3), got(x, 0.3))


def test_wrong_shape_names_file_and_tensor(tmp_path):
    save_model(_model(), tmp_path / "m", "seg")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["model"]["width"] = 12
    cfg["model"]["groups"] = 4
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'stem\.weight' has shape \(8, 1, 3, 3\)"):
        load_model(tmp_path / "m")


def test_truncated_file_names_the_file(tmp_path):
    save_model(_model(), tmp_path / "m", "seg")
    p = tmp_path / "m" / "model.safetensors"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        load_model(tmp_path / "m")


def test_unknown_config_keys_name_file_and_key(tmp_path):
    save_model(_model(), tmp_path / "m", "seg")
    cp = tmp_path / "m" / "config.json"
    cfg = json.loads(cp.read_text())
    cfg["model"]["widht"] = 8
    cp.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json: model: unknown key\(s\) \['widht'\]"):
        load_model(tmp_path / "m")
    cfg["model"].pop("widht")
    cfg["learning_rate"] = 1
    cp.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json: unknown key\(s\) \['learning_rate'\]"):
        load_model(tmp_path / "m")


def test_kind_mismatch_and_missing_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    save_model(_model(), tmp_path / "m", "seg")
    with pytest.raises(CheckpointError, match="kind is 'seg', expected 'rf'"):
        load_model(tmp_path / "m", kind="rf")
    p = tmp_path / "m" / "model.safetensors"
    t = load_file(str(p))
    t.pop("head.bias")
    save_file(t, str(p))
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) \['head\.bias'\]"):
        load_model(tmp_path / "m")


def test_load_never_unpickles(tmp_path, monkeypatch):
    save_model(_model(), tmp_path / "m", "seg")

    def boom(*a, **k):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", boom)
    load_model(tmp_path / "m")


def test_load_pretrained_reads_weights_dir(tmp_path, monkeypatch):
    import mcgr.models as models

    monkeypatch.setattr(models, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"seg[/\\]model\.safetensors: no shipped seg weights"):
        models.load_pretrained("seg")
    m = _model(3)
    save_model(m, tmp_path / "seg", "seg")
    got = models.load_pretrained("seg")
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), got.state_dict().values()))
    with pytest.raises(CheckpointError, match="kind is 'seg', expected 'rf'"):
        save_model(m, tmp_path / "rf", "seg")
        models.load_pretrained("rf")
    with pytest.raises(ValueError, match="kind must be 'seg' or 'rf'"):
        models.load_pretrained("gan")
