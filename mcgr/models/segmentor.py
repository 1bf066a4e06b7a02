"""Segmentor f: U-Net logits from an image, and its class-imbalance-aware loss (docs/design.md, method M3)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mcgr.models.unet import UNet, UNetConfig, input_scale_of, network_input, scale_channels


def segmentor_config(width: int = 16, depth: int = 3, input_scale: str = "image", **kw) -> UNetConfig:
    """The segmentor's U-Net: the image channels of ``input_scale`` in (``2 I - 1``, and the detail
    layer with "image+detail"), 1 logit out, no time embedding."""
    return UNetConfig(in_channels=scale_channels(input_scale), out_channels=1, width=width, depth=depth,
                      time_embedding=False, input_scale=input_scale, **kw)


def segment_logits(model: UNet, image: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, 1, H, W]`` of ``model`` (a UNet, or a wrapper with ``.module``) on ``image``
    ``[B, 1, H, W]`` in [0, 1], through the model's ``input_scale``."""
    return model(network_input(image, input_scale_of(model)))


def soft_dice(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1.0,
              weight: torch.Tensor | None = None) -> torch.Tensor:
    """Soft Dice over the whole batch (one ratio, so MC-free patches do not each score 0 or 1);
    ``weight`` (same shape, >= 0) scales each pixel's share of the three sums (once: a pixel of
    weight w counts as w copies of it, so the ratio stays in [0, 1])."""
    if weight is None:
        inter = (prob * target).sum()
        return (2 * inter + smooth) / (prob.sum() + target.sum() + smooth)
    inter = (prob * target * weight).sum()
    return (2 * inter + smooth) / ((prob * weight).sum() + (target * weight).sum() + smooth)


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, clip: float = 10.0) -> torch.Tensor:
    """Mean squared difference of the student's and the teacher's logits, both clamped to
    ``[-clip, clip]``: it asks the student for the teacher's ranking up to ``sigmoid(clip)``
    (1 - 4.5e-5 at 10; the operating thresholds lie below it), where a BCE on the teacher's
    probabilities has almost no gradient left, and lets both saturate beyond it (a background pixel
    at logit -30 or -12 is the same answer)."""
    if logits.shape != teacher_logits.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ in shape")
    if not clip > 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    d = logits.float().clamp(-clip, clip) - teacher_logits.float().clamp(-clip, clip)
    return (d * d).mean()


def segmentation_loss(logits: torch.Tensor, mask: torch.Tensor, bce_weight: float = 1.0,
                      dice_weight: float = 1.0, pos_weight: float = 1.0,
                      weight: torch.Tensor | None = None) -> torch.Tensor:
    """``bce_weight * BCE(logits, mask; pos_weight) + dice_weight * (1 - soft Dice)``.

    Calcifications cover ~0.1-1 % of a patch: BCE alone is dominated by background and learns to
    predict nothing; the batch-global Dice term weighs the few positive pixels as much as the rest,
    and ``pos_weight`` (> 1) raises their BCE weight further. Inputs ``[B, 1, H, W]``, logits in float32.
    ``weight`` (optional, same shape, >= 0): per-pixel weights; 0 leaves a pixel out of both terms
    (the BCE is then the weighted mean over the pixels with weight > 0).
    """
    logits = logits.float()
    pw = torch.tensor(pos_weight, dtype=torch.float32, device=logits.device)
    if weight is None:
        bce = F.binary_cross_entropy_with_logits(logits, mask, pos_weight=pw)
    else:
        if weight.shape != logits.shape:
            raise ValueError(f"weight must have the logits' shape {tuple(logits.shape)}, got {tuple(weight.shape)}")
        w = weight.float()
        per = F.binary_cross_entropy_with_logits(logits, mask, pos_weight=pw, reduction="none")
        bce = (per * w).sum() / w.sum().clamp(min=1.0)
    dice = soft_dice(torch.sigmoid(logits), mask, weight=weight)
    return bce_weight * bce + dice_weight * (1 - dice)
