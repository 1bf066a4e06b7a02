"""Synthetic pairs per second, stage by stage: the MC pattern sampler, procedural backgrounds,
inject (every available backend), and the whole SynthPairs batch.

    python benchmarks/bench_synth.py [--patch 256] [--batch 64] [--reps 5] [--threads N]

Prints one row per stage: median wall ms per batch and patches (pairs) per second, and the same from
process CPU time (with --threads 1 on a shared machine, the CPU-time rate is the honest figure).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from mcgr._backends import backend_status
from mcgr.ops.inject import InjectParams, inject
from mcgr.synth.backgrounds import procedural_backgrounds
from mcgr.synth.dataset import SynthPairs
from mcgr.synth.patterns import sample_calcifications


def median_ms(fn, reps: int, warmup: int = 1) -> tuple[float, float]:
    """Median wall ms and median process CPU ms per call (on a shared box, CPU time with one
    thread approximates the unloaded wall time)."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    B, P = args.batch, args.patch
    g = torch.Generator().manual_seed(0)
    rows = []

    calcs = sample_calcifications(B, P, P, 0.07, g)
    per_patch = calcs.centres.shape[0] / B
    rows.append(("sampler", median_ms(lambda: sample_calcifications(B, P, P, 0.07, g), args.reps)))
    bg = procedural_backgrounds(B, P, P, g)
    rows.append(("backgrounds", median_ms(lambda: procedural_backgrounds(B, P, P, g), args.reps)))
    params = InjectParams(noise=0.01)
    for backend in ("reference", "cpu", "triton", "cuda"):
        ok, why = backend_status("inject", backend, torch.device("cpu"))
        if not ok:
            print(f"inject/{backend}: skipped ({why})")
            continue
        reps = max(1, args.reps // 2) if backend in ("reference", "triton") else args.reps
        rows.append((f"inject/{backend}", median_ms(lambda: inject(bg, calcs.prims, params, backend=backend), reps)))
    ds = SynthPairs(patch_size=P, batch_size=B, seed=0)
    k = iter(range(10**9))
    rows.append((f"SynthPairs (inject {ds.backend})", median_ms(lambda: ds.batch(next(k)), max(1, args.reps // 2))))

    print(f"batch {B} x {P}x{P}, {per_patch:.1f} calcifications ({calcs.prims.shape[0] / B:.1f} primitives) per patch, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'stage':<34}{'ms/batch':>12}{'patches/s':>12}{'cpu ms/batch':>14}{'patches/cpu-s':>15}")
    for name, (ms, cpu) in rows:
        print(f"{name:<34}{ms:>12.1f}{B / ms * 1e3:>12.0f}{cpu:>14.1f}{B / max(cpu, 1e-9) * 1e3:>15.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
