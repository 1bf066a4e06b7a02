"""`mcgr train seg|rf --config PRESET_OR_FILE [--out DIR] [--resume] [--device cpu|cuda] [--steps N]`."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=("seg", "rf"), help="seg: the segmentor; rf: the seed-conditioned RF generator")
    p.add_argument("--config", default="default",
                   help="a preset name (tiny, default) or a YAML file (may say `preset: NAME` and override keys)")
    p.add_argument("--out", default=None, help="output directory (default runs/<kind>-<config>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (bf16 autocast on CUDA)")
    p.add_argument("--steps", type=int, default=None, help="override optim.steps (the schedule follows it)")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop (with a checkpoint) once this many steps are done; --resume continues")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (overrides the config's `threads`)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mcgr.train.config import ConfigError, load_config
    from mcgr.train.trainer import train

    try:
        cfg = load_config(args.kind, args.config)
    except ConfigError as e:
        print(f"mcgr train: {e}", file=sys.stderr)
        return 2
    if args.steps is not None:
        if args.steps < 1:
            print("mcgr train: --steps must be >= 1", file=sys.stderr)
            return 2
        cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, steps=args.steps))
    if args.threads is not None:
        cfg = dataclasses.replace(cfg, threads=args.threads)
    out = Path(args.out or f"runs/{args.kind}-{Path(str(args.config)).stem}")
    try:
        summary = train(cfg, out, resume=args.resume, device=args.device, stop_after=args.stop_after,
                        progress=False if args.no_progress else None)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"mcgr train: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(out), **summary}))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mcgr train", description=__doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
