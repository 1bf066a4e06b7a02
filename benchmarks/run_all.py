"""Every op benchmark in one run: providers side by side, the machine's copy bandwidth, one result folder.

    python -m benchmarks.run_all [--device cpu|cuda] [--quick] [--out benchmarks/results/<machine>]

Runs inject, stitch, rf_step and refine (the cases of ``benchmarks/bench_<op>.py``: a training batch
of patches and the 2560 x 3328 full-field canvas) on the providers ``ref`` (eager PyTorch reference),
``compiled`` (``torch.compile`` of the reference; its compile time is excluded from the median,
recorded as ``compile_s``, and capped by ``--compile-budget``), ``cpu``, ``triton`` and ``cuda``;
an absent or failing provider is a row with a note. Writes into ``--out`` (default
``benchmarks/results/<machine>``, see ``_harness.machine_slug``):

- ``<date>-<rev>.json``: ``{"machine": {... "copy_gbps" ...}, "rows": [...]}``, rows appended when the
  file exists for the same host and revision;
- ``latest.md``: the Markdown table with the percentage of the copy bandwidth;
- ``latest.png``: ratio to the reference per op (``benchmarks/plot.py``);
  ``--quick`` writes ``latest-quick.md`` / ``.png`` and a ``-quick.json`` instead.

Run it from the repository root with mcgr installed (``pip install -e .`` or ``tools/dev_build.sh``),
so that ``mcgr._C`` is importable. ``--pipeline`` adds ``benchmarks/bench_pipeline.py``'s rows.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import PROVIDERS, CompileBudget, append_json, machine_info, machine_slug, run, table  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

# op -> (module, reference attribute, public attribute)
OPS = {
    "inject": ("benchmarks.bench_inject", "inject_ref", "public_fn"),
    "stitch": ("benchmarks.bench_stitch", "stitch_ref", "stitch"),
    "rf_step": ("benchmarks.bench_rf_step", "ref_fn", "public_fn"),
    "refine": ("benchmarks.bench_refine", "refine_ref", "refine"),
}


def op_cases(op: str, quick: bool, canvas: bool = True) -> tuple:
    """``(ref_fn, public_fn, cases)`` of ``op`` from its ``bench_<op>.py``."""
    mod_name, ref_name, pub_name = OPS[op]
    mod = importlib.import_module(mod_name)
    args = argparse.Namespace(quick=quick, canvas=canvas and not quick)
    return getattr(mod, ref_name), getattr(mod, pub_name), mod.make_cases(args)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke test in well under a minute)")
    ap.add_argument("--out", metavar="DIR", help="result folder (default benchmarks/results/<machine>)")
    ap.add_argument("--ops", default=",".join(OPS), help="comma-separated subset of " + ",".join(OPS))
    ap.add_argument("--providers", default=",".join(PROVIDERS), help="comma-separated subset of " + ",".join(PROVIDERS))
    ap.add_argument("--reps", type=int, default=None, help="timed runs per provider (default 10 on CPU, 20 on GPU)")
    ap.add_argument("--max-time", type=float, default=None, metavar="S",
                    help="cap one provider's timing at about S s, at least 3 runs (default 4 on CPU, none on GPU)")
    ap.add_argument("--compile-budget", type=float, default=None, metavar="S",
                    help="seconds of torch.compile time for the whole run; later compiled rows are skipped with "
                         "a note (default 240 on CPU, 120 on GPU)")
    ap.add_argument("--no-canvas-inject", action="store_true", help="leave out inject's full-field canvas case")
    ap.add_argument("--pipeline", action="store_true", help="also run benchmarks/bench_pipeline.py (minutes on CPU)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("run_all: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    gpu = device.type == "cuda"
    reps = args.reps or (20 if gpu else 10)
    max_time = args.max_time if args.max_time is not None else (None if gpu else 4.0)
    budget = CompileBudget(args.compile_budget if args.compile_budget is not None else (120.0 if gpu else 240.0))
    providers = [p for p in args.providers.split(",") if p]
    bad = sorted(set(providers) - set(PROVIDERS))
    if bad:
        print(f"run_all: unknown providers {bad}; known: {', '.join(PROVIDERS)}", file=sys.stderr)
        return 2
    ops = [o for o in args.ops.split(",") if o]
    if sorted(set(ops) - set(OPS)):
        print(f"run_all: unknown ops {sorted(set(ops) - set(OPS))}; known: {', '.join(OPS)}", file=sys.stderr)
        return 2

    t_run = time.perf_counter()
    machine = machine_info(device)
    out = Path(args.out) if args.out else RESULTS / machine_slug(machine)
    name = time.strftime("%Y%m%d") + f"-{machine['git']}" + ("-quick" if args.quick else "") + ".json"
    print(f"machine: {machine['processor']} x{machine['cpu_count']} ({machine.get('gpu') or machine['device']}), "
          f"torch threads {machine['torch_threads']}, copy {machine['copy_gbps']} GB/s, git {machine['git']}")
    if os.getloadavg()[0] > (os.cpu_count() or 1) * 0.75 and not gpu:
        print(f"note: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: timings are contended")
    machine["load_avg"] = round(os.getloadavg()[0], 2)
    rows: list[dict] = []
    for op in ops:
        t_op = time.perf_counter()
        ref_fn, public_fn, cases = op_cases(op, args.quick, canvas=not args.no_canvas_inject)
        rows += run(op, ref_fn, public_fn, cases, device, providers=providers, reps=reps, max_time_s=max_time,
                    compile_budget=budget)
        print(f"-- {op}: {time.perf_counter() - t_op:.0f} s")
        append_json(out / name, machine, rows)  # a run stopped part-way keeps what it measured
    if args.pipeline:
        from benchmarks import bench_pipeline

        rows += bench_pipeline.run_benchmark(device, quick=args.quick)
        append_json(out / name, machine, rows)
    machine["wall_s"] = round(time.perf_counter() - t_run, 1)
    append_json(out / name, machine, rows)
    md = [f"# {machine_slug(machine)}: {name}", "",
          f"{machine['processor']} x{machine['cpu_count']} ({machine.get('gpu') or 'CPU'}), torch {machine['torch']} "
          f"({machine['torch_threads']} threads), git {machine['git']}, {machine['time']}; "
          f"copy bandwidth measured in this run: **{machine['copy_gbps']} GB/s**; load average at start "
          f"{machine['load_avg']}; suite wall time {machine['wall_s']} s.", "",
          "`x vs ref`: reference time / this time. `GB/s`: the minimum bytes the op must move / time. "
          "`% copy`: GB/s as a share of the copy bandwidth (a fused multi-step op may exceed 100%).", "",
          table(rows, machine["copy_gbps"]), ""]
    latest = "latest-quick" if args.quick else "latest"
    (out / f"{latest}.md").write_text("\n".join(md))
    try:
        from benchmarks.plot import plot_ratios

        plot_ratios(rows, out / f"{latest}.png", title=f"{machine_slug(machine)} {name[:-5]}")
    except ImportError as exc:
        print(f"no chart: {exc}")
    print()
    print(table(rows, machine["copy_gbps"]))
    print(f"\nwrote {out / name}, {out / latest}.md, {out / latest}.png in {machine['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
