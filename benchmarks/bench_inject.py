"""Benchmark inject: the fused image formation (docs/design.md, method M2) on every provider.

Sizes: a training batch of 64 patches of 256 x 256 with about 20 calcifications each (the pattern
sampler's defaults, fixed seed), with noise off and on; ``--canvas`` adds a full-field canvas
2560 x 3328 with 8 clusters. Bytes counted: 9 per pixel (read the background, write the float image
and the bool mask). ``torch.compile`` of the reference is left out by default (data-dependent
shapes in the rasteriser); name it in ``--providers`` to try it.

    python benchmarks/bench_inject.py [--device cuda] [--providers ref,cpu] [--canvas] [--json benchmarks/results/<machine>/inject.json]
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: find `benchmarks` without shadowing an installed mcgr
    sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import Case, main  # noqa: E402
from mcgr.ops.inject import InjectParams, inject, inject_ref  # noqa: E402

BYTES_PER_PIXEL = 9
DEFAULT_PROVIDERS = "ref,cpu,triton,cuda"


def sample_primitives(n: int, H: int, W: int, g: torch.Generator, clusters=(0, 2), isolated=(0, 4)) -> torch.Tensor:
    """Primitives [N, 8] of about 20 calcifications per patch, from the pattern sampler when present."""
    try:
        from mcgr.synth.patterns import sample_calcifications
    except ImportError:
        sample_calcifications = None
    if sample_calcifications is not None:
        return sample_calcifications(n, H, W, generator=g, clusters=clusters, isolated=isolated).prims
    k = 20 * n
    c = torch.zeros(k, 8)
    c[:, 0] = torch.arange(k) // 20
    c[:, 1] = torch.rand(k, generator=g) * H
    c[:, 2] = torch.rand(k, generator=g) * W
    c[:, 3:5] = 0.7 + 4.3 * torch.rand(k, 2, generator=g)
    c[:, 5] = torch.rand(k, generator=g) * 3.14159
    c[:, 6] = 0.1 + 0.5 * torch.rand(k, generator=g)
    c[:, 7] = (torch.rand(k, generator=g) < 0.3).float()
    return c


def make_cases(args) -> list[Case]:
    shapes = [(8, 128, 128)] if args.quick else [(64, 256, 256)]
    if getattr(args, "canvas", False):
        shapes.append((1, 2560, 3328))
    cases = []
    for B, H, W in shapes:
        canvas = B == 1
        for noise in (0.0, 0.02):
            def make(device, B=B, H=H, W=W, canvas=canvas):
                g = torch.Generator().manual_seed(2024)
                bg = (0.2 + 0.6 * torch.rand(B, H, W, generator=g)).to(device)
                prims = sample_primitives(B, H, W, g, clusters=(8, 8) if canvas else (0, 2),
                                          isolated=(20, 20) if canvas else (0, 4))
                return bg, prims.to(device)

            params = InjectParams(noise=noise, seed=7)
            cases.append(Case(shape=f"{B}x{H}x{W} noise={noise}", make=make, bytes=BYTES_PER_PIXEL * B * H * W,
                              kwargs={"params": params}, ref_kwargs={"params": params}))
    return cases


def public_fn(background, calcs, params=None, backend="auto"):
    return inject(background, calcs, params, backend=backend)


if __name__ == "__main__":
    argv = sys.argv[1:]
    canvas = "--canvas" in argv
    argv = [a for a in argv if a != "--canvas"]
    if not any(a.startswith("--providers") for a in argv):
        argv += ["--providers", DEFAULT_PROVIDERS]

    def cases(args):
        args.canvas = canvas
        return make_cases(args)

    rows = main("inject", inject_ref, public_fn, cases, argv=argv, description=__doc__)
    print()
    for r in rows:
        if r["median_ms"] is not None:
            n = int(r["shape"].split("x")[0])
            print(f"{r['backend']:8s} {r['shape']:28s} {n / (r['median_ms'] * 1e-3):10.0f} patches/s")
