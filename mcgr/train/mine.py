"""Hard-negative mining: the segmentor's false detections on MC-free images, cut out for training.

``python -m mcgr.train.mine --weights DIR --films F [F ...] --spacing 0.05 --phantoms N --out hard.npy``
runs the segmentor (base model, full field, the pipeline's own breast / skin / scan-line handling,
the pectoral exclusion off so that muscle false positives are mined too) over mammograms that hold
no calcification, the real negative views given and N procedural MLO fields with anatomy
(:func:`mcgr.synth.phantom.breast_phantom` with no calcifications), and writes a ``P x P`` patch
(model spacing) centred on each detection, strongest first, at most ``per_image`` per image.

A detection on a real film that the harvest guard calls a calcification-like spot
(:func:`mcgr.synth.harvest.spot_map`: a 0.5 mm top-hat 12 robust sigmas above the film's level
on two or more pixels) is left out: the view is believed negative, but a strong spot might be a
benign calcification, and teaching the segmentor to ignore one would be wrong. Beside the ``.npy``
a ``.json`` lists every patch's source, centre, peak probability and area, and the counts per
image: the model card's record of the round.
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


def _patches_at(img: np.ndarray, centres, p: int) -> list[np.ndarray]:
    h = p // 2
    pad = np.pad(img, h, mode="reflect")
    return [pad[int(round(y)):int(round(y)) + p, int(round(x)):int(round(x)) + p].copy() for y, x in centres]


def mine_image(pipe, img: np.ndarray, name: str, p: int, per_image: int, guard=None) -> tuple[list, list, dict]:
    """False detections of ``pipe`` (base model) on one MC-free canonical image at model spacing:
    (patches, records, summary of the image's counts)."""
    res = pipe(torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)), spacing=MODEL_SPACING_MM, refine=False)
    dets = res.detections
    kept, guarded = [], 0
    for d in dets:
        y, x = int(round(d["y"])), int(round(d["x"]))
        if guard is not None and guard[max(0, y - 2):y + 3, max(0, x - 2):x + 3].any():
            guarded += 1
            continue
        kept.append(d)
        if len(kept) >= per_image:
            break
    patches = _patches_at(img, [(d["y"], d["x"]) for d in kept], p)
    recs = [{"source": name, "y": d["y"], "x": d["x"], "peak_prob": d["peak_prob"], "area_px": d["area_px"]} for d in kept]
    summary = {"source": name, "detections": len(dets), "clusters": len(res.clusters), "guarded_as_spots": guarded,
               "kept": len(kept)}
    return patches, recs, summary


def mine(weights: str | None, films=(), spacing: float | None = None, phantoms: int = 0, patch: int = 256,
         per_image: int = 150, seed: int = 0, threads: int = 1, progress: bool = True) -> tuple[np.ndarray, dict]:
    """Mine hard negatives; returns (patches [M, patch, patch] float32, report dict)."""
    from mcgr.infer.pipeline import Pipeline
    from mcgr.io import read_mammogram, to_model_spacing
    from mcgr.io.search_region import search_region
    from mcgr.models import load_model, load_pretrained
    from mcgr.synth.harvest import spot_map
    from mcgr.synth.phantom import breast_phantom

    if threads:
        torch.set_num_threads(threads)
    seg = load_pretrained("seg") if weights in (None, "shipped") else load_model(Path(weights), kind="seg")
    pipe = Pipeline(seg, None, exclude_pectoral=False)
    patches: list[np.ndarray] = []
    records: list[dict] = []
    per: list[dict] = []
    t0 = time.perf_counter()
    jobs = [("film", f) for f in films] + [("phantom", k) for k in range(phantoms)]
    try:
        from tqdm import tqdm
        jobs_it = tqdm(jobs, desc="mine", disable=not progress)
    except ImportError:
        jobs_it = jobs
    for kind, src in jobs_it:
        if kind == "film":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = read_mammogram(str(src), spacing=spacing)
            img, _ = to_model_spacing(m, MODEL_SPACING_MM)
            img = np.asarray(img, dtype=np.float32)
            breast = search_region(img, MODEL_SPACING_MM, view=m.view, skin_mm=0.0, border_mm=0.0, scan_lines=False,
                                   pectoral=False).breast
            guard = spot_map(img, breast, MODEL_SPACING_MM, 12.0)
            name = str(src)
        else:
            ph = breast_phantom(2048, 1536, seed=seed * 1000 + 7919 + src, clusters=(0, 0), isolated=(0, 0), anatomy=True)
            img, guard, name = ph.image.numpy(), None, f"phantom:{seed * 1000 + 7919 + src}"
        p_, r_, s_ = mine_image(pipe, img, name, patch, per_image, guard)
        patches += p_
        records += r_
        per.append(s_)
    arr = np.stack(patches).astype(np.float32) if patches else np.zeros((0, patch, patch), np.float32)
    report = {"weights": weights or "shipped", "patch": patch, "per_image": per_image, "images": per,
              "patches": len(records), "records": records, "wall_s": round(time.perf_counter() - t0, 1)}
    return np.clip(arr, 0, 1), report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mcgr.train.mine", description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=None, help="segmentor folder (default: the shipped weights)")
    ap.add_argument("--films", nargs="*", default=[], help="MC-free mammograms (DICOM / PNG / TIFF / NPY)")
    ap.add_argument("--spacing", type=float, default=None, help="pixel spacing of the films in mm (if not in the files)")
    ap.add_argument("--phantoms", type=int, default=0, help="procedural MLO fields with anatomy and no calcification")
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--per-image", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True, help="output .npy (a .json report is written beside it)")
    a = ap.parse_args(argv)
    if not a.films and a.phantoms <= 0:
        ap.error("give --films and/or --phantoms N > 0")
    arr, rep = mine(a.weights, a.films, a.spacing, a.phantoms, a.patch, a.per_image, a.seed, a.threads)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, arr)
    out.with_suffix(".json").write_text(json.dumps(rep, indent=1) + "\n")
    for s in rep["images"]:
        print(f"{s['source']}: {s['detections']} detections, {s['clusters']} clusters, kept {s['kept']}, "
              f"{s['guarded_as_spots']} left out as calcification-like spots")
    print(f"wrote {len(arr)} patches to {out} ({rep['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
