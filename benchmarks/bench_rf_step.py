"""Benchmark rf_step: the noisy start, the Euler update and the Heun corrector, every provider.

Sizes: a TT-GPR batch of M = 4 projections of 64 tiles of 256 x 256 (``[256, 1, 256, 256]``) and a
full-field canvas 2560 x 3328 (``[1, 1, 2560, 3328]``). Bytes counted: start 8 per element (read y,
write x), Euler 12 (x, v, write), Heun 16 (x, v, v_prev, write). The backends write into a reused
``out`` buffer, as the sampler does; the reference is timed as written (it allocates its result).

    python benchmarks/bench_rf_step.py [--device cuda] [--providers ref,cpu] [--json benchmarks/results/<machine>/rf_step.json]
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: find `benchmarks` without shadowing an installed mcgr
    sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import Case, main  # noqa: E402
from mcgr.ops.rf_step import rf_start, rf_start_ref, rf_step, rf_step_ref  # noqa: E402

BYTES_PER_ELEMENT = {"start": 8, "euler": 12, "heun": 16}
T0, DT, SEED = 0.5, 0.125, 1234


def ref_fn(variant, x, v, w, out):
    if variant == "start":
        return rf_start_ref(x, T0, SEED)
    if variant == "euler":
        return rf_step_ref(x, v, DT)
    return rf_step_ref(x, v, DT, "heun", w)


def public_fn(variant, x, v, w, out, backend="auto"):
    if variant == "start":
        return rf_start(x, T0, SEED, out=out, backend=backend)
    if variant == "euler":
        return rf_step(x, v, DT, out=out, backend=backend)
    return rf_step(x, v, DT, method="heun", v_prev=w, out=out, backend=backend)


def make_cases(args) -> list[Case]:
    shapes = [(4, 1, 64, 64), (1, 1, 320, 416)] if args.quick else [(256, 1, 256, 256), (1, 1, 2560, 3328)]
    cases = []
    for shape in shapes:
        n = 1
        for s in shape:
            n *= s
        for variant in ("start", "euler", "heun"):
            def make(device, shape=shape, variant=variant):
                g = torch.Generator().manual_seed(0)
                ts = [torch.randn(shape, generator=g).to(device) for _ in range(3)]
                return (variant, *ts, torch.empty(shape, device=device))

            cases.append(Case(shape=f"{variant} {'x'.join(map(str, shape))}", make=make,
                              bytes=BYTES_PER_ELEMENT[variant] * n))
    return cases


if __name__ == "__main__":
    main("rf_step", ref_fn, public_fn, make_cases, description=__doc__.splitlines()[0])
