"""Overlap 0.125 and the flat-tile skip on held-out scanned film, before either may become a default
(docs/benchmarks.md, "Fewer tiles"): the leave-one-view-out check the phantoms could not give.

    python -m experiments.tile_economy_film [--adapt runs/adapt-benign] [--folds 0,1,2,3] [--floor 5]
        [--threads 1] [--out benchmarks/results/cpu-2core-epyc/tile_economy_film.json]

Each fold's segmentor of an ``mcgr adapt`` run on ``sfm-benign-0`` (``work/validate/fold<N>/model``,
trained without the fold's view) on that view: nothing injected, and calcifications injected as the
adaptation's validation injects them (training and independent injector, draw 0, the same seeds),
base pass only. Variants side by side in one run, per image: overlap 0.25 (ships), overlap 0.125,
and overlap 0.25 with tiles skipped whose search region holds no image evidence >= ``--floor``
sigmas (:class:`experiments.tile_economy.SkipFlat`). Reported: tiles, base seconds (the call, read
excluded: the image is on the model grid already), the FROC pooled over views
(:func:`mcgr.train.adapt_validate.pooled`, 0.5-10 false objects per image), detections with nothing
injected, and how many pixels of each variant's mask at 0.5 and at 0.99 differ from the shipped
variant's.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from mcgr import MODEL_SPACING_MM



def variants(seg, floor: float) -> dict:
    from experiments.tile_economy import SkipFlat
    from mcgr.infer.pipeline import Pipeline

    return {"overlap 0.25": Pipeline(seg, None, overlap=0.25), "overlap 0.125": Pipeline(seg, None, overlap=0.125),
            f"skip < {floor:g} sigma": SkipFlat(seg, None, overlap=0.25, floor=floor)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapt", default="runs/adapt-benign")
    ap.add_argument("--folds", default="0,1,2,3")
    ap.add_argument("--floor", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/cpu-2core-epyc/tile_economy_film.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from experiments.ttgpr_designs import VIEW_KEYS, injected, pooled_table, view_item
    from mcgr.models import load_model
    from mcgr.train.adapt_validate import _visible_ignore, read_model_grid, score_image

    views = list(VIEW_KEYS)  # fold N of the sfm-benign-0 adaptation holds out its N-th view
    groups: dict = {}
    rows: dict = {}
    t0 = time.perf_counter()
    for fold in [int(f) for f in a.folds.split(",")]:
        view = views[fold]
        key = VIEW_KEYS[view]
        seg = load_model(Path(a.adapt) / "work" / "validate" / f"fold{fold}" / "model", kind="seg")
        pipes = variants(seg, a.floor)
        img = read_model_grid(view_item(view))
        images = [("nothing", {"image": img})] + injected(view, fold, 0, range(1), img)
        for inj, im in images:
            x = torch.from_numpy(np.ascontiguousarray(im["image"], dtype=np.float32))
            probs = {}
            for name, pipe in pipes.items():
                t = time.perf_counter()
                r = pipe(x, spacing=MODEL_SPACING_MM, refine=False)
                dt = time.perf_counter() - t
                probs[name] = r.prob.numpy()
                row = rows.setdefault(name, {"tiles": [], "seconds": [], "detections_nothing_injected": []})
                row["tiles"].append(int(pipe.prepare(x, spacing=MODEL_SPACING_MM).grid.origins.shape[0]))
                row["seconds"].append(round(dt, 2))
                if inj == "nothing":
                    row["detections_nothing_injected"].append(len(r.detections))
            ref = probs["overlap 0.25"]
            for name, p in probs.items():
                d = rows[name].setdefault("mask_pixels_changed", {"0.5": 0, "0.99": 0})
                for thr in ("0.5", "0.99"):
                    d[thr] += int(((p >= float(thr)) != (ref >= float(thr))).sum())
            if inj != "nothing":
                ignore = _visible_ignore(im)
                rec = groups.setdefault(f"real_{inj}", {"images": []})
                rec["images"].append({"key": key, "scores": {f"real_{inj}": {m: [score_image(p, im, ignore)]
                                                                           for m, p in probs.items()}}})
            print(f"fold {fold} ({key}) {inj}: " + ", ".join(f"{n} {rows[n]['seconds'][-1]} s" for n in pipes), flush=True)
    table = pooled_table(groups, list(rows))
    rep = {"adapt": a.adapt, "folds": a.folds, "floor": a.floor, "torch_threads": a.threads,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "variants": rows,
           "froc": {g: {m: {"all": t["all"]["at_rates"], "visible": t["visible"]["at_rates"],
                            "clusters": t["clusters"]["at_rates"]} for m, t in tab.items()} for g, tab in table.items()},
           "wall_s": round(time.perf_counter() - t0, 1)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rep, indent=1) + "\n")
    for name, row in rows.items():
        print(f"{name:18s} tiles {sum(row['tiles'])} s {sum(row['seconds']):.1f} nothing-injected detections "
              f"{row['detections_nothing_injected']} mask px changed {row['mask_pixels_changed']}")
    for g, tab in rep["froc"].items():
        for m, t in tab.items():
            print(f"{g:18s} {m:18s} all {[round(v, 3) for v in t['all'].values()]} clusters "
                  f"{[round(v, 3) for v in t['clusters'].values()]}")


if __name__ == "__main__":
    main()
