"""mcgr.models.prune: a student cut out of a teacher computes what the teacher computes when the
dropped channels' outgoing weights are zero (whole GroupNorm groups kept: their statistics do not
change), keeps the groups of largest |gamma|, and refuses plans it cannot honour."""
import copy
import dataclasses

import pytest
import torch
from torch import nn

from mcgr.models.prune import channel_plan, prune_unet
from mcgr.models.unet import UNet, UNetConfig


@torch.no_grad()
def silence_dropped(teacher: UNet, width: int, groups: int) -> UNet:
    """A copy of ``teacher`` in which every weight that reads a channel the pruned student drops is
    zero, so the dropped channels reach nothing the student keeps: zeroing in the full network, not
    slicing, so its output is an independent expectation of ``prune_unet(teacher, width, groups)``'s."""
    plan = channel_plan(teacher, width, groups)
    t = copy.deepcopy(teacher)
    tc = t.cfg
    d = tc.depth
    tch = [tc.channels(k) for k in range(d + 1)]

    def zero_in(conv, keep, n):
        mask = torch.zeros(n, dtype=torch.bool)
        mask[keep] = True
        conv.weight.data[:, ~mask] = 0

    def block(b, in_keep, n_in, inner_keep, n_inner):
        zero_in(b.conv1, in_keep, n_in)
        zero_in(b.conv2, inner_keep, n_inner)
        if isinstance(b.skip, nn.Conv2d):
            zero_in(b.skip, in_keep, n_in)

    S = plan["S"]
    block(t.enc[0], S[0], tch[0], plan["inner_enc"][0], tch[0])
    for k in range(d):
        zero_in(t.down[k], S[k], tch[k])
        block(t.enc[k + 1], plan["down"][k], tch[k], plan["inner_enc"][k + 1], tch[k + 1])
    block(t.mid, S[d], tch[d], plan["inner_mid"], tch[d])
    prev = S[d]
    for j, k in enumerate(range(d, 0, -1)):
        zero_in(t.up[j], prev, tch[k])
        block(t.dec[j], torch.cat([plan["up"][j], tch[k - 1] + S[k - 1]]), 2 * tch[k - 1],
              plan["inner_dec"][j], tch[k - 1])
        prev = plan["T"][j]
    zero_in(t.head, prev, tch[0])
    return t.eval()


def teacher(width=16, groups=8, depth=3, max_mult=4, seed=0) -> UNet:
    torch.manual_seed(seed)
    cfg = UNetConfig(in_channels=1, out_channels=1, width=width, depth=depth, max_mult=max_mult, groups=groups,
                     norm="group", time_embedding=False)
    t = UNet(cfg).eval()
    with torch.no_grad():
        for m in t.modules():
            if isinstance(m, torch.nn.GroupNorm):  # not the identity init: the ranking must matter
                m.weight.normal_(1.0, 0.5)
                m.bias.normal_(0.0, 0.3)
    return t


@pytest.mark.parametrize("depth,max_mult,width,groups", [(3, 4, 8, 4), (2, 2, 8, 4), (2, 4, 4, 2)])
def test_pruned_equals_silenced_teacher(depth, max_mult, width, groups):
    # depth 2 / max_mult 2: enc[2] keeps the width (identity skip fed by a down conv); depth 3 / 4 as shipped
    t = teacher(depth=depth, max_mult=max_mult)
    s = prune_unet(t, width, groups)
    assert s.cfg.width == width and s.cfg.groups == groups
    x = torch.randn(2, 1, 72, 88)
    with torch.no_grad():
        want, got, full = silence_dropped(t, width, groups)(x), s(x), t(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert (got - full).abs().max() > 1e-3  # dropping channels does change the function


def test_full_width_is_the_teacher():
    t = teacher(seed=3)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(prune_unet(t, 16, 8)(x), t(x), rtol=0, atol=0)


def test_keeps_the_groups_of_largest_gamma():
    t = teacher(seed=1)
    with torch.no_grad():
        g = t.enc[0].norm2.weight
        g.fill_(0.01)
        g[[2, 3, 10, 11, 12, 13, 6, 7]] = torch.tensor([5.0, -5.0, 4.0, 4.0, 3.0, 3.0, -2.0, 2.0])  # groups 1, 5, 6, 3
    plan = channel_plan(t, 8, 4)
    assert plan["S"][0].tolist() == [2, 3, 6, 7, 10, 11, 12, 13]


def test_refuses_what_it_cannot_cut():
    t = teacher()
    with pytest.raises(ValueError, match="width"):
        prune_unet(t, 32, 16)
    with pytest.raises(ValueError, match="groups"):
        prune_unet(t, 8, 8)  # groups of 1 channel against the teacher's 2
    rf = UNet(dataclasses.replace(t.cfg, time_embedding=True))
    with pytest.raises(ValueError, match="time embedding"):
        prune_unet(rf, 8, 4)


def test_shipped_segmentor_prunes():
    from mcgr.models import load_pretrained

    t = load_pretrained("seg").eval()
    s = prune_unet(t, 8, 4)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(s(x), silence_dropped(t, 8, 4)(x), rtol=1e-4, atol=1e-4)
