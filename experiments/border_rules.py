"""The pipeline's border rules measured on the sfm-benign-0 films only (the held-out case is never read).

    python -m experiments.border_rules [--weights DIR] [--out benchmarks/results/cpu-2core-epyc/border_rules.json]

For each of the four views, the base model's detections and clusters with the film-edge band
(``border_margin_mm`` 0, 1, 2) and the reflect padding of the canvas (``border_pad`` 0, 32), and
how many detections lie within 2 mm of the image border; then, on three regular phantoms
(1536 x 1152, seeds 11-13), true and false objects and Dice with and without the padding.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from mcgr.infer.pipeline import Pipeline
from mcgr.models import load_model, load_pretrained
from mcgr.train.real import FILM_SPACING_MM, benign_views

SETTINGS = [{"border_margin_mm": 0.0, "border_pad": 0}, {"border_margin_mm": 0.0, "border_pad": 32},
            {"border_margin_mm": 1.0, "border_pad": 32}, {"border_margin_mm": 2.0, "border_pad": 32}]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default="shipped")
    ap.add_argument("--out", default="benchmarks/results/cpu-2core-epyc/border_rules.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    seg = load_pretrained("seg") if a.weights == "shipped" else load_model(Path(a.weights), kind="seg")
    rows = []
    for view, path in benign_views().items():
        for s in SETTINGS:
            pipe = Pipeline(seg, None, **s)
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = pipe(path, spacing=FILM_SPACING_MM, refine=False)
            h, w = r.prob.shape
            e = 2.0 / FILM_SPACING_MM
            near = sum(1 for d in r.detections if min(d["y"], d["x"], h - 1 - d["y"], w - 1 - d["x"]) < e)
            row = {"view": view, **s, "detections": len(r.detections), "clusters": len(r.clusters),
                   "within_2mm_of_border": near, "kept_area_px": int((r.breast_mask.numpy()).sum()),
                   "s": round(time.perf_counter() - t, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    from mcgr.eval.objects import match_objects
    from mcgr.synth.phantom import breast_phantom

    phantoms = []
    for seed in (11, 12, 13):
        ph = breast_phantom(1536, 1152, seed=seed)
        t = ph.truth.numpy()
        for pad in (0, 32):
            r = Pipeline(seg, None, border_pad=pad)(ph.image, spacing=0.07, refine=False)
            p = r.mask.numpy()
            m = match_objects(t, p, 0.07, duplicates="ignore")
            row = {"phantom": seed, "border_pad": pad, "tp": m["tp"], "fp": m["fp"], "n_truth": m["n_truth"],
                   "dice": round(float(2 * (t & p).sum() / max(1, t.sum() + p.sum())), 4)}
            phantoms.append(row)
            print(json.dumps(row), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"weights": a.weights, "rows": rows, "phantoms": phantoms}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
