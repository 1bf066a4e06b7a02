"""``mcgr eval``: run methods on a dataset (or the synthetic benchmark) and write the report.

Methods: ``base`` (the synthetic-only segmentor), ``ttgpr`` (the full pipeline with TT-GPR; one
pipeline run gives both), ``dog`` and ``tophat`` (the classic baselines of
:mod:`mcgr.eval.baselines`). Every method sees the same canonical image and the same breast mask
(the dataset's, else :func:`mcgr.io.breast_mask`); maps are evaluated on the image's own grid.
The pipeline is the one every command loads from the model folder (:func:`mcgr.infer.loader.load_models`),
at the models' operating threshold (TT-GPR keeps the base's detections above it); the report
scores every map at ``--threshold``.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

METHODS = ("base", "ttgpr", "dog", "tophat")
DATASET_KINDS = ("inbreast", "cbis", "folder")
DEFAULT_SYNTHETIC_SIZE = (1536, 1152)
REPORT_FILES = ("report.json", "report.md", "per_image.csv", "froc.png", "gallery.png")


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW in px, e.g. 1536x1152, got {text!r}") from None
    if min(h, w) < 128:
        raise argparse.ArgumentTypeError(f"expected HxW with both sides >= 128 px, got {text!r}")
    return h, w


def _methods(text: str) -> list[str]:
    ms = [m.strip().lower() for m in text.split(",") if m.strip()]
    bad = [m for m in ms if m not in METHODS]
    if not ms or bad:
        raise argparse.ArgumentTypeError(f"methods must be a comma-separated subset of {','.join(METHODS)}, got {text!r}")
    return list(dict.fromkeys(ms))


def _threshold(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability in (0, 1), got {text!r}") from None
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in (0, 1), got {text!r}")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    from mcgr._arguments import nonnegative_int, positive_float, positive_int

    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", nargs=2, metavar=("KIND", "PATH"),
                     help=f"a dataset to read: KIND one of {', '.join(DATASET_KINDS)}; PATH its root folder")
    src.add_argument("--synthetic", type=positive_int, metavar="N",
                     help="the built-in benchmark: N phantoms, half regular and half faint (the shifted subset)")
    p.add_argument("--seed", type=int, default=0, help="first phantom seed for --synthetic (default 0)")
    p.add_argument("--size", type=_size, metavar="HxW", help="phantom size for --synthetic (default 1536x1152)")
    p.add_argument("--methods", type=_methods, default=list(METHODS), metavar="LIST",
                   help=f"comma-separated methods (default {','.join(METHODS)})")
    p.add_argument("--out", default="mcgr-eval", metavar="DIR", help="report folder (default ./mcgr-eval; must be empty unless --force)")
    p.add_argument("--force", action="store_true", help="overwrite the report files of a previous run in DIR")
    p.add_argument("--models", metavar="DIR", help="models to evaluate: DIR/seg and DIR/rf as written by "
                   "mcgr.models.save_model (default: the weights shipped in the package; 'teacher': the packaged "
                   "width-16 segmentor with the shipped generator)")
    p.add_argument("--device", default="cpu", help="torch device of the pipeline (default cpu)")
    p.add_argument("--backend", default="auto", help="op backend of the pipeline (default auto)")
    p.add_argument("--threshold", type=_threshold, default=0.5, help="operating threshold of every map (default 0.5)")
    p.add_argument("--ttgpr", default="", metavar="KEY=VALUE,...",
                   help="TT-GPR settings overriding the defaults, e.g. iterations=1,projections=2")
    p.add_argument("--tile", type=positive_int, default=256, help="pipeline tile side in px (default 256)")
    p.add_argument("--spacing", type=positive_float, metavar="MM",
                   help="pixel size for files without one (folder PNG/TIFF/NPY; CBIS-DDSM films: default 0.05)")
    p.add_argument("--csv", action="append", metavar="FILE", help="CBIS-DDSM description CSV (repeatable; "
                   "default PATH/calc_case_description*.csv)")
    p.add_argument("--point-radius", type=positive_float, default=0.2, metavar="MM",
                   help="INbreast: radius of the disk drawn for a point calcification (default 0.2 mm)")
    p.add_argument("--strict", action="store_true", help="unknown INbreast ROI types and images without a "
                   "truth file are errors (default: skipped and counted in the report)")
    p.add_argument("--limit", type=positive_int, metavar="N", help="evaluate only the first N cases")
    p.add_argument("--gallery", type=nonnegative_int, default=6, metavar="K", help="crops per gallery row (default 6)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def ttgpr_overrides(text: str) -> dict:
    """``{field: value}`` of ``--ttgpr KEY=VALUE,...`` (top-level :class:`mcgr.infer.ttgpr.TTGPRConfig`
    fields), or a CLIError naming the item."""
    from mcgr._arguments import CLIError
    from mcgr.infer.ttgpr import TTGPRConfig

    cfg = TTGPRConfig()
    types = {f.name: type(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    kw = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, val = item.partition("=")
        key = key.strip()
        if not sep or key not in types or types[key] not in (int, float, str, bool):
            settable = sorted(k for k, t in types.items() if t in (int, float, str, bool))
            raise CLIError(f"--ttgpr: {item!r} is not KEY=VALUE with KEY one of {', '.join(settable)}")
        try:
            kw[key] = types[key](val.strip()) if types[key] is not bool else val.strip().lower() in ("1", "true", "yes")
        except ValueError:
            raise CLIError(f"--ttgpr: {key} needs a {types[key].__name__}, got {val!r}") from None
    return kw


def ttgpr_config(text: str):
    """A :class:`mcgr.infer.ttgpr.TTGPRConfig` with ``KEY=VALUE,...`` overrides (top-level fields)."""
    from mcgr._arguments import CLIError
    from mcgr.infer.ttgpr import TTGPRConfig

    try:
        return dataclasses.replace(TTGPRConfig(), **ttgpr_overrides(text)).validated()
    except ValueError as exc:
        raise CLIError(f"--ttgpr: {exc}") from None


def _dataset(args):
    from mcgr._arguments import CLIError
    from mcgr.eval import datasets

    if args.synthetic is not None:
        if args.spacing is not None or args.csv:
            raise CLIError("--spacing and --csv apply to --dataset, not to --synthetic")
        return datasets.synthetic(args.synthetic, seed=args.seed, size=args.size or DEFAULT_SYNTHETIC_SIZE)
    kind, path = args.dataset
    if kind not in DATASET_KINDS:
        raise CLIError(f"--dataset KIND must be one of {', '.join(DATASET_KINDS)}, got {kind!r}")
    if args.size is not None:
        raise CLIError("--size applies to --synthetic only (datasets are evaluated at their own size)")
    if args.csv and kind != "cbis":
        raise CLIError("--csv applies to --dataset cbis only")
    strict = "error" if args.strict else "skip"
    if kind == "inbreast":
        return datasets.inbreast(path, point_radius_mm=args.point_radius, unknown_roi=strict, spacing_mm=args.spacing)
    if kind == "cbis":
        return datasets.cbis_ddsm(path, csv_files=args.csv, spacing_mm=args.spacing)
    return datasets.image_folder(path, spacing_mm=args.spacing, missing_truth=strict)


def _pipeline(args):
    """The pipeline of ``--models`` (default: the shipped weights) as every command loads it
    (:func:`mcgr.infer.loader.load_models`): at the models' operating threshold unless ``--ttgpr``
    sets ``threshold``; the generator only when TT-GPR is evaluated."""
    from mcgr._arguments import CLIError
    from mcgr.infer.loader import ModelFolderError, load_models
    from mcgr.infer.pipeline import Pipeline
    from mcgr.models import CheckpointError

    cfg = ttgpr_config(args.ttgpr)
    threshold = cfg.threshold if "threshold" in ttgpr_overrides(args.ttgpr) else None
    try:
        loaded = load_models(args.models, refine="ttgpr" in args.methods, threshold=threshold, argument="--models")
    except ModelFolderError as exc:
        raise CLIError(str(exc)) from None
    except CheckpointError as exc:
        raise CLIError(f"cannot load the models: {exc}") from None
    return Pipeline.from_models(loaded, cfg, device=args.device, backend=args.backend, tile=args.tile)


def _prepare_out(out: Path, force: bool) -> None:
    """Check and create the report folder before anything is computed: one-line errors for a file in
    the way, a non-empty folder without --force, and a folder that cannot be written (a parent that
    is a file, a read-only filesystem, no permission)."""
    import tempfile

    from mcgr._arguments import CLIError

    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(f"--out {out} is not empty; pass --force to overwrite its report files")
    try:
        for name in REPORT_FILES if out.is_dir() else ():
            if (out / name).is_file():
                (out / name).unlink()
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise CLIError(f"--out {out} cannot be written: {e.strerror or e}") from None


def command_line(args) -> str:
    """The ``mcgr eval`` command that reproduces ``args`` (every option spelled out)."""
    parts = ["mcgr", "eval"]
    if args.synthetic is not None:
        parts += ["--synthetic", str(args.synthetic), "--seed", str(args.seed), "--size",
                  "x".join(map(str, args.size or DEFAULT_SYNTHETIC_SIZE))]
    else:
        parts += ["--dataset", *args.dataset]
    parts += ["--methods", ",".join(args.methods), "--threshold", f"{args.threshold:g}", "--out", str(args.out)]
    if set(args.methods) & {"base", "ttgpr"}:
        parts += ["--models", args.models or "<shipped>", "--device", args.device, "--tile", str(args.tile)]
        if args.ttgpr:
            parts += ["--ttgpr", args.ttgpr]
    for flag, val in (("--spacing", args.spacing), ("--limit", args.limit)):
        if val is not None:
            parts += [flag, f"{val:g}" if isinstance(val, float) else str(val)]
    for c in args.csv or []:
        parts += ["--csv", c]
    if args.dataset and args.dataset[0] == "inbreast":
        parts += ["--point-radius", f"{args.point_radius:g}"]
    if args.strict:
        parts.append("--strict")
    return " ".join(parts)


def run(args) -> int:
    from tqdm import tqdm

    from mcgr.eval.baselines import BASELINES
    from mcgr.eval.datasets import DatasetError
    from mcgr.eval.report import EvalSettings, Evaluator, write_report
    from mcgr.io import MammogramReadError, breast_mask

    out = Path(args.out)
    ds = _dataset(args)
    cases = ds.cases[: args.limit] if args.limit else ds.cases
    pipe = _pipeline(args) if set(args.methods) & {"base", "ttgpr"} else None
    _prepare_out(out, args.force)
    ev = Evaluator(list(args.methods), EvalSettings(threshold=args.threshold, gallery_k=args.gallery))
    read_errors = (MammogramReadError, DatasetError, FileNotFoundError, OSError, ValueError)
    for case in tqdm(cases, desc="mcgr eval", unit="case", disable=args.quiet):
        try:
            data = case.load()
            breast = data.breast if data.breast is not None else breast_mask(data.image, data.spacing_mm)
        except read_errors as exc:
            ev.fail(case.id, case.subset, exc)
            continue
        maps: dict = {}
        if pipe is not None:
            t = time.perf_counter()
            try:
                res = pipe(data.image, spacing=data.spacing_mm, refine="ttgpr" in args.methods, breast_mask=breast)
            except (ValueError, RuntimeError) as exc:
                for m in ("base", "ttgpr"):
                    if m in args.methods:
                        ev.fail(case.id, case.subset, exc, m)
                res = None
            if res is not None:
                wall = time.perf_counter() - t
                tt = {"seeds", "rf", "surrogate", "refine"}
                base_s = sum(v for k, v in res.timings.items() if k not in tt)
                if "base" in args.methods:
                    maps["base"] = (res.base_prob, base_s)
                if "ttgpr" in args.methods:
                    maps["ttgpr"] = (res.prob, wall)
        for m in args.methods:
            if m in BASELINES:
                t = time.perf_counter()
                maps[m] = (BASELINES[m](data.image, data.spacing_mm, breast), time.perf_counter() - t)
        for m in args.methods:
            if m not in maps:
                continue
            prob, secs = maps[m]
            try:
                ev.add(case.id, case.subset, m, prob, data.truth, data.spacing_mm, breast=breast, image=data.image,
                       seconds=secs)
            except ValueError as exc:
                ev.fail(case.id, case.subset, exc, m)
    extra = {"models": args.models or "shipped (mcgr/weights)", "device": args.device,
             "ttgpr_config": dataclasses.asdict(pipe.config) if pipe is not None else None}
    rep = write_report(ev, out, ds.summary(), command_line(args), extra=extra)
    for m in args.methods:
        g = rep["results"][m]["all"]
        if g.get("images"):
            o, fr = g["objects"], g["froc"]
            print(f"{m:>7}: {g['images']} image(s), sensitivity {_fmt(o['sensitivity'])} at "
                  f"{_fmt(o['fp_per_image'], 2)} FP/image, FROC mean {_fmt(fr['mean_sensitivity'])}, "
                  f"Dice (breast, micro) {_fmt(g['pixel']['breast']['micro']['dice'])}")
        else:
            print(f"{m:>7}: no image evaluated")
    written = [name for name in REPORT_FILES if name != "froc.png" or rep["froc_png"]]
    print(f"wrote {', '.join(written)} to {out} ({rep['evaluated']} case(s) evaluated, "
          f"{len(rep['failures'])} failure(s), {len(ds.skipped)} skipped)")
    if not rep["froc_png"]:
        print("froc.png not written: matplotlib is not installed (pip install matplotlib); the FROC is in report.json")
    if not any(rep["results"][m]["all"].get("images", 0) for m in args.methods):
        print(f"mcgr eval: error: no case could be evaluated (see {out / 'report.md'})")
        return 1
    return 0


def _fmt(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"
