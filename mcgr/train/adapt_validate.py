"""``mcgr adapt``'s validation: held-out images, two injectors, FROC counts that pool over folds.

For each held-out image of a fold, calcifications are injected where the pipeline searches
(:func:`mcgr.train.validate_real.search_region`) with seeds no training stream uses:

* ``training``: the image formation model that trained the segmentor (:func:`mcgr.ops.inject`,
  the phantoms' regular parameters, PSF sigma 0.6 px): the easiest case it will meet;
* ``independent``: :func:`mcgr.eval.independent.independent_inject` (other shapes, thickness
  profile, blur and contrast laws; no shared code or parameters). The operating point is chosen on it.

Each image is scored for the fold's model, the start model (the procedural-only segmentor the
adaptation began from) and the DoG detector: per threshold, true and false objects over all and
over the visible calcifications (contrast-to-noise >= 3; the others neither found nor missed, a
hit on them no false positive), and true and false clusters (a detected cluster, :func:`clusters_from_detections`
at that threshold, matches a true cluster of >= 3 injected calcifications when >= 2 of its members
lie within 1 mm of that cluster's calcifications). Counts, not curves, are stored, so that folds
pool into one FROC (:func:`pooled_report`).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from mcgr import MODEL_SPACING_MM

# up to 1 - 1e-7: on scanned film a segmentor holds dust specks at p > 0.9999 (its logits run past 9),
# so the operating points of a few false objects per image lie in the last decades before float32's 1
THRESHOLDS = tuple(float(t) for t in np.unique(np.r_[np.round(np.linspace(0.05, 0.95, 19), 2), 0.97, 0.98, 0.99,
                                                       1 - np.logspace(-2.5, -7, 10)]))
RATES = (0.5, 1.0, 2.0, 5.0, 10.0)
CLUSTER_RATES = (0.1, 0.2, 0.5, 1.0)
SEED_TRAINING = 910001
SEED_INDEPENDENT = 920001
METHODS = ("adapted", "start", "dog")


def training_injection(img: np.ndarray, region: np.ndarray, seed: int) -> dict:
    """The training injector into a held-out image (:func:`mcgr.train.validate_real.inject_sample`):
    image, truth, background, centres, cluster ids."""
    from mcgr.train.validate_real import inject_sample

    out, truth, _, s = inject_sample(img, region, seed, clusters=(3, 5), isolated=(10, 20))
    return {"image": out.numpy(), "truth": truth.numpy(), "background": img,
            "centres": s.centres[:, 1:3].numpy().astype(np.float64), "cluster": s.cluster.numpy().astype(np.int64)}


def independent_injection(img: np.ndarray, region: np.ndarray, seed: int) -> dict:
    from mcgr.eval.independent import independent_inject

    r = independent_inject(img, region, MODEL_SPACING_MM, seed)
    return {"image": r.image, "truth": r.truth, "background": r.background, "centres": r.centres, "cluster": r.cluster}


def _visible_ignore(im: dict) -> np.ndarray:
    from mcgr.synth.visibility import ROSE_K, component_cnr

    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]  # noqa: E731
    cnr = component_cnr(t(im["image"]), t(im["background"]), t(im["truth"]))[0]
    return np.asarray(cnr) < ROSE_K


def cluster_counts(prob: np.ndarray, centres: np.ndarray, cluster: np.ndarray, thresholds=THRESHOLDS,
                   near_mm: float = 1.0) -> dict:
    """True clusters found and false clusters, per threshold (module doc)."""
    from mcgr.infer.detect import clusters_from_detections, detections_from_prob

    ids = [c for c in np.unique(cluster) if c >= 0 and (cluster == c).sum() >= 3]
    groups = [centres[cluster == c] for c in ids]
    near = near_mm / MODEL_SPACING_MM
    found, false = [], []
    for thr in thresholds:
        dets = detections_from_prob(prob, MODEL_SPACING_MM, thr)
        if len(dets) > 5000:  # a threshold this low is off the curve that matters; count it as all false
            found.append(0)
            false.append(len(dets) // 3)
            continue
        cls = clusters_from_detections(dets, MODEL_SPACING_MM)
        pos = {d["id"]: (d["y"], d["x"]) for d in dets}
        hit = set()
        n_false = 0
        for c in cls:
            pts = np.array([pos[m] for m in c["members"]], np.float64)
            best, best_n = None, 0
            for gi, gp in enumerate(groups):
                d = np.sqrt(((pts[:, None, :] - gp[None, :, :]) ** 2).sum(-1)).min(1)
                k = int((d <= near).sum())
                if k > best_n:
                    best, best_n = gi, k
            if best is not None and best_n >= 2:
                hit.add(best)
            else:
                n_false += 1
        found.append(len(hit))
        false.append(n_false)
    return {"found": found, "false": false, "n_truth": len(groups)}


def score_image(prob: np.ndarray, im: dict, ignore: np.ndarray) -> dict:
    from mcgr.eval.objects import froc_counts

    a = froc_counts(prob, im["truth"], MODEL_SPACING_MM, thresholds=THRESHOLDS, duplicates="ignore")
    v = froc_counts(prob, im["truth"], MODEL_SPACING_MM, thresholds=THRESHOLDS, duplicates="ignore", truth_ignore=ignore)
    return {"all": a, "visible": v, "clusters": cluster_counts(prob, im["centres"], im["cluster"])}


def read_model_grid(item: dict) -> np.ndarray:
    """One input, canonical, at the model spacing (float32)."""
    from mcgr.io import read_mammogram, to_model_spacing

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = read_mammogram(item["path"], spacing=item["spacing"])
    img, _ = to_model_spacing(m, MODEL_SPACING_MM)
    return np.ascontiguousarray(img, dtype=np.float32)


def validate_fold(n: int, items: list[dict], fold_model, start_model, injections: int, progress: bool = True,
                  device: str = "cpu") -> dict:
    """One fold's counts: every held-out image x injector x draw, for each method (module doc)."""
    from mcgr.eval.baselines import dog_hessian
    from mcgr.infer.pipeline import Pipeline
    from mcgr.models import load_model
    from mcgr.train.validate_real import search_region

    pipes = {"adapted": Pipeline(load_model(fold_model, kind="seg", device=device), None, device=device),
             "start": Pipeline(load_model(start_model, kind="seg", device=device), None, device=device)}
    rep = {"fold": n, "held_out": [it["key"] for it in items], "images": []}
    for it in items:
        img = read_model_grid(it)
        bm, region = search_region(img)
        raw = {name: pipe(torch.from_numpy(img), spacing=MODEL_SPACING_MM, refine=False) for name, pipe in pipes.items()}
        rec = {"key": it["key"], "nothing_injected": {name: {"detections": len(r.detections), "clusters": len(r.clusters)}
                                                      for name, r in raw.items()}, "scores": {}}
        for inj, fn, seed0 in (("training", training_injection, SEED_TRAINING),
                               ("independent", independent_injection, SEED_INDEPENDENT)):
            for k in range(injections):
                seed = seed0 + 1000 * n + 10 * items.index(it) + k
                im = fn(img, region, seed)
                ignore = _visible_ignore(im)
                probs = {name: pipe(torch.from_numpy(im["image"]), spacing=MODEL_SPACING_MM, refine=False).prob.numpy()
                         for name, pipe in pipes.items()}
                probs["dog"] = dog_hessian(im["image"], MODEL_SPACING_MM, bm)
                for name, p in probs.items():
                    rec["scores"].setdefault(inj, {}).setdefault(name, []).append(score_image(p, im, ignore))
        rep["images"].append(rec)
    return rep


def _froc(thresholds, tp, fp, n_truth, n_images, rates) -> dict:
    from mcgr.eval.objects import froc_from_counts

    return froc_from_counts(list(thresholds), tp, fp, n_truth, n_images, rates=rates)


def pooled(reports: list[dict], injector: str, method: str) -> dict:
    """The FROCs (all, visible, clusters) of one injector and method over every fold's images."""
    tp = {"all": 0, "visible": 0}
    fp = {"all": 0, "visible": 0}
    nt = {"all": 0, "visible": 0}
    cf = cfa = 0
    cn = 0
    n_img = 0
    for r in reports:
        for im in r["images"]:
            for s in im["scores"][injector][method]:
                n_img += 1
                for k in ("all", "visible"):
                    tp[k] = tp[k] + np.asarray(s[k]["tp"], np.float64)
                    fp[k] = fp[k] + np.asarray(s[k]["fp"], np.float64)
                    nt[k] += s[k]["n_truth"]
                cf = cf + np.asarray(s["clusters"]["found"], np.float64)
                cfa = cfa + np.asarray(s["clusters"]["false"], np.float64)
                cn += s["clusters"]["n_truth"]
    out = {k: _froc(THRESHOLDS, tp[k], fp[k], nt[k], n_img, RATES) for k in ("all", "visible")}
    out["clusters"] = _froc(THRESHOLDS, cf, cfa, cn, n_img, CLUSTER_RATES)
    out["n_images"] = n_img
    out["n_truth"] = nt
    out["n_clusters"] = cn
    return out


def operating_threshold(froc: dict, fp_per_image: float) -> float:
    """The lowest threshold whose false objects per image are <= ``fp_per_image`` (the highest if none)."""
    th, fpi = froc["thresholds"], froc["fp_per_image"]
    ok = [t for t, f in zip(th, fpi) if f <= fp_per_image]
    return float(min(ok)) if ok else float(max(th))


def pooled_report(reports: list[dict], fp_per_image: float) -> dict:
    """Every injector x method pooled, and the operating point for ``fp_per_image`` on the independent
    injector's FROC of the fold models."""
    table = {inj: {m: pooled(reports, inj, m) for m in METHODS} for inj in ("training", "independent")}
    ind = table["independent"]["adapted"]["all"]
    t_op = operating_threshold(ind, fp_per_image)
    i = ind["thresholds"].index(t_op)
    points = [{"fp_per_image": r, "threshold": operating_threshold(ind, r)} for r in RATES]
    vis = table["independent"]["adapted"]["visible"]
    return {"table": table, "operating": {"fp_per_image_target": fp_per_image, "threshold": t_op,
                                          "fp_per_image": ind["fp_per_image"][i], "sensitivity_all": ind["sensitivity"][i],
                                          "sensitivity_visible": vis["sensitivity"][i]},
            "operating_points": {"rule": "lowest threshold with false objects per image <= the rate, on the "
                                 "independent injector's pooled leave-image-out FROC",
                                 "points": points, "thresholds": ind["thresholds"], "fp_per_image": ind["fp_per_image"]}}
