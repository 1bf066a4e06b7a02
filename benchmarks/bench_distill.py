"""Distilled segmentors against their teacher, in one run: what a tile costs, and what of the answer stays.

    python -m benchmarks.bench_distill --widths 8,10,12 [--rounds 5] [--json PATH]
    python -m benchmarks.bench_distill --students DIR [DIR ...] [--teacher teacher|shipped|DIR] [--threads 1]
        [--rounds 5] [--val-n 64] [--val-seed 12345] [--phantoms 4] [--film-draws 1] [--json PATH]

Every model (the teacher first; a student is a model folder, e.g. ``runs/seg-w8/run/model`` from
``python -m mcgr.train.distill``) runs as the pipeline runs it on this machine: bf16 autocast and
channels-last where the CPU has native bf16 (``cpu_has_bf16``), float32 otherwise. Per model:

- **cost**: FLOPs of one 256 px tile (``torch.utils.flop_counter``), the median milliseconds per tile
  over ``--rounds`` rounds over the models in turn (batch 4, as the pipeline's CPU batch), and the
  pipeline's ``base`` stage seconds on a 3328 x 2560 breast phantom (best of 2);
- **synthetic validation**: pooled pixel Dice on ``--val-n`` 256 px validation patches
  (``mcgr.synth.dataset.validation_set``, seed ``--val-seed``, default 12345) at 0.5, at the model's
  operating threshold and at thresholds 0.5-0.998 (``dice_by_threshold``: a gap that a threshold of
  the student's own would close shows there), and the Dice of its mask against the teacher's mask at
  the teacher's threshold;
- **phantoms**: ``--phantoms`` full-field phantoms of ``mcgr eval --synthetic`` (seeds 0..N-1, half
  faint): Dice and object sensitivity / false objects per image at the operating threshold, and the
  object FROC at 0.5 / 1 / 2 / 5 false objects per image;
- **film**: the four ``sfm-benign-0`` views, calcifications injected by the training injector and by
  the independent one (``mcgr.train.adapt_validate``, seeds apart from any training stream,
  ``--film-draws`` draws each): object FROC over all and visible calcifications and clusters, pooled
  over the views. Teacher and students all trained on windows of these views (MC-free; the
  calcifications are new), so the figures flatter every model alike: they compare models, they do
  not predict a new site (``mcgr adapt``'s leave-one-view-out validation does that).

Rows go to ``--json`` with the machine.
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

TILE, BATCH = 256, 4
PHANTOM_RATES = (0.5, 1.0, 2.0, 5.0)


def load(spec: str):
    from mcgr.models import load_model, segmentor_folder

    return load_model(segmentor_folder(spec), kind="seg").eval()


def threshold_of(seg) -> float:
    from mcgr.infer.loader import operating_point

    t = operating_point(seg)["threshold"]
    return 0.5 if t is None else float(t)


def runner(seg, fast: bool):
    """The pipeline's way of running ``seg`` on standardised tiles: bf16 + channels-last when ``fast``."""
    if fast:
        seg = seg.to(memory_format=torch.channels_last)

    def call(x):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast):
            return seg(x.contiguous(memory_format=torch.channels_last) if fast else x).float()
    return call


def tile_flops(seg) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        seg(torch.zeros(1, 1, TILE, TILE))
    return int(fc.get_total_flops())


def interleaved_ms(calls: dict, rounds: int, reps: int = 3) -> dict:
    x = torch.rand(BATCH, 1, TILE, TILE) * 2 - 1
    for c in calls.values():
        c(x)
    ts: dict = {n: [] for n in calls}
    for _ in range(rounds):
        for n, c in calls.items():
            for _ in range(reps):
                t = time.perf_counter()
                c(x)
                ts[n].append(time.perf_counter() - t)
    return {n: round(1e3 * statistics.median(v) / BATCH, 2) for n, v in ts.items()}


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Pooled Dice of two boolean arrays (mcgr.eval.metrics, 1.0 when both are empty)."""
    from mcgr.eval.metrics import pixel_metrics

    return pixel_metrics(pred, truth)["dice"]


def pipeline(seg):
    from mcgr.infer.loader import operating_config
    from mcgr.infer.pipeline import Pipeline

    return Pipeline(seg, None, config=operating_config(seg), device="cpu")


def full_field_s(pipe, image) -> float:
    best = None
    for _ in range(2):
        r = pipe(image, spacing=0.07, refine=False)
        best = r.timings.get("base", 0.0) if best is None else min(best, r.timings.get("base", 0.0))
    return round(best, 3)


SWEEP = (0.5, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998)


def validation(models: dict, fast: bool, n: int, seed: int = 12345) -> dict:
    from mcgr.models.unet import standardise
    from mcgr.synth.dataset import validation_set

    val = validation_set(n, patch_size=TILE, seed=seed)
    x, truth = standardise(val["image"]), val["mask"].numpy() > 0.5
    probs = {}
    for name, seg in models.items():
        call = runner(seg, fast)
        probs[name] = np.concatenate([torch.sigmoid(call(x[i:i + BATCH])).numpy() for i in range(0, n, BATCH)])
    t_name = next(iter(models))
    t_mask = probs[t_name] >= threshold_of(models[t_name])
    out = {}
    for name, seg in models.items():
        thr = threshold_of(seg)
        out[name] = {"dice_at_0.5": round(dice(probs[name] >= 0.5, truth), 4),
                     "dice_at_threshold": round(dice(probs[name] >= thr, truth), 4),
                     "dice_vs_teacher_mask": round(dice(probs[name] >= thr, t_mask), 4), "threshold": thr,
                     "dice_by_threshold": {str(t): round(dice(probs[name] >= t, truth), 4) for t in SWEEP}, "seed": seed}
    return out


def phantoms(pipes: dict, n: int, progress) -> dict:
    from mcgr.eval.datasets import synthetic
    from mcgr.eval.objects import froc_counts, froc_from_counts
    from mcgr.train.adapt_validate import THRESHOLDS

    ds = synthetic(n, seed=0)
    acc = {k: {"tp": 0, "fp": 0, "n": 0, "pred": 0, "inter": 0, "truth": 0} for k in pipes}
    for case in ds.cases:
        d = case.loader()
        for name, pipe in pipes.items():
            r = pipe(torch.from_numpy(d.image), spacing=d.spacing_mm, refine=False)
            prob, mask = r.prob.numpy(), r.mask.numpy().astype(bool)
            c = froc_counts(prob, d.truth, d.spacing_mm, thresholds=THRESHOLDS, duplicates="ignore")
            a = acc[name]
            a["tp"] = a["tp"] + np.asarray(c["tp"], np.float64)
            a["fp"] = a["fp"] + np.asarray(c["fp"], np.float64)
            a["n"] += c["n_truth"]
            a["inter"] += int((mask & d.truth).sum())
            a["pred"] += int(mask.sum())
            a["truth"] += int(d.truth.sum())
        progress(f"phantom {case.id}")
    out = {}
    for name, a in acc.items():
        thr = threshold_of(pipes[name].seg)
        f = froc_from_counts(list(THRESHOLDS), a["tp"], a["fp"], a["n"], n, rates=PHANTOM_RATES)
        i = int(np.argmin(np.abs(np.asarray(THRESHOLDS) - thr)))
        out[name] = {"dice_at_threshold": round(2 * a["inter"] / max(a["pred"] + a["truth"], 1), 4),
                     "sensitivity_at_threshold": round(float(a["tp"][i]) / max(a["n"], 1), 4),
                     "fp_per_image_at_threshold": round(float(a["fp"][i]) / n, 3),
                     "froc": {k: round(v, 4) for k, v in f["at_rates"].items()}}
    return out


def film(pipes: dict, draws: int, progress, views=None) -> dict:
    from mcgr.train.adapt_validate import (SEED_INDEPENDENT, SEED_TRAINING, _visible_ignore, independent_injection,
                                           pooled, read_model_grid, score_image, training_injection)
    from mcgr.train.real import FILM_SPACING_MM, benign_views
    from mcgr.train.validate_real import search_region

    from mcgr import MODEL_SPACING_MM

    images = []
    for vi, (view, path) in enumerate(benign_views().items()):
        if views and view not in views:
            continue
        img = read_model_grid({"path": path, "spacing": FILM_SPACING_MM})
        _, region = search_region(img)
        rec = {"key": view, "scores": {}}
        for inj, fn, seed0 in (("training", training_injection, SEED_TRAINING),
                               ("independent", independent_injection, SEED_INDEPENDENT)):
            for k in range(draws):
                # + 500: apart from the seeds mcgr adapt's validation draws (fold * 1000 + 10 * image + k)
                im = fn(img, region, seed0 + 500 + 10 * vi + k)
                ignore = _visible_ignore(im)
                for name, pipe in pipes.items():
                    prob = pipe(torch.from_numpy(im["image"]), spacing=MODEL_SPACING_MM, refine=False).prob.numpy()
                    rec["scores"].setdefault(inj, {}).setdefault(name, []).append(score_image(prob, im, ignore))
                progress(f"film {view} {inj} draw {k}")
        images.append(rec)
    reports = [{"images": images}]
    out = {}
    for inj in ("training", "independent"):
        for name in pipes:
            p = pooled(reports, inj, name)
            out.setdefault(name, {})[inj] = {
                **{k: {r: round(v, 4) for r, v in p[k]["at_rates"].items()} for k in ("all", "visible", "clusters")},
                "n_images": p["n_images"], "n_truth": p["n_truth"]["all"], "n_clusters": p["n_clusters"]}
    return out


def width_costs(a) -> list[dict]:
    """Per-tile milliseconds of random-weight U-Nets of ``a.widths`` beside the teacher (``--widths``)."""
    import dataclasses

    from mcgr.infer.pipeline import cpu_has_bf16
    from mcgr.models.unet import UNet

    torch.set_num_threads(a.threads)
    fast = cpu_has_bf16()
    teacher = load(a.teacher)
    models = {"teacher": teacher}
    for w in [int(v) for v in a.widths.split(",") if v]:
        g = next(g for g in (teacher.cfg.groups, 8, 6, 5, 4, 3, 2, 1) if w % g == 0)
        models[f"width {w}"] = UNet(dataclasses.replace(teacher.cfg, width=w, groups=g)).eval()
    ms = interleaved_ms({n: runner(m, fast) for n, m in models.items()}, a.rounds)
    rows = []
    for n, m in models.items():
        rows.append({"op": "distill_width", "backend": n, "shape": f"tile {TILE} batch {BATCH} threads {a.threads}",
                     "median_ms": ms[n], "ratio_vs_ref": round(ms["teacher"] / ms[n], 3), "gbps": None,
                     "precision": "bf16 channels-last" if fast else "float32", "width": m.cfg.width,
                     "groups": m.cfg.groups, "gflop_per_tile": round(tile_flops(m) / 1e9, 3)})
        print(f"{n:10s} width {m.cfg.width:3d}  {rows[-1]['gflop_per_tile']:6.2f} GFLOP  {ms[n]:7.2f} ms/tile  "
              f"{rows[-1]['ratio_vs_ref']:.2f}x", flush=True)
    if a.json:
        append_json(a.json, machine_info(torch.device("cpu")), rows)
    return rows


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--students", nargs="+", default=[], help="model folders of the distilled segmentors")
    ap.add_argument("--teacher", default="teacher", help="'teacher' (the packaged width-16 segmentor, default), "
                    "'shipped' or a model folder")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--val-n", type=int, default=64)
    ap.add_argument("--val-seed", type=int, default=12345,
                    help="validation patches' seed (12345: the training's validation set; another: fresh patches)")
    ap.add_argument("--phantoms", type=int, default=4)
    ap.add_argument("--film-draws", type=int, default=1, help="injections per view and injector (0: no film)")
    ap.add_argument("--views", default="rcc,lcc,rmlo,lmlo", help="sfm-benign-0 views of the film part")
    ap.add_argument("--widths", default="", metavar="W,W",
                    help="only time random-weight U-Nets of these widths (the teacher's architecture otherwise) "
                         "beside the teacher, per tile: what a student of that width could cost; no scores")
    ap.add_argument("--json", metavar="PATH")
    a = ap.parse_args(argv)
    if a.widths:
        return width_costs(a)
    if not a.students:
        ap.error("--students DIR [DIR ...] (or --widths W,W for the cost of a width alone)")
    if a.threads < 1 or a.rounds < 1 or a.val_n < BATCH or a.phantoms < 0 or a.film_draws < 0:
        ap.error("--threads, --rounds >= 1, --val-n >= 4, --phantoms and --film-draws >= 0")
    for s in a.students:
        if not (Path(s) / "model.safetensors").is_file():
            ap.error(f"{s}: not a model folder (no model.safetensors)")
    torch.set_num_threads(a.threads)
    from mcgr.infer.pipeline import cpu_has_bf16
    from mcgr.synth.phantom import breast_phantom

    fast = cpu_has_bf16()
    models = {"teacher": load(a.teacher)}
    for s in a.students:
        models[Path(s).parent.parent.name if Path(s).name == "model" else Path(s).name] = load(s)
    t0 = time.perf_counter()

    def progress(msg):
        print(f"[{time.perf_counter() - t0:7.1f} s] {msg}", flush=True)

    ms = interleaved_ms({n: runner(m, fast) for n, m in models.items()}, a.rounds)
    progress(f"tiles {ms}")
    pipes = {n: pipeline(m) for n, m in models.items()}
    field = breast_phantom(3328, 2560, spacing_mm=0.07, seed=3).image
    base_s = {n: full_field_s(p, field) for n, p in pipes.items()}
    progress(f"full field base stage {base_s}")
    val = validation(models, fast, a.val_n, a.val_seed)
    progress(f"validation {val}")
    ph = phantoms(pipes, a.phantoms, progress) if a.phantoms else {}
    fi = film(pipes, a.film_draws, progress, a.views.split(",")) if a.film_draws else {}
    rows = []
    for n, m in models.items():
        rows.append({"op": "distill", "backend": n, "shape": f"tile {TILE} batch {BATCH} threads {a.threads}",
                     "median_ms": ms[n], "ratio_vs_ref": round(ms["teacher"] / ms[n], 3), "gbps": None,
                     "precision": "bf16 channels-last" if fast else "float32",
                     "model": m.cfg.to_dict(), "params": sum(p.numel() for p in m.parameters()),
                     "gflop_per_tile": round(tile_flops(m) / 1e9, 3), "full_field_base_s": base_s[n],
                     "full_field_ratio": round(base_s["teacher"] / base_s[n], 3),
                     "validation": val[n], "phantoms": ph.get(n), "film": fi.get(n)})
        print(f"{n:14s} {ms[n]:8.1f} ms/tile  {rows[-1]['ratio_vs_ref']:.2f}x  field {base_s[n]:.1f} s  "
              f"val Dice {val[n]['dice_at_threshold']:.4f} (vs teacher mask {val[n]['dice_vs_teacher_mask']:.4f})"
              + (f"  phantoms Dice {ph[n]['dice_at_threshold']:.4f} FROC {ph[n]['froc']}" if ph else "")
              + (f"  film ind. {fi[n]['independent']['all']} train. {fi[n]['training']['all']}" if fi else ""), flush=True)
    if a.json:
        append_json(a.json, machine_info(torch.device("cpu")), rows)
    return rows


if __name__ == "__main__":
    main()
