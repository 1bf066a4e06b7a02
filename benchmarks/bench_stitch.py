"""Benchmark stitch (tiles to canvas, Gaussian-weighted), every provider side by side.

Sizes: a full-field canvas 2560 x 3328 with 256-px tiles at 0.25 overlap (stride 192), once with
the full 13 x 17 grid and once with the breast-only subset (tiles meeting a synthetic half-ellipse
breast on the chest-wall side, about 60% of them); and a training/TT-GPR-size batch of 8 canvases of
768 x 768 (4 x 4 tiles each). Minimum bytes: the tiles read once plus the canvas written once. The
backends write into a reused ``out`` canvas, as TT-GPR's zbar does at every iteration (a fresh
full-field canvas costs page faults); the reference is timed as written (it allocates).

    python benchmarks/bench_stitch.py [--device cuda] [--providers ref,cpu] [--json benchmarks/results/<machine>/stitch.json]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: find `benchmarks` without shadowing an installed mcgr
    sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import Case, main  # noqa: E402
from mcgr.ops._tiling import gaussian_weights, tile_grid  # noqa: E402
from mcgr.ops.stitch import stitch, stitch_ref  # noqa: E402


def breast_mask(H: int, W: int) -> np.ndarray:
    """A half-ellipse breast against the left (chest-wall) border, as in the canonical orientation."""
    yy, xx = np.mgrid[:H, :W]
    return ((yy - H / 2) / (0.47 * H)) ** 2 + (xx / (0.62 * W)) ** 2 < 1.0


def stitch_case(label: str, H: int, W: int, T: int, batch: int | None, breast_only: bool) -> Case:
    grid = tile_grid((H, W), tile=T, overlap=0.25, breast_mask=breast_mask(H, W) if breast_only else None)
    B = batch or 1
    P = grid.num_tiles
    kwargs: dict = {}

    def make(device):
        gen = torch.Generator().manual_seed(0)
        shape = (P, T, T) if batch is None else (B, P, T, T)
        tiles = torch.randn(*shape, generator=gen).to(device)
        kwargs["out"] = torch.empty((H, W) if batch is None else (B, H, W), device=device)
        return tiles, grid.to(device), gaussian_weights(T, device=device), (H, W)

    nbytes = 4 * (B * P * T * T + B * H * W)
    full = tile_grid((H, W), tile=T, overlap=0.25).num_tiles
    shape = f"{label} {P}/{full}x{T}" + (f" B{B}" if batch else "")
    return Case(shape=shape, make=make, bytes=nbytes, kwargs=kwargs)


def make_cases(args) -> list[Case]:
    if args.quick:
        return [stitch_case("640x832", 640, 832, 64, None, True)]
    return [
        stitch_case("2560x3328", 2560, 3328, 256, None, False),
        stitch_case("2560x3328 breast", 2560, 3328, 256, None, True),
        stitch_case("768x768", 768, 768, 256, 8, False),
    ]


if __name__ == "__main__":
    main("stitch", stitch_ref, stitch, make_cases, description=__doc__)
