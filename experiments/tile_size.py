"""Larger tiles with the same seam (issue 24, item 3): what a 384 or 512 px tile costs and what it
changes, against the shipped 256 px tiles at overlap 0.25, on film and phantoms.

    python -m experiments.tile_size [--variants 256/0.25,384/0.1667,512/0.125,512/0.25]
        [--views lcc,lmlo,rcc,rmlo] [--phantoms 6] [--threads 1] [--json PATH]

A 256 px tile at overlap 0.25 (stride 192) computes every breast pixel ~1.8 times; a 512 px tile at
overlap 0.125 (stride 448) ~1.3 times, with the same 64 px seam between neighbours and the same
Gaussian blending relative to the tile (sigma = T / 8), so a pixel at a seam is as far from both
tiles' borders as it is today and an inside pixel sees more context. What it may change: the
GroupNorm statistics are taken over a larger tile (more tissue, more air at the breast edge).

Each variant is a :class:`mcgr.infer.pipeline.Pipeline` of the shipped segmentor with its own
``tile`` / ``overlap``, run in turn on each image, base pass only. Reported per variant: tiles, the
base stage's seconds (summed over images), mask pixels that differ from the shipped variant's mask
at the operating threshold, the shipped variant's detections it loses and the ones it adds, the
pooled film FROC (validation's two injectors) and the phantoms' Dice, object scores and FROC.

Images: the four ``sfm-benign-0`` views on the model grid, nothing injected and with the
validation's two injections (draw 0; the images of ``experiments.cascade`` and
``experiments.tile_economy_film``), and ``--phantoms`` held-out synthetic phantoms (1536 x 1152, odd
seeds faint). ``sfm-malign-0`` is never read. The shipped segmentor was trained on the four benign
views' MC-free patches, so the film figures compare tilings of one model, not held-out accuracy.
"""
from __future__ import annotations

import argparse
import time

import torch

from mcgr import MODEL_SPACING_MM


def parse_variants(spec: str) -> list[tuple[int, float]]:
    out = []
    for v in [s for s in spec.split(",") if s]:
        t, o = v.split("/")
        out.append((int(t), float(o)))
    if not out:
        raise SystemExit("--variants is empty")
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="256/0.25,384/0.1667,512/0.125,512/0.25",
                    help="TILE/OVERLAP pairs, the first is the reference")
    ap.add_argument("--views", default="lcc,lmlo,rcc,rmlo", help="sfm-benign-0 views ('' for none)")
    ap.add_argument("--phantoms", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", metavar="PATH")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from experiments.cascade import add_film_scores, film_images, lost_and_added, phantom_summary, write_report
    from experiments.ttgpr_designs import pooled_table
    from mcgr.demo import score
    from mcgr.infer.loader import operating_config
    from mcgr.infer.pipeline import Pipeline
    from mcgr.models import load_pretrained
    from mcgr.synth.phantom import breast_phantom
    from scipy import ndimage

    seg = load_pretrained("seg")
    cfg = operating_config(seg)
    thr = cfg.threshold
    pipes = {f"{t}/{o:g}": Pipeline(seg, None, config=cfg, runtime="torch", tile=t, overlap=o)
             for t, o in parse_variants(a.variants)}
    names = list(pipes)
    ref_name = names[0]
    acc = {n: {"tiles": 0, "base_s": 0.0, "px_changed": 0, "lost": 0, "added": 0, "ref_objects": 0, "by_image": []}
           for n in names}
    groups: dict = {}
    phantom_probs: dict = {n: [] for n in names}
    phantom_scores: dict = {n: [] for n in names}
    truths = []
    t0 = time.perf_counter()

    def run(tag, x, breast=None):
        probs = {}
        for n, pipe in pipes.items():
            prep = pipe.prepare(x, spacing=MODEL_SPACING_MM, breast_mask=breast)
            r = pipe.finish(prep, pipe.network(prep, refine=False))
            probs[n] = r.prob.numpy()
            acc[n]["tiles"] += int(prep.grid.origins.shape[0])
            acc[n]["base_s"] += float(r.timings["base"])
        ref = probs[ref_name] >= thr
        n_ref = int(ndimage.label(ref)[1])
        for n, p in probs.items():
            m = p >= thr
            lost, added = lost_and_added(ref, m)
            row = acc[n]
            row["px_changed"] += int((m != ref).sum())
            row["lost"] += lost
            row["added"] += added
            row["ref_objects"] += n_ref
            row["by_image"].append({"image": tag, "px_changed": int((m != ref).sum()), "lost": lost, "added": added})
        print(f"{tag}: " + ", ".join(f"{n} lost {acc[n]['by_image'][-1]['lost']} added {acc[n]['by_image'][-1]['added']}"
                                     for n in names[1:]) + f" (of {n_ref})", flush=True)
        return probs

    for tag, view, inj, im, x in film_images(a.views):
        add_film_scores(groups, view, inj, im, run(tag, x))
    for i in range(a.phantoms):
        ph = breast_phantom(1536, 1152, seed=i, faint=bool(i % 2))
        probs = run(f"phantom {i}", ph.image, breast=ph.breast)
        truths.append(ph.truth.numpy())
        for n, p in probs.items():
            phantom_probs[n].append(p)
            phantom_scores[n].append(score(torch.from_numpy(p), ph.truth, ph.breast, MODEL_SPACING_MM, thr))
    film = pooled_table(groups, names) if groups else {}
    rows = {}
    for n in names:
        r = acc[n]
        row = {"tiles": r["tiles"], "base_s": round(r["base_s"], 1),
               "x_ref": round(acc[ref_name]["base_s"] / r["base_s"], 2) if r["base_s"] else None,
               "mask_px_changed": r["px_changed"], "objects_lost": r["lost"], "objects_added": r["added"],
               "ref_objects": r["ref_objects"], "by_image": r["by_image"]}
        if film:
            row["film_froc"] = {g: {"all": tab[n]["all"]["at_rates"], "clusters": tab[n]["clusters"]["at_rates"]}
                                for g, tab in film.items()}
        if a.phantoms:
            row["phantoms"] = phantom_summary(phantom_scores[n], phantom_probs[n], truths)
        rows[n] = row
        print(f"{n:10s} tiles {row['tiles']:5d}  base {row['base_s']:6.1f} s ({row['x_ref']}x)  "
              f"px changed {row['mask_px_changed']:7d}  lost {row['objects_lost']} added {row['objects_added']} "
              f"of {row['ref_objects']}"
              + (f"  phantoms Dice {row['phantoms']['dice']:.4f} obj {row['phantoms']['object_sensitivity']:.3f} "
                 f"fp {row['phantoms']['fp_objects_per_image']}" if a.phantoms else "")
              + "".join(f"  {g} {[round(v, 3) for v in f['all'].values()]}" for g, f in row.get("film_froc", {}).items()),
              flush=True)
    rep = {"variants": names, "views": a.views, "phantoms": a.phantoms, "threshold": thr, "torch_threads": a.threads,
           "autocast_bf16": pipes[ref_name].autocast, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "rows": rows, "wall_s": round(time.perf_counter() - t0, 1)}
    write_report(rep, a.json)
    return rep


if __name__ == "__main__":
    main()
