"""What the segmentor may grow to within the full-field budget: forward time per 256 px tile.

    python -m experiments.capacity [--threads 1]

U-Nets of several widths and depths (random weights: time does not depend on them), batch 4 tiles,
bf16 autocast + channels-last where the CPU runs bf16 natively (as the pipeline does), median of
10 calls, side by side in one run; the ratio to the shipped architecture is what carries over to
the full-field time (network share of a 3328 x 2560 base run, docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from mcgr.infer.pipeline import cpu_has_bf16
from mcgr.models.unet import UNet, UNetConfig

SHAPES = [(16, 3), (24, 3), (16, 4), (32, 3)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    bf16 = cpu_has_bf16()
    x = torch.rand(4, 1, 256, 256).to(memory_format=torch.channels_last)
    rows = []
    for width, depth in SHAPES:
        m = UNet(UNetConfig(in_channels=1, width=width, depth=depth, groups=8, norm="group")).eval()
        m = m.to(memory_format=torch.channels_last)
        ts = []
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for i in range(12):
                t = time.perf_counter()
                m(x)
                if i >= 2:
                    ts.append(time.perf_counter() - t)
        ts.sort()
        rows.append({"width": width, "depth": depth, "params": sum(p.numel() for p in m.parameters()),
                     "ms_per_tile": round(1000 * ts[len(ts) // 2] / 4, 2)})
    base = rows[0]["ms_per_tile"]
    for r in rows:
        r["x_shipped"] = round(r["ms_per_tile"] / base, 2)
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
