"""Model-card figures on the held-out synthetic validation set.

``python -m mcgr.train.evaluate seg [--weights DIR] [--n 64]``
    pixel Dice at p >= 0.5, and object-level sensitivity at <= 0.5 false positives per 256 x 256
    patch: the probability map is thresholded at each of 19 levels, 8-connected components
    (scipy.ndimage.label) matched one-to-one to the true calcifications (mask components); a
    calcification is found when a predicted component's centroid lies within 0.35 mm of its centroid
    or their IoU >= 0.3 (mcgr.eval.objects). The figure is the best sensitivity among thresholds
    whose mean FP per patch is <= 0.5 (no interpolation); thresholds 0.999, 0.995, 0.99, 0.97 and
    0.95 down to 0.05 in steps of 0.05. Reported under the strict rule (every unmatched component
    is a false positive) and under LUNA16's (a second component on a found calcification is not),
    over all calcifications and over the visible ones, with the fraction found at p >= 0.5 per
    contrast-to-noise bin. Beside them, ``ideal_observer``: what the prewhitening matched filter
    that knows each calcification's exact signal finds at the same budget when it searches its
    patch's clutter modelled as a Gaussian field (mcgr.eval.observer), and each calcification's
    known-location detectability d'; a yardstick for how far a detector could go.

``python -m mcgr.train.evaluate rf [--weights DIR] [--seg-weights DIR] [--n 32]``
    through the frozen segmentor f, on generator projections x_m (t0 = 0.5, N = 4 Euler steps,
    M = 4 noise draws) of held-out patches y with a seed map of true and decoy seeds: the rise of
    f's probability, ``mean_m sigmoid(f(x_m)) - sigmoid(f(y))`` (max over a 3 x 3 window at the seed),
    averaged over (a) true seeds of faint calcifications (the half of all calcifications with the
    lowest contrast I - B at the centre) and (b) decoy seeds on MC-free bright texture; also (c) the
    faint half of the visible calcifications (peak contrast >= 3 texture sigmas, mcgr.synth.visibility).
    Without ``--patch-size`` the card is measured twice: on 512 patches of 64 px, the window in which
    TT-GPR runs the generator (``TTGPRConfig.window``, its training size), as the headline figures,
    and on 32 patches of 256 px under ``"at_256px"``: a generator whose answer depends on the
    patch's size or seed density shows it there.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from mcgr.eval.objects import froc, match_objects
from mcgr.models import load_model, load_pretrained
from mcgr.models.seeds import decoy_seeds, make_seed_map
from mcgr.models.segmentor import segment_logits
from mcgr.models.unet import UNet, input_scale_of
from mcgr.synth.visibility import ROSE_K, centre_cnr, component_cnr

FP_BUDGET = 0.5
THRESHOLDS = (0.999, 0.995, 0.99, 0.97) + tuple(np.round(np.linspace(0.95, 0.05, 19), 4))


@torch.no_grad()
def seg_probs(model: UNet, images: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """sigmoid(f(images)) ``[B, 1, H, W]`` in chunks (images in [0, 1], on the model's device)."""
    dev = next(model.parameters()).device
    out = [torch.sigmoid(segment_logits(model, images[i:i + chunk].to(dev)).float()).cpu()
           for i in range(0, images.shape[0], chunk)]
    return torch.cat(out)


def evaluate_segmentor(model: UNet, val: dict, spacing_mm: float = 0.07) -> dict:
    """Pixel Dice (pooled, p >= 0.5) and the FROC operating point at <= 0.5 FP per patch, under the
    strict rule (every unmatched component a false positive) and under the LUNA16 duplicate rule
    (a second component on an already found calcification is neither; mcgr.eval.objects), over all
    calcifications and, when ``val`` has backgrounds, over the visible ones (CNR >= 3)."""
    p = seg_probs(model, val["image"])
    m = val["mask"].cpu() > 0.5
    pred = p >= 0.5
    inter = float((pred & m).sum())
    denom = float(pred.sum() + m.sum())
    dice = 2 * inter / denom if denom else 1.0
    per_patch = [(2 * float((a & b).sum()) / max(1.0, float(a.sum() + b.sum()))) for a, b in zip(pred, m) if b.any()]
    probs, truths = [q[0].numpy() for q in p], [t[0].numpy() for t in m]

    def point(truth_ignore=None, duplicates="fp") -> dict:
        fr = froc(probs, truths, spacing_mm, thresholds=THRESHOLDS, truth_ignore=truth_ignore, duplicates=duplicates)
        s_, thr, f = _operating_point(fr)
        return {"sensitivity_at_0.5fp": s_, "threshold_at_0.5fp": thr, "fp_per_patch_at_threshold": f,
                "froc_at_rates": fr["at_rates"]}

    strict, luna = point(), point(duplicates="ignore")
    out = {
        "patches": int(p.shape[0]),
        "patch_size": int(p.shape[-1]),
        "pixel_dice": dice,
        "pixel_dice_mean_per_patch_with_mc": float(np.mean(per_patch)) if per_patch else float("nan"),
        **strict,
        "duplicates_ignored": luna,
        "n_calcifications": int(sum(int(ndimage.label(t, structure=np.ones((3, 3), bool))[1]) for t in truths)),
    }
    if "background" in val:  # figures over the visible calcifications only (the rest are 'difficult')
        cnr = component_cnr(val["image"].cpu(), val["background"].cpu(), val["mask"].cpu())
        ign = [c < ROSE_K for c in cnr]
        out["visible"] = {
            "rule": f"peak contrast >= {ROSE_K:g} texture sigmas (mcgr.synth.visibility); the others are "
                    "'difficult': neither found nor missed, hits on them not false positives",
            "n_calcifications": sum(int((c >= ROSE_K).sum()) for c in cnr),
            **point(ign),
            "duplicates_ignored": point(ign, "ignore"),
        }
        out["found_at_0.5_by_cnr"] = _found_by_cnr(probs, truths, cnr, spacing_mm)
        if "signal" in val:
            out["ideal_observer"] = _ideal_observer(val, cnr)
    return out


def _ideal_observer(val: dict, cnr: list) -> dict:
    """Sensitivity at FP_BUDGET false maxima per patch of the searching ideal linear observer
    (mcgr.eval.observer: Gaussian clutter model with each patch's own spectrum), over all and over
    visible calcifications and per CNR bin, with the median known-location d'."""
    from mcgr.eval.observer import calcification_detectability

    sig = val["signal"][:, 0].cpu().numpy()
    clutter = (val["image"] - val["signal"])[:, 0].cpu().numpy()  # MC-free background + noise
    res = calcification_detectability(sig, clutter, val["mask"][:, 0].cpu().numpy(), fp_per_field=FP_BUDGET,
                                      block=min(64, sig.shape[-1], sig.shape[-2]))
    p = np.concatenate([r.get("p_detect", np.zeros(0)) for r in res])
    d = np.concatenate([r.get("dprime", np.zeros(0)) for r in res])
    c = np.concatenate([np.asarray(x, dtype=np.float64) for x in cnr])
    vis = c >= ROSE_K
    bins = {}
    which = np.digitize(c, CNR_BINS[1:-1])  # as _found_by_cnr: the first bin takes negative CNRs too
    for i, (lo, hi) in enumerate(zip(CNR_BINS[:-1], CNR_BINS[1:])):
        s = which == i
        bins[f"[{lo:g}, {hi:g})"] = {"n": int(s.sum()), "p_detect": round(float(p[s].mean()), 4) if s.any() else None,
                                    "median_dprime": round(float(np.median(d[s])), 2) if s.any() else None}
    return {
        "rule": "prewhitening matched filter knowing each calcification's exact noise-free signal, searching "
                "for it among the local maxima of its response to the clutter (a Gaussian field with the "
                "spectrum of the patch's own MC-free background + noise, Welch over 64 px windows), threshold "
                f"at {FP_BUDGET:g} false maxima per patch: p = Phi(d' - t) (mcgr.eval.observer); it knows "
                "each calcification's shape, so it is optimistic for a detector that must search shapes too",
        "sensitivity_at_0.5fp": round(float(p.mean()), 4) if p.size else None,
        "visible_sensitivity_at_0.5fp": round(float(p[vis].mean()), 4) if vis.any() else None,
        "by_cnr": bins,
    }


CNR_BINS = (0.0, 3.0, 4.0, 6.0, 10.0, float("inf"))


def _found_by_cnr(probs, truths, cnr, spacing_mm: float, thr: float = 0.5) -> dict:
    """Fraction of calcifications found at ``p >= thr`` in each CNR bin: where the detector's limit lies."""
    found = np.zeros(len(CNR_BINS) - 1)
    total = np.zeros(len(CNR_BINS) - 1)
    for pr, t, c in zip(probs, truths, cnr):
        r = match_objects(t, pr >= thr, spacing_mm)
        hit = np.zeros(len(c), dtype=bool)
        hit[[i for i, _ in r["pairs"]]] = True
        b = np.digitize(c, CNR_BINS[1:-1])
        np.add.at(total, b, 1)
        np.add.at(found, b, hit)
    return {f"[{lo:g}, {hi:g})": {"n": int(n), "found": round(float(f / n), 4) if n else None}
            for lo, hi, n, f in zip(CNR_BINS[:-1], CNR_BINS[1:], total, found)}


def _operating_point(fr: dict) -> tuple:
    """(sensitivity, threshold, FP per patch): the best sensitivity with FP per patch <= FP_BUDGET."""
    ok = [(s, thr, f) for s, thr, f in zip(fr["sensitivity"], fr["thresholds"], fr["fp_per_image"]) if f <= FP_BUDGET]
    return max(ok, key=lambda x: (x[0], -x[2])) if ok else (0.0, None, None)




def _project(gen: UNet, img: torch.Tensor, smap: torch.Tensor, t0: float, steps: int, seed: int) -> torch.Tensor:
    """The RF projection of ``img`` (in [0, 1]) onto seed-consistent images (Euler, t0 -> 1), as an
    image (clamped to [0, 1]), through the generator's flow space (mcgr.models.rf.to_flow)."""
    from mcgr.models.rf import from_flow, generator_condition, sample, to_flow, velocity

    y, ctx = to_flow(img, input_scale_of(gen))
    x = sample(lambda x, t, s: velocity(gen, x, t, s), y, generator_condition(gen, smap, y), t0=t0,
               steps=steps, method="euler", seed=seed, offset=0)
    return from_flow(x.float(), ctx).clamp(0, 1)


def _at(p: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """max of ``p`` [H, W] over the 3 x 3 window at each of ``pts`` [K, 2] (cy, cx)."""
    pm = F.max_pool2d(p[None, None], 3, stride=1, padding=1)[0, 0]
    ij = pts.round().long()
    ij[:, 0].clamp_(0, p.shape[0] - 1)
    ij[:, 1].clamp_(0, p.shape[1] - 1)
    return pm[ij[:, 0], ij[:, 1]]


@torch.no_grad()
def evaluate_generator(gen: UNet, seg: UNet, val: dict, t0: float = 0.5, steps: int = 4, draws: int = 4,
                       decoys: int = 4, decoy_min_dist: int = 8, seed_sigma: float = 1.5, seed: int = 0,
                       chunk: int = 8) -> dict:
    """Mean rise of the segmentor's probability at faint true seeds and at decoy seeds (see module doc)."""
    img, bg, mask = val["image"].cpu(), val["background"].cpu(), val["mask"].cpu()
    b, _, h, w = img.shape
    g = torch.Generator().manual_seed(seed)
    true = [torch.as_tensor(c, dtype=torch.float32).reshape(-1, 2).cpu() for c in val["centres"]]
    dec = decoy_seeds(bg, mask, decoys, decoy_min_dist, g)
    smap = make_seed_map([torch.cat([a, d]) for a, d in zip(true, dec)], (h, w), seed_sigma)
    p0 = seg_probs(seg, img)
    dev = next(gen.parameters()).device
    acc = torch.zeros_like(p0)
    for m in range(draws):
        for i in range(0, b, chunk):
            x = _project(gen, img[i:i + chunk].to(dev), smap[i:i + chunk].to(dev), t0, steps,
                         seed=seed * 1000 + m * 7919 + i)
            acc[i:i + chunk] += seg_probs(seg, x.cpu())
    q = acc / draws
    cnr = centre_cnr(img, bg, true)
    true_rise, true_contrast, dec_rise, true_p0, dec_p0 = [], [], [], [], []
    for k in range(b):
        if len(true[k]):
            ij = true[k].round().long()
            ij[:, 0].clamp_(0, h - 1)
            ij[:, 1].clamp_(0, w - 1)
            contrast = (img[k, 0] - bg[k, 0])[ij[:, 0], ij[:, 1]]
            true_contrast.append(contrast)
            true_rise.append(_at(q[k, 0], true[k]) - _at(p0[k, 0], true[k]))
            true_p0.append(_at(p0[k, 0], true[k]))
        if len(dec[k]):
            dec_rise.append(_at(q[k, 0], dec[k]) - _at(p0[k, 0], dec[k]))
            dec_p0.append(_at(p0[k, 0], dec[k]))
    tr = torch.cat(true_rise) if true_rise else torch.zeros(0)
    tc = torch.cat(true_contrast) if true_contrast else torch.zeros(0)
    dr = torch.cat(dec_rise) if dec_rise else torch.zeros(0)
    faint = tc <= tc.median() if tc.numel() else torch.zeros(0, dtype=torch.bool)
    vis = torch.cat([c for c in cnr if c.numel()]) >= ROSE_K if tc.numel() else torch.zeros(0, dtype=torch.bool)
    tcv = tc[vis]
    vfaint = torch.zeros_like(vis)
    if tcv.numel():
        vfaint[vis] = tcv <= tcv.median()
    mean = lambda t: float(t.mean()) if t.numel() else float("nan")  # noqa: E731
    return {
        "patches": int(b), "patch_size": int(h), "t0": t0, "steps": steps, "draws": draws,
        "n_true_seeds": int(tr.numel()), "n_faint_seeds": int(faint.sum()), "n_decoy_seeds": int(dr.numel()),
        "faint_contrast_max": float(tc[faint].max()) if faint.any() else float("nan"),
        "rise_at_faint_true_seeds": mean(tr[faint]) if faint.numel() else float("nan"),
        "rise_at_all_true_seeds": mean(tr),
        "n_visible_faint_seeds": int(vfaint.sum()),
        "rise_at_visible_faint_true_seeds": mean(tr[vfaint]),
        "p0_at_visible_faint_true_seeds": mean(torch.cat(true_p0)[vfaint]) if vfaint.any() else float("nan"),
        "rise_at_decoy_seeds": mean(dr),
        "p0_at_faint_true_seeds": mean(torch.cat(true_p0)[faint]) if faint.numel() else float("nan"),
        "p0_at_decoy_seeds": mean(torch.cat(dec_p0)) if dec_p0 else float("nan"),
    }


def _val_set(n: int, patch_size: int, seed: int, with_signal: bool = False) -> dict:
    from mcgr.synth.dataset import validation_set

    return validation_set(n, patch_size=patch_size, seed=seed, with_signal=with_signal)


def _load(kind: str, weights: str | None, device) -> UNet:
    return load_pretrained(kind, device=device) if weights is None else load_model(Path(weights), device=device, kind=kind)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mcgr.train.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=("seg", "rf"))
    p.add_argument("--weights", default=None, help="model directory (default: the shipped weights)")
    p.add_argument("--seg-weights", default=None, help="rf only: the frozen segmentor (default: shipped)")
    p.add_argument("--n", type=int, default=None, help="validation patches (seg 64, rf 32)")
    p.add_argument("--patch-size", type=int, default=None,
                   help="seg: 256; rf: both 64 (n 512, the TT-GPR window) and 256 (n 32) when not given")
    p.add_argument("--val-seed", type=int, default=12345)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    t = time.perf_counter()
    if a.kind == "seg":
        val = _val_set(a.n or 64, a.patch_size or 256, a.val_seed, with_signal=True)
        res = evaluate_segmentor(_load("seg", a.weights, a.device), val)
    else:
        gen, seg = _load("rf", a.weights, a.device), _load("seg", a.seg_weights, a.device)
        if a.patch_size is not None:
            res = evaluate_generator(gen, seg, _val_set(a.n or 32, a.patch_size, a.val_seed))
        else:
            res = evaluate_generator(gen, seg, _val_set(a.n or 512, 64, a.val_seed))
            res["at_256px"] = evaluate_generator(gen, seg, _val_set(32, 256, a.val_seed))
    res.update({"kind": a.kind, "val_seed": a.val_seed, "wall_s": round(time.perf_counter() - t, 1),
                "command": "python -m mcgr.train.evaluate " + " ".join(sys.argv[1:] if argv is None else argv)})
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
