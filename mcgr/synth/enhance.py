"""Enhanced targets for an image-conditioned generator: the seeded calcifications made conspicuous.

TT-GPR needs a generator whose projection raises the frozen segmentor's probability at a faint
calcification the image holds, and not at a seed on plain texture. A generator that reproduces its
input (x1 = the observed patch) adds nothing the segmentor did not already see; one that renders its
prior at every seed (the noisy start hides a faint calcification) is seed-obedient. This module
builds the target in between: the observed patch with each *seeded* calcification's signal
amplified so that its contrast-to-noise ratio reaches ``target_cnr``,

    x1 = I + (k(x) - 1) S(x),     S = I_clean - B   (the noise-free calcification signal),
    k = clip(target_cnr / cnr_c, 1, max_gain) on the pixels within ``halo`` px of calcification c
        (each pixel goes to its nearest calcification), 1 elsewhere,

with ``cnr_c`` the peak of S over c's mask pixels in texture sigmas (mcgr.synth.visibility). The
shape is the calcification's own (its exact mask does not change); only its conspicuity does.
Unseeded calcifications (dropped seeds, invisible ones) and decoy seeds get ``k = 1``: there the
target is the observed patch, so the generator learns to enhance only where a seed meets evidence.
"""
from __future__ import annotations

from typing import Sequence

import torch

from mcgr.synth.visibility import labelled_signal_cnr


def enhanced_target(image: torch.Tensor, signal: torch.Tensor, background: torch.Tensor, mask: torch.Tensor,
                    seeds: Sequence[torch.Tensor], target_cnr: float = 10.0, max_gain: float = 4.0,
                    halo: float = 3.0) -> torch.Tensor:
    """The enhanced patch ``[B, 1, H, W]`` in [0, 1] (see the module doc).

    image, signal, background, mask: ``[B, 1, H, W]`` (the observed patch, its noise-free
        calcification signal, the MC-free background, the exact mask);
    seeds: B tensors ``[K_b, 2]`` (cy, cx px) of true seeds; a seed selects the calcification whose
        mask pixel is nearest, if that pixel is within ``halo`` px;
    target_cnr: the CNR a seeded calcification is raised to (> 0); max_gain: cap on k (>= 1);
    halo: px around the mask that carry a calcification's blurred signal (>= 0).
    """
    import numpy as np
    from scipy import ndimage

    shapes = {tuple(t.shape) for t in (image, signal, background, mask)}
    if len(shapes) != 1 or image.dim() != 4 or image.shape[1] != 1:
        raise ValueError(f"image, signal, background and mask must share one [B, 1, H, W] shape, got {sorted(shapes)}")
    if len(seeds) != image.shape[0]:
        raise ValueError(f"need one seed list per patch: {image.shape[0]} patches, {len(seeds)} lists")
    if not target_cnr > 0 or not max_gain >= 1 or not halo >= 0:
        raise ValueError(f"need target_cnr > 0, max_gain >= 1, halo >= 0; got {target_cnr!r}, {max_gain!r}, {halo!r}")
    b, _, h, w = image.shape
    gain = np.ones((b, h, w), np.float32)
    # each calcification (8-connected mask component) and its CNR, as mcgr.synth.visibility measures it
    for i, (lab, cnr) in enumerate(labelled_signal_cnr(signal, background, mask)):
        pts = torch.as_tensor(seeds[i], dtype=torch.float32).reshape(-1, 2).cpu()
        if pts.shape[0] == 0 or cnr.size == 0:
            continue
        dist, (iy, ix) = ndimage.distance_transform_edt(lab == 0, return_indices=True)
        near = lab[iy, ix]  # every pixel's nearest calcification (label >= 1)
        within = dist <= halo
        sy = pts[:, 0].round().long().clamp(0, h - 1).numpy()
        sx = pts[:, 1].round().long().clamp(0, w - 1).numpy()
        hit = np.unique(near[sy, sx][within[sy, sx]])
        if hit.size == 0:
            continue
        k = np.ones(cnr.size + 1, np.float32)
        k[hit] = np.clip(target_cnr / np.maximum(cnr[hit - 1], 1e-6), 1.0, max_gain)
        gain[i] = np.where(within, k[near], 1.0)
    g = torch.from_numpy(gain)[:, None].to(image.device, image.dtype)
    return (image + (g - 1) * signal.to(image.dtype)).clamp(0, 1)
