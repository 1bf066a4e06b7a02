"""Benchmark group_norm_silu (the U-Net block tail) against PyTorch's own ops, and the shipped
networks with and without it.

Op cases: the shipped segmentor's block tails at a batch of 4 tiles of 256 px (channels 16 / 32 /
64 at 256 / 128 / 64 / 32 px, groups 8), in bfloat16 channels-last where the CPU runs bf16
natively (float32 NCHW otherwise), without and with the residual. ``ref`` is what the U-Net runs
without the kernel: ``F.silu(F.group_norm(x) + residual)`` in the activations' dtype (three
passes that each allocate); ``cpu`` is the kernel in place, as the U-Net calls it. Bytes counted:
read x twice, write once, read the residual once.

Network rows (``--networks``, op ``unet_forward``): ms per 256 px tile of the shipped segmentor and
generator, batch 4, PyTorch's ops (``mcgr.ops.group_norm_silu.unfused``) against the fused blocks,
interleaved rounds, the median of each.

    python -m benchmarks.bench_group_norm_silu [--networks] [--rounds 5] [--json benchmarks/results/<machine>/group_norm_silu.json]
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import Case, append_json, arg_parser, machine_info, run, table  # noqa: E402
from mcgr.ops.group_norm_silu import group_norm_silu, unfused  # noqa: E402


def _bf16() -> bool:
    from mcgr.infer.runtime import cpu_has_bf16

    return cpu_has_bf16()


def ref_fn(x, residual, weight, bias):
    h = F.group_norm(x, 8, weight.to(x.dtype) if x.dtype != torch.float32 else weight,
                     bias.to(x.dtype) if x.dtype != torch.float32 else bias)
    if residual is not None:
        h = h + residual
    return F.silu(h)


def public_fn(x, residual, weight, bias, backend="auto"):
    return group_norm_silu(x, 8, weight, bias, residual=residual, inplace=True, backend=backend)


def make_cases(args) -> list[Case]:
    dtype = torch.bfloat16 if _bf16() else torch.float32
    esz = 2 if dtype == torch.bfloat16 else 4
    shapes = [(2, 16, 64, 64)] if args.quick else [(4, 16, 256, 256), (4, 32, 128, 128), (4, 64, 64, 64), (4, 64, 32, 32)]
    cases = []
    for shape in shapes:
        n = shape[0] * shape[1] * shape[2] * shape[3]
        for res in (False, True):
            def make(device, shape=shape, res=res):
                g = torch.Generator().manual_seed(0)
                x = torch.randn(shape, generator=g).to(dtype)
                r = torch.randn(shape, generator=g).to(dtype) if res else None
                if dtype == torch.bfloat16:
                    x = x.contiguous(memory_format=torch.channels_last)
                    r = r.contiguous(memory_format=torch.channels_last) if r is not None else None
                return (x, r, torch.randn(shape[1], generator=g), torch.randn(shape[1], generator=g))

            label = f"{'bf16 NHWC' if dtype == torch.bfloat16 else 'f32 NCHW'} {'x'.join(map(str, shape))}{' +res' if res else ''}"
            cases.append(Case(shape=label, make=make, bytes=esz * n * (4 if res else 3)))
    return cases


def network_rows(rounds: int, threads: int) -> list[dict]:
    from mcgr.models import load_pretrained
    from mcgr.models.segmentor import segment_logits

    bf16 = _bf16()
    rows = []
    for kind in ("seg", "rf"):
        net = load_pretrained(kind).eval()
        if bf16:
            net = net.to(memory_format=torch.channels_last)
        x = torch.rand(4, net.cfg.in_channels, 256, 256, generator=torch.Generator().manual_seed(0))
        if bf16:
            x = x.contiguous(memory_format=torch.channels_last)
        t = torch.full((4,), 0.5)
        call = (lambda: segment_logits(net, x)) if kind == "seg" else (lambda: net(x, t))  # noqa: E731
        times = {"pytorch": [], "fused": []}
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for side in times:  # warm-up: oneDNN primitives
                with unfused() if side == "pytorch" else _null():
                    call()
            for _ in range(rounds):
                for side in times:
                    with unfused() if side == "pytorch" else _null():
                        t0 = time.perf_counter()
                        call()
                        times[side].append((time.perf_counter() - t0) / 4 * 1e3)
        base = statistics.median(times["pytorch"])
        for side, v in times.items():
            ms = statistics.median(v)
            rows.append({"op": "unet_forward", "backend": side, "shape": f"{kind} 4x256x256 {'bf16' if bf16 else 'f32'} {threads}t",
                         "median_ms": round(ms, 2), "ratio_vs_ref": round(base / ms, 3), "gbps": None})
            print(f"unet_forward {kind:3s} {side:8s} {ms:8.2f} ms/tile  x{base / ms:.2f}")
    return rows


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main(argv=None) -> list[dict]:
    ap = arg_parser(__doc__.splitlines()[0])
    ap.add_argument("--networks", action="store_true", help="also time the shipped networks with and without the kernel")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    device = torch.device("cpu")
    machine = machine_info(device)
    print(f"machine: {machine['processor']} x{machine['cpu_count']}, copy {machine['copy_gbps']} GB/s, git {machine['git']}, "
          f"{a.threads} thread(s)")
    providers = [p for p in a.providers.split(",") if p in ("ref", "cpu")]
    rows = run("group_norm_silu", ref_fn, public_fn, make_cases(a), device, providers=providers,
               warmup=a.warmup, reps=a.reps, max_time_s=a.max_time)
    print()
    print(table(rows, machine["copy_gbps"]))
    if a.networks:
        rows += network_rows(a.rounds, a.threads)
    if a.json:
        append_json(a.json, machine, rows)
        print(f"\nwrote {a.json}")
    return rows


if __name__ == "__main__":
    main()
