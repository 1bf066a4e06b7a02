"""bf16 autocast on CPU: chosen from the CPU's bf16 support, close to fp32, TT-GPR runs under it."""
import copy

import torch
from archive_factory import make_models

from mcgr.infer.pipeline import Pipeline, cpu_has_bf16
from mcgr.infer.ttgpr import TTGPRConfig
from mcgr.models import load_model


def test_cpu_autocast_follows_bf16_support_and_stays_close_to_fp32(tmp_path):
    root = make_models(tmp_path / "m")
    seg, gen = load_model(root / "seg", kind="seg"), load_model(root / "rf", kind="rf")
    auto = Pipeline(copy.deepcopy(seg), copy.deepcopy(gen))
    assert auto.autocast == cpu_has_bf16()
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 300, 260, generator=g), 5, 1, 2)[0, 0]
    cfg = TTGPRConfig(tau_seed=0.2, projections=2, steps=1)
    out = {}
    for ac in (False, True):
        pipe = Pipeline(copy.deepcopy(seg), copy.deepcopy(gen), config=cfg, autocast=ac)
        assert pipe.autocast is ac
        out[ac] = pipe(img, spacing=0.07, refine=True)
    for key in ("base_prob", "prob"):
        a, b = getattr(out[False], key), getattr(out[True], key)
        assert a.shape == b.shape and torch.isfinite(b).all()
        assert (a - b).abs().mean() < 0.02  # bf16 rounding, not a different answer


def test_the_image_border_margin_is_dropped_from_the_outputs(tmp_path):
    root = make_models(tmp_path / "m")
    seg = load_model(root / "seg", kind="seg")
    with torch.no_grad():
        seg.head.bias.fill_(8.0)  # fires everywhere: only the exclusions can clear pixels
    img = torch.full((200, 180), 0.6)
    for margin, width in ((1.0, 14), (0.0, 0)):
        res = Pipeline(copy.deepcopy(seg), None, border_margin_mm=margin, skin_margin_mm=0.0, autocast=False)(
            img, spacing=0.07, breast_mask=torch.ones(200, 180, dtype=torch.bool), refine=False)
        p = res.prob
        if width:
            assert p[:width].max() == 0 and p[-width:].max() == 0 and p[:, :width].max() == 0 and p[:, -width:].max() == 0
        assert p[width:200 - width, width:180 - width].min() > 0.5
    import pytest

    with pytest.raises(ValueError, match="border_margin_mm"):
        Pipeline(seg, None, border_margin_mm=-1.0)
