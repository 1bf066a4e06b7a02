"""Validation nobody tuned on: leave-one-view-out on real films, and a procedural variant.

``python -m mcgr.train.validate_real --fold VIEW=MODEL_DIR [--fold ...] [--variant MODEL_DIR] --out F.json``

For each fold, the model given was trained with every ``sfm-benign-0`` view but ``VIEW`` (its real
negatives and its mined hard negatives); the held-out view is then used twice:

* as it is (nothing injected): the calcifications and clusters the base model reports on it;
* with synthetic calcifications injected (``--injections`` draws of clusters and isolated
  calcifications, generator seeds from 900001 up: never a training seed) where the pipeline searches
  (the breast 3 mm inside the skin line, off the pectoral muscle), through the same image formation
  model as training (:func:`mcgr.ops.inject`, the phantoms' regular parameters): pixel Dice at the
  pipeline's threshold, and object sensitivity at 1 / 2 / 5 false objects per image read off the
  FROC, over all injected calcifications and over the visible ones (CNR >= 3, the others neither
  found nor missed).

Beside the model, on the same images: the classic DoG detector (:func:`mcgr.eval.baselines.dog_hessian`,
no learning) with its best Dice over thresholds (an oracle threshold: the most it can give).
``--variant``: the same figures on procedural MLO phantoms whose tissue lies outside the training
range (power-law exponent 3.6, denser and coarser texture), with anatomy.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from mcgr import MODEL_SPACING_MM

SEED0 = 900001
RATES = (1.0, 2.0, 5.0)
VARIANT_TEXTURE = {"beta": 3.6, "mean": (0.5, 0.65), "texture_std": (0.9, 1.2), "fibres": (15, 30)}


def search_region(img: np.ndarray, skin_mm: float = 3.0, view: str | None = None):
    """Where calcifications are injected: the pipeline's search region (:func:`mcgr.io.search_region.search_region`)
    with the band inside the skin line widened to ``skin_mm``; returns (breast, region)."""
    from mcgr.io.search_region import search_region as region_of

    r = region_of(img, MODEL_SPACING_MM, view=view, skin_mm=skin_mm)
    return r.breast, r.keep


def inject_sample(img: np.ndarray, region: np.ndarray, seed: int, clusters=(4, 6), isolated=(15, 25)):
    """Clusters and isolated calcifications injected into a canonical field at model spacing through
    the training image formation model (the phantoms' regular parameters, PSF sigma 0.6 px), kept
    where their centres lie in ``region``. Returns (image, truth mask, background, the CalcSample)."""
    from mcgr.ops.inject import InjectParams, inject
    from mcgr.synth.phantom import REGULAR, _keep_calcs
    from mcgr.synth.patterns import sample_calcifications

    H, W = img.shape
    g = torch.Generator().manual_seed(seed)
    # drawn over the region's bounding box (a breast may fill a fifth of the film), then moved there
    ys, xs = np.nonzero(region)
    y0, x0 = int(ys.min()), int(xs.min())
    h, w = int(ys.max()) - y0 + 1, int(xs.max()) - x0 + 1
    s = sample_calcifications(1, h, w, MODEL_SPACING_MM, g, clusters=clusters, isolated=isolated,
                              thickness_jitter=REGULAR["thickness_jitter"])
    off = torch.tensor([float(y0), float(x0)])
    s.prims[:, 1:3] += off.to(s.prims.dtype)
    s.centres[:, 1:3] += off.to(s.centres.dtype)
    cy = s.centres[:, 1].round().long().clamp(0, H - 1)
    cx = s.centres[:, 2].round().long().clamp(0, W - 1)
    s = _keep_calcs(s, torch.from_numpy(region)[cy, cx])
    params = InjectParams(mu=REGULAR["mu"], contrast=REGULAR["contrast"], psf_sigma=0.6, local_sigma=8.0, gamma=1.0,
                          noise=0.0, seed=seed)
    bg = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
    out, truth = inject(bg, s.prims, params)
    return out, truth.bool(), bg, s


def inject_field(img: np.ndarray, region: np.ndarray, seed: int):
    """:func:`inject_sample` with this validation's counts. Returns (image, truth mask, background, centres)."""
    out, truth, bg, s = inject_sample(img, region, seed)
    return out, truth, bg, s.centres[:, 1:3]


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    s = pred.sum() + truth.sum()
    return float(2 * (pred & truth).sum() / s) if s else 1.0


def score_images(pipe, images: list[dict], with_dog: bool = True) -> dict:
    """Base-model and DoG figures over injected images (dicts: image, truth, background, breast)."""
    from mcgr.eval.baselines import dog_hessian
    from mcgr.eval.objects import froc
    from mcgr.synth.visibility import ROSE_K, component_cnr

    probs, truths, ignores, dogs, dice_in = [], [], [], [], []
    for im in images:
        res = pipe(im["image"], spacing=MODEL_SPACING_MM, refine=False)
        p = res.prob.numpy()
        t = im["truth"].numpy()
        probs.append(p)
        truths.append(t)
        cnr = component_cnr(im["image"][None, None], im["background"][None, None], im["truth"][None, None].float())[0]
        ignores.append(cnr < ROSE_K)
        dice_in.append((p >= pipe.config.threshold, t))
        if with_dog:
            dogs.append(dog_hessian(im["image"].numpy(), MODEL_SPACING_MM, im["breast"]))
    inter = sum(int((a & b).sum()) for a, b in dice_in)
    tot = sum(int(a.sum() + b.sum()) for a, b in dice_in)
    out = {"images": len(images), "n_calcifications": int(sum(len(i) for i in ignores)),
           "n_visible": int(sum(int((~i).sum()) for i in ignores)),
           "dice": round(2 * inter / tot, 4) if tot else 1.0}
    thr = np.unique(np.round(np.r_[np.linspace(0.02, 0.98, 49), 0.99, 0.995, 0.999, THRESHOLDS], 4))
    f_all = froc(probs, truths, MODEL_SPACING_MM, thresholds=thr, rates=RATES, duplicates="ignore")
    f_vis = froc(probs, truths, MODEL_SPACING_MM, thresholds=thr, rates=RATES, truth_ignore=ignores, duplicates="ignore")
    out["sensitivity_all"] = {k: round(v, 4) for k, v in f_all["at_rates"].items()}
    out["sensitivity_visible"] = {k: round(v, 4) for k, v in f_vis["at_rates"].items()}
    i05 = int(np.argmin(np.abs(np.asarray(f_all["thresholds"]) - pipe.config.threshold)))
    out["false_objects_per_image_at_threshold"] = round(f_all["fp_per_image"][i05], 2)
    out["sensitivity_visible_at_threshold"] = round(f_vis["sensitivity"][i05], 4)
    if with_dog:
        best = (0.0, None)
        for th in np.linspace(0.05, 0.95, 19):
            d = _dice_pooled([(m >= th, t) for m, t in zip(dogs, truths)])
            if d > best[0]:
                best = (d, float(th))
        fd = froc(dogs, truths, MODEL_SPACING_MM, thresholds=thr, rates=RATES, truth_ignore=ignores, duplicates="ignore")
        out["dog"] = {"best_dice": round(best[0], 4), "at_threshold": best[1],
                      "sensitivity_visible": {k: round(v, 4) for k, v in fd["at_rates"].items()}}
    return out


def _dice_pooled(pairs) -> float:
    inter = sum(int((a & b).sum()) for a, b in pairs)
    tot = sum(int(a.sum() + b.sum()) for a, b in pairs)
    return 2 * inter / tot if tot else 1.0


THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99)
# The fixed threshold of this validation's pixel Dice and raw counts (the cards' "at p >= 0.5"
# columns), whatever operating threshold a model folder carries; each fold is also scored at its own
# operating threshold, chosen on its training views (operating_threshold).
REPORT_THRESHOLD = 0.5


def read_view(view: str) -> np.ndarray:
    """A ``sfm-benign-0`` view, canonical, at model spacing."""
    from mcgr.io import read_mammogram, to_model_spacing
    from mcgr.train.real import FILM_SPACING_MM, benign_views

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = read_mammogram(benign_views()[view], spacing=FILM_SPACING_MM)
    img, _ = to_model_spacing(m, MODEL_SPACING_MM)
    return np.ascontiguousarray(img, dtype=np.float32)


def counts_by_threshold(prob: np.ndarray, thresholds=THRESHOLDS) -> dict:
    """Detections and clusters on an MC-free view at each threshold (components re-extracted)."""
    from mcgr.infer.detect import clusters_from_detections, detections_from_prob

    out = {}
    for t in thresholds:
        d = detections_from_prob(prob, MODEL_SPACING_MM, t)
        out[f"{t:g}"] = {"detections": len(d), "clusters": len(clusters_from_detections(d, MODEL_SPACING_MM))}
    return out


def operating_threshold(per_view: list[dict], max_clusters: float = 0.25, max_detections: float = 2.0) -> float:
    """The lowest threshold of :data:`THRESHOLDS` at which MC-free views average at most
    ``max_clusters`` clusters and ``max_detections`` detections (the highest threshold if none does)."""
    for t in THRESHOLDS:
        k = f"{t:g}"
        if (np.mean([v[k]["clusters"] for v in per_view]) <= max_clusters
                and np.mean([v[k]["detections"] for v in per_view]) <= max_detections):
            return t
    return THRESHOLDS[-1]


def load_pipe(model_dir: str):
    """The segmentor alone of ``model_dir`` ("shipped": the package's weights; a model folder with
    ``seg/``, or the segmentor's own folder) at its operating threshold, loaded as every command
    loads it (:func:`mcgr.infer.loader.load_models`)."""
    from mcgr.infer.loader import load_models
    from mcgr.infer.pipeline import Pipeline

    return Pipeline.from_models(load_models(None if model_dir == "shipped" else model_dir, refine=False))


def at_threshold(pipe, threshold: float):
    """``pipe`` with its threshold set to ``threshold`` (the figures this validation reports at a
    fixed threshold: 0.5, and each fold's operating threshold chosen on its training views)."""
    from dataclasses import replace

    pipe.config = replace(pipe.config, threshold=float(threshold))
    return pipe


def validate_fold(view: str, model_dir: str, injections: int = 2) -> dict:
    """One fold: the held-out ``view`` scored with the model trained without it, at threshold 0.5 and
    at the operating threshold chosen on the fold's training views alone (nothing injected there)."""
    from mcgr.train.real import VIEWS, benign_views

    path = benign_views()[view]
    img = read_view(view)
    pipe = at_threshold(load_pipe(model_dir), REPORT_THRESHOLD)
    train_counts = {v: counts_by_threshold(pipe(torch.from_numpy(read_view(v)), spacing=MODEL_SPACING_MM,
                                                refine=False).prob.numpy()) for v in VIEWS if v != view}
    t_op = operating_threshold(list(train_counts.values()))
    raw = pipe(torch.from_numpy(img), spacing=MODEL_SPACING_MM, refine=False)
    bm, region = search_region(img, view="CC" if view.endswith("cc") else "MLO")
    images = []
    for k in range(injections):
        im, truth, bg, _ = inject_field(img, region, SEED0 + 1000 * (1 + list(("rcc", "lcc", "rmlo", "lmlo")).index(view)) + k)
        images.append({"image": im, "truth": truth, "background": bg, "breast": bm})
    out = {"view": view, "file": Path(path).name, "model": model_dir,
           "raw_detections": len(raw.detections), "raw_clusters": len(raw.clusters),
           "pectoral_found": bool(raw.pectoral and raw.pectoral["found"]),
           "raw_by_threshold": counts_by_threshold(raw.prob.numpy()), "training_views_by_threshold": train_counts}
    out.update(score_images(pipe, images))
    at = score_images(at_threshold(pipe, t_op), images, with_dog=False)
    out["operating"] = {"threshold": t_op, "rule": "lowest threshold at which the fold's training views (nothing "
                        "injected) average <= 0.25 clusters and <= 2 detections", "dice": at["dice"],
                        "false_objects_per_image": at["false_objects_per_image_at_threshold"],
                        "sensitivity_visible": at["sensitivity_visible_at_threshold"],
                        "raw_clusters": out["raw_by_threshold"][f"{t_op:g}"]["clusters"],
                        "raw_detections": out["raw_by_threshold"][f"{t_op:g}"]["detections"]}
    return out


def validate_variant(model_dir: str, n: int = 2) -> dict:
    from mcgr.synth.phantom import breast_phantom

    pipe = at_threshold(load_pipe(model_dir), REPORT_THRESHOLD)
    images, raw_clusters = [], []
    for k in range(n):
        ph = breast_phantom(2048, 1536, seed=SEED0 + 50 + k, anatomy=True, texture=VARIANT_TEXTURE)
        images.append({"image": ph.image, "truth": ph.truth.bool(), "background": ph.background, "breast": ph.breast.numpy()})
        clean = breast_phantom(2048, 1536, seed=SEED0 + 50 + k, anatomy=True, texture=VARIANT_TEXTURE, clusters=(0, 0),
                               isolated=(0, 0))
        raw_clusters.append(len(pipe(clean.image, spacing=MODEL_SPACING_MM, refine=False).clusters))
    out = {"variant": "procedural MLO, beta 3.6, texture_std 0.9-1.2, mean 0.5-0.65, anatomy", "model": model_dir,
           "raw_clusters": raw_clusters}
    out.update(score_images(pipe, images))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mcgr.train.validate_real", description=__doc__.split("\n\n")[0])
    ap.add_argument("--fold", action="append", default=[], help="VIEW=MODEL_DIR (model trained without VIEW)")
    ap.add_argument("--variant", default=None, help="model folder (or 'shipped') for the procedural variant")
    ap.add_argument("--injections", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    rep = {"folds": [], "variant": None}
    for spec in a.fold:
        view, _, model = spec.partition("=")
        if not model:
            ap.error(f"--fold takes VIEW=MODEL_DIR, got {spec!r}")
        r = validate_fold(view, model, a.injections)
        rep["folds"].append(r)
        print(json.dumps(r))
    if a.variant:
        rep["variant"] = validate_variant(a.variant)
        print(json.dumps(rep["variant"]))
    rep["wall_s"] = round(time.perf_counter() - t0, 1)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rep, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
