"""Which synthetic calcifications an observer could see: a contrast-to-noise (Rose) criterion.

The image formation model draws contrast, attenuation, blur and the density modulation
independently, so some injected calcifications end up far below the texture's fluctuations (in
the default ranges about a third of them have a peak contrast under 3 texture sigmas). They stay
in the exact mask, but no detector can find them and a seed on one carries no information. This
module measures, per calcification centre,

    cnr = max_{3 x 3 window at the centre} (I - B) / sigma_B,
    sigma_B = 1.4826 * MAD(B - G_2 * B)   (robust std of the background's fine texture, per patch),

and calls it visible when ``cnr >= k`` (Rose's criterion, k = 3 by default). It is used to seed the
RF generator only at visible calcifications (a seed then means "a calcification one can see") and
to report detection figures over visible calcifications beside the figures over all of them
(PASCAL VOC's "difficult" rule: an invisible calcification is neither a hit nor a miss, and a
detection on it is not a false positive).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from mcgr.ops._filters import gaussian_blur, robust_sigma

ROSE_K = 3.0


def texture_sigma(background: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    """Robust std of ``B - G_sigma * B`` per patch: ``background`` [B, 1, H, W] -> [B]."""
    if background.dim() != 4 or background.shape[1] != 1:
        raise ValueError(f"background must be [B, 1, H, W], got {tuple(background.shape)}")
    b = background.float()
    return robust_sigma(b - gaussian_blur(b, sigma, "replicate"))


def centre_cnr(image: torch.Tensor, background: torch.Tensor, centres: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Contrast-to-noise ratio at each calcification centre (see the module doc).

    image, background: [B, 1, H, W] (the injected image and the background it was injected into);
    centres: B tensors [K_b, 2] of (cy, cx) px. Returns B float32 tensors [K_b] (CPU).
    """
    if image.shape != background.shape:
        raise ValueError(f"image and background must have the same shape, got {tuple(image.shape)} and {tuple(background.shape)}")
    if len(centres) != image.shape[0]:
        raise ValueError(f"need one centre list per patch: {image.shape[0]} patches, {len(centres)} lists")
    sig = texture_sigma(background).cpu().clamp(min=1e-6)
    peak = F.max_pool2d((image.float() - background.float()), 3, stride=1, padding=1)[:, 0].cpu()
    h, w = peak.shape[-2:]
    out = []
    for b, c in enumerate(centres):
        c = torch.as_tensor(c, dtype=torch.float32).reshape(-1, 2).cpu()
        iy = c[:, 0].round().long().clamp(0, h - 1)
        ix = c[:, 1].round().long().clamp(0, w - 1)
        out.append(peak[b, iy, ix] / sig[b])
    return out


def visible_centres(image: torch.Tensor, background: torch.Tensor, centres: Sequence[torch.Tensor],
                    k: float = ROSE_K) -> list[torch.Tensor]:
    """Per patch, a bool tensor [K_b]: the centre's calcification has ``cnr >= k``."""
    if not k >= 0:
        raise ValueError(f"k must be >= 0, got {k!r}")
    return [c >= k for c in centre_cnr(image, background, centres)]


def _labelled_cnr(image: torch.Tensor, background: torch.Tensor, mask: torch.Tensor) -> list:
    """Per patch ``(labels, cnr)``: the 8-connected components of ``mask`` and each one's CNR."""
    if image.shape != background.shape or image.shape != mask.shape:
        raise ValueError(f"image, background and mask must have one shape, got {tuple(image.shape)}, "
                         f"{tuple(background.shape)}, {tuple(mask.shape)}")
    return labelled_signal_cnr(image.float() - background.float(), background, mask)


def labelled_signal_cnr(signal: torch.Tensor, background: torch.Tensor, mask: torch.Tensor) -> list:
    """Per patch ``(labels, cnr)``: the 8-connected components of ``mask`` (scipy.ndimage.label
    order) and each one's peak of ``signal`` (a calcification signal such as ``I - B``) over the
    patch's texture sigma of ``background``. All inputs [B, 1, H, W]; B pairs of NumPy arrays."""
    import numpy as np
    from scipy import ndimage

    sig = texture_sigma(background).cpu().clamp(min=1e-6).numpy()
    diff = signal.float()[:, 0].cpu().numpy()
    out = []
    for b in range(signal.shape[0]):
        lab, n = ndimage.label(mask[b, 0].cpu().numpy() > 0.5, structure=np.ones((3, 3), bool))
        peak = np.asarray(ndimage.maximum(diff[b], lab, np.arange(1, n + 1)), dtype=np.float64).reshape(n)
        out.append((lab, peak / sig[b]))
    return out


def component_cnr(image: torch.Tensor, background: torch.Tensor, mask: torch.Tensor) -> list:
    """Per patch, the contrast-to-noise ratio of each 8-connected component of ``mask`` (label order
    of ``scipy.ndimage.label``, as in :mod:`mcgr.eval.objects`): the peak of ``I - B`` over the
    component's pixels over the patch's texture sigma. All inputs [B, 1, H, W]; returns B NumPy
    arrays."""
    return [cnr for _, cnr in _labelled_cnr(image, background, mask)]


def component_weight(image: torch.Tensor, background: torch.Tensor, mask: torch.Tensor, rules) -> torch.Tensor:
    """Per-pixel loss weights ``[B, 1, H, W]`` from the CNR of each calcification of ``mask``
    (:func:`component_cnr`, labelled once): for each rule ``(lo, hi, value, ring)`` the pixels of the
    calcifications with ``lo <= cnr < hi``, dilated by ``ring`` px, are multiplied by ``value``;
    every other pixel weighs 1."""
    import numpy as np
    from scipy import ndimage

    w = np.ones((mask.shape[0],) + tuple(mask.shape[-2:]), dtype=np.float32)
    eight = np.ones((3, 3), bool)
    for b, (lab, cnr) in enumerate(_labelled_cnr(image, background, mask)):
        for lo, hi, value, ring in rules:
            sel = np.flatnonzero((cnr >= lo) & (cnr < hi)) + 1
            if sel.size == 0:
                continue
            region = np.isin(lab, sel)
            if ring > 0:
                region = ndimage.binary_dilation(region, structure=eight, iterations=ring)
            w[b][region] *= value
    return torch.from_numpy(w)[:, None].to(mask.device)


def difficult_rule(k: float = ROSE_K, ring: int = 1) -> tuple:
    """The :func:`component_weight` rule of :func:`difficult_weight`."""
    if not k >= 0:
        raise ValueError(f"k must be >= 0, got {k!r}")
    return (-float("inf"), k, 0.0, ring)


def band_rule(lo: float, hi: float, weight: float) -> tuple:
    """The :func:`component_weight` rule of :func:`band_weight`."""
    if not (0 <= lo <= hi) or not weight >= 0:
        raise ValueError(f"need 0 <= lo <= hi and weight >= 0, got lo={lo!r}, hi={hi!r}, weight={weight!r}")
    return (lo, hi, weight, 0)


def difficult_weight(image: torch.Tensor, background: torch.Tensor, mask: torch.Tensor, k: float = ROSE_K,
                     ring: int = 1) -> torch.Tensor:
    """Per-pixel loss weights ``[B, 1, H, W]``: 0 on the calcifications of ``mask`` whose
    :func:`component_cnr` is under ``k`` (and a ``ring`` px band around them), 1 elsewhere."""
    return component_weight(image, background, mask, [difficult_rule(k, ring)])


def band_weight(image: torch.Tensor, background: torch.Tensor, mask: torch.Tensor, lo: float, hi: float,
                weight: float) -> torch.Tensor:
    """Per-pixel loss weights ``[B, 1, H, W]``: ``weight`` on the pixels of the calcifications of
    ``mask`` whose :func:`component_cnr` lies in ``[lo, hi)``, 1 elsewhere (the band a detector
    finds least of; see LossConfig.faint_below_cnr)."""
    return component_weight(image, background, mask, [band_rule(lo, hi, weight)])
