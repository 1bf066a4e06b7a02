"""The ``mcgr`` command (also ``python -m mcgr``).

Each subcommand is one small function that adds its parser and names its handler; handlers import
what they need when they run, so ``mcgr --help`` stays fast. To add a subcommand, write a
``@subcommand`` function like the ones below.

Errors a user can fix (bad arguments, a non-empty output folder, unreadable input) print one line
``mcgr <command>: error: ...`` and exit non-zero, without a traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from mcgr._arguments import (CLIError, argument_type, fraction, nonnegative_float, nonnegative_int,  # noqa: F401
                             positive_float, positive_int)

_SUBCOMMANDS: list[Callable] = []


def subcommand(add: Callable) -> Callable:
    """Register ``add(subparsers)``, which adds one subcommand and sets ``handler=fn(args) -> int``."""
    _SUBCOMMANDS.append(add)
    return add


@subcommand
def _add_synth(sub) -> None:
    p = sub.add_parser(
        "synth",
        help="write synthetic image/mask pairs (compressed .npz shards and PNG previews)",
        description="Generate N synthetic image/mask pairs (docs/design.md, method M2) into DIR: shard_*.npz "
        "(image uint16 = intensity * 65535, mask uint8, centres), manifest.json, previews/*.png.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (must be empty unless --force)")
    p.add_argument("-n", type=positive_int, required=True, metavar="N", help="number of pairs")
    p.add_argument("--patch", type=positive_int, default=256, help="patch side in px (default 256)")
    p.add_argument("--seed", type=int, default=0, help="stream seed (default 0)")
    p.add_argument("--shard-size", type=positive_int, default=256, help="pairs per shard (default 256)")
    p.add_argument("--spacing", type=positive_float, default=0.07, help="pixel size in mm (default 0.07)")
    p.add_argument("--previews", type=nonnegative_int, default=8, help="PNG previews to write (default 8)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="pairs generated per batch (part of the stream's identity; default 32)")
    p.add_argument("--mc-free-fraction", type=fraction, default=0.1, help="share of pairs with no calcification (default 0.1)")
    p.add_argument("--backgrounds", metavar="NPY", help="real MC-free patches, a float32 .npy [M, H, W] in [0, 1] (default: procedural texture)")
    p.add_argument("--save-background", action="store_true", help="also store each pair's MC-free background")
    p.add_argument("--backend", default="auto", help="inject backend: auto, reference, cpu, triton, cuda (default auto)")
    p.add_argument("--force", action="store_true", help="overwrite the shards and previews of a previous run in DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_synth)


def _synth(args) -> int:
    import numpy as np

    from mcgr.synth.shards import write_shards

    check_synth_memory(args)
    bgs = None
    if args.backgrounds:
        try:
            bgs = np.load(args.backgrounds, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CLIError(f"cannot read --backgrounds {args.backgrounds}: {exc}") from None
    man = write_shards(
        args.out,
        args.n,
        patch=args.patch,
        seed=args.seed,
        shard_size=args.shard_size,
        spacing_mm=args.spacing,
        previews=args.previews,
        batch_size=args.batch_size,
        force=args.force,
        progress=not args.quiet,
        save_background=args.save_background,
        backgrounds=bgs,
        mc_free_fraction=args.mc_free_fraction,
        backend=args.backend,
    )
    print(f"wrote {man['n']} pairs in {len(man['shards'])} shard(s) and {len(man['previews'])} preview(s) to {args.out}")
    return 0


# Peak memory of `mcgr synth` per pixel of a generation batch (the image formation's float32 layers):
# measured 2026-12-05 as 31 B/px at 32 x 512^2 and 25 B/px at 16 x 1024^2 (peak RSS, 1 thread); a
# shard's pairs are held until written (uint16 image, uint8 mask, optional uint16 background) and
# concatenated once more on writing.
SYNTH_BYTES_PER_BATCH_PX = 32
SYNTH_BYTES_PER_SHARD_PX = 2 * (2 + 1 + 2)


def check_synth_memory(args) -> None:
    """Refuse, with the memory they would need, patch / batch / shard sizes that would not fit."""
    from mcgr._memory import check_fits

    px = float(args.patch) ** 2
    need = (min(args.batch_size, args.n) * px * SYNTH_BYTES_PER_BATCH_PX
            + min(args.shard_size, args.n) * px * SYNTH_BYTES_PER_SHARD_PX)
    check_fits(need, f"--patch {args.patch} with --batch-size {args.batch_size} and --shard-size {args.shard_size}")


@subcommand
def _add_infer(sub) -> None:
    from mcgr.archive.cli import add_arguments

    p = sub.add_parser("infer", help="segment microcalcifications in mammograms (files, folders, globs, manifests)",
                       description="Full-field MC segmentation with TT-GPR; one result folder and one manifest.jsonl "
                                   "line per input; --resume continues a stopped run; --engine ray runs on a Ray cluster.")
    add_arguments(p)
    p.set_defaults(handler=_infer)


def _infer(args) -> int:
    from mcgr.archive.cli import run

    return run(args)


@subcommand
def _add_demo(sub) -> None:
    from mcgr.archive.cli import add_runtime_argument

    p = sub.add_parser("demo", help="segment a synthetic full-field mammogram with known calcifications",
                       description="Build a synthetic full-field phantom with known calcifications, run the base "
                       "segmentor with the shipped weights (as mcgr infer does), write the outputs and print its "
                       "scores; --refine runs TT-GPR beside it and prints both.")
    p.add_argument("--out", default="mcgr-demo", metavar="DIR", help="output folder (default ./mcgr-demo)")
    p.add_argument("--seed", type=int, default=0, help="phantom seed (default 0)")
    p.add_argument("--size", default="1536x1152", metavar="HxW", help="phantom size in px at 0.07 mm (default 1536x1152)")
    p.add_argument("--regular", action="store_true", help="calcifications at the training median contrast (default: fainter)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--backend", default="auto", help="kernel backend (default auto)")
    p.add_argument("--models", default=None, metavar="DIR", help="load seg/ and rf/ from DIR instead of the shipped weights ('teacher': the packaged width-16 segmentor)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="torch CPU threads (default: torch's; fewer than cores on a shared machine)")
    p.add_argument("--force", action="store_true", help="overwrite the phantom.* and demo.json files already in DIR")
    add_runtime_argument(p)
    p.add_argument("--refine", action="store_true",
                   help="also run TT-GPR and score it beside the base (on the default phantom its mask equals the "
                        "base's); the outputs written are then TT-GPR's")
    p.set_defaults(handler=_demo)


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise CLIError(f"--size must be HxW in px, e.g. 1536x1152, got {text!r}") from None
    if min(h, w) < 128:
        raise CLIError(f"--size must be at least 128x128, got {text!r}")
    return h, w


def _demo(args) -> int:
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError("--device cuda was asked for but torch sees no CUDA device")
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        raise CLIError(f"--device must be cpu or cuda, got {args.device!r}")
    from mcgr.archive.cli import check_runtime
    from mcgr.demo import run_demo

    runtime = check_runtime(args.runtime, args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    run_demo(args.out, seed=args.seed, size=_size(args.size), faint=not args.regular, device=args.device,
             backend=args.backend, models=args.models, force=args.force, refine=args.refine, runtime=runtime)
    return 0


ADAPT_EPILOG = """\
What to give: normal (MC-free) screening views of one site, as they come from its scanner: DICOM,
PNG, TIFF or NPY (--spacing for files without a pixel size), every view the site takes (CC and
MLO, left and right). Four views adapt (the shipped weights: the four views of one scanned-film
case); eight or more make the validation worth its name (one fold per image up to 8, then 8 folds).

A few real calcifications among them: a harvested window that holds a calcification-like spot
(a 0.5 mm top-hat 12 robust sigmas above the image's level, on two or more pixels) is not used,
and a mined false detection on such a spot is not taught as a negative; the card gives how many
windows the guard refused. Many calcifications (a diagnostic series) would still teach the
segmentor to ignore some: give normal views.

Time on a 2-core CPU with the defaults, four views: adaptation about 40-70 min, validation about
30-60 min more; --quick is a few minutes (tests, a first try; its models are not for use).
Every stage resumes where it stopped (--resume)."""


@subcommand
def _add_adapt(sub) -> None:
    p = sub.add_parser("adapt", help="fit both networks to a site from its MC-free mammograms, validate and calibrate",
                       description="Harvest, measure the site, mine, fine-tune the segmentor and the generator, "
                                   "validate leaving images out, calibrate the operating threshold, write the "
                                   "models and cards into --out (use them with mcgr infer --models OUT).",
                       epilog=ADAPT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="NEGATIVES", help="files, folders, globs or manifests of MC-free mammograms")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="the adapted model folder (seg/, rf/, work/)")
    p.add_argument("--spacing", type=positive_float, default=None, help="pixel size in mm of files that carry none")
    p.add_argument("--fp-per-image", type=positive_float, default=1.0,
                   help="false objects per image of the operating threshold (default 1)")
    p.add_argument("--init", default="start", help="start from: 'start' (procedural-only pair, default), 'shipped', "
                   "or a folder with seg/ and rf/")
    p.add_argument("--quick", action="store_true", help="a tiny schedule (minutes): for tests and a first try")
    p.add_argument("--seg-steps", type=positive_int, default=None, help="segmentor fine-tuning steps (default 2000)")
    p.add_argument("--rf-steps", type=positive_int, default=None, help="generator fine-tuning steps (default 3000)")
    p.add_argument("--fold-steps", type=positive_int, default=None,
                   help="steps of each validation fold's model (default: 2000, the written model's; fewer is faster, "
                        "but the card then understates the model and calibrates its threshold on weaker ones)")
    p.add_argument("--resume", action="store_true", help="continue an adaptation in --out where it stopped")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=nonnegative_int, default=0, help="torch threads (default: torch's own)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_adapt)


def _adapt(args) -> int:
    from mcgr.train.adapt import main

    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        raise CLIError(f"--device must be cpu or cuda, got {args.device!r}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise CLIError("--device cuda: no CUDA device is available to torch")
    return main(args)


@subcommand
def _add_train(sub) -> None:
    from mcgr.train.cli import add_arguments

    p = sub.add_parser("train", help="train the segmentor (seg) or the RF generator (rf) on synthetic pairs",
                       description="Train on on-the-fly synthetic pairs; --resume continues a stopped run exactly.")
    add_arguments(p)
    p.set_defaults(handler=_train)


def _train(args) -> int:
    from mcgr.train.cli import run

    return run(args)


@subcommand
def _add_eval(sub) -> None:
    from mcgr.eval.cli import add_arguments

    p = sub.add_parser("eval", help="evaluate methods (base, TT-GPR, classic baselines) on a dataset or the synthetic benchmark",
                       description="Run the chosen methods on INbreast, CBIS-DDSM, a folder of images with "
                       "<stem>.mask.png truths, or N synthetic phantoms, and write report.md, report.json, "
                       "per_image.csv, froc.png and gallery.png.")
    add_arguments(p)
    p.set_defaults(handler=_eval)


def _eval(args) -> int:
    from mcgr.eval.cli import run

    return run(args)


@subcommand
def _add_info(sub) -> None:
    p = sub.add_parser("info", help="op x backend availability and the build (same as python -m mcgr.info)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_info)


def _info(args) -> int:
    from mcgr.info import main as info_main

    return info_main(["--json"] if args.json else [])


def build_parser() -> argparse.ArgumentParser:
    from mcgr import __version__

    parser = argparse.ArgumentParser(prog="mcgr", description="Label-free breast microcalcification segmentation (MC-GenRef).")
    parser.add_argument("--version", action="version", version=f"mcgr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``mcgr`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        # `mcgr infer a.dcm --out DIR b.dcm`: argparse stops a nargs="+" positional at the first
        # option and leaves the later inputs over (parse_intermixed_args does not take subcommands)
        if extra and getattr(args, "command", None) == "infer" and not any(e.startswith("-") for e in extra):
            args.inputs = list(args.inputs) + extra
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # argparse has printed the usage and the message (or --help)
        return exc.code if isinstance(exc.code, int) else 2
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.handler(args) or 0)
    except (CLIError, ValueError, TypeError, FileExistsError, FileNotFoundError, PermissionError) as exc:
        print(f"mcgr {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mcgr {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
