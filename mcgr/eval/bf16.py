"""The segmentor in bf16 against float32 on the held-out synthetic validation set.

    python -m mcgr.eval.bf16 [--weights DIR] [--n 64] [--patch-size 256] [--val-seed 12345] [--threads N]

The pipeline runs the segmentor under bf16 autocast with channels-last weights on CUDA and on CPUs
with native bf16 (:func:`mcgr.infer.pipeline.cpu_has_bf16`). This measures what that costs: pooled
pixel Dice at p >= 0.5 against the exact synthetic masks (the model card's figure, the same
validation set: ``mcgr.synth.dataset.validation_set``), once in float32 NCHW and once the way the
pipeline runs it, and the mean / max absolute difference of the two probability maps. Prints one
JSON object; ``dice_gap`` = |Dice bf16 - Dice float32|.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import torch

from mcgr.models.segmentor import segment_logits


def pooled_dice(prob: torch.Tensor, mask: torch.Tensor, threshold: float = 0.5) -> float:
    """``2 |P & M| / (|P| + |M|)`` over the whole set, P = prob >= threshold (1.0 when both are empty)."""
    pred = prob >= threshold
    m = mask > 0.5
    denom = float(pred.sum() + m.sum())
    return 2.0 * float((pred & m).sum()) / denom if denom else 1.0


@torch.inference_mode()
def probabilities(model: torch.nn.Module, images: torch.Tensor, bf16: bool, chunk: int = 8) -> torch.Tensor:
    """sigmoid(f(images)) ``[B, 1, H, W]`` float32; ``bf16``: channels-last under bf16 autocast, as
    :class:`mcgr.infer.pipeline.Pipeline` runs it."""
    dev = next(model.parameters()).device
    if bf16:
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    out = []
    for i in range(0, images.shape[0], chunk):
        x = images[i:i + chunk].to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            out.append(torch.sigmoid(segment_logits(model, x).float()).cpu())
    return torch.cat(out)


def compare(model: torch.nn.Module, val: dict) -> dict:
    """Dice of float32 and of bf16 on ``val`` (``{"image", "mask"}`` ``[B, 1, H, W]``) and their gap."""
    p32 = probabilities(model, val["image"], bf16=False)
    p16 = probabilities(model, val["image"], bf16=True)
    d32, d16 = pooled_dice(p32, val["mask"]), pooled_dice(p16, val["mask"])
    diff = (p32 - p16).abs()
    return {"patches": int(p32.shape[0]), "patch_size": int(p32.shape[-1]), "dice_float32": d32, "dice_bf16": d16,
            "dice_gap": abs(d16 - d32), "prob_abs_diff_mean": float(diff.mean()), "prob_abs_diff_max": float(diff.max()),
            "pixels_flipped_at_0.5": int(((p32 >= 0.5) != (p16 >= 0.5)).sum())}


def main(argv=None) -> int:
    from mcgr.models import load_model, load_pretrained
    from mcgr.synth.dataset import validation_set

    p = argparse.ArgumentParser(prog="python -m mcgr.eval.bf16", description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=None, help="segmentor folder (default: the shipped weights)")
    p.add_argument("--n", type=int, default=64, help="validation patches (default 64, as the model card)")
    p.add_argument("--patch-size", type=int, default=256)
    p.add_argument("--val-seed", type=int, default=12345)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.n < 1 or a.patch_size < 8:
        print("mcgr.eval.bf16: --n must be >= 1 and --patch-size >= 8", file=sys.stderr)
        return 2
    if a.threads:
        torch.set_num_threads(a.threads)
    t = time.perf_counter()
    from pathlib import Path

    model = load_pretrained("seg", device=a.device) if a.weights is None else load_model(Path(a.weights), device=a.device, kind="seg")
    val = validation_set(a.n, patch_size=a.patch_size, seed=a.val_seed)
    res = compare(model.eval(), val)
    res.update(val_seed=a.val_seed, device=a.device, wall_s=round(time.perf_counter() - t, 1),
               weights=a.weights or "shipped")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
