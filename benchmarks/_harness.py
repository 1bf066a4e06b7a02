"""Shared benchmark harness: every provider of an op side by side in one run.

Providers: ``ref`` (the eager PyTorch reference), ``compiled`` (torch.compile of the reference,
where it works), and the backends ``cpu``, ``triton``, ``cuda``. Each row reports the median time
over repeated runs after warm-up (device events on GPU), the ratio to ``ref`` and the achieved GB/s
for the minimum bytes the op must move, next to the machine's copy bandwidth measured in the same
run. ``--json PATH`` appends the run to a JSON file of schema
``{"machine": {...}, "rows": [{"op", "backend", "shape", "median_ms", "ratio_vs_ref", "gbps"}, ...]}``;
rows may carry more keys (``min_ms``; ``compile_s`` for ``compiled``; ``note`` when skipped or failed).
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
            min_time_s: float = 0.0, max_time_s: float | None = None, min_reps: int = 3) -> float:
    """Median wall time of ``fn`` in ms (CUDA events on GPU); see :func:`time_stats`."""
    return time_stats(fn, device, warmup, reps, min_time_s, max_time_s, min_reps)[0]


def time_stats(fn: Callable[[], object], device: torch.device, warmup: int = 2, reps: int = 10,
               min_time_s: float = 0.0, max_time_s: float | None = None, min_reps: int = 3) -> tuple[float, float]:
    """Median and minimum wall time of ``fn`` in ms (CUDA events on GPU). On a shared machine the
    minimum is the less contended figure; the median is what rows report.

    ``reps`` timed runs after ``warmup`` untimed ones, extended until ``min_time_s`` has passed;
    ``max_time_s`` caps a slow function's timing at ``min_reps`` runs (and its warm-up at one run)
    once that much time is spent, so a slow reference does not dominate a suite's wall time.
    """
    t_warm = time.perf_counter()
    for i in range(warmup):
        fn()
        if max_time_s is not None and i == 0 and time.perf_counter() - t_warm > max_time_s / 2:
            break
    sync(device)
    times = []
    t_start = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - t_start) < min_time_s:
        if max_time_s is not None and len(times) >= min_reps and time.perf_counter() - t_start > max_time_s:
            break
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
    return statistics.median(times), min(times)


def copy_gbps(device: torch.device, mib: int = 256) -> float:
    """Measured copy bandwidth (bytes read + written per second, GB/s) with torch ``copy_``."""
    n = mib * 2**20 // 4
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, warmup=2, reps=10)
    return 2 * n * 4 / (ms * 1e-3) / 1e9


def git_rev() -> str:
    """Short git revision of the source tree (``MCGR_GIT_REV`` where the tree was copied without .git)."""
    if os.environ.get("MCGR_GIT_REV"):
        return os.environ["MCGR_GIT_REV"]
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


class CompileBudget:
    """Seconds of ``torch.compile`` time a run may still spend; compiled rows are skipped, with a
    note, once it is used up (compilation on a small CPU can take minutes per shape)."""

    def __init__(self, seconds: float | None = None):
        self.left = float("inf") if seconds is None else float(seconds)

    def spend(self, seconds: float) -> None:
        self.left -= seconds


def _compiled(ref_fn: Callable, args: tuple, kwargs: dict, device: torch.device) -> tuple[Callable, float]:
    """``torch.compile(ref_fn)`` and the seconds its first call (the compilation) took."""
    compiled = torch.compile(ref_fn, dynamic=False)
    fn = lambda: compiled(*args, **kwargs)  # noqa: E731
    t0 = time.perf_counter()
    fn()
    sync(device)
    return fn, time.perf_counter() - t0


def run(op: str, ref_fn: Callable, public_fn: Callable, cases: Sequence[Case], device: torch.device,
        providers: Sequence[str] = PROVIDERS, warmup: int = 2, reps: int = 10, min_time_s: float = 0.0,
        log: Callable[[str], None] = print, max_time_s: float | None = None,
        compile_budget: CompileBudget | None = None) -> list[dict]:
    """Time every provider on every case; rows in the shared schema (plus a ``note`` when skipped or
    failed, and ``compile_s`` for ``compiled``: the compilation time, excluded from the median)."""
    from mcgr._backends import backend_status

    budget = compile_budget or CompileBudget()
    compile_off = None  # why compiled is skipped for the remaining cases of this op
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
                    if compile_off is None and budget.left <= 0:
                        compile_off = "skipped: the run's torch.compile budget is spent"
                    if compile_off:
                        row["note"] = compile_off
                        rows.append(row)
                        log(f"{op:8s} {prov:9s} {case.shape:22s} {compile_off}")
                        continue
                    try:
                        fn, secs = _compiled(ref_fn, args, case.ref_kwargs, device)
                    except Exception as exc:
                        compile_off = f"skipped: torch.compile failed on {case.shape}"
                        raise exc
                    budget.spend(secs)
                    row["compile_s"] = round(secs, 2)
                else:
                    ok, why = backend_status(op, prov, device)
                    if not ok:
                        row["note"] = why
                        rows.append(row)
                        log(f"{op:8s} {prov:9s} {case.shape:22s} skipped: {why}")
                        continue
                    fn = lambda p=prov: public_fn(*args, backend=p, **case.kwargs)  # noqa: E731
                ms, min_ms = time_stats(fn, device, warmup=warmup, reps=reps, min_time_s=min_time_s, max_time_s=max_time_s)
            except Exception as exc:  # a provider that fails is reported, the run goes on
                row["note"] = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
                rows.append(row)
                log(f"{op:8s} {prov:9s} {case.shape:22s} failed: {row['note']}")
                continue
            if prov == "ref":
                ref_ms = ms
            row["median_ms"] = round(ms, 4)
            row["min_ms"] = round(min_ms, 4)
            row["ratio_vs_ref"] = round(ref_ms / ms, 3) if ref_ms else None
            row["gbps"] = round(case.bytes / (ms * 1e-3) / 1e9, 3) if case.bytes else None
            rows.append(row)
            extra = f"  (compile {row['compile_s']:.1f} s)" if "compile_s" in row else ""
            gb = f"{row['gbps']:8.2f} GB/s" if row["gbps"] is not None else ""
            log(f"{op:8s} {prov:9s} {case.shape:22s} {ms:10.3f} ms  x{row['ratio_vs_ref'] or float('nan'):7.2f} vs ref  {gb}{extra}")
    return rows


def table(rows: Sequence[dict], copy: float | None = None) -> str:
    """Markdown table of rows (with % of the copy bandwidth when given; a skipped or failed row
    carries its note)."""
    head = "| op | backend | shape | median ms | x vs ref | GB/s |" + (" % copy |" if copy else "") + " note |"
    sep = "|---|---|---|---:|---:|---:|" + ("---:|" if copy else "") + "---|"
    out = [head, sep]
    for r in rows:
        note = str(r.get("note", "")).replace("|", "/")
        if r.get("compile_s") is not None:
            note = (note + "; " if note else "") + f"compile {r['compile_s']:.1f} s (excluded)"
        if r["median_ms"] is None:
            cells = [r["op"], r["backend"], r["shape"], "-", "-", "-"] + (["-"] if copy else [])
        else:
            gb = r.get("gbps")
            cells = [r["op"], r["backend"], r["shape"], f"{r['median_ms']:.3f}",
                     f"{r['ratio_vs_ref']:.2f}" if r.get("ratio_vs_ref") is not None else "-", f"{gb:.2f}" if gb is not None else "-"]
            if copy:
                cells.append(f"{100 * gb / copy:.0f}%" if gb is not None else "-")
        out.append("| " + " | ".join(cells + [note]) + " |")
    return "\n".join(out)


def machine_slug(machine: dict) -> str:
    """Folder name of a machine under ``benchmarks/results/``: the GPU (``h100``) on a CUDA run, else
    ``cpu-<cores>core-<vendor>`` (``cpu-2core-epyc``)."""
    gpu = machine.get("gpu")
    if gpu:
        for tag in ("H200", "H100", "A100", "L40S", "L4", "A10G", "V100", "T4"):
            if tag.lower() in gpu.lower():
                return tag.lower()
        return "".join(c if c.isalnum() else "-" for c in gpu.lower()).strip("-")
    proc = str(machine.get("processor", "")).lower()
    vendor = next((v for v in ("epyc", "xeon", "ryzen", "core", "arm", "graviton") if v in proc), "cpu")
    return f"cpu-{machine.get('cpu_count')}core-{vendor}"


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
    ap.add_argument("--max-time", type=float, default=None, metavar="S",
                    help="cap each provider's timing at about S seconds (at least 3 runs)")
    return ap


def main(op: str, ref_fn: Callable, public_fn: Callable, make_cases: Callable[[argparse.Namespace], list[Case]],
         argv: Sequence[str] | None = None, description: str = "") -> list[dict]:
    args = arg_parser(description or f"benchmark {op}").parse_args(argv)
    device = torch.device(args.device)
    machine = machine_info(device)
    print(f"machine: {machine['processor']} x{machine['cpu_count']} ({machine['device']}), copy {machine['copy_gbps']} GB/s, git {machine['git']}")
    rows = run(op, ref_fn, public_fn, make_cases(args), device, providers=args.providers.split(","),
               warmup=args.warmup, reps=args.reps, max_time_s=args.max_time)
    print()
    print(table(rows, machine["copy_gbps"]))
    if args.json:
        append_json(args.json, machine, rows)
        print(f"\nwrote {args.json}")
    return rows
