"""The segmentor on ONNX Runtime: the same logits as PyTorch float32, the same pipeline answer, and
the runtime chosen as documented (auto: ONNX Runtime on a CPU without native bf16, when installed)."""
import copy
import pickle
import sys

import pytest
import torch
from archive_factory import make_models

from mcgr.infer import runtime as rt
from mcgr.infer.pipeline import Pipeline
from mcgr.infer.ttgpr import TTGPRConfig
from mcgr.models import UNet, load_model
from mcgr.models.segmentor import segmentor_config

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.mark.parametrize("scale,depth", [("image", 3), ("image+detail", 2)])
def test_onnx_segmentor_gives_the_torch_logits_on_any_tile_size(scale, depth):
    torch.manual_seed(1)
    seg = UNet(segmentor_config(width=8, depth=depth, groups=4, input_scale=scale)).eval()
    with torch.no_grad():  # a trained-looking spread of weights, not the init's near-zero head
        for p in seg.parameters():
            p.add_(0.05 * torch.randn_like(p))
    onnx_seg = rt.OnnxSegmentor(seg, threads=1)
    assert onnx_seg.cfg is seg.cfg
    c = seg.cfg.in_channels
    g = torch.Generator().manual_seed(2)
    # 256: the pipeline's tile; 100 x 70 and 17 x 33: not multiples of 2**depth (padded as the U-Net pads)
    for shape in ((4, c, 256, 256), (3, c, 100, 70), (1, c, 17, 33)):
        x = torch.rand(shape, generator=g) * 2 - 1
        with torch.inference_mode():
            ref = seg(x)
        got = onnx_seg(x)
        assert got.shape == ref.shape and got.dtype == torch.float32
        assert (got - ref).abs().max() <= 1e-4 * max(1.0, float(ref.abs().max())), shape
    twin = pickle.loads(pickle.dumps(copy.deepcopy(onnx_seg)))  # copied and pickled: the session is rebuilt
    assert torch.equal(twin(x), onnx_seg(x))


def test_the_pipeline_on_onnxruntime_gives_the_torch_answer(tmp_path):
    root = make_models(tmp_path / "m")
    seg, gen = load_model(root / "seg", kind="seg"), load_model(root / "rf", kind="rf")
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 300, 260, generator=g), 5, 1, 2)[0, 0]
    cfg = TTGPRConfig(tau_seed=0.2, projections=2, steps=1)
    out = {}
    for name in ("torch", "onnxruntime"):
        pipe = Pipeline(copy.deepcopy(seg), copy.deepcopy(gen), config=cfg, autocast=False, runtime=name)
        assert pipe.runtime == name
        out[name] = pipe(img, spacing=0.07, refine=True)
    a, b = out["torch"], out["onnxruntime"]
    for key in ("base_prob", "prob"):
        assert (getattr(a, key) - getattr(b, key)).abs().max() < 1e-5, key
    assert a.seeds == b.seeds


def test_auto_takes_onnxruntime_only_on_a_cpu_without_native_bf16(monkeypatch):
    monkeypatch.setattr(rt, "cpu_has_bf16", lambda: False)
    assert rt.resolve_runtime("auto", "cpu") == "onnxruntime"
    monkeypatch.setattr(rt, "cpu_has_bf16", lambda: True)
    assert rt.resolve_runtime("auto", "cpu") == "torch"
    assert rt.resolve_runtime("auto", "cuda") == "torch"
    assert rt.resolve_runtime("torch", "cpu") == "torch"
    with pytest.raises(rt.RuntimeUnavailable, match="CPU only"):
        rt.resolve_runtime("onnxruntime", "cuda")
    with pytest.raises(ValueError, match="runtime must be one of"):
        rt.resolve_runtime("tensorrt", "cpu")


def test_a_missing_onnxruntime_is_a_clear_error_and_auto_falls_back(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    monkeypatch.setattr(rt, "cpu_has_bf16", lambda: False)
    assert "onnxruntime is not installed" in rt.onnxruntime_missing()
    assert rt.resolve_runtime("auto", "cpu") == "torch"
    with pytest.raises(rt.RuntimeUnavailable, match=r"pip install 'mcgr\[runtimes\]'"):
        rt.resolve_runtime("onnxruntime", "cpu")
    from mcgr.cli import main

    root = make_models(tmp_path / "m")
    (tmp_path / "in").mkdir()
    for cmd in (["infer", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--models", str(root)],
                ["demo", "--out", str(tmp_path / "o"), "--models", str(root)]):
        assert main(cmd + ["--runtime", "onnxruntime", "--device", "cpu"]) == 1, cmd[0]
        assert "--runtime onnxruntime: onnxruntime is not installed" in capsys.readouterr().err
        assert not (tmp_path / "o").exists()  # refused before any output was made
