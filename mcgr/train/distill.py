"""A smaller segmentor that learns the shipped one's answer: knowledge distillation on the real-negative recipe.

``python -m mcgr.train.distill --out runs/seg-w8 [--teacher shipped|DIR] [--width 8] [--groups 4]
[--steps 4000] [--distill 1.0] [--init random|prune]`` trains a U-Net of ``--width`` channels at full
resolution (the shipped one has 16; the cost of a tile falls about as the square of the width) from
random weights, or from the teacher's own strongest groups and filters (``--init prune``,
:mod:`mcgr.models.prune`),
on the data of :mod:`mcgr.train.real` (its harvest of the ``sfm-benign-0`` views and hard negatives
mined by the texture-only start, preset ``real``), with the synthetic masks' loss plus
``--distill`` times :func:`mcgr.models.segmentor.distillation_loss` against the frozen teacher's
logits on the same patches. The teacher's logits carry what its own training learned that the masks
of one batch do not: the ranking of film texture it holds as background. The model lands in
``OUT/run/model`` with the teacher's operating threshold copied into its ``config.json``
(``operating_threshold``), because the student is asked for the teacher's logits; whether that
threshold still means what it meant for the teacher is measured by ``benchmarks/bench_distill.py``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mcgr.train.real import VIEWS


def student_config(width: int, groups: int, steps: int, distill: float, teacher: str):
    """The preset ``real`` with a ``width``-channel model, no init, and the teacher."""
    from mcgr.train.config import load_config

    import dataclasses

    cfg = load_config("seg", "real")
    cfg.model = dataclasses.replace(cfg.model, width=width, groups=groups).validated()
    cfg.init = None
    cfg.teacher = teacher
    cfg.loss.distill = distill
    cfg.optim.steps = steps
    return cfg


def stamp_student(model_dir: Path, threshold: float | None, teacher: str) -> None:
    """Write the teacher's operating threshold (when it has one) and its name (``distilled_from``)
    into the student's ``config.json``."""
    p = Path(model_dir) / "config.json"
    c = json.loads(p.read_text())
    if threshold is not None:
        c["operating_threshold"] = float(threshold)
    c["distilled_from"] = teacher
    p.write_text(json.dumps(c, indent=2) + "\n")


def pruned_start(teacher: str, width: int, groups: int, folder: Path) -> Path:
    """The teacher cut to ``width`` channels (:func:`mcgr.models.prune.prune_unet`), saved as a model
    folder for the trainer's ``init``."""
    from mcgr.models import load_model, save_model, segmentor_folder
    from mcgr.models.prune import prune_unet

    t = load_model(segmentor_folder(teacher), kind="seg")
    save_model(prune_unet(t.eval(), width, groups), folder, kind="seg", extra={"source": {"pruned_from": teacher}})
    return folder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mcgr.train.distill", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--teacher", default="teacher",
                    help="model folder of the teacher, 'teacher' (default: the packaged width-16 segmentor the shipped "
                         "one was distilled from) or 'shipped' (the shipped segmentor)")
    ap.add_argument("--width", type=int, default=8, help="channels at full resolution (default 8; shipped 16)")
    ap.add_argument("--groups", type=int, default=4, help="GroupNorm groups (must divide width)")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--distill", type=float, default=1.0, help="weight of the logit-matching term")
    ap.add_argument("--phantoms", type=int, default=4, help="procedural MLO fields to mine")
    ap.add_argument("--miner", default=None, help="model folder that mines the hard negatives "
                                                  "(default: the texture-only start, mcgr/weights/start/seg)")
    ap.add_argument("--hold-out", choices=VIEWS, default=None,
                    help="leave this sfm-benign-0 view out of harvest and mining (a leave-one-view-out fold; "
                         "give the fold's own teacher)")
    ap.add_argument("--init", choices=("random", "prune"), default="random",
                    help="the student's first weights: random (default), or cut out of the teacher's "
                         "(mcgr.models.prune: its strongest GroupNorm groups and filters, written to OUT/pruned)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args(argv)
    if a.width < 1 or a.groups < 1 or a.width % a.groups:
        ap.error(f"--groups {a.groups} must divide --width {a.width}")
    if a.steps < 1 or not a.distill > 0:
        ap.error("--steps must be >= 1 and --distill > 0")
    import torch

    from mcgr.models import segmentor_folder
    from mcgr.models.checkpoint import read_model_config
    from mcgr.train.real import real_data, training_views
    from mcgr.train.trainer import train

    teacher = a.teacher if a.teacher in ("shipped", "teacher") else str(Path(a.teacher).resolve())
    # the teacher's config only (its threshold; a missing or damaged folder fails here, before the
    # harvest): the trainer loads its weights
    _, _, tconfig = read_model_config(segmentor_folder(teacher))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    miner = a.miner or str(Path(__file__).resolve().parent.parent / "weights" / "start" / "seg")
    views = training_views(a.hold_out)
    bgs, hard = real_data(out, views, miner, a.phantoms, a.threads)
    cfg = student_config(a.width, a.groups, a.steps, a.distill, teacher)
    if a.init == "prune":
        cfg.init = str(pruned_start(teacher, a.width, a.groups, out / "pruned"))
    cfg.threads = a.threads
    cfg.data.backgrounds = ",".join(bgs)
    cfg.data.hard_negatives = str(hard)
    run = out / "run"
    summary = train(cfg, run, resume=a.resume)
    if (run / "model" / "config.json").is_file():
        stamp_student(run / "model", tconfig.get("operating_threshold"), teacher)
    summary["held_out_view"] = a.hold_out
    summary["views"] = sorted(views)
    summary["total_wall_s"] = round(time.perf_counter() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
