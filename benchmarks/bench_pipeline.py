"""Full-field pipeline speed: time per stage and peak memory for base and TT-GPR, with MONAI's
``sliding_window_inference`` over mcgr's own segmentor on the same image as the anchor.

    python -m benchmarks.bench_pipeline [--device cpu|cuda] [--json PATH] [--size 3328x2560]
        [--ttgpr-size 3328x2560] [--variants default,tuned] [--no-monai] [--weights DIR]

The image is a synthetic full-field phantom (``breast_phantom``, 2560 x 3328 at 0.07 mm by default)
saved as ``.npy``, so ``read`` is a real file read. Stages (seconds, from ``Result.timings`` plus
``write`` = :func:`mcgr.io.writers.write_outputs`): read, mask (resample + breast mask), tiles
(grid + gather), base (batched segmentor), seeds, RF (projections), refine (surrogate segmentor
+ fused refine), stitch, detect, write, total. One JSON row per stage in the shared schema:
op ``pipeline/<stage>``, backend ``pipeline-base`` / ``pipeline-ttgpr`` (plus ``-<variant>`` for a
variant other than default), median_ms = the stage's time, ratio_vs_ref = the MONAI anchor's time /
the total (on the ``total`` row), and ``peak_rss_mib`` (process RSS high-water mark) or
``peak_cuda_mib`` (``torch.cuda.max_memory_allocated``), ``refined_fraction``, ``seeds``, ``tiles``.

Models: the shipped weights (``mcgr/weights/{seg,rf}``) when present, else the architecture of the
default training presets with random weights (timing does not depend on the weights, except TT-GPR's
gating: a random segmentor seeds nearly every tile, the worst case; the rows carry the refined
fraction and the seed count). ``--weights DIR`` reads ``DIR/seg`` and ``DIR/rf`` instead.

Variants (``--variants``): ``default`` is ``Pipeline`` as shipped; ``tuned`` applies what measurably
helps on CPU without changing the pipeline's code: channels-last models and bf16 autocast of the
network calls (the segmentor and generator wrapped in an autocast module); ``compiled`` adds
``torch.compile`` of the segmentor (compile time reported, excluded).
"""
from __future__ import annotations

import argparse
import copy
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import append_json, machine_info  # noqa: E402

STAGES = ("read", "mask", "tiles", "base", "seeds", "rf", "refine", "stitch", "detect", "write")


class Autocast(torch.nn.Module):
    """Run ``module`` under bf16 autocast on its device and return float32 (a CPU with AVX512-BF16
    runs the convolutions about 2x faster; the probability moves by ~1e-2 at most)."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        dev = args[0].device.type
        with torch.autocast(dev, dtype=torch.bfloat16):
            return self.module(*args, **kwargs).float()


def load_models(device: torch.device, weights: str | None = None) -> tuple[torch.nn.Module, torch.nn.Module, str]:
    """``(segmentor, generator, source)``: shipped or given weights, else random preset models."""
    from mcgr.models import UNet, WEIGHTS_DIR, load_model

    root = Path(weights) if weights else WEIGHTS_DIR
    if (root / "seg" / "model.safetensors").is_file() and (root / "rf" / "model.safetensors").is_file():
        return (load_model(root / "seg", device=device, kind="seg"), load_model(root / "rf", device=device, kind="rf"),
                f"weights from {root}")
    if weights:
        raise FileNotFoundError(f"--weights {weights}: expected seg/model.safetensors and rf/model.safetensors there")
    from mcgr.train.config import load_config

    torch.manual_seed(0)
    seg = UNet(load_config("seg", "default").model).to(device).eval()
    gen = UNet(load_config("rf", "default").model).to(device).eval()
    return seg, gen, "random weights, architecture of presets seg_default/rf_default"


def peak_rss_mib() -> float:
    """The process's resident-set high-water mark (MiB; ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def stage_times(timings: dict) -> dict:
    """Pipeline timings folded into the benchmark's stages (seconds)."""
    t = dict(timings)
    out = {
        "read": t.pop("read", 0.0),
        "mask": t.pop("resample", 0.0) + t.pop("mask", 0.0),
        "tiles": t.pop("grid", 0.0) + t.pop("tiles", 0.0),
        "base": t.pop("base", 0.0),
        "seeds": t.pop("seeds", 0.0),
        "rf": t.pop("rf", 0.0),
        "refine": t.pop("surrogate", 0.0) + t.pop("refine", 0.0),
        "stitch": t.pop("stitch", 0.0),
        "detect": t.pop("detect", 0.0),
    }
    for k, v in t.items():  # a stage the pipeline gains later is still reported
        out[k] = out.get(k, 0.0) + v
    return out


def variant_models(seg, gen, variant: str, device: torch.device) -> tuple:
    if variant == "default":
        return seg, gen, {}
    seg = seg.to(memory_format=torch.channels_last)
    gen = gen.to(memory_format=torch.channels_last)
    info = {}
    if variant in ("tuned", "compiled") and (device.type == "cpu"):
        seg, gen = Autocast(seg), Autocast(gen)
    if variant == "compiled":
        seg = torch.compile(seg, dynamic=False)
        info["compiled"] = "segmentor"
    return seg, gen, info


@torch.inference_mode()
def warm_up(seg, gen, device: torch.device, refine: bool, tile: int = 256) -> None:
    """One call of each network at the batch shapes the pipeline uses (its tile batch on this device,
    and a full chunk of RF windows), so that the timed run does not pay for oneDNN primitive creation
    (seconds per new shape on a small CPU)."""
    from mcgr.infer.ttgpr import TTGPRConfig
    from mcgr.models.rf import generator_condition, velocity
    from mcgr.models.segmentor import segment_logits

    cfg = TTGPRConfig()
    bt = cfg.batch if device.type == "cuda" else cfg.cpu_batch
    segment_logits(seg, torch.rand(bt, 1, tile, tile, device=device))
    if refine and gen is not None:
        M, win = cfg.projections, cfg.window
        per_call = max(1, bt * tile * tile // (M * win * win))
        xm = torch.rand(per_call * M, 1, win, win, device=device)
        segment_logits(seg, xm)
        velocity(gen, xm, torch.full((xm.shape[0],), 0.5, device=device), generator_condition(gen, xm, xm))


def run_pipeline(path: Path, spacing: float, seg, gen, device: torch.device, refine: bool, out_dir: Path,
                 reps: int = 1) -> tuple[dict, object]:
    """Stage times (s) of the fastest of ``reps`` runs (each from the file) and the last result."""
    from mcgr.infer.pipeline import Pipeline
    from mcgr.io.writers import write_outputs

    pipe = Pipeline(seg, gen, device=device)
    best, res = None, None
    for _ in range(reps):
        t0 = time.perf_counter()
        res = pipe(path, spacing=spacing, refine=refine)
        t = time.perf_counter()
        write_outputs(out_dir, "bench", res.mammogram, res.prob, res.mask, res.detections, res.clusters,
                      uncertainty=res.uncertainty)
        st = stage_times(res.timings)
        st["write"] = time.perf_counter() - t
        st["total"] = time.perf_counter() - t0
        if best is None or st["total"] < best["total"]:
            best = st
    return best, res


def monai_anchor(image: torch.Tensor, seg, device: torch.device, tile: int = 256, batch: int = 16) -> float:
    """Seconds for MONAI ``sliding_window_inference`` (overlap 0.25, Gaussian mode) of ``seg`` over the
    whole image (MONAI tiles the full rectangle, air included)."""
    from monai.inferers import sliding_window_inference

    from mcgr.models.segmentor import segment_logits

    x = image[None, None].to(device)
    with torch.inference_mode():
        segment_logits(seg, torch.rand(batch, 1, tile, tile, device=device))  # warm-up at MONAI's batch shape
        t0 = time.perf_counter()
        sliding_window_inference(x, roi_size=(tile, tile), sw_batch_size=batch,
                                 predictor=lambda b: segment_logits(seg, b), overlap=0.25, mode="gaussian")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0


def rows_for(backend: str, shape: str, st: dict, res, mem: dict, anchor_s: float | None, extra: dict) -> list[dict]:
    rows = []
    for stage in STAGES + tuple(k for k in st if k not in STAGES and k != "total") + ("total",):
        if stage not in st:
            continue
        r = {"op": f"pipeline/{stage}", "backend": backend, "shape": shape, "median_ms": round(1e3 * st[stage], 2),
             "ratio_vs_ref": None, "gbps": None}
        if stage == "total":
            if anchor_s:
                r["ratio_vs_ref"] = round(anchor_s / st["total"], 3)
            r.update(mem)
            r.update(refined_fraction=round(float(res.refined_fraction), 4), seeds=int(res.seeds), **extra)
        rows.append(r)
    return rows


def run_benchmark(device: torch.device, size=(3328, 2560), ttgpr_size=None, variants=("default",), monai: bool = True,
                  weights: str | None = None, reps: int = 1, quick: bool = False, log=print) -> list[dict]:
    """All rows of the pipeline benchmark (see the module docstring)."""
    from mcgr.ops._tiling import tile_grid
    from mcgr.synth.phantom import breast_phantom

    if quick:
        size, ttgpr_size = (768, 640), (768, 640)
    ttgpr_size = tuple(ttgpr_size or size)
    seg0, gen0, source = load_models(device, weights)
    log(f"models: {source}; torch threads {torch.get_num_threads()}")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for hw in dict.fromkeys([tuple(size), ttgpr_size]):
            t = time.perf_counter()
            ph = breast_phantom(hw[0], hw[1], seed=0)
            p = Path(tmp) / f"phantom_{hw[0]}x{hw[1]}.npy"
            np.save(p, ph.image.numpy())
            n_tiles = tile_grid(hw, tile=256, overlap=0.25, breast_mask=ph.breast.numpy()).num_tiles
            paths[hw] = (p, ph, n_tiles)
            log(f"phantom {hw[1]}x{hw[0]} (W x H) at 0.07 mm: {time.perf_counter() - t:.1f} s, "
                f"{n_tiles} breast tiles of 256 px")
        anchor_s = None
        if monai:
            try:
                p, ph, _ = paths[tuple(size)]
                warm_up(seg0, None, device, False)
                anchor_s = monai_anchor(ph.image, seg0, device)
                rows.append({"op": "pipeline/monai_swi", "backend": "monai", "shape": f"{size[1]}x{size[0]}",
                             "median_ms": round(1e3 * anchor_s, 1), "ratio_vs_ref": 1.0, "gbps": None,
                             "note": "sliding_window_inference(roi 256, overlap 0.25, mode gaussian, sw_batch 16), "
                                     "mcgr segmentor, fp32 NCHW"})
                log(f"MONAI sliding_window_inference: {anchor_s:.2f} s")
                fast = Autocast(copy.deepcopy(seg0).to(memory_format=torch.channels_last))
                warm_up(fast, None, device, False)
                fast_s = monai_anchor(ph.image, fast, device)
                rows.append({"op": "pipeline/monai_swi", "backend": "monai-bf16", "shape": f"{size[1]}x{size[0]}",
                             "median_ms": round(1e3 * fast_s, 1), "ratio_vs_ref": round(anchor_s / fast_s, 3), "gbps": None,
                             "note": "the same call with the segmentor in channels-last under bf16 autocast (what "
                                     "mcgr's pipeline does on bf16 CPUs and on CUDA)"})
                log(f"MONAI sliding_window_inference, bf16 + channels-last: {fast_s:.2f} s")
            except ImportError as exc:
                log(f"MONAI anchor skipped: {exc}")
        for variant in variants:
            seg, gen, info = variant_models(seg0, gen0, variant, device)
            suffix = "" if variant == "default" else f"-{variant}"
            for refine, hw in ((False, tuple(size)), (True, ttgpr_size)):
                p, ph, n_tiles = paths[hw]
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                out_dir = Path(tmp) / f"out-{variant}-{int(refine)}"
                if variant == "compiled" and not refine:
                    t = time.perf_counter()
                    run_pipeline(p, 0.07, seg, gen, device, False, out_dir)  # compiles the segmentor
                    info["compile_s"] = round(time.perf_counter() - t, 1)
                warm_up(seg, gen, device, refine)
                st, res = run_pipeline(p, 0.07, seg, gen, device, refine, out_dir, reps=reps)
                mem = {"peak_rss_mib": round(peak_rss_mib(), 1)}
                if device.type == "cuda":
                    mem["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
                backend = ("pipeline-ttgpr" if refine else "pipeline-base") + suffix
                shape = f"{hw[1]}x{hw[0]}" + ("" if hw == tuple(size) else " (crop)")
                extra = dict(info, tiles=n_tiles, models=source)
                rows += rows_for(backend, shape, st, res, mem, anchor_s if hw == tuple(size) else None, extra)
                log(f"{backend:24s} {shape:16s} total {st['total']:7.2f} s  " +
                    "  ".join(f"{k} {v:.2f}" for k, v in st.items() if k != "total" and v >= 0.005) +
                    f"  | refined {res.refined_fraction:.2f} of {n_tiles} tiles, {res.seeds} seeds, "
                    f"peak RSS {mem['peak_rss_mib']:.0f} MiB")
    return rows


def _hw(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", metavar="PATH", help="append the rows to this JSON file (shared schema)")
    ap.add_argument("--size", type=_hw, default=(3328, 2560), metavar="HxW", help="phantom rows x columns (3328x2560)")
    ap.add_argument("--ttgpr-size", type=_hw, default=None, metavar="HxW",
                    help="phantom for the TT-GPR run (default: --size; smaller on a slow CPU, reported as a crop)")
    ap.add_argument("--variants", default="default", help="comma-separated: default, tuned, compiled")
    ap.add_argument("--no-monai", action="store_true", help="leave out the MONAI anchor")
    ap.add_argument("--weights", help="folder with seg/ and rf/ model folders (default: the shipped weights)")
    ap.add_argument("--reps", type=int, default=1, help="runs per configuration; the fastest is reported")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--quick", action="store_true", help="a 640x768 phantom (smoke test)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_pipeline: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    variants = [v for v in args.variants.split(",") if v]
    if set(variants) - {"default", "tuned", "compiled"}:
        print(f"bench_pipeline: unknown variants {sorted(set(variants) - {'default', 'tuned', 'compiled'})}", file=sys.stderr)
        return 2
    rows = run_benchmark(device, args.size, args.ttgpr_size, variants, monai=not args.no_monai, weights=args.weights,
                         reps=args.reps, quick=args.quick)
    if args.json:
        append_json(args.json, machine_info(device), rows)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
