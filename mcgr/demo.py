"""``mcgr demo``: a synthetic full-field mammogram with known calcifications, segmented by the
base segmentor (and with ``refine``, by TT-GPR beside it), outputs written and scored against the truth."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from mcgr.eval.metrics import pixel_metrics
from mcgr.eval.objects import match_objects


def score(prob: torch.Tensor, truth: torch.Tensor, breast: torch.Tensor, spacing_mm: float, threshold: float) -> dict:
    """Pixel metrics within the breast and object sensitivity / false positives of one map."""
    pred = (prob >= threshold).numpy()
    t = truth.numpy()
    m = pixel_metrics(pred, t, region=breast.numpy())
    o = match_objects(t, pred, spacing_mm)
    return {
        "dice": m["dice"], "recall": m["recall"], "fnr": m["fnr"], "balanced_accuracy": m["balanced_accuracy"],
        "g_mean": m["g_mean"], "precision": m["precision"],
        "object_sensitivity": o["tp"] / o["n_truth"] if o["n_truth"] else float("nan"),
        "fp_objects": o["fp"], "n_truth": o["n_truth"],
    }


def side_by_side(image: np.ndarray, truth: np.ndarray, base: np.ndarray, refined: np.ndarray | None = None,
                 max_side: int = 900) -> np.ndarray:
    """RGB panel: the image with truth (green), base (blue) and, when given, TT-GPR (red) outlines, downsized."""
    from scipy import ndimage

    def outline(m):
        m = ndimage.binary_dilation(m, iterations=2)
        return m & ~ndimage.binary_erosion(m, iterations=1)

    g = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    panels = []
    masks = [(truth, (0, 255, 0)), (base, (60, 140, 255))] + ([(refined, (255, 40, 40))] if refined is not None else [])
    for mask, colour in masks:
        rgb = np.repeat(g[..., None], 3, axis=2)
        rgb[outline(mask)] = colour
        panels.append(rgb)
    gap = np.full((g.shape[0], 8, 3), 255, np.uint8)
    full = np.concatenate([x for pnl in panels for x in (pnl, gap)][:-1], axis=1)
    scale = max_side / max(full.shape[:2])
    if scale < 1:
        from PIL import Image

        full = np.asarray(Image.fromarray(full).resize((int(full.shape[1] * scale), int(full.shape[0] * scale)), Image.LANCZOS))
    return full


# Peak memory of building the phantom, per pixel (its float32 layers and masks): measured 2026-12-05
# as 50 to 90 B/px at 2048 x 2048 and 3072 x 2048 (peak RSS, 1 thread); the pipeline's own figure is
# mcgr.io.resample.PIPELINE_BYTES_PER_PX.
PHANTOM_BYTES_PER_PX = 96
DEMO_FILES = ("demo.json",)
DEMO_PREFIX = "phantom."


def check_demo_out(out: Path, force: bool) -> None:
    """Refuse to overwrite files of the user's that the demo would write (``phantom.*``,
    ``demo.json``) unless ``force``."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a directory")
    if force or not out.is_dir():
        return
    clash = sorted(e.name for e in out.iterdir() if e.name.startswith(DEMO_PREFIX) or e.name in DEMO_FILES)
    if clash:
        raise FileExistsError(f"--out {out} already holds {', '.join(clash[:4])}{' ...' if len(clash) > 4 else ''}; "
                              f"the demo would overwrite them: pass --force, or choose another --out")


def check_demo_size(size: tuple[int, int]) -> None:
    """Refuse, with the memory it would need, a phantom that would not fit (before allocating it)."""
    from mcgr import MODEL_SPACING_MM
    from mcgr._memory import check_fits
    from mcgr.io.resample import PIPELINE_BYTES_PER_PX, check_model_grid

    h, w = size
    try:
        check_model_grid((h, w), MODEL_SPACING_MM, advice="choose a smaller --size")
    except ValueError as exc:
        raise ValueError(f"--size {h}x{w}: {exc}") from None
    check_fits(float(h) * w * (PHANTOM_BYTES_PER_PX + PIPELINE_BYTES_PER_PX),
               f"--size {h}x{w}: a {h} x {w} px phantom and its segmentation")


def demo_pipeline(models: str | None = None, device: str = "cpu", backend: str = "auto", runtime: str = "auto"):
    """The demo's pipeline: the models in ``models`` (None: the shipped weights) at their operating
    threshold, loaded as every command loads them (:meth:`mcgr.infer.pipeline.Pipeline.from_pretrained`)."""
    from mcgr.infer.pipeline import Pipeline

    return Pipeline.from_pretrained(models or None, device=device, backend=backend, runtime=runtime)


def run_demo(out: str | Path = "mcgr-demo", seed: int = 0, size: tuple[int, int] = (1536, 1152), faint: bool = True,
             device: str = "cpu", backend: str = "auto", models: str | None = None, quiet: bool = False,
             force: bool = False, refine: bool = False, runtime: str = "auto") -> dict:
    """Build the phantom, run the base segmentor (``refine``: and TT-GPR, scored beside it, whose
    outputs are then the ones written), write the outputs into ``out`` and score them.
    Refuses (ValueError / FileExistsError, before any work) a ``size`` that would not fit in memory
    and an ``out`` holding earlier ``phantom.*`` / ``demo.json`` files unless ``force``."""
    from PIL import Image

    from mcgr import MODEL_SPACING_MM
    from mcgr.io.reader import Mammogram
    from mcgr.io.writers import OUTPUT_KINDS, write_outputs
    from mcgr.synth.phantom import breast_phantom

    say = (lambda *a: None) if quiet else print
    out = Path(out)
    check_demo_size(tuple(int(v) for v in size))
    check_demo_out(out, force)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ph = breast_phantom(size[0], size[1], seed=seed, faint=faint)
    say(f"phantom: {size[0]} x {size[1]} px at {MODEL_SPACING_MM} mm, {len(ph.centres)} calcifications "
        f"({'fainter than the training median' if faint else 'at the training median'}), seed {seed}")
    pipe = demo_pipeline(models, device=device, backend=backend, runtime=runtime)
    res = pipe(ph.image, spacing=MODEL_SPACING_MM, breast_mask=ph.breast, refine=refine)
    thr = pipe.config.threshold
    base = score(res.base_prob, ph.truth, ph.breast, MODEL_SPACING_MM, thr)
    ttgpr = score(res.prob, ph.truth, ph.breast, MODEL_SPACING_MM, thr) if refine else None
    mammo = Mammogram(image=ph.image.numpy(), spacing_mm=MODEL_SPACING_MM, laterality="L", view="CC",
                      source=f"phantom(seed={seed})", source_shape=tuple(ph.image.shape), flipped=False,
                      spacing_source="argument")
    paths = write_outputs(out, "phantom", mammo, res.prob, res.mask, res.detections, res.clusters,
                          uncertainty=res.uncertainty, excluded={"pectoral": res.pectoral}, outputs=OUTPUT_KINDS)
    Image.fromarray((ph.truth.numpy() * 255).astype(np.uint8)).save(out / "phantom.truth.png")
    panel = side_by_side(ph.image.numpy(), ph.truth.numpy(), (res.base_prob >= thr).numpy(),
                         res.mask.numpy() if refine else None)
    Image.fromarray(panel).save(out / "phantom.compare.png")
    summary = {
        "phantom": {"seed": seed, "shape": list(ph.image.shape), "faint": faint, "calcifications": int(len(ph.centres))},
        "base": base, **({"ttgpr": ttgpr} if refine else {}), "refined_fraction": res.refined_fraction,
        "seeds": res.seeds, "runtime": pipe.runtime,
        "timings_s": {k: round(v, 3) for k, v in res.timings.items()}, "wall_s": round(time.perf_counter() - t0, 2),
        "outputs": {**paths, "truth": str(out / "phantom.truth.png"), "compare": str(out / "phantom.compare.png")},
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=1))
    say("")
    cols = [("base", base)] + ([("TT-GPR", ttgpr)] if refine else [])
    say(f"{'':22s}" + "".join(f"{name:>10s}" for name, _ in cols))
    for k, label in (("dice", "Dice"), ("recall", "Recall"), ("fnr", "FNR"), ("balanced_accuracy", "Bal. acc."),
                     ("g_mean", "G-mean"), ("object_sensitivity", "Object sensitivity"), ("fp_objects", "FP objects")):
        fmt = (lambda v: f"{v:10d}") if isinstance(base[k], int) else (lambda v: f"{v:10.3f}")
        say(f"{label:22s}" + "".join(fmt(sc[k]) for _, sc in cols))
    say("")
    found = f"{len(res.detections)} calcifications, {len(res.clusters)} clusters detected; {summary['wall_s']} s in all"
    if refine:
        say(f"TT-GPR refined {100 * res.refined_fraction:.0f}% of the breast tiles ({res.seeds} seeds); {found}")
        if bool(torch.equal(res.base_prob >= thr, res.mask)):
            say("TT-GPR's mask is the base's, pixel for pixel (README, \"What TT-GPR buys\")")
    else:
        say(f"base segmentor: {found} (--refine: TT-GPR beside it)")
    panels = "truth green | base blue | TT-GPR red" if refine else "truth green | base blue"
    say(f"outputs in {out}/: phantom.compare.png ({panels}), phantom.overlay.png, "
        "phantom.json, phantom.mask.png, phantom.prob.png (mcgr.io.read_prob_map reads it), demo.json")
    return summary
