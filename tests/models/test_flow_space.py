"""The generator's flow spaces (mcgr.models.rf.to_flow / from_flow) against scipy and closed forms."""
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from mcgr.models.rf import DETAIL_SIGMA, from_flow, to_flow

EXPERIMENT_PRESETS = Path(__file__).resolve().parents[2] / "experiments" / "presets"


def _scipy_detail(img: np.ndarray) -> tuple[np.ndarray, float]:
    r = int(np.ceil(3 * DETAIL_SIGMA))
    low = ndimage.gaussian_filter(img.astype(np.float64), DETAIL_SIGMA, mode="mirror", truncate=r / DETAIL_SIGMA)
    d = img - low
    return d, 1.4826 * float(np.median(np.abs(d - np.median(d))))


def test_detail_layer_matches_scipy_and_inverts_exactly():
    rng = np.random.default_rng(0)
    img = np.clip(0.5 + 0.1 * ndimage.gaussian_filter(rng.standard_normal((3, 48, 56)), (0, 3, 3))
                  + 0.01 * rng.standard_normal((3, 48, 56)), 0, 1).astype(np.float32)
    x, ctx = to_flow(torch.from_numpy(img)[:, None], "detail")
    for b in range(3):
        d, s = _scipy_detail(img[b])
        # torch's median of an even count is the lower middle value; np.median averages the two
        np.testing.assert_allclose(ctx.sigma[b].item(), s, rtol=2e-2)
        np.testing.assert_allclose(x[b, 0].numpy() * ctx.sigma[b].item(), d, atol=2e-5)
        assert abs(float(np.median(np.abs(x[b, 0].numpy()))) * 1.4826 - 1.0) < 0.05  # unit robust spread
    back = from_flow(x, ctx)
    np.testing.assert_allclose(back[:, 0].numpy(), img, atol=1e-6)
    # the context of M repeated projections maps each copy back to its own patch
    rep = from_flow(x.repeat(2, 1, 1, 1), ctx.repeat(2))
    np.testing.assert_allclose(rep[3:, 0].numpy(), img, atol=1e-6)


def test_a_spike_stands_its_cnr_high_in_the_detail_layer():
    rng = np.random.default_rng(1)
    img = (0.4 + 0.02 * rng.standard_normal((1, 1, 64, 64))).astype(np.float32)
    _, s = _scipy_detail(img[0, 0])
    img[0, 0, 30, 30] += 8 * s  # a one-pixel calcification at 8 sigmas
    x, _ = to_flow(torch.from_numpy(img), "detail")
    # the low-pass takes its share g(0) = 1 / (2 pi sigma^2) of the spike (plus a tiny change of sigma)
    assert x[0, 0, 30, 30].item() == pytest.approx(8 * (1 - 1 / (2 * np.pi * DETAIL_SIGMA**2)), abs=0.5)


def test_image_scale_is_the_standardisation_and_bad_input_is_named():
    img = torch.rand(2, 1, 16, 16)
    x, ctx = to_flow(img, "image")
    assert torch.equal(x, img * 2 - 1) and torch.equal(from_flow(x, ctx.repeat(3)), (x + 1) * 0.5)
    with pytest.raises(ValueError, match="scale must be"):
        to_flow(img, "band")
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        to_flow(img[:, 0], "detail")
    from mcgr.models.unet import UNetConfig

    with pytest.raises(ValueError, match="input_scale"):
        UNetConfig(input_scale="band").validated()
    assert UNetConfig.from_dict({"width": 8}).input_scale == "image"  # old checkpoints


def test_segmentor_with_the_detail_channel_sees_both_layers():
    from mcgr.models.segmentor import segment_logits, segmentor_config
    from mcgr.models.unet import UNet, network_input

    rng = np.random.default_rng(2)
    img = torch.from_numpy(np.clip(0.5 + 0.05 * rng.standard_normal((2, 1, 40, 48)), 0, 1).astype(np.float32))
    x = network_input(img, "image+detail")
    assert x.shape == (2, 2, 40, 48)
    assert torch.equal(x[:, :1], img * 2 - 1)
    for b in range(2):
        d, s = _scipy_detail(img[b, 0].numpy())
        np.testing.assert_allclose(x[b, 1].numpy(), d / s, rtol=3e-2, atol=3e-2)
    torch.manual_seed(0)
    model = UNet(segmentor_config(width=8, depth=2, groups=4, input_scale="image+detail"))
    assert model.cfg.in_channels == 2
    with torch.no_grad():
        assert torch.equal(segment_logits(model, img), model(x))
        # under CPU bf16 autocast the detail layer is still computed in float32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            xa = network_input(img, "image+detail")
        assert xa.dtype == torch.float32 and torch.allclose(xa, x)


def test_config_ties_channels_to_the_input_scale(tmp_path):
    from mcgr.train.config import ConfigError, load_config

    p = tmp_path / "c.yaml"
    p.write_text("preset: tiny\nmodel: {input_scale: image+detail}\n")
    with pytest.raises(ConfigError, match="in_channels=2"):
        load_config("seg", p)
    p.write_text("preset: tiny\nmodel: {input_scale: detail, in_channels: 3}\n")
    with pytest.raises(ConfigError, match="in_channels=2"):  # the detail layer and the seed map
        load_config("rf", p)
    p.write_text("preset: tiny\nmodel: {input_scale: image+detail, in_channels: 3}\n")
    with pytest.raises(ConfigError, match="must be one of"):
        load_config("rf", p)
    assert load_config("seg", EXPERIMENT_PRESETS / "seg_detail.yaml").model.in_channels == 2
    assert load_config("rf", EXPERIMENT_PRESETS / "rf_detail.yaml").model.input_scale == "detail"


def test_image_conditioned_generator_sees_the_observed_patch(tmp_path):
    from mcgr.models.rf import flow_like, generator_condition, generator_config, image_conditioned, velocity
    from mcgr.models.unet import UNet, UNetConfig
    from mcgr.train.config import ConfigError, load_config

    rng = np.random.default_rng(3)
    img = torch.from_numpy(np.clip(0.5 + 0.05 * rng.standard_normal((2, 1, 32, 32)), 0, 1).astype(np.float32))
    other = (img + 0.1 * torch.rand_like(img)).clamp(0, 1)
    for scale in ("image", "detail"):
        x, ctx = to_flow(img, scale)
        assert torch.allclose(flow_like(img, ctx), x, atol=1e-6)  # its own context: to_flow
        np.testing.assert_allclose(from_flow(flow_like(other, ctx), ctx).numpy(), other.numpy(), atol=1e-6)
    smap = torch.rand(2, 1, 32, 32)
    plain = UNet(generator_config(width=8, depth=2, groups=4, time_dim=16))
    cond = UNet(generator_config(width=8, depth=2, groups=4, time_dim=16, image_condition=True))
    assert not image_conditioned(plain) and image_conditioned(cond) and cond.cfg.in_channels == 3
    assert generator_condition(plain, smap, x) is smap
    c = generator_condition(cond, smap, x)
    assert c.shape == (2, 2, 32, 32) and torch.equal(c[:, 0], smap[:, 0]) and torch.equal(c[:, 1], x[:, 0])
    with torch.no_grad():  # the velocity depends on the observed patch
        t = torch.full((2,), 0.5)
        v1 = velocity(cond, x, t, c)
        v2 = velocity(cond, x, t, generator_condition(cond, smap, x + 1.0))
        assert v1.shape == x.shape and not torch.allclose(v1, v2)
    with pytest.raises(ValueError, match="image_condition is for the generator"):
        UNetConfig(in_channels=3, image_condition=True).validated()
    p = tmp_path / "c.yaml"
    p.write_text("preset: tiny\nrf: {target: enhanced}\n")
    with pytest.raises(ConfigError, match="needs model.image_condition"):
        load_config("rf", p)
    p.write_text("preset: tiny\nmodel: {image_condition: true}\n")
    with pytest.raises(ConfigError, match="in_channels >= 3"):
        load_config("rf", p)
    with pytest.raises(ConfigError, match="is for the generator"):
        load_config("seg", p)
    p.write_text("preset: tiny\nmodel: {image_condition: true, in_channels: 3}\nrf: {target: sharper}\n")
    with pytest.raises(ConfigError, match="rf.target"):
        load_config("rf", p)
    cfg = load_config("rf", "enhance")
    assert cfg.model.image_condition and cfg.rf.target == "enhanced" and cfg.model.in_channels == 3


def test_rf_loss_from_the_observation_is_the_one_step_endpoint_error():
    from mcgr.models.rf import rf_loss

    class V(torch.nn.Module):  # a fixed velocity field of x, t and the condition
        def forward(self, x, t):
            return 0.3 * x[:, :1] - 0.2 * x[:, 1:2] + t.view(-1, 1, 1, 1)

    g = torch.Generator().manual_seed(0)
    x1, x0, y, s = (torch.randn(3, 1, 8, 9, generator=g) for _ in range(4))
    t = torch.tensor([0.1, 0.5, 0.9])
    tb = t.view(-1, 1, 1, 1)
    v = lambda xt: 0.3 * xt - 0.2 * s + tb  # noqa: E731
    xt = tb * y + (1 - tb) * x0
    want = float(((xt + (1 - tb) * v(xt) - x1) ** 2).mean())
    assert float(rf_loss(V(), x1, s, t, x0, y)) == pytest.approx(want, rel=1e-5)
    # with y = x1 it is the plain objective at weight (1 - t)^2
    xt = tb * x1 + (1 - tb) * x0
    want = float((((1 - tb) * (v(xt) - (x1 - x0))) ** 2).mean())
    assert float(rf_loss(V(), x1, s, t, x0, x1)) == pytest.approx(want, rel=1e-5)
    assert float(rf_loss(V(), x1, s, t, x0)) == pytest.approx(float(((v(xt) - (x1 - x0)) ** 2).mean()), rel=1e-5)
