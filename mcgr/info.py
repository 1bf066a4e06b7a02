"""``python -m mcgr.info [--json]``: every op x backend with available / why not, and the build."""
from __future__ import annotations

import argparse
import json
import platform
import sys

import torch

from mcgr import __version__
from mcgr._backends import BACKENDS, availability, build_info


def collect() -> dict:
    info = build_info()
    info.update(
        {
            "mcgr": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_cuda_available": torch.cuda.is_available(),
        }
    )
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return {"ops": availability(), "build": info}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mcgr.info", description=__doc__)
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    report = collect()
    if args.json:
        json.dump(report, sys.stdout, indent=2, sort_keys=True)
        print()
        return 0
    print("mcgr build:")
    for k, v in sorted(report["build"].items()):
        print(f"  {k:22s} {v}")
    print()
    width = max(len(op) for op in report["ops"])
    print(f"{'op':{width}s}  " + "  ".join(f"{b:9s}" for b in BACKENDS))
    for op, row in report["ops"].items():
        print(f"{op:{width}s}  " + "  ".join(f"{'yes' if row[b]['available'] else 'no':9s}" for b in BACKENDS))
    print()
    for op, row in report["ops"].items():
        for b in BACKENDS:
            if not row[b]["available"]:
                print(f"  {op}/{b}: {row[b]['reason']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
