"""The shipped segmentor on the runtimes a speed-minded user would try, side by side in one run.

    python -m benchmarks.bench_runtimes [--threads 1] [--reps 4] [--rounds 5] [--val-n 64] [--full-field]
        [--runtimes eager-fp32,eager-bf16,...] [--json PATH]

Runtimes (the same weights, the same 256 px tiles, batch 4 as the pipeline's CPU batch):

- ``eager-fp32``: PyTorch, float32 NCHW (the reference every Dice is compared with);
- ``eager-bf16``: PyTorch, channels-last under bf16 autocast (what ``mcgr infer`` runs today);
- ``compile-bf16``: ``torch.compile`` (inductor) of the channels-last model under bf16 autocast;
- ``ort-fp32`` / ``ort-int8``: ONNX Runtime (CPU execution provider) on the ONNX export (opset 17),
  and on its int8 post-training quantisation (``onnxruntime.quantization.quantize_static``, QDQ,
  uint8 activations / int8 per-channel weights, activation ranges from the 99.999th percentile on
  16 synthetic training patches drawn apart from the validation set: min-max and entropy
  calibration moved the Dice at the operating threshold by 0.0071, the percentile by 0.0035); ONNX Runtime's CPU provider has no bf16 convolution;
- ``ov-fp32`` / ``ov-bf16`` / ``ov-int8``: OpenVINO (CPU plugin) on the same ONNX file with the
  inference precision hint f32 / bf16, and on the int8 QDQ file (OpenVINO runs it as int8).

Per runtime: setup seconds (export, quantisation, compilation), the median time per tile over
``--rounds`` rounds over the runtimes in turn of ``--reps`` calls of a batch of 4 each, after warm-up
(so that a change of load on a shared box falls on every runtime alike; compare ratios within a run), GFLOP/s (the FLOPs of one float32 forward counted by
``torch.utils.flop_counter``, the same count for every runtime) against the bf16 and int8 matmul
rates measured in the same run (``torch.mm`` in bf16, ``torch._int_mm`` in int8, 2048^2, this many
threads), and the pooled pixel Dice on ``--val-n`` validation patches (``mcgr.synth.dataset.validation_set``,
seed 12345, as ``mcgr.eval.bf16``) at p >= 0.5 and at the operating threshold, with its gap to
float32's and the Dice of the runtime's mask against float32's mask. ``--full-field`` also times the
``base`` stage of the pipeline (``Pipeline(refine=False)``) on a 3328 x 2560 breast phantom with each
runtime plugged in as the segmentor. The optional packages (``pip install onnx onnxruntime openvino``)
are skipped with a note when absent. Rows go to ``--json`` with the machine.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._harness import append_json, machine_info  # noqa: E402

RUNTIMES = ("eager-fp32", "eager-bf16", "compile-bf16", "ort-fp32", "ort-int8", "ov-fp32", "ov-bf16", "ov-int8")
TILE, BATCH = 256, 4


class RuntimeNet(torch.nn.Module):
    """A segmentor run by ``call`` (standardised input [B, 1, T, T] float32 -> logits [B, 1, T, T]),
    with the shipped model's ``cfg`` and ``config`` so the pipeline treats it as that model."""

    def __init__(self, seg, call):
        super().__init__()
        self.cfg, self.config, self.call = seg.cfg, getattr(seg, "config", None), call

    def forward(self, x):
        return self.call(x)


def matmul_rates(threads: int, n: int = 2048, reps: int = 5) -> dict:
    """Best-of-``reps`` GFLOP/s (GOP/s) of an n^3 matmul in bf16, int8 (int32 accumulate) and float32."""
    torch.set_num_threads(threads)
    out = {}
    for name, make, mm in (("bf16", lambda: torch.randn(n, n).bfloat16(), torch.mm),
                           ("fp32", lambda: torch.randn(n, n), torch.mm),
                           ("int8", lambda: torch.randint(-128, 127, (n, n), dtype=torch.int8), torch._int_mm)):
        a, b = make(), make()
        mm(a, b)
        best = min(_timed(lambda: mm(a, b)) for _ in range(reps))
        out[name] = round(2 * n ** 3 / best / 1e9, 1)
    return out


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def tile_flops(seg) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 1, TILE, TILE)
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        seg(x)
    return int(fc.get_total_flops())


def calibration_tiles(n: int = 16) -> np.ndarray:
    """Standardised synthetic training-like patches for int8 calibration (not the validation set)."""
    from mcgr.models.unet import standardise
    from mcgr.synth.dataset import validation_set

    return standardise(validation_set(n, patch_size=TILE, seed=777)["image"]).numpy().astype(np.float32)


def build(name: str, seg, tmp: Path, threads: int, onnx_cache: dict) -> tuple[object, float, str]:
    """``(call, setup_s, note)`` for runtime ``name``; ``call`` None (with the reason) when unavailable."""
    t0 = time.perf_counter()
    if name == "eager-fp32":
        m = copy.deepcopy(seg).eval()

        def call(x):
            with torch.inference_mode():
                return m(x).float()
        return call, 0.0, ""
    if name in ("eager-bf16", "compile-bf16"):
        m = copy.deepcopy(seg).eval().to(memory_format=torch.channels_last)
        if name == "compile-bf16":
            m = torch.compile(m, dynamic=False)

        def call(x):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                return m(x.contiguous(memory_format=torch.channels_last)).float()
        if name == "compile-bf16":
            try:
                call(torch.zeros(BATCH, 1, TILE, TILE))  # compile now, not inside the timings
            except Exception as e:  # noqa: BLE001 - reported as the row's note
                return None, 0.0, f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        return call, time.perf_counter() - t0, ""
    try:
        import onnx  # noqa: F401
    except ImportError:
        return None, 0.0, "onnx is not installed (pip install onnx onnxruntime openvino)"
    fp32 = onnx_cache.get("fp32")
    if fp32 is None:
        fp32 = tmp / "seg.onnx"
        torch.onnx.export(copy.deepcopy(seg).eval(), (torch.zeros(BATCH, 1, TILE, TILE),), str(fp32), input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "b"}, "logits": {0: "b"}}, opset_version=17,
                          dynamo=False)
        onnx_cache["fp32"] = fp32
        onnx_cache["export_s"] = time.perf_counter() - t0
    path = fp32
    if name.endswith("int8"):
        path = onnx_cache.get("int8")
        if path is None:
            try:
                from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                                      quantize_static)
                from onnxruntime.quantization.shape_inference import quant_pre_process
            except ImportError:
                return None, 0.0, "onnxruntime is not installed (its quantisation makes the int8 model)"

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self.it = iter([{"x": c[None]} for c in calibration_tiles()])

                def get_next(self):
                    return next(self.it, None)

            pre = tmp / "seg.pre.onnx"
            quant_pre_process(str(fp32), str(pre))
            path = tmp / "seg.int8.onnx"
            quantize_static(str(pre), str(path), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, per_channel=True, calibrate_method=CalibrationMethod.Percentile)
            onnx_cache["int8"] = path
            onnx_cache["quantise_s"] = time.perf_counter() - t0
    if name.startswith("ort"):
        try:
            import onnxruntime as ort
        except ImportError:
            return None, 0.0, "onnxruntime is not installed"
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

        def call(x):
            return torch.from_numpy(sess.run(None, {"x": np.ascontiguousarray(x.numpy(), dtype=np.float32)})[0])
        return call, time.perf_counter() - t0, f"onnxruntime {ort.__version__}"
    try:
        import openvino as ov
    except ImportError:
        return None, 0.0, "openvino is not installed"
    hint = {"ov-fp32": "f32", "ov-bf16": "bf16", "ov-int8": "f32"}[name]
    core = ov.Core()
    try:
        cm = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads,
                                                  "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
    except Exception as e:  # noqa: BLE001
        return None, 0.0, f"openvino cannot compile it: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    req = cm.create_infer_request()
    got = str(cm.get_property("INFERENCE_PRECISION_HINT"))

    def call(x):
        res = req.infer({0: np.ascontiguousarray(x.numpy(), dtype=np.float32)})
        return torch.from_numpy(np.array(res[cm.output(0)]))
    return call, time.perf_counter() - t0, f"openvino {ov.__version__}, precision {got}"


def interleaved_ms(calls: dict, reps: int, rounds: int) -> dict:
    """``{name: (median, min)}`` ms per tile: ``rounds`` rounds over the runtimes in turn, ``reps``
    calls of a batch each, so a load change on a shared box falls on every runtime alike."""
    x = torch.rand(BATCH, 1, TILE, TILE) * 2 - 1
    for call in calls.values():
        for _ in range(3):
            call(x)
    ts: dict = {n: [] for n in calls}
    for _ in range(rounds):
        for n, call in calls.items():
            ts[n] += [_timed(lambda: call(x)) for _ in range(reps)]
    return {n: (1e3 * statistics.median(v) / BATCH, 1e3 * min(v) / BATCH) for n, v in ts.items()}


def pooled_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    d = float(pred.sum() + truth.sum())
    return 2.0 * float((pred & truth).sum()) / d if d else 1.0


def val_probs(call, images: np.ndarray) -> np.ndarray:
    out = []
    for s in range(0, len(images), BATCH):
        x = torch.from_numpy(images[s:s + BATCH])
        out.append(torch.sigmoid(call(x).float()).numpy())
    return np.concatenate(out)


def full_field_s(seg, call, image, reps: int = 2) -> dict:
    """The pipeline's ``base`` stage and total on ``image`` with ``call`` as its segmentor (best of reps)."""
    from mcgr.infer.loader import operating_config
    from mcgr.infer.pipeline import Pipeline

    net = RuntimeNet(seg, call)
    # runtime "torch": ``net`` is the runtime under test (auto would export it to ONNX Runtime again)
    pipe = Pipeline(net, None, config=operating_config(seg), device="cpu", autocast=False, runtime="torch")
    best = None
    for _ in range(reps):
        t = time.perf_counter()
        r = pipe(image, spacing=0.07, refine=False)
        wall = time.perf_counter() - t
        if best is None or wall < best["total_s"]:
            best = {"base_s": round(r.timings.get("base", 0.0), 3), "total_s": round(wall, 3),
                    "tiles": int(len(pipe.prepare(image, spacing=0.07).grid.origins)) if best is None else best["tiles"],
                    "mask": r.mask.numpy()}
    return best


def main(argv=None) -> list[dict]:
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization logs one line per tensor
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=4, help="calls per runtime per round (default 4)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds over the runtimes in turn (default 5)")
    ap.add_argument("--val-n", type=int, default=64)
    ap.add_argument("--full-field", action="store_true", help="also the pipeline's base stage on a 3328 x 2560 phantom")
    ap.add_argument("--runtimes", default=",".join(RUNTIMES))
    ap.add_argument("--json", metavar="PATH")
    a = ap.parse_args(argv)
    names = [n for n in a.runtimes.split(",") if n]
    bad = sorted(set(names) - set(RUNTIMES))
    if bad:
        ap.error(f"unknown runtimes {bad}; choose from {','.join(RUNTIMES)}")
    torch.set_num_threads(a.threads)
    from mcgr.infer.loader import operating_config
    from mcgr.models import load_pretrained
    from mcgr.models.unet import standardise
    from mcgr.synth.dataset import validation_set

    seg = load_pretrained("seg").eval()
    thr = operating_config(seg).threshold
    machine = machine_info(torch.device("cpu"))
    run_started = time.strftime("%Y-%m-%dT%H:%M:%S%z")  # rows of one run share it: compare ratios within a run
    rates = matmul_rates(a.threads)
    flops = tile_flops(seg)
    val = validation_set(a.val_n, patch_size=TILE, seed=12345)
    images = standardise(val["image"]).numpy().astype(np.float32)
    truth = val["mask"].numpy() > 0.5
    image = None
    if a.full_field:
        from mcgr.synth.phantom import breast_phantom

        image = breast_phantom(3328, 2560, seed=0).image
    print(f"matmul rates at {a.threads} thread(s): {rates} GFLOP/s; segmentor {flops / 1e9:.2f} GFLOP per tile", flush=True)
    rows, ref, calls = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="mcgr-bench-runtimes-") as tmp:
        cache: dict = {}
        for name in names:
            torch.set_num_threads(a.threads)
            call, setup, note = build(name, seg, Path(tmp), a.threads, cache)
            rows.append({"op": "segmentor", "backend": name, "shape": f"{BATCH}x1x{TILE}x{TILE} threads {a.threads}",
                         "gbps": None, "note": note, "setup_s": round(setup, 2), "median_ms": None})
            if call is None:
                print(f"{name:13s} skipped: {note}", flush=True)
            else:
                calls[name] = call
        times = interleaved_ms(calls, a.reps, a.rounds)
        for row in rows:
            name = row["backend"]
            if name not in calls:
                continue
            call = calls[name]
            med, best = times[name]
            p = val_probs(call, images)
            row.update(median_ms=round(med, 2), min_ms=round(best, 2), gflops=round(flops / med / 1e6, 1),
                       pct_bf16_matmul=round(100 * flops / med / 1e6 / rates["bf16"], 1),
                       pct_int8_matmul=round(100 * flops / med / 1e6 / rates["int8"], 1))
            for t_name, t in (("0.5", 0.5), ("op", thr)):
                pred = p >= t
                row[f"dice_{t_name}"] = round(pooled_dice(pred, truth), 5)
                if name == "eager-fp32":
                    ref[t_name] = pred
                if t_name in ref:
                    row[f"dice_gap_{t_name}"] = round(abs(row[f"dice_{t_name}"] - pooled_dice(ref[t_name], truth)), 5)
                    row[f"dice_vs_fp32_{t_name}"] = round(pooled_dice(pred, ref[t_name]), 5)
            if "p" in ref:
                row["prob_abs_diff_max"] = round(float(np.abs(p - ref["p"]).max()), 5)
            elif name == "eager-fp32":
                ref["p"] = p
            print(f"{name:13s} {med:7.2f} ms/tile (min {best:.2f})  {row['gflops']:6.1f} GFLOP/s "
                  f"({row['pct_bf16_matmul']:.0f} % of bf16 mm, {row['pct_int8_matmul']:.0f} % of int8)  "
                  f"Dice@0.5 {row['dice_0.5']:.4f} Dice@op {row['dice_op']:.4f}  gap@op {row.get('dice_gap_op', 0):.4f}  "
                  f"vs fp32 mask {row.get('dice_vs_fp32_op', 1.0):.4f}  setup {row['setup_s']:.1f} s  {row['note']}", flush=True)
        if image is not None:  # full field: each runtime once, in turn, as the pipeline's segmentor
            for row in rows:
                name = row["backend"]
                if name not in calls:
                    continue
                ff = full_field_s(seg, calls[name], image, reps=1)
                mask = ff.pop("mask")
                if name == "eager-fp32":
                    ref["ff_mask"] = mask
                if "ff_mask" in ref:
                    ff["dice_vs_fp32"] = round(pooled_dice(mask, ref["ff_mask"]), 5)
                row.update({f"full_field_{k}": v for k, v in ff.items()})
                print(f"{name:13s} full field: base {ff['base_s']:.2f} s, total {ff['total_s']:.2f} s over {ff['tiles']} "
                      f"tiles, mask Dice vs fp32 {ff.get('dice_vs_fp32', 1.0):.4f}", flush=True)
        bf = next((r for r in rows if r["backend"] == "eager-bf16" and r.get("median_ms")), None)
        for r in rows:
            r["ratio_vs_ref"] = round(bf["median_ms"] / r["median_ms"], 3) if bf and r.get("median_ms") else None
            r.update(run=run_started, matmul_gflops=rates, tile_gflop=round(flops / 1e9, 3), export_s=round(cache.get("export_s", 0.0), 2),
                     quantise_s=round(cache.get("quantise_s", 0.0), 2), val_n=a.val_n, operating_threshold=thr)
    if a.json:
        append_json(a.json, machine, rows)
    return rows


if __name__ == "__main__":
    main()
