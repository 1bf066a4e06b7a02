"""Benchmark of ``refine`` (TT-GPR logit refinement): every provider side by side.

Sizes: the full-field canvas (2560 x 3328, a mammogram at 0.07 mm) for 1 and 5 steps, and a batch of
64 tiles of 256 x 256. Bytes per case are the minimum a step must move: 5 float32 reads (z, q, z0,
y, zbar) and 1 write per pixel, times the steps, so a fused multi-step pass can exceed the copy
bandwidth. The kernel providers write into a preallocated ``out`` (as the TT-GPR loop does); the
reference allocates its result.

    python benchmarks/bench_refine.py [--providers ref,compiled,cpu] [--json benchmarks/results/<machine>/refine.json]
"""
from __future__ import annotations

import torch

from benchmarks._harness import Case, main
from mcgr.ops.refine import RefineParams, refine, refine_ref


def make_cases(args) -> list[Case]:
    p = RefineParams()
    sizes = [("canvas", (1, 2560, 3328), (1, 5)), ("tiles", (64, 256, 256), (1, 5))]
    if args.quick:
        sizes = [("canvas", (1, 256, 320), (1, 5)), ("tiles", (8, 64, 64), (1, 5))]
    cases = []
    for label, shape, step_list in sizes:
        for steps in step_list:
            def make(device, shape=shape):
                g = torch.Generator().manual_seed(0)
                z0 = torch.randn(shape, generator=g) * 3
                z = z0 + torch.randn(shape, generator=g)
                q = torch.rand(shape, generator=g)
                y = torch.rand(shape, generator=g)
                zbar = z + 0.1 * torch.randn(shape, generator=g)
                return tuple(t.to(device) for t in (z, q, z0, y, zbar)) + (p,)

            n = shape[0] * shape[1] * shape[2]
            cases.append(_OutCase(f"{label} {'x'.join(map(str, shape))} s{steps}", make, 24 * n * steps,
                                  kwargs={"steps": steps}, ref_kwargs={"steps": steps}))
    return cases


class _OutCase(Case):
    """A case whose kernel providers write into one preallocated ``out`` (made with the inputs)."""

    def __init__(self, shape, make, nbytes, kwargs, ref_kwargs):
        super().__init__(shape, self._make, nbytes, kwargs, ref_kwargs)
        self._inner = make

    def _make(self, device):
        args = self._inner(device)
        self.kwargs = dict(self.kwargs, out=torch.empty_like(args[0]))
        return args


if __name__ == "__main__":
    main("refine", refine_ref, refine, make_cases, description="refine: fused TT-GPR logit refinement steps")
