"""A cheap first pass that hands only candidate tiles to the full segmentor (issue 24, item 3): what
each gate costs and what it changes, against the full segmentor alone, on film and phantoms.

    python -m experiments.cascade [--teacher teacher] [--student experiments/models/distill-w8-8k]
        [--views lcc,lmlo,rcc,rmlo] [--fold-index-from-view] [--phantoms 6] [--gates 0.05,0.2,0.5,0.9]
        [--threads 1] [--json PATH]

Per image, both networks run once over every tile of the base grid (times per tile measured there);
then for each gate g a tile keeps the full segmentor's logits when the first pass's largest
probability over the tile's search region is >= g, and the first pass's own logits otherwise, and
the pipeline stitches and finishes those tiles exactly as it does its own (``run_field`` with
``base_tiles``). Nothing here is a timing of the cascade itself: its network time per image is
``first + hot fraction x full``, from the two per-tile times.

Images: each ``--views`` view of ``sfm-benign-0`` on the model grid, nothing injected and with the
validation's two injections (training and independent injector, draw 0, seeded as fold
``VIEW_KEYS`` order gives: the same images as ``experiments.tile_economy_film``), and
``--phantoms`` held-out synthetic phantoms (``mcgr eval --synthetic``'s set, 1536 x 1152, odd seeds
faint). Reported per gate: the fraction of tiles sent to the full segmentor, mask pixels that
differ from the full segmentor's mask at the operating threshold, the full segmentor's detections
the cascade loses and the ones it adds, and the pooled film FROC / phantom Dice and object scores.
``sfm-malign-0`` is never read.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from mcgr import MODEL_SPACING_MM


def tile_logits(seg, Y: torch.Tensor, autocast: bool, batch: int = 4) -> tuple[torch.Tensor, float]:
    from mcgr.infer.ttgpr import segment_tiles

    t = time.perf_counter()
    z = segment_tiles(seg, Y, batch, autocast)
    return z, time.perf_counter() - t


def lost_and_added(ref: np.ndarray, got: np.ndarray) -> tuple[int, int]:
    """Connected components of mask ``ref`` that ``got`` does not touch, and the converse."""
    from scipy import ndimage

    def untouched(a, b):
        lab, n = ndimage.label(a)
        if n == 0:
            return 0
        hit = ndimage.maximum(b, lab, index=np.arange(1, n + 1))
        return int((np.asarray(hit) == 0).sum())
    return untouched(ref, got), untouched(got, ref)


def film_images(views: str):
    """``(tag, view, injection, item, x)`` for each ``sfm-benign-0`` view in ``views`` (comma-separated):
    nothing injected, then the validation's two injections (draw 0, seeded as fold ``VIEW_KEYS`` order
    gives); ``x`` the image on the model grid as a float32 tensor."""
    from experiments.ttgpr_designs import VIEW_KEYS, injected, view_item
    from mcgr.train.adapt_validate import read_model_grid

    order = list(VIEW_KEYS)
    for view in [v for v in views.split(",") if v]:
        img = read_model_grid(view_item(view))
        for inj, im in [("nothing", {"image": img})] + injected(view, order.index(view), 0, range(1), img):
            yield f"{view} {inj}", view, inj, im, torch.from_numpy(np.ascontiguousarray(im["image"], dtype=np.float32))


def add_film_scores(groups: dict, view: str, inj: str, im: dict, probs: dict) -> None:
    """File the probability maps of an injected image (``probs``: name -> map) for ``pooled_table``."""
    from experiments.ttgpr_designs import VIEW_KEYS
    from mcgr.train.adapt_validate import _visible_ignore, score_image

    if inj == "nothing":
        return
    ignore = _visible_ignore(im)
    rec = groups.setdefault(f"real_{inj}", {"images": []})
    rec["images"].append({"key": VIEW_KEYS[view], "scores": {f"real_{inj}": {
        n: [score_image(p, im, ignore)] for n, p in probs.items()}}})


def phantom_summary(scores: list, probs: list, truths: list) -> dict:
    """Dice (mean), object sensitivity (pooled), false objects per image and the object FROC of
    phantom ``scores`` (``mcgr.demo.score`` rows) and probability maps."""
    from mcgr.eval.objects import froc

    nt = sum(s["n_truth"] for s in scores)
    return {"dice": round(float(np.mean([s["dice"] for s in scores])), 4),
            "object_sensitivity": round(sum(s["object_sensitivity"] * s["n_truth"] for s in scores) / max(nt, 1), 4),
            "fp_objects_per_image": round(float(np.mean([s["fp_objects"] for s in scores])), 2),
            "froc_at": {k: round(v, 4) for k, v in froc(probs, truths, MODEL_SPACING_MM)["at_rates"].items()}}


def write_report(rep: dict, path: str | None) -> None:
    """``rep`` with the machine, as JSON at ``path`` (nothing when None)."""
    if not path:
        return
    from benchmarks._harness import machine_info

    rep["machine"] = machine_info(torch.device("cpu"))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(rep, indent=1) + "\n")


def run_image(pipe, student, x, gates, breast=None) -> dict:
    """Probability maps of the full segmentor, the first pass alone and each gate's cascade."""
    from mcgr.infer.ttgpr import run_field
    from mcgr.ops import gather_tiles

    prep = pipe.prepare(x, spacing=MODEL_SPACING_MM, breast_mask=breast)
    grid = prep.grid.to(prep.x.device)
    Y = gather_tiles(prep.x, grid)
    R = gather_tiles(prep.seed_region.float(), grid) > 0
    zt, t_full = tile_logits(pipe.seg, Y, pipe.autocast)
    zs, t_first = tile_logits(student, Y, pipe.autocast)
    smax = torch.where(R, torch.sigmoid(zs), torch.zeros_like(zs)).amax((1, 2))
    out = {"tiles": int(Y.shape[0]), "full_s": t_full, "first_s": t_first, "prob": {}, "hot": {}}
    for name, hot in [("full", torch.ones_like(smax, dtype=torch.bool)), ("first", torch.zeros_like(smax, dtype=torch.bool))] + \
            [(f"gate {g:g}", smax >= g) for g in gates]:
        z = torch.where(hot[:, None, None], zt, zs)
        fr = run_field(prep.x, prep.grid, pipe.seg, None, pipe.config, refine_on=False, base_tiles=z,
                       seed_region=prep.seed_region)
        out["prob"][name] = pipe.finish(prep, fr).prob.numpy()
        out["hot"][name] = float(hot.float().mean()) if hot.numel() else 0.0
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="teacher",
                    help="the full segmentor: 'teacher' (the packaged width-16 one, default), 'shipped' or a model folder")
    ap.add_argument("--student", default="experiments/models/distill-w8-8k", help="the first pass's model folder")
    ap.add_argument("--views", default="lcc,lmlo,rcc,rmlo", help="sfm-benign-0 views ('' for none)")
    ap.add_argument("--phantoms", type=int, default=6)
    ap.add_argument("--gates", default="0.05,0.2,0.5,0.9")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", metavar="PATH")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from experiments.ttgpr_designs import pooled_table
    from mcgr.demo import score
    from mcgr.infer.loader import operating_config
    from mcgr.infer.pipeline import Pipeline
    from mcgr.models import load_model, segmentor_folder
    from mcgr.synth.phantom import breast_phantom

    teacher = load_model(segmentor_folder(a.teacher), kind="seg").eval()
    student = load_model(a.student, kind="seg").eval()
    cfg = operating_config(teacher)
    pipe = Pipeline(teacher, None, config=cfg, runtime="torch")
    if pipe.autocast:
        student = student.to(memory_format=torch.channels_last)
    gates = [float(g) for g in a.gates.split(",") if g]
    thr = cfg.threshold
    acc: dict = {}
    groups: dict = {}
    phantom_probs: dict = {}
    truths = []
    t_full = t_first = 0.0
    n_tiles = 0
    t0 = time.perf_counter()

    def account(tag, res, truth=None):
        nonlocal t_full, t_first, n_tiles
        t_full += res["full_s"]
        t_first += res["first_s"]
        n_tiles += res["tiles"]
        ref = res["prob"]["full"] >= thr
        for name, p in res["prob"].items():
            row = acc.setdefault(name, {"hot_tiles": 0.0, "px_changed": 0, "lost": 0, "added": 0, "ref_objects": 0,
                                        "by_image": []})
            m = p >= thr
            lost, added = lost_and_added(ref, m)
            row["hot_tiles"] += res["hot"][name] * res["tiles"]
            row["px_changed"] += int((m != ref).sum())
            row["lost"] += lost
            row["added"] += added
            from scipy import ndimage
            row["ref_objects"] += int(ndimage.label(ref)[1])
            row["by_image"].append({"image": tag, "hot": round(res["hot"][name], 3), "px_changed": int((m != ref).sum()),
                                    "lost": lost, "added": added})
        print(f"{tag}: {res['tiles']} tiles, full {res['full_s']:.1f} s, first {res['first_s']:.1f} s; "
              + ", ".join(f"{n} hot {res['hot'][n]:.2f} lost {acc[n]['by_image'][-1]['lost']}"
                          for n in res["prob"] if n.startswith("gate")), flush=True)

    for tag, view, inj, im, x in film_images(a.views):
        res = run_image(pipe, student, x, gates)
        account(tag, res)
        add_film_scores(groups, view, inj, im, res["prob"])
    phantom_scores: dict = {}
    for i in range(a.phantoms):
        ph = breast_phantom(1536, 1152, seed=i, faint=bool(i % 2))
        res = run_image(pipe, student, ph.image, gates, breast=ph.breast)
        account(f"phantom {i}", res)
        truths.append(ph.truth.numpy())
        for n, p in res["prob"].items():
            phantom_probs.setdefault(n, []).append(p)
            phantom_scores.setdefault(n, []).append(score(torch.from_numpy(p), ph.truth, ph.breast, MODEL_SPACING_MM, thr))
    names = list(acc)
    film = pooled_table(groups, names) if groups else {}
    rows = {}
    for n in names:
        r = acc[n]
        hot = r["hot_tiles"] / max(n_tiles, 1)
        net = t_first + hot * t_full if n.startswith("gate") else (t_full if n == "full" else t_first)
        row = {"hot_fraction": round(hot, 3), "network_s": round(net, 1), "x_full": round(t_full / net, 2) if net else None,
               "mask_px_changed": r["px_changed"], "objects_lost": r["lost"], "objects_added": r["added"],
               "full_objects": r["ref_objects"], "by_image": r["by_image"]}
        if film:
            row["film_froc"] = {g: {"all": tab[n]["all"]["at_rates"], "clusters": tab[n]["clusters"]["at_rates"]}
                                for g, tab in film.items()}
        if phantom_probs:
            row["phantoms"] = phantom_summary(phantom_scores[n], phantom_probs[n], truths)
        rows[n] = row
        print(f"{n:10s} hot {row['hot_fraction']:.3f}  network {row['network_s']:6.1f} s ({row['x_full']}x)  "
              f"px changed {row['mask_px_changed']:7d}  objects lost {row['objects_lost']} added {row['objects_added']} "
              f"of {row['full_objects']}"
              + (f"  phantoms Dice {row['phantoms']['dice']:.4f} obj {row['phantoms']['object_sensitivity']:.3f}" if phantom_probs else "")
              + "".join(f"  {g} {[round(v, 3) for v in f['all'].values()]}" for g, f in row.get("film_froc", {}).items()),
              flush=True)
    rep = {"teacher": a.teacher, "student": a.student, "views": a.views, "phantoms": a.phantoms, "gates": gates,
           "threshold": thr, "torch_threads": a.threads, "autocast_bf16": pipe.autocast, "tiles": n_tiles,
           "ms_per_tile": {"full": round(1e3 * t_full / max(n_tiles, 1), 1), "first": round(1e3 * t_first / max(n_tiles, 1), 1)},
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows, "wall_s": round(time.perf_counter() - t0, 1)}
    print(f"ms per tile: full {rep['ms_per_tile']['full']}, first {rep['ms_per_tile']['first']}")
    write_report(rep, a.json)
    return rep


if __name__ == "__main__":
    main()
