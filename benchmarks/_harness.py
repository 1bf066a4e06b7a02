"""Shared benchmark harness: every provider of an op side by side in one run.

Providers: ``ref`` (the eager PyTorch reference), ``compiled`` (torch.compile of the reference,
where it works), and the backends ``cpu``, ``triton``, ``cuda``. Each row reports the median time
over repeated runs after warm-up (device events on GPU), the ratio to ``ref`` and the achieved GB/s
for the minimum bytes the op must move, next to the machine's copy bandwidth measured in the same
run. ``--json PATH`` appends the run to a JSON file of schema
``{"machine": {...}, "rows": [{"op", "backend", "shape", "median_ms", "ratio_vs_ref", "gbps"}, ...]}``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

PROVIDERS = ("ref", "compiled", "cpu", "triton", "cuda")


@dataclass
class Case:
    """One input size: ``make(device)`` returns the positional args of the op (and of its reference)."""

    shape: str
    make: Callable[[torch.device], tuple]
    bytes: int
    kwargs: dict = field(default_factory=dict)
    ref_kwargs: dict = field(default_factory=dict)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int = 2, reps: int = 10,
            min_time_s: float = 0.0) -> float:
    """Median wall time of ``fn`` in ms (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    t_start = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - t_start) < min_time_s:
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 10 * max(reps, 1):
            break
    return statistics.median(times)


def copy_gbps(device: torch.device, mib: int = 256) -> float:
    """Measured copy bandwidth (bytes read + written per second, GB/s) with torch ``copy_``."""
    n = mib * 2**20 // 4
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, warmup=2, reps=10)
    return 2 * n * 4 / (ms * 1e-3) / 1e9


def git_rev() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       stderr=subprocess.DEVNULL, cwd=Path(__file__).parent).strip()
    except Exception:
        return "unknown"


def machine_info(device: torch.device) -> dict:
    info = {
        "host": platform.node(),
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "git": git_rev(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    from mcgr._backends import build_info

    info["mcgr_build"] = build_info()
    info["copy_gbps"] = round(copy_gbps(device), 2)
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def run(op: str, ref_fn: Callable, public_fn: Callable, cases: Sequence[Case], device: torch.device,
        providers: Sequence[str] = PROVIDERS, warmup: int = 2, reps: int = 10, min_time_s: float = 0.0,
        log: Callable[[str], None] = print) -> list[dict]:
    """Time every provider on every case; rows in the shared schema (plus a ``note`` when skipped)."""
    from mcgr._backends import backend_status

    rows = []
    for case in cases:
        args = case.make(device)
        ref_ms = None
        for prov in providers:
            row = {"op": op, "backend": prov, "shape": case.shape, "median_ms": None, "ratio_vs_ref": None, "gbps": None}
            try:
                if prov == "ref":
                    fn = lambda: ref_fn(*args, **case.ref_kwargs)  # noqa: E731
                elif prov == "compiled":
                    compiled = torch.compile(ref_fn, dynamic=False)
                    fn = lambda: compiled(*args, **case.ref_kwargs)  # noqa: E731
                else:
                    ok, why = backend_status(op, prov, device)
                    if not ok:
                        row["note"] = why
                        rows.append(row)
                        log(f"{op:8s} {prov:9s} {case.shape:22s} skipped: {why}")
                        continue
                    fn = lambda p=prov: public_fn(*args, backend=p, **case.kwargs)  # noqa: E731
                ms = time_ms(fn, device, warmup=warmup, reps=reps, min_time_s=min_time_s)
            except Exception as exc:  # a provider that fails is reported, the run goes on
                row["note"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                rows.append(row)
                log(f"{op:8s} {prov:9s} {case.shape:22s} failed: {row['note']}")
                continue
            if prov == "ref":
                ref_ms = ms
            row["median_ms"] = round(ms, 4)
            row["ratio_vs_ref"] = round(ref_ms / ms, 3) if ref_ms else None
            row["gbps"] = round(case.bytes / (ms * 1e-3) / 1e9, 3)
            rows.append(row)
            log(f"{op:8s} {prov:9s} {case.shape:22s} {ms:10.3f} ms  x{row['ratio_vs_ref'] or float('nan'):7.2f} vs ref  {row['gbps']:8.2f} GB/s")
    return rows


def table(rows: Sequence[dict], copy: float | None = None) -> str:
    """Markdown table of rows (with % of the copy bandwidth when given)."""
    head = "| op | backend | shape | median ms | x vs ref | GB/s |" + (" % copy |" if copy else "")
    sep = "|---|---|---|---:|---:|---:|" + ("---:|" if copy else "")
    out = [head, sep]
    for r in rows:
        if r["median_ms"] is None:
            cells = [r["op"], r["backend"], r["shape"], "-", "-", "-"] + (["-"] if copy else [])
            out.append("| " + " | ".join(cells) + f" |  {r.get('note', '')}")
            continue
        cells = [r["op"], r["backend"], r["shape"], f"{r['median_ms']:.3f}",
                 f"{r['ratio_vs_ref']:.2f}" if r["ratio_vs_ref"] else "-", f"{r['gbps']:.2f}"]
        if copy:
            cells.append(f"{100 * r['gbps'] / copy:.0f}%")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def append_json(path: str | os.PathLike, machine: dict, rows: Sequence[dict]) -> None:
    """Write ``{"machine", "rows"}``; an existing file of the same machine and revision gets the rows appended."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    doc = {"machine": machine, "rows": list(rows)}
    if p.exists():
        try:
            old = json.loads(p.read_text())
            if old.get("machine", {}).get("git") == machine.get("git") and old.get("machine", {}).get("host") == machine.get("host"):
                keys = {(r["op"], r["backend"], r["shape"]) for r in rows}
                doc["rows"] = [r for r in old.get("rows", []) if (r["op"], r["backend"], r["shape"]) not in keys] + list(rows)
        except (json.JSONDecodeError, KeyError):
            pass
    p.write_text(json.dumps(doc, indent=1) + "\n")


def arg_parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--providers", default=",".join(PROVIDERS), help="comma-separated subset of " + ",".join(PROVIDERS))
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", metavar="PATH", help="append the results to this JSON file")
    ap.add_argument("--quick", action="store_true", help="small sizes only (smoke test)")
    return ap


def main(op: str, ref_fn: Callable, public_fn: Callable, make_cases: Callable[[argparse.Namespace], list[Case]],
         argv: Sequence[str] | None = None, description: str = "") -> list[dict]:
    args = arg_parser(description or f"benchmark {op}").parse_args(argv)
    device = torch.device(args.device)
    machine = machine_info(device)
    print(f"machine: {machine['processor']} x{machine['cpu_count']} ({machine['device']}), copy {machine['copy_gbps']} GB/s, git {machine['git']}")
    rows = run(op, ref_fn, public_fn, make_cases(args), device, providers=args.providers.split(","),
               warmup=args.warmup, reps=args.reps)
    print()
    print(table(rows, machine["copy_gbps"]))
    if args.json:
        append_json(args.json, machine, rows)
        print(f"\nwrote {args.json}")
    return rows
