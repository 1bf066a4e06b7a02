"""A narrower U-Net cut out of a wider one: the start of a distilled student (``mcgr.train.distill
--init prune``) that begins with the teacher's own filters instead of random weights.

Every tensor of a :class:`~mcgr.models.unet.UNet` lives in one of a few channel spaces, and a
pruned network keeps a subset of each:

- the residual stream of level k (``S[k]``): the output of ``enc[k]``; where a block's skip is the
  identity (``enc[0]``, an ``enc[k]`` whose width does not change, ``mid``) its input shares the
  space, so the stem's output is ``S[0]`` and such a block's down-sampled input is ``S[k]``;
- the inner space of each block (``conv1``'s output, normalised by ``norm1``);
- the output of each down-sampling conv that feeds a block with a conv skip, and of each
  up-sampling conv (no norm of their own);
- the output of each decoder block (``T[k]``).

A space normalised by a GroupNorm is cut in whole groups (the teacher's groups of
``channels / groups`` channels; the student keeps ``groups`` groups of the same size), so the
statistics of a kept group are the teacher's: with the dropped channels' outgoing weights at zero a
teacher computes exactly what its pruned student computes (``tests/models/test_prune.py`` checks
this). Groups are ranked by the sum of ``|gamma|`` of the norms that produce the space, free channels
by the L2 norm of the filter that produces them (network slimming); the kept ones keep their order.
Segmentors only (no time embedding).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from mcgr.models.unet import UNet


def _top_groups(score: torch.Tensor, size: int, keep: int) -> torch.Tensor:
    """Indices of the ``keep`` groups of ``size`` consecutive channels with the largest summed
    ``score``, in their original order, expanded to channel indices."""
    g = score.reshape(-1, size).sum(1)
    if keep > g.numel():
        raise ValueError(f"cannot keep {keep} groups of {g.numel()}")
    top = torch.sort(torch.topk(g, keep).indices).values
    return (top[:, None] * size + torch.arange(size)[None, :]).reshape(-1)


def _top_channels(score: torch.Tensor, keep: int) -> torch.Tensor:
    return torch.sort(torch.topk(score, keep).indices).values


def _gamma(norm: nn.GroupNorm) -> torch.Tensor:
    return norm.weight.detach().abs().float()


def _filter_norm(conv: nn.Conv2d) -> torch.Tensor:
    return conv.weight.detach().float().flatten(1).norm(dim=1)


def _cut_conv(dst: nn.Conv2d, src: nn.Conv2d, out_idx, in_idx) -> None:
    w = src.weight.detach()[out_idx][:, in_idx]
    if dst.weight.shape != w.shape:
        raise ValueError(f"pruned conv shape {tuple(w.shape)} != student's {tuple(dst.weight.shape)}")
    dst.weight.data.copy_(w)
    if src.bias is not None:
        dst.bias.data.copy_(src.bias.detach()[out_idx])


def _cut_norm(dst: nn.GroupNorm, src: nn.GroupNorm, idx) -> None:
    dst.weight.data.copy_(src.weight.detach()[idx])
    dst.bias.data.copy_(src.bias.detach()[idx])


def _identity(block) -> bool:
    return isinstance(block.skip, nn.Identity)


def channel_plan(teacher: UNet, width: int, groups: int) -> dict:
    """The teacher's channel indices each space of a ``width`` / ``groups`` student keeps
    (see the module doc): ``{"S": [...], "inner_enc": [...], "inner_mid", "inner_dec": [...],
    "down": [...], "up": [...], "T": [...]}``, each a LongTensor of indices."""
    tc = teacher.cfg
    if tc.time_embedding or tc.norm != "group":
        raise ValueError("pruning supports segmentors with GroupNorm and no time embedding")
    if width > tc.width or width < 1 or width % groups:
        raise ValueError(f"student width {width} must be in 1..{tc.width} and a multiple of groups {groups}")
    d = tc.depth
    sc = dataclasses.replace(tc, width=width, groups=groups).validated()
    tch = [tc.channels(k) for k in range(d + 1)]
    sch = [sc.channels(k) for k in range(d + 1)]

    def grouped(norms, level):
        size = tch[level] // tc.groups
        if sch[level] % size or sch[level] // size != groups:
            raise ValueError(f"level {level}: the student's groups of {sch[level] // groups} channels differ "
                             f"from the teacher's of {size}; choose groups = {sch[level] // size}")
        return _top_groups(sum(_gamma(n) for n in norms), size, groups)

    plan: dict = {"S": [None] * (d + 1), "inner_enc": [], "down": [None] * d, "up": [None] * d, "T": [None] * d,
                  "inner_dec": [None] * d}
    for k in range(d + 1):
        norms = [teacher.enc[k].norm2] + ([teacher.mid.norm2] if k == d else [])
        plan["S"][k] = grouped(norms, k)
        plan["inner_enc"].append(grouped([teacher.enc[k].norm1], k))
    plan["inner_mid"] = grouped([teacher.mid.norm1], d)
    for k in range(d):
        # down[k] feeds enc[k + 1]: its output shares S[k + 1] when that block's skip is the identity
        plan["down"][k] = (plan["S"][k + 1] if _identity(teacher.enc[k + 1])
                           else _top_channels(_filter_norm(teacher.down[k]), sch[k]))
    for j, k in enumerate(range(d, 0, -1)):  # up[j] / dec[j] work at level k - 1
        plan["up"][j] = _top_channels(_filter_norm(teacher.up[j]), sch[k - 1])
        plan["T"][j] = grouped([teacher.dec[j].norm2], k - 1)
        plan["inner_dec"][j] = grouped([teacher.dec[j].norm1], k - 1)
    return plan


def _cut_block(dst, src, in_idx, inner_idx, out_idx) -> None:
    _cut_conv(dst.conv1, src.conv1, inner_idx, in_idx)
    _cut_norm(dst.norm1, src.norm1, inner_idx)
    _cut_conv(dst.conv2, src.conv2, out_idx, inner_idx)
    _cut_norm(dst.norm2, src.norm2, out_idx)
    if isinstance(src.skip, nn.Conv2d):
        _cut_conv(dst.skip, src.skip, out_idx, in_idx)
    elif not torch.equal(torch.as_tensor(in_idx), torch.as_tensor(out_idx)):
        raise AssertionError("an identity skip must keep one channel set")


@torch.no_grad()
def prune_unet(teacher: UNet, width: int, groups: int) -> UNet:
    """A ``width``-channel U-Net of the teacher's architecture otherwise (``groups`` GroupNorm groups
    of the teacher's group size), its weights cut from the teacher's (see the module doc)."""
    plan = channel_plan(teacher, width, groups)
    tc = teacher.cfg
    student = UNet(dataclasses.replace(tc, width=width, groups=groups))
    student = student.to(next(teacher.parameters()).device)
    d = tc.depth
    tch = [tc.channels(k) for k in range(d + 1)]
    S = plan["S"]
    _cut_conv(student.stem, teacher.stem, S[0], torch.arange(tc.in_channels))
    _cut_block(student.enc[0], teacher.enc[0], S[0], plan["inner_enc"][0], S[0])
    for k in range(d):
        _cut_conv(student.down[k], teacher.down[k], plan["down"][k], S[k])
        _cut_block(student.enc[k + 1], teacher.enc[k + 1], plan["down"][k], plan["inner_enc"][k + 1], S[k + 1])
    _cut_block(student.mid, teacher.mid, S[d], plan["inner_mid"], S[d])
    prev = S[d]
    for j, k in enumerate(range(d, 0, -1)):
        _cut_conv(student.up[j], teacher.up[j], plan["up"][j], prev)
        cat_in = torch.cat([plan["up"][j], tch[k - 1] + S[k - 1]])
        _cut_block(student.dec[j], teacher.dec[j], cat_in, plan["inner_dec"][j], plan["T"][j])
        prev = plan["T"][j]
    _cut_conv(student.head, teacher.head, torch.arange(tc.out_channels), prev)
    return student.eval()
