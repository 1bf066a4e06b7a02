"""`mcgr infer INPUT... --out DIR`: full-field inference over files, folders, globs or manifest
files, on this machine (``--engine local``) or on a Ray cluster (``--engine ray``).

Per input: the files of :func:`mcgr.io.write_outputs` in ``DIR/<key>/`` and one line of
``DIR/manifest.jsonl`` (see :mod:`mcgr.archive` for the layout, the commit protocol and
``--resume``). A bad input is reported and the run goes on; the exit status tells a scheduler how
the run went (``EXIT_STATUS``).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

ENGINES = ("local", "ray")
TILE, OVERLAP = 256, 0.25
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_SOME_FAILED, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 3, 130, 143
EXIT_STATUS = (f"exit status: {EXIT_OK} every input done (or already complete); {EXIT_SOME_FAILED} some inputs "
               f"failed (the others are done; reasons in the manifest); {EXIT_ERROR} nothing done (every input "
               f"failed, no input found, or a bad --out / option); {EXIT_USAGE} bad command line; "
               f"{EXIT_INTERRUPTED} interrupted (Ctrl-C); {EXIT_TERMINATED} stopped by SIGTERM (--resume continues)")


class Terminated(KeyboardInterrupt):
    """SIGTERM: unwinds like Ctrl-C, and the run exits with 143 (128 + SIGTERM)."""


def spacing_mm(text: str) -> float:
    from mcgr.io.reader import _SPACING_RANGE_MM

    lo, hi = _SPACING_RANGE_MM
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a pixel spacing in mm, got {text!r}") from None
    if not lo <= v <= hi:
        raise argparse.ArgumentTypeError(f"expected a pixel spacing in mm within [{lo}, {hi}], got {text!r}")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    from mcgr._arguments import nonnegative_float, positive_float, positive_int

    p.epilog = EXIT_STATUS
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="mammogram files (DICOM with or without extension, PNG, TIFF, NPY), folders (searched "
                        "recursively), globs, or manifest files (.csv with a path column and optional spacing/id "
                        "columns, or .jsonl of paths or {\"path\", \"spacing\", \"id\"} objects)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (results, manifest.jsonl, run.json)")
    p.add_argument("--spacing", type=spacing_mm, default=None, metavar="MM",
                   help="pixel spacing in mm of every input (wins over DICOM tags; needed for PNG/TIFF/NPY "
                        "unless a manifest gives it per row)")
    p.add_argument("--refine", action="store_true",
                   help="also run TT-GPR (the generator's projections refine the segmentor's logits; about 1.2-2.6x "
                        "the base time). Off by default: on held-out film and procedural views it left the FROC at "
                        "<= 5 false objects per image where the base put it (docs/ttgpr_designs.md)")
    p.add_argument("--no-refine", action="store_true", help="the base segmentor alone (the default, named explicitly)")
    p.add_argument("--outputs", default=None, metavar="LIST",
                   help="the files to write per input, a comma-separated subset of mask,json,seg,overlay,prob,"
                        "uncertainty (default mask,json,seg,overlay: about 2 MB per image; seg is for DICOM input)")
    p.add_argument("--save-prob", action="store_true",
                   help="also write the probability map (and with TT-GPR the uncertainty map) as 16-bit PNGs "
                        "cropped to the breast, read back with mcgr.io.read_prob_map")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto: cuda when available)")
    p.add_argument("--backend", default="auto", help="kernel backend: auto, reference, cpu, triton, cuda (default auto)")
    add_runtime_argument(p)
    p.add_argument("--models", metavar="DIR", default=None,
                   help="use the models in DIR/seg and DIR/rf (model.safetensors + config.json) instead of the shipped weights; "
                        "'teacher': the packaged width-16 segmentor the shipped width-8 one was distilled from")
    p.add_argument("--fp-per-image", type=positive_float, default=None, metavar="X",
                   help="operating point: the threshold of the models' calibration curve (mcgr adapt's leave-image-out "
                        "FROC, in DIR/seg/card.md) at X false objects per image (default: the models' own threshold)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out: skip inputs whose results are complete and verified, redo the rest")
    p.add_argument("--engine", choices=ENGINES, default="local", help="local (this process) or ray (a Ray cluster)")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster address (e.g. auto or ray://head:10001; default: start a local Ray instance)")
    p.add_argument("--num-gpus-per-worker", type=nonnegative_float, default=None, metavar="G",
                   help="GPUs per Ray worker (default: 1 when --device is cuda or auto and the cluster has GPUs, else 0)")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="Ray workers, each holding the models (default: cluster GPUs / G, or cluster CPUs / --cpus-per-worker)")
    p.add_argument("--cpus-per-worker", type=positive_int, default=1, metavar="C",
                   help="CPUs (torch threads) per Ray worker (default 1)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N", help="torch CPU threads of the local engine")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_runtime_argument(p: argparse.ArgumentParser) -> None:
    from mcgr.infer.runtime import RUNTIMES

    p.add_argument("--runtime", choices=RUNTIMES, default="auto",
                   help="where the segmentor runs: torch, or onnxruntime (CPU; pip install 'mcgr[runtimes]'); default "
                        "auto: onnxruntime on a CPU without native bf16 when installed (the demo's base pass 1.4x PyTorch float32 "
                        "on an AVX2 EPYC, the same logits to 1e-5), torch elsewhere")


def check_runtime(text: str, device: str) -> str:
    """The runtime ``--runtime`` resolves to on ``device`` (``torch`` or ``onnxruntime``), or a CLIError."""
    from mcgr._arguments import CLIError
    from mcgr.infer.runtime import RuntimeUnavailable, resolve_runtime

    try:
        return resolve_runtime(text, device)
    except RuntimeUnavailable as e:
        raise CLIError(f"--{e}") from None


def check_device(text: str) -> str:
    """The torch device for --device, or a CLIError that says what is wrong."""
    import torch

    from mcgr._arguments import CLIError

    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise CLIError(f"--device must be auto, cpu or cuda[:N], got {text!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise CLIError(f"--device must be auto, cpu or cuda[:N], got {text!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise CLIError(f"--device {text}: torch sees no CUDA device here (torch {torch.__version__}, {build}); "
                           f"use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CLIError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) here")
    return str(dev)


def check_backend(text: str) -> str:
    from mcgr._backends import BACKENDS
    from mcgr._arguments import CLIError

    if text != "auto" and text not in BACKENDS:
        raise CLIError(f"--backend must be auto or one of {', '.join(BACKENDS)}, got {text!r}")
    return text


def load_models(models_dir: str | None, refine: bool, fp_per_image: float | None = None):
    """The models of ``--models`` (None: the shipped weights) through the one loader of every
    command (:func:`mcgr.infer.loader.load_models`), its errors as one-line CLIErrors."""
    from mcgr._arguments import CLIError
    from mcgr.infer.loader import ModelFolderError
    from mcgr.infer.loader import load_models as load
    from mcgr.models import CheckpointError

    try:
        return load(models_dir, refine=refine, fp_per_image=fp_per_image, argument="--models")
    except ModelFolderError as e:
        raise CLIError(str(e) + (" (without --refine only seg/ is needed)" if refine and "rf" in e.missing else "")) from None
    except CheckpointError as e:
        raise CLIError(str(e)) from None
    except ValueError as e:  # fp_per_image without a calibration curve
        raise CLIError(f"--fp-per-image: {e}") from None


def _raise_interrupt(*_):
    raise Terminated


def _sigterm_as_interrupt():
    """SIGTERM (a scheduler stopping the job) unwinds like Ctrl-C: Ray workers are stopped and what
    was committed stays; the input in progress is redone by --resume."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_interrupt)


def check_outputs(text: str | None, save_prob: bool, refine: bool) -> list[str]:
    """The output set of ``--outputs`` / ``--save-prob`` (in OUTPUT_KINDS order), or a CLIError."""
    from mcgr._arguments import CLIError
    from mcgr.io.writers import DEFAULT_OUTPUTS, output_set

    try:
        kinds = list(output_set(text)) if text is not None else list(DEFAULT_OUTPUTS)
    except ValueError:
        raise CLIError(f"--outputs must be a comma-separated subset of mask,json,seg,overlay,prob,uncertainty, "
                       f"got {text!r}") from None
    if not refine and "uncertainty" in kinds:
        raise CLIError("--outputs uncertainty needs TT-GPR (the uncertainty is the spread of its projections): "
                       "add --refine or drop the uncertainty")
    if save_prob:
        kinds = list(output_set(kinds + ["prob"] + (["uncertainty"] if refine else [])))
    return kinds


def check_engine(args) -> str:
    """The engine options checked together, before anything is created; returns the device."""
    from mcgr._arguments import CLIError
    from mcgr._backends import BackendError, check_backend as check_backend_on

    backend = check_backend(args.backend)
    if args.engine == "ray":
        if args.device not in ("auto", "cpu") and not args.device.startswith("cuda"):
            raise CLIError(f"--device must be auto, cpu or cuda, got {args.device!r}")
        try:  # checked before the run folder is made: a refused run leaves nothing behind
            import ray  # noqa: F401
        except ImportError:
            raise CLIError("--engine ray needs Ray: pip install 'mcgr[distributed]'") from None
        return args.device  # a Ray worker's device is known once the cluster is: it checks its own backend
    if args.address or args.num_gpus_per_worker is not None or args.workers is not None:
        raise CLIError("--address, --num-gpus-per-worker and --workers need --engine ray")
    device = check_device(args.device)
    try:  # the backend asked for (--backend or MCGR_BACKEND) must run on the device, before any compute
        check_backend_on(backend, device)
    except BackendError as e:
        raise CLIError(str(e)) from None
    return device


def run_settings(args, device: str, loaded, outputs: list, refine: bool) -> dict:
    """The settings of the run (``run.json``, each manifest line): what defines its results."""
    cfg = loaded.config()
    point = dict(loaded.operating_point, threshold=cfg.threshold)
    return {"refine": refine, "spacing": args.spacing, "device": device, "backend": check_backend(args.backend),
            "engine": args.engine, "threads": args.threads if args.engine == "local" else args.cpus_per_worker,
            "runtime": args.runtime,
            "models": loaded.sources, "operating_point": point, "ttgpr": cfg.to_dict(), "tile": TILE,
            "overlap": OVERLAP, "outputs": outputs}


def local_pipeline(loaded, device: str, backend: str, threads: int | None, runtime: str = "auto"):
    """The local engine's pipeline of ``loaded`` (:class:`mcgr.infer.loader.Models`)."""
    import torch

    from mcgr.infer.pipeline import Pipeline

    if threads:
        torch.set_num_threads(threads)  # before the pipeline: ONNX Runtime takes torch's thread count
    return Pipeline.from_models(loaded, device=device, backend=backend, tile=TILE, overlap=OVERLAP, runtime=runtime)


def _progress_bar(quiet: bool):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(desc="mcgr infer", unit="img", disable=quiet, dynamic_ncols=True, file=sys.stderr)


def _process(args, runf, loaded, settings: dict, tally) -> None:
    """Stream the inputs through the engine chosen into the open run folder ``runf``."""
    from mcgr.archive.inputs import iter_inputs

    items = iter_inputs(args.inputs, exclude=[runf.out])
    if args.engine == "local":
        from mcgr.archive.engine import run_overlapped

        pipe = local_pipeline(loaded, settings["device"], settings["backend"], args.threads, settings["runtime"])
        run_overlapped(items, pipe, runf, tally)  # read ahead and write behind the networks
    else:
        from mcgr.archive.ray_engine import run_ray

        run_ray(items, loaded.nets, runf, tally, address=args.address, device=settings["device"],
                gpus_per_worker=args.num_gpus_per_worker, workers=args.workers,
                cpus_per_worker=args.cpus_per_worker, tile=TILE, overlap=OVERLAP, config=loaded.config())


def _report(args, out: Path, tally) -> int:
    """Print the run's counts; the exit status (``EXIT_STATUS``)."""
    from mcgr.archive.layout import MANIFEST

    parts = [f"{tally.ok} done", f"{tally.error} failed"]
    if tally.skipped:
        parts.append(f"{tally.skipped} skipped (given twice)")
    if args.resume:
        parts.append(f"{tally.complete} already complete")
    if tally.total == 0:
        print("mcgr infer: error: no mammogram found in the inputs "
              "(files: DICOM, PNG, TIFF, NPY; folders are searched recursively)", file=sys.stderr)
        return EXIT_ERROR
    print(f"mcgr infer: {', '.join(parts)}; manifest: {out / MANIFEST}")
    if tally.ok + tally.skipped + tally.complete == 0:
        print("mcgr infer: error: nothing could be done: every input failed (reasons above and in the manifest)",
              file=sys.stderr)
        return EXIT_ERROR
    if tally.error:
        print(f"mcgr infer: error: {tally.error} input(s) failed (reasons above and in the manifest)", file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK


def run(args) -> int:
    from mcgr._arguments import CLIError
    from mcgr.archive.engine import Tally
    from mcgr.archive.layout import ArchiveError
    from mcgr.archive.run_folder import RunFolder

    if args.refine and args.no_refine:
        raise CLIError("--refine and --no-refine contradict each other: give one")
    refine = bool(args.refine)
    check_backend(args.backend)
    outputs = check_outputs(args.outputs, args.save_prob, refine)
    device = check_engine(args)
    # a Ray worker resolves "auto" on its own machine; the local engine here, before anything is made
    runtime = check_runtime(args.runtime, device) if args.engine == "local" else args.runtime
    if args.engine == "ray" and runtime == "onnxruntime" and device.startswith("cuda"):
        raise CLIError(f"--runtime onnxruntime runs on the CPU only, not on --device {device}")
    loaded = load_models(args.models, refine, args.fp_per_image)
    args.runtime = runtime
    settings = run_settings(args, device, loaded, outputs, refine)
    out = Path(args.out)
    excluded_note = check_out(out, args.inputs)
    if excluded_note:  # said even with --quiet: it decides which files are inputs
        print(f"mcgr infer: note: {excluded_note}", file=sys.stderr)
    bar = _progress_bar(args.quiet)
    tally = Tally(bar=bar, quiet=args.quiet)
    old_term = _sigterm_as_interrupt()
    try:
        with RunFolder(out, settings, resume=args.resume) as runf:
            _process(args, runf, loaded, settings, tally)
            if tally.total == 0:
                runf.discard = True  # nothing found: leave no run behind that a next run would have to --resume
    except ArchiveError as e:
        raise CLIError(str(e)) from None
    except Terminated:
        print(f"mcgr infer: stopped by SIGTERM after {tally.ok} done, {tally.error} failed; "
              f"continue with --resume", file=sys.stderr)
        return EXIT_TERMINATED
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        if bar is not None:
            bar.close()
    return _report(args, out, tally)


def check_out(out: Path, inputs) -> str | None:
    """Refuse, before anything is computed or created, an --out that would mix results into the
    inputs (the input folder itself, the manifest this run writes, an --out inside an input folder
    that already holds images of its own, which the scan would skip) and two input files with one
    output name. An --out inside an input folder is otherwise excluded from the scan, and the
    returned note says so (None when there is nothing to say)."""
    from mcgr._arguments import CLIError
    from mcgr.archive.inputs import is_inside, is_manifest_file, key_from_rel, walk_folder
    from mcgr.archive.layout import MANIFEST

    out_real = os.path.realpath(out)
    names: dict[str, str] = {}
    note = None
    for spec in inputs:
        spec = os.path.expanduser(str(spec))
        if os.path.isdir(spec):
            spec_real = os.path.realpath(spec)
            if spec_real == out_real:
                raise CLIError(f"--out {out} is the input folder {spec}: results would be mixed with the inputs; "
                               f"choose an --out outside it (or a new folder inside it)")
            if is_inside(out_real, spec_real):
                if os.path.isdir(out):
                    own = next(iter(walk_folder(str(out))), None)
                    if own is not None:
                        raise CLIError(f"--out {out} lies inside the input folder {spec} and holds images of its own "
                                       f"({own}), which the scan would skip: choose an --out without images")
                note = f"--out {out} lies inside the input folder {spec}: it is not searched for inputs"
        elif os.path.isfile(spec):
            if os.path.realpath(spec) == os.path.realpath(out / MANIFEST):
                raise CLIError(f"{spec} is the manifest this run writes; to redo a run's inputs, write into another --out")
            if is_manifest_file(spec):
                continue
            key = key_from_rel(os.path.basename(spec))
            real = os.path.realpath(spec)
            if key in names and names[key] != real:
                raise CLIError(f"{names[key]} and {real} both map to the output folder {key!r}: give them as a "
                               f"folder, or in a manifest with an id column")
            names[key] = real
    return note
