"""Hostile but ordinary inputs: how much a hot spot, a saturated marker or padded air move the Dice.

``python -m experiments.robust_inputs [--seeds 3] [--out F.json]``

Each phantom (regular contrast) (:func:`mcgr.synth.phantom.breast_phantom`, 1536 x 1152 px at 0.07 mm, seeds
2000 up: never a training or tuning seed) is written as a 16-bit MONOCHROME2 DICOM whose tissue spans
0..3000, then again with, one at a time:

* ``hot10``: a 2 x 2 px spot at 10x the tissue maximum inside the breast;
* ``marker``: a 3 x 2 mm burnt-in marker at 4095 (BitsStored 12: full white) on the air beside the breast;
* ``pad``: the outer quarter of the columns (air side) padded with 65535, without PixelPaddingValue;
* ``pad_tag``: the same with PixelPaddingValue 65535.

Every file goes through ``Pipeline.from_pretrained()(path, refine=False)`` (the shipped segmentor at its
operating threshold) and the mask is scored against the phantom's exact truth inside its breast
(pixel Dice); the table gives each variant's Dice and its change from the clean file.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "io"))


def _dice(mask: np.ndarray, truth: np.ndarray, region: np.ndarray) -> float:
    a, b = mask & region, truth & region
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / s if s else 1.0


def variants(img: np.ndarray, breast: np.ndarray) -> dict:
    """{name: (stored uint16 [H, W], extra DICOM tags, bits_stored)}."""
    base = np.round(np.clip(img, 0, 1) * 3000).astype(np.uint16)
    out = {"clean": (base, None, 16)}
    hot = base.astype(np.int64)
    ys, xs = np.nonzero(breast)
    k = len(ys) // 2
    y, x = int(ys[k]), int(xs[k])
    hot[y:y + 2, x:x + 2] = 10 * int(base.max())
    out["hot10"] = (np.minimum(hot, 65535).astype(np.uint16), None, 16)
    mk = base.copy()
    H, W = mk.shape
    mk[40:40 + 43, W - 120:W - 120 + 29] = 4095  # 3 x 2 mm at 0.07 mm, in the air (upper right)
    out["marker"] = (mk, None, 12)
    pad = base.copy()
    pad[:, W - W // 4:] = 65535
    out["pad"] = (pad, None, 16)
    out["pad_tag"] = (pad, {"PixelPaddingValue": 65535}, 16)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--tmp", default="/tmp/mcgr-robust-inputs")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from dicom_factory import write_dicom

    from mcgr.infer.pipeline import Pipeline
    from mcgr.synth.phantom import breast_phantom

    pipe = Pipeline.from_pretrained()
    tmp = Path(a.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in range(a.seeds):
        ph = breast_phantom(1536, 1152, seed=2000 + s)
        img, truth, breast = ph.image.numpy(), ph.truth.numpy() > 0, ph.breast.numpy().astype(bool)
        row = {"seed": 2000 + s}
        for name, (stored, extra, bits) in variants(img, breast).items():
            p = write_dicom(tmp / f"{s}-{name}.dcm", stored, bits_stored=bits, pixel_spacing=0.07, laterality="L",
                            view="CC", extra=extra)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = pipe(p, refine=False)
            row[name] = round(_dice(res.mask.numpy().astype(bool), truth, breast), 4)
            row[f"{name}_detections"] = len(res.detections)
        rows.append(row)
        print(json.dumps(row), flush=True)
    names = ["clean", "hot10", "marker", "pad", "pad_tag"]
    mean = {n: round(float(np.mean([r[n] for r in rows])), 4) for n in names}
    worst = {n: round(float(max(abs(r[n] - r["clean"]) for r in rows)), 4) for n in names[1:]}
    print("mean Dice:", mean)
    print("largest |Dice change| from clean:", worst)
    if a.out:
        Path(a.out).write_text(json.dumps({"rows": rows, "mean": mean, "worst_change": worst}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
