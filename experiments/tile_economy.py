"""What the tile count costs and buys: overlap 0.25 against 0.125, and tiles skipped where the
image proposes no calcification, each with its Dice / FROC change and its network time.

    python -m experiments.tile_economy [--n 6] [--seed 0] [--size 1536 1152] [--floors 5,6] [--threads 1] [--json PATH]

Phantoms: ``mcgr eval --synthetic``'s held-out set (``breast_phantom`` seeds ``seed..seed+n-1``, the
odd ones faint), the shipped segmentor, base pass (no TT-GPR), side by side in one run:

- ``overlap 0.25``: what ships (stride 192 px);
- ``overlap 0.125``: stride 224 px, fewer tiles, less Gaussian blending at the seams;
- ``skip < F``: overlap 0.25, but a tile whose search region holds no pixel of image evidence
  (:func:`mcgr.infer.proposals.evidence_map`, the local signal-to-noise ratio TT-GPR proposes
  seeds from) of at least ``F`` sigmas is not sent to the segmentor (its probability stays 0);
  the evidence map's own cost is counted in the time.

Per variant: tiles per image, the base stage's seconds (median over images; time of the evidence
map included for ``skip``), Dice, object sensitivity and false objects per image at the operating
threshold, and the FROC sensitivity at 0.25-4 false objects per image (``mcgr.eval.objects.froc``).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._harness import append_json, machine_info  # noqa: E402

from mcgr.infer.pipeline import Pipeline  # noqa: E402


class SkipFlat(Pipeline):
    """The pipeline whose tile grid drops tiles without image evidence of ``floor`` sigmas."""

    def __init__(self, *a, floor: float, **kw):
        super().__init__(*a, **kw)
        self.floor = float(floor)
        self.evidence_s = 0.0

    def prepare(self, image, spacing=None, breast_mask=None, view=None):
        from mcgr.infer.proposals import evidence_map
        from mcgr.ops._tiling import TileGrid

        prep = super().prepare(image, spacing=spacing, breast_mask=breast_mask, view=view)
        t = time.perf_counter()
        ev = evidence_map(prep.x.float(), prep.seed_region)
        T = prep.grid.tile
        keep = [bool(ev[y:y + T, x:x + T].max() >= self.floor) for y, x in prep.grid.origins.tolist()]
        prep.grid = TileGrid(tile=T, stride=prep.grid.stride, origins=prep.grid.origins[torch.tensor(keep, dtype=torch.bool)],
                             image_shape=prep.grid.image_shape)
        self.evidence_s = time.perf_counter() - t
        return prep


def main(argv=None) -> list[dict]:
    from mcgr import MODEL_SPACING_MM
    from mcgr.demo import score
    from mcgr.eval.objects import froc
    from mcgr.infer.loader import operating_config
    from mcgr.models import load_pretrained
    from mcgr.synth.phantom import breast_phantom

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, nargs=2, default=(1536, 1152))
    ap.add_argument("--floors", default="5,6", help="evidence floors (sigmas) of the skip variants")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", metavar="PATH")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    seg = load_pretrained("seg")
    cfg = operating_config(seg)
    variants = {"overlap 0.25": Pipeline(seg, None, config=cfg, overlap=0.25),
                "overlap 0.125": Pipeline(seg, None, config=cfg, overlap=0.125)}
    for f in (float(v) for v in a.floors.split(",") if v):
        variants[f"skip < {f:g}"] = SkipFlat(seg, None, config=cfg, overlap=0.25, floor=f)
    phantoms = [breast_phantom(a.size[0], a.size[1], seed=a.seed + i, faint=bool((a.seed + i) % 2)) for i in range(a.n)]
    for pipe in variants.values():  # warm-up: oneDNN primitives for the batch shapes
        pipe(phantoms[0].image, spacing=MODEL_SPACING_MM, breast_mask=phantoms[0].breast, refine=False)
    res = {k: {"probs": [], "base_s": [], "tiles": [], "scores": []} for k in variants}
    for ph in phantoms:  # variants in turn on each image: a load change falls on all of them
        for name, pipe in variants.items():
            r = pipe(ph.image, spacing=MODEL_SPACING_MM, breast_mask=ph.breast, refine=False)
            extra = getattr(pipe, "evidence_s", 0.0)
            tiles = len(pipe.prepare(ph.image, spacing=MODEL_SPACING_MM, breast_mask=ph.breast).grid.origins)
            res[name]["probs"].append(r.prob.numpy())
            res[name]["base_s"].append(r.timings.get("base", 0.0) + extra)
            res[name]["tiles"].append(tiles)
            res[name]["scores"].append(score(r.prob, ph.truth, ph.breast, MODEL_SPACING_MM, cfg.threshold))
    rows = []
    truths = [ph.truth.numpy() for ph in phantoms]
    for name, v in res.items():
        fr = froc(v["probs"], truths, MODEL_SPACING_MM)
        sc = v["scores"]
        n_truth = sum(s["n_truth"] for s in sc)
        row = {"op": "tile_economy", "backend": name, "shape": f"{a.n}x{a.size[0]}x{a.size[1]} seed {a.seed}",
               "median_ms": round(1e3 * statistics.median(v["base_s"]), 1), "ratio_vs_ref": None, "gbps": None,
               "tiles_per_image": round(float(np.mean(v["tiles"])), 1),
               "dice": round(float(np.mean([s["dice"] for s in sc])), 4),
               "object_sensitivity": round(sum(s["object_sensitivity"] * s["n_truth"] for s in sc) / n_truth, 4),
               "fp_objects_per_image": round(float(np.mean([s["fp_objects"] for s in sc])), 2),
               "froc_at": {k: round(x, 4) for k, x in fr["at_rates"].items()},
               "froc_mean": round(fr["mean_sensitivity"], 4)}
        rows.append(row)
    ref = rows[0]
    for r in rows:
        r["ratio_vs_ref"] = round(ref["median_ms"] / r["median_ms"], 3)
        print(f"{r['backend']:14s} tiles {r['tiles_per_image']:6.1f}  base {r['median_ms'] / 1e3:6.2f} s "
              f"({r['ratio_vs_ref']:.2f}x)  Dice {r['dice']:.4f}  obj sens {r['object_sensitivity']:.4f}  "
              f"FP/img {r['fp_objects_per_image']:.2f}  FROC mean {r['froc_mean']:.4f} {r['froc_at']}", flush=True)
    if a.json:
        append_json(a.json, machine_info(torch.device("cpu")), rows)
    return rows


if __name__ == "__main__":
    main()
