"""What the validation's shorter fold schedule costs: one fold of an adaptation trained with the shipped
schedule beside the fold model ``mcgr adapt`` trained, scored on the same injected images.

    python -m experiments.adapt_fold_cost --adapt runs/adapt-benign --fold 2 [--steps 2000] [--inputs FILES/DIRS]
    python -m experiments.adapt_fold_cost --adapt runs/adapt-benign --pool F0.json,F1.json,... [--fp-per-image 1]
        [--out benchmarks/results/cpu-2core-epyc/adapt_fold_cost.json]

trains the fold's segmentor (every image but the fold's held-out ones) for ``--steps`` (default: the
adaptation's ``seg_steps``) into ``ADAPT/work/fold-cost/fold<N>``, runs
:func:`mcgr.train.adapt_validate.validate_fold` with it (same seeds, so the same injected images as the
adaptation's own fold report), and writes both folds' pooled figures side by side.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mcgr.train.adapt import Adaptation
from mcgr.train.adapt_validate import pooled, validate_fold


def summary(rep: dict) -> dict:
    out = {}
    for inj in ("independent", "training"):
        p = pooled([rep], inj, "adapted")
        out[inj] = {"all": p["all"]["at_rates"], "visible": p["visible"]["at_rates"],
                    "clusters": p["clusters"]["at_rates"]}
    return out


def pool(paths: list[str], adapt: str, fp_per_image: float) -> dict:
    """Several folds' reports (this command's outputs) pooled into one leave-image-out FROC and
    operating point, beside the adaptation's own folds pooled the same way."""
    from mcgr.train.adapt_validate import pooled_report

    ours = [json.loads(Path(p).read_text())["report"] for p in paths]
    folds = {r["fold"] for r in ours}
    theirs = [json.loads(f.read_text()) for f in sorted((Path(adapt) / "work" / "validate").glob("fold*.json"))]
    theirs = [r for r in theirs if r["fold"] in folds]
    out = {}
    for name, reps in (("shipped_steps", ours), ("fold_steps", theirs)):
        pr = pooled_report(reps, fp_per_image)
        out[name] = {"operating": pr["operating"],
                     **{inj: {m: {k: pr["table"][inj][m][k]["at_rates"] for k in ("all", "visible", "clusters")}
                              for m in ("adapted", "start", "dog")} for inj in ("independent", "training")}}
    out["folds"] = sorted(folds)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapt", required=True)
    ap.add_argument("--fold", type=int, default=None)
    ap.add_argument("--pool", default=None, help="OUT.json,...: pool these folds' reports (and the adaptation's own)")
    ap.add_argument("--fp-per-image", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--inputs", nargs="*", default=None, help="the adaptation's inputs, where its state lacks their paths")
    ap.add_argument("--out", default="benchmarks/results/cpu-2core-epyc/adapt_fold_cost.json")
    a = ap.parse_args(argv)
    if a.pool:
        res = pool(a.pool.split(","), a.adapt, a.fp_per_image)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
        print(json.dumps(res, indent=1))
        return 0
    if a.fold is None:
        ap.error("--fold is required (or --pool)")
    ad = Adaptation.reopen(a.adapt, threads=a.threads)
    if any(it["path"] is None for it in ad.items):  # a state written before it recorded the paths
        if not a.inputs:
            raise SystemExit(f"{a.adapt}: its state holds no input paths; give them with --inputs")
        from mcgr._digest import file_sha256
        from mcgr.train.adapt import list_inputs

        by_hash = {file_sha256(it["path"]): it["path"] for it in list_inputs(a.inputs, None)}
        for it in ad.items:
            it["path"] = it["path"] or by_hash.get(it["sha256"])
        missing = [it["key"] for it in ad.items if it["path"] is None]
        if missing:
            raise SystemExit(f"--inputs hold no file with the sha256 of {missing}")
    held = ad.folds()[a.fold]
    have = json.loads((ad.work / "validate" / f"fold{a.fold}.json").read_text())
    steps = a.steps or ad.plan.seg_steps
    run = ad.work / "fold-cost" / f"fold{a.fold}"
    t0 = time.perf_counter()
    ad._train(ad.seg_config(steps, exclude=held), run)
    t_train = time.perf_counter() - t0
    items = [it for it in ad.items if it["key"] in held]
    rep = validate_fold(a.fold, items, run / "model", ad.start_dir("seg"), ad.plan.injections, progress=False)
    res = {"adapt": a.adapt, "fold": a.fold, "held_out": held, "date": time.strftime("%Y-%m-%d"),
           "fold_steps": {"steps": ad.plan.fold_schedule, **summary(have)},
           "shipped_steps": {"steps": steps, "train_s": round(t_train, 1), **summary(rep)},
           "report": rep}  # the fold's counts, to pool folds (mcgr.train.adapt_validate.pooled_report)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
