import numpy as np
import pytest
import torch

from mcgr.models.unet import UNet, UNetConfig, standardise, timestep_embedding, unstandardise


@pytest.mark.parametrize("hw", [(1, 1), (7, 13), (33, 17), (64, 64), (129, 31)])
@pytest.mark.parametrize("time", [False, True])
def test_unet_output_shape_for_odd_sizes(hw, time):
    torch.manual_seed(0)
    cfg = UNetConfig(in_channels=2 if time else 1, width=8, depth=3, groups=4, time_embedding=time, time_dim=16)
    m = UNet(cfg)
    x = torch.randn(2, cfg.in_channels, *hw)
    y = m(x, torch.rand(2)) if time else m(x)
    assert y.shape == (2, 1, *hw)
    assert torch.isfinite(y).all()


def test_padding_does_not_mix_batch_items_and_crops_back():
    # each output depends only on its own input item (GroupNorm, no batch statistics)
    torch.manual_seed(1)
    m = UNet(UNetConfig(width=8, depth=2, groups=4)).eval()
    x = torch.randn(3, 1, 21, 19)
    full = m(x)
    single = torch.cat([m(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(full, single, atol=1e-5, rtol=1e-5)


def test_channels_last_matches_contiguous():
    torch.manual_seed(2)
    m = UNet(UNetConfig(width=8, depth=2, groups=4)).eval()
    x = torch.randn(2, 1, 32, 24)
    ref = m(x)
    m_cl = m.to(memory_format=torch.channels_last)
    out = m_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_time_embedding_changes_output_and_is_required():
    torch.manual_seed(3)
    m = UNet(UNetConfig(in_channels=2, width=8, depth=2, groups=4, time_embedding=True, time_dim=16))
    for p in m.parameters():  # FiLM starts at zero: perturb so t matters
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(1, 2, 16, 16)
    assert not torch.allclose(m(x, 0.1), m(x, 0.9))
    with pytest.raises(ValueError, match="t is required"):
        m(x)


def test_timestep_embedding_closed_form():
    t = torch.tensor([0.0, 0.5])
    e = timestep_embedding(t, 8)
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    torch.testing.assert_close(e[1, :4], torch.cos(500.0 * freqs))
    torch.testing.assert_close(e[1, 4:], torch.sin(500.0 * freqs))
    torch.testing.assert_close(e[0], torch.cat([torch.ones(4), torch.zeros(4)]))


def test_standardise_round_trip():
    x = torch.rand(5, 5)
    torch.testing.assert_close(standardise(torch.tensor([0.0, 1.0])), torch.tensor([-1.0, 1.0]))
    torch.testing.assert_close(unstandardise(standardise(x)), x)


@pytest.mark.parametrize("bad, match", [
    (dict(norm="layer"), "model.norm"),
    (dict(width=12, groups=8), "model.groups"),
    (dict(width=0), "model.width"),
])
def test_bad_config_names_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        UNetConfig(**bad).validated()


def test_wrong_input_channels():
    m = UNet(UNetConfig(width=8, depth=1, groups=4))
    with pytest.raises(ValueError, match=r"x must be \[B, 1, H, W\]"):
        m(torch.zeros(1, 2, 8, 8))


def test_weighted_segmentation_loss_against_a_hand_computation():
    from mcgr.models.segmentor import segmentation_loss

    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 1, 6, 5, generator=g) * 3
    m = (torch.rand(2, 1, 6, 5, generator=g) > 0.7).float()
    w = (torch.rand(2, 1, 6, 5, generator=g) > 0.3).float()
    pw = 2.5
    zz, mm, ww = z.double().numpy(), m.double().numpy(), w.double().numpy()
    p = 1 / (1 + np.exp(-zz))
    bce = -(pw * mm * np.log(p) + (1 - mm) * np.log(1 - p))
    want_bce = (bce * ww).sum() / ww.sum()
    want_dice = (2 * (p * ww * mm * ww).sum() + 1) / ((p * ww).sum() + (mm * ww).sum() + 1)
    got = segmentation_loss(z, m, 0.7, 1.3, pw, weight=w)
    assert float(got) == pytest.approx(0.7 * want_bce + 1.3 * (1 - want_dice), rel=1e-5)
    # all-ones weights are the unweighted loss
    assert float(segmentation_loss(z, m, 1.0, 1.0, pw, weight=torch.ones_like(z))) == pytest.approx(
        float(segmentation_loss(z, m, 1.0, 1.0, pw)), rel=1e-6)
    with pytest.raises(ValueError, match="weight must have"):
        segmentation_loss(z, m, weight=w[:1])
