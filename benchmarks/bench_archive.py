"""Archive throughput of `mcgr infer` against the best loop a user would write, in one run.

    python -m benchmarks.bench_archive [--n 4] [--size 3328 2560] [--threads 1] [--reps 2]
        [--sides peer,peer-ort-int8,base,base-unfused,ttgpr,base-serial] [--device cpu|cuda] [--gpu-sample] [--outputs LIST]
        [--models DIR] [--peer-models DIR] [--json PATH]
    python -m benchmarks.bench_archive --footprint [--size 3328 2560] [--json PATH]

Writes N synthetic full-field mammograms (16-bit DICOM, 2560 x 3328 at 0.07 mm, a breast phantom
with texture) into a temporary folder and runs, side by side, with the same torch threads:

- ``peer``: what a user writes with pydicom and MONAI: ``pydicom.dcmread`` + ``pixel_array`` scaled
  to [0, 1]; MONAI ``sliding_window_inference`` (roi 256, overlap 0.25, Gaussian, sw_batch 4: the
  faster of 4 and 16 here) over the whole image with the SAME segmentor (the shipped weights) in
  channels-last under bf16 autocast where the machine runs bf16 natively (a GPU, or a CPU that
  ``mcgr.infer.pipeline.cpu_has_bf16`` accepts: the same rule mcgr follows), float32 elsewhere (on a
  CPU without AVX512-BF16 oneDNN emulates bf16 at ~0.3 GFLOP/s); sigmoid >= 0.5; the mask as PNG (PIL, default compression)
  and a JSON of the connected components (centroid, area, peak probability; scipy.ndimage).
  Serial, one image after the other.
- ``peer-<runtime>`` (``peer-ort-int8``, ``peer-ov-bf16``, ... : every non-eager runtime of
  ``benchmarks/bench_runtimes.py``): the same loop with the network on that runtime (the same
  weights: the ONNX export, its int8 QDQ quantisation, OpenVINO, ``torch.compile``), built once before
  the warm-up (its setup seconds are reported, not timed); skipped with the reason when the optional
  packages are absent (``pip install -e ".[runtimes]"``). CPU only. Every mcgr side's row also gives
  its ratio to the fastest of them (``ratio_vs_fastest_runtime_peer``).
- ``base`` / ``ttgpr``: ``mcgr infer FOLDER --out OUT --no-refine|--refine --threads T`` in this process
  (the local engine: prefetch reader and write-behind writer around the networks; the default output
  set: mask PNG, overlay, JSON, DICOM SEG, and the manifest; ``--outputs`` passes another set).
- ``base-unfused``: ``base`` with the U-Net's GroupNorm / FiLM / SiLU tails on PyTorch's own ops
  (``mcgr.ops.group_norm_silu.unfused``), to show what the fused kernel buys end to end.
- ``base-serial``: the same pipeline and outputs through the serial engine
  (``mcgr.archive.engine.run_local``), to show what the overlap buys.
- ``ray``: ``mcgr infer --engine ray`` with one worker per core (optional).

Per side: wall time from the first read to the last output written (model loading and a one-image
warm-up excluded, the same for every side), images/s, per-stage median seconds, and the peak
resident memory of the process while the side ran (``/proc/self/status`` VmRSS sampled every 20
ms; ``peak_cuda_mib`` too on a GPU). ``--gpu-sample`` samples ``nvidia-smi``'s utilization.gpu
every 100 ms while each side runs and reports the busy fraction (mean utilization / 100: the share of
the wall time a kernel ran) and the share of idle samples.
Sides run in turn, ``--reps`` times, the fastest rep kept per side; ratios are peer wall / side wall.
Models: whatever is shipped in mcgr/weights (a retrained, larger model is measured as it ships);
random weights of the default architecture only when nothing is shipped (the row says so);
``--models DIR`` (a model folder as ``mcgr infer --models`` takes it, or a segmentor's own folder for
the base sides, e.g. a distilled one) for every side, the peer included; ``--peer-models DIR`` gives
the peer another segmentor (e.g. the network mcgr shipped before, against mcgr with a distilled one:
the same answer, asked of two networks, in one run).

``--footprint``: bytes per image of each output set, instead of the sides. One full-field DICOM of the
same generator goes through the pipeline once without and once with TT-GPR; the results are written
with each set (the default, ``+prob``, ``+prob,uncertainty``, and the float32 ``.npy`` maps mcgr wrote
before), with the bytes of every file and the seconds of write_outputs; and the probability map is
encoded at zlib levels 1 / 6 / 9, 16-bit and (for comparison only) 8-bit.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import threading
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._harness import append_json, machine_info  # noqa: E402
from benchmarks.bench_runtimes import RUNTIMES  # noqa: E402
from mcgr.infer.pipeline import cpu_has_bf16 as _cpu_bf16  # noqa: E402

# the peer loop with the network on another runtime (``peer`` itself is PyTorch eager)
PEER_RUNTIMES = tuple(f"peer-{r}" for r in RUNTIMES if not r.startswith("eager"))


def write_archive(root: Path, n: int, size: tuple[int, int], seed: int = 0) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from mcgr.synth.backgrounds import procedural_backgrounds

    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    breast = ((yy - h / 2) / (0.45 * h)) ** 2 + (xx / (0.7 * w)) ** 2 <= 1
    for i in range(n):
        tex = procedural_backgrounds(1, h, w, g, spacing_mm=0.07)[0].numpy()
        img = np.where(breast, 0.25 + 0.7 * tex, 0.02)
        px = (img * 4095).astype(np.uint16)
        ds = Dataset()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid(), generate_uid()
        ds.Modality, ds.ImageLaterality, ds.ViewPosition = "MG", "L", "CC"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Bench^Phantom", f"B{i}", "", "F"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", ""
        ds.ReferringPhysicianName, ds.SeriesNumber, ds.InstanceNumber = "", 1, 1
        ds.Rows, ds.Columns = h, w
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelSpacing = [0.07, 0.07]
        ds.PixelData = px.tobytes()
        ds.save_as(root / f"case{i:04d}.dcm", enforce_file_format=True)


def make_models(root: Path) -> tuple[Path | None, str]:
    """The models folder to use (None: the shipped weights) and a note saying which."""
    from mcgr.models import WEIGHTS_DIR, UNet, save_model
    from mcgr.train.config import load_config

    if all((WEIGHTS_DIR / k / "model.safetensors").is_file() for k in ("seg", "rf")):
        return None, "shipped weights"
    torch.manual_seed(0)
    for kind in ("seg", "rf"):
        m = UNet(load_config(kind, "default").model)
        if kind == "seg":
            with torch.no_grad():
                m.head.bias.fill_(-3.0)
        save_model(m, root / kind, kind)
    return root, "random weights, default architecture (no shipped weights yet)"


class PeakMemory:
    """Peak resident memory (MiB) of this process between start() and stop(), sampled from
    /proc/self/status every ``every`` s (ru_maxrss cannot be reset between sides)."""

    def __init__(self, every: float = 0.02):
        self.every, self.peak, self._stop = every, 0.0, threading.Event()

    @staticmethod
    def rss_mib() -> float:
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    def _run(self):
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self.rss_mib())

    def __enter__(self):
        self.peak = self.rss_mib()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.rss_mib())


class GpuBusy:
    """nvidia-smi utilization.gpu sampled every 100 ms while the block runs (None when unavailable)."""

    def __init__(self, enabled: bool):
        self.enabled, self.samples, self.proc = enabled, [], None

    def __enter__(self):
        if self.enabled:
            try:
                self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                              "-lms", "100"], stdout=subprocess.PIPE, text=True)
                self._t = threading.Thread(target=self._read, daemon=True)
                self._t.start()
            except OSError:
                self.proc = None
        return self

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.samples.append(float(line.strip().split(",")[0]))
            except ValueError:
                pass

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()
            self._t.join(2)

    def summary(self) -> dict:
        if not self.samples:
            return {}
        # utilization.gpu is the share of each sample period in which a kernel ran: its mean over the
        # side's samples is the share of the wall time the GPU was busy
        return {"gpu_busy_fraction": round(statistics.fmean(self.samples) / 100, 3),
                "gpu_samples_idle": round(sum(v == 0 for v in self.samples) / len(self.samples), 3),
                "gpu_samples": len(self.samples)}


def torch_predictor(seg, device: torch.device):
    """The peer's network: ``seg`` in channels-last, under bf16 autocast where the machine runs bf16
    natively. Takes a batch of tiles in [0, 1], returns float32 logits."""
    from mcgr.models.segmentor import segment_logits

    # a user who measured bf16 on a CPU without native support would not keep it (emulated, ~200x
    # slower than float32 on an AVX2 EPYC, 2026-12-07): the peer follows the rule mcgr follows
    bf16 = device.type == "cuda" or _cpu_bf16()

    from mcgr.ops.group_norm_silu import unfused

    def predictor(b):
        # PyTorch's own ops: the fused group_norm + SiLU kernel is mcgr's, not the peer's
        with unfused(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return segment_logits(seg, b.contiguous(memory_format=torch.channels_last)).float()
    return predictor


def runtime_predictor(seg, runtime: str, tmp: Path, threads: int, cache: dict):
    """``(predictor, setup_s, note)``: ``seg`` on another runtime (``benchmarks.bench_runtimes.build``:
    the ONNX export, its int8 quantisation, OpenVINO's compilation, ``torch.compile``), fed the
    network input of ``seg``'s ``input_scale``; ``predictor`` None (with the reason) when the runtime
    cannot run here."""
    from benchmarks.bench_runtimes import build
    from mcgr.models.unet import input_scale_of, network_input

    call, setup_s, note = build(runtime, seg, tmp, threads, cache)
    if call is None:
        return None, 0.0, note
    scale = input_scale_of(seg)

    def predictor(b):
        return call(network_input(b.float(), scale).contiguous()).float()
    return predictor, setup_s, note


def peer_loop(paths: list[Path], out: Path, predictor, device: torch.device, sw_batch: int = 4) -> dict:
    """The loop a user writes: pydicom read, MONAI sliding window with ``predictor`` (a batch of tiles
    in [0, 1] -> logits), mask PNG + JSON. Returns the stage seconds summed over the images."""
    import pydicom
    from monai.inferers import sliding_window_inference
    from PIL import Image
    from scipy import ndimage

    out.mkdir(parents=True, exist_ok=True)
    st = {"read": 0.0, "network": 0.0, "write": 0.0}
    for p in paths:
        t = time.perf_counter()
        ds = pydicom.dcmread(p)
        img = ds.pixel_array.astype(np.float32) / float(2 ** int(ds.BitsStored) - 1)
        x = torch.from_numpy(img)[None, None].to(device)
        st["read"] += time.perf_counter() - t
        t = time.perf_counter()
        with torch.inference_mode():
            logits = sliding_window_inference(x, roi_size=(256, 256), sw_batch_size=sw_batch, predictor=predictor,
                                              overlap=0.25, mode="gaussian")
            prob = torch.sigmoid(logits)[0, 0].float().cpu().numpy()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        st["network"] += time.perf_counter() - t
        t = time.perf_counter()
        mask = prob >= 0.5
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / f"{p.stem}.mask.png")
        lab, n = ndimage.label(mask)
        dets = []
        # per-object crops (find_objects): ndimage.maximum / center_of_mass with an index array take
        # seconds on a full field (measured 2026-12-05: 9.7 s and 1.1 s for 168 objects, loaded box)
        for k, sl in enumerate(ndimage.find_objects(lab), 1):
            own = lab[sl] == k
            rows, cols = np.nonzero(own)
            dets.append({"row": float(rows.mean() + sl[0].start), "col": float(cols.mean() + sl[1].start),
                         "area_px": int(own.sum()), "peak_prob": float(prob[sl][own].max())})
        (out / f"{p.stem}.json").write_text(json.dumps({"source": str(p), "shape": list(prob.shape),
                                                        "n_detections": n, "detections": dets}))
        st["write"] += time.perf_counter() - t
    return st


def mcgr_side(side: str, inputs: Path, out: Path, models: Path | None, args) -> dict:
    """One ``mcgr infer`` run (``base``, ``ttgpr``: the CLI; ``base-unfused``: the CLI with PyTorch's
    own GroupNorm / SiLU in the U-Net instead of the fused kernel; ``base-serial``: the serial engine)."""
    from mcgr.cli import main as mcgr_main

    refine = side.startswith("ttgpr")
    if side == "base-serial":
        from mcgr.archive.engine import Tally, run_local
        from mcgr.archive.inputs import iter_inputs
        from mcgr.archive.run_folder import RunFolder
        from mcgr.infer.loader import load_models
        from mcgr.infer.pipeline import Pipeline

        torch.set_num_threads(args.threads)
        pipe = Pipeline.from_models(load_models(models, refine=False), device=args.device)
        t = time.perf_counter()
        with RunFolder(out, {"refine": False}, resume=False) as run:
            run_local(iter_inputs([str(inputs)], exclude=[out]), pipe, run, Tally())
        rc = 0
    else:
        argv = ["infer", str(inputs), "--out", str(out), "--quiet", "--device", args.device, "--threads", str(args.threads)]
        if models is not None:
            argv += ["--models", str(models)]
        argv.append("--refine" if refine else "--no-refine")
        if args.outputs:
            argv += ["--outputs", args.outputs]
        if side == "ray":
            argv = [a for a in argv if a not in ("--threads", str(args.threads))]
            argv += ["--engine", "ray", "--workers", str(os.cpu_count()), "--cpus-per-worker", "1"]
        t = time.perf_counter()
        if side == "base-unfused":  # what the fused block tail buys end to end: PyTorch's ops inside mcgr
            from mcgr.ops.group_norm_silu import unfused

            with unfused():
                rc = mcgr_main(argv)
        else:
            rc = mcgr_main(argv)
    wall = time.perf_counter() - t
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    ok = [r for r in lines if r["status"] == "ok"]
    if rc != 0 or len(ok) != len(lines):
        raise RuntimeError(f"{side}: exit {rc}, {len(ok)}/{len(lines)} ok: {[r.get('error') for r in lines if r['status'] != 'ok'][:3]}")
    stages = sorted({k for r in ok for k in r["timings"]})
    med = {k: round(statistics.median(r["timings"].get(k, 0.0) for r in ok), 3) for k in stages}
    return {"images": len(ok), "wall_s": wall, "median_stage_s": med,
            "refined_fraction": round(statistics.median(r["refined_fraction"] for r in ok), 3),
            "output_bytes_per_image": int(statistics.median(sum(r["files"].values()) for r in ok))}


def footprint(tmp: Path, models: Path | None, args) -> list[dict]:
    """Bytes per image and write seconds of each output set (see the module docstring)."""
    import io

    from PIL import Image

    from mcgr.infer.loader import load_models
    from mcgr.infer.pipeline import Pipeline
    from mcgr.io import write_outputs
    from mcgr.io.maps import encode_map
    from mcgr.io.writers import DEFAULT_OUTPUTS, _transform_for

    write_archive(tmp / "fp", 1, tuple(args.size), seed=2)
    path = str(next((tmp / "fp").glob("*.dcm")))
    pipe = Pipeline.from_models(load_models(models), device=args.device)
    shape = f"{args.size[0]}x{args.size[1]}"
    rows = []
    for refine in (False, True):
        res = pipe(path, refine=refine)
        sets = {"default": DEFAULT_OUTPUTS, "+prob": DEFAULT_OUTPUTS + ("prob",)}
        if refine:
            sets["+prob,uncertainty"] = DEFAULT_OUTPUTS + ("prob", "uncertainty")
        for name, kinds in sets.items():
            out = tmp / f"fp-{int(refine)}-{name}"
            t = time.perf_counter()
            write_outputs(out, "case", res.mammogram, res.prob, res.mask, res.detections, res.clusters,
                          uncertainty=res.uncertainty, excluded={"pectoral": res.pectoral}, outputs=kinds)
            wall = time.perf_counter() - t
            files = {f.name: f.stat().st_size for f in sorted(out.iterdir())}
            rows.append({"op": "footprint", "backend": f"{'ttgpr' if refine else 'base'} {name}", "shape": shape,
                         "median_ms": round(1e3 * wall, 1), "ratio_vs_ref": None, "gbps": None,
                         "bytes_per_image": sum(files.values()), "files": files, "write_s": round(wall, 3)})
            shutil.rmtree(out, ignore_errors=True)
        # what mcgr wrote before: the default set's files + full-field float32 .npy maps on the source grid
        t = _transform_for(res.mammogram, tuple(res.prob.shape), 0.07)
        legacy, t0 = {}, time.perf_counter()
        for kind, arr in (("prob", res.prob), ("uncertainty", res.uncertainty)):
            if arr is not None:
                buf = io.BytesIO()
                np.save(buf, t.to_source(arr.numpy(), kind="map").astype(np.float32), allow_pickle=False)
                legacy[f"case.{kind}.npy"] = buf.getbuffer().nbytes
        npy_s = time.perf_counter() - t0
        base_files = rows[-len(sets)]["files"]
        files = {**base_files, **legacy}
        rows.append({"op": "footprint", "backend": f"{'ttgpr' if refine else 'base'} before (float32 .npy maps)",
                     "shape": shape, "median_ms": None, "ratio_vs_ref": None, "gbps": None,
                     "bytes_per_image": sum(files.values()), "files": files, "npy_encode_s": round(npy_s, 3)})
        if not refine:
            src = np.clip(t.to_source(res.prob.numpy(), kind="map"), 0, 1).astype(np.float32)
            for level in (1, 6, 9):
                t0 = time.perf_counter()
                data, rec = encode_map(src, "prob", hi=1.0, compress_level=level)
                rows.append({"op": "prob_png", "backend": f"16-bit level {level}", "shape": shape,
                             "median_ms": round(1e3 * (time.perf_counter() - t0), 1), "ratio_vs_ref": None,
                             "gbps": None, "bytes_per_image": len(data), "box": rec["box"]})
            r0, r1, c0, c1 = rec["box"]
            buf = io.BytesIO()
            t0 = time.perf_counter()
            Image.fromarray(np.rint(src[r0:r1, c0:c1] * 255).astype(np.uint8)).save(buf, format="PNG", compress_level=1)
            rows.append({"op": "prob_png", "backend": "8-bit level 1 (not shipped: steps of 0.0039 at threshold 0.99)",
                         "shape": shape, "median_ms": round(1e3 * (time.perf_counter() - t0), 1), "ratio_vs_ref": None,
                         "gbps": None, "bytes_per_image": buf.getbuffer().nbytes, "box": rec["box"]})
    for r in rows:
        print(f"{r['op']:10s} {r['backend']:50s} {r['bytes_per_image'] / 1e6:8.3f} MB"
              + (f"  {r['median_ms']:.0f} ms" if r.get("median_ms") else "") + (f"  {r['files']}" if "files" in r else ""))
    return rows


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4, help="images (default 4)")
    ap.add_argument("--size", type=int, nargs=2, default=(3328, 2560), metavar=("H", "W"),
                    help="image size in px at 0.07 mm (default 3328 2560: a full field)")
    ap.add_argument("--sides", default="peer,base,ttgpr,base-serial",
                    help="comma-separated: peer, base, base-unfused (base without the fused U-Net block tail), ttgpr, "
                         "base-serial, ray, and the peer loop on another runtime: "
                         + ", ".join(PEER_RUNTIMES) + " (default peer,base,ttgpr,base-serial)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of every side (default 1)")
    ap.add_argument("--reps", type=int, default=1, help="runs of every side, in turn; the fastest is kept")
    ap.add_argument("--peer-batch", type=int, default=4, help="the peer loop's sw_batch_size (default 4)")
    ap.add_argument("--gpu-sample", action="store_true", help="sample nvidia-smi utilization while each side runs")
    ap.add_argument("--outputs", default=None, metavar="LIST", help="the output set of the mcgr sides (mcgr infer --outputs)")
    ap.add_argument("--footprint", action="store_true", help="bytes per image of each output set instead of the sides")
    ap.add_argument("--models", metavar="DIR", default=None,
                    help="model folder of every side (default: the shipped weights); a segmentor's own folder for base sides")
    ap.add_argument("--peer-models", metavar="DIR", default=None,
                    help="the peer's model folder (or segmentor folder) when it differs from --models")
    ap.add_argument("--json", metavar="PATH", help="append the rows to this JSON file")
    args = ap.parse_args(argv)
    if args.n < 1 or args.threads < 1 or args.reps < 1:
        ap.error("--n, --threads and --reps must be >= 1")
    sides = [s for s in args.sides.split(",") if s]
    unknown = set(sides) - {"peer", "base", "base-unfused", "ttgpr", "base-serial", "ray", *PEER_RUNTIMES}
    if unknown:
        ap.error(f"unknown sides {sorted(unknown)}")
    if len(set(sides)) != len(sides):
        ap.error(f"--sides names a side twice: {args.sides}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no CUDA device")
    if device.type != "cpu" and set(sides) & set(PEER_RUNTIMES):
        ap.error(f"the runtime peers ({', '.join(sorted(set(sides) & set(PEER_RUNTIMES)))}) run on the CPU only")
    torch.set_num_threads(args.threads)
    machine = machine_info(device)
    if args.footprint:
        with tempfile.TemporaryDirectory(prefix="mcgr-bench-footprint-") as tmp:
            models, note = make_models(Path(tmp) / "models")
            rows = [dict(r, note=note) for r in footprint(Path(tmp), models, args)]
        if args.json:
            append_json(args.json, machine, rows)
        return rows
    shape = f"{args.n}x{args.size[0]}x{args.size[1]} {args.device} threads {args.threads}"
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="mcgr-bench-archive-") as tmp:
        tmp = Path(tmp)
        write_archive(tmp / "in", args.n, tuple(args.size))
        write_archive(tmp / "warm", 1, tuple(args.size), seed=1)
        if args.models:
            models, note = Path(args.models).resolve(), f"models {args.models}"
        else:
            models, note = make_models(tmp / "models")
        from mcgr.infer.loader import model_folders
        from mcgr.models import load_model, load_pretrained

        peer_models = Path(args.peer_models).resolve() if args.peer_models else models
        if args.peer_models:
            note += f"; peer: models {args.peer_models}"
        seg = (load_pretrained("seg", device=device) if peer_models is None else
               load_model(model_folders(peer_models, refine=False, argument="--peer-models" if args.peer_models else "--models")["seg"],
                          device=device, kind="seg"))
        seg = seg.eval().to(memory_format=torch.channels_last)
        predictors, setup = {"peer": torch_predictor(seg, device)}, {}
        cache: dict = {}
        for side in [s for s in sides if s in PEER_RUNTIMES]:
            # the export, quantisation and compilation happen once, before the warm-up, untimed (reported)
            pred, setup_s, why = runtime_predictor(seg, side[len("peer-"):], tmp, args.threads, cache)
            if pred is None:
                print(f"{side}: skipped: {why}", flush=True)
                sides.remove(side)
                continue
            predictors[side], setup[side] = pred, {"setup_s": round(setup_s, 2), "runtime": why}
        paths = sorted((tmp / "in").glob("*.dcm"))
        # one-image warm-up of each side (oneDNN / cuDNN primitive creation, imports), not timed
        for side in sides:
            if side in predictors:
                peer_loop(sorted((tmp / "warm").glob("*.dcm")), tmp / f"warm-{side}", predictors[side], device,
                          args.peer_batch)
            elif side != "ray":
                mcgr_side(side, tmp / "warm", tmp / f"warm-{side}", models, args)
        for rep in range(args.reps):
            for side in sides:
                out = tmp / f"out-{side}-{rep}"
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                if side == "ray":
                    import ray

                    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                             logging_level="WARNING")
                try:
                    with PeakMemory() as mem, GpuBusy(args.gpu_sample) as gpu:
                        if side in predictors:
                            t = time.perf_counter()
                            st = peer_loop(paths, out, predictors[side], device, args.peer_batch)
                            wall = time.perf_counter() - t
                            res = {"images": len(paths), "wall_s": wall, **setup.get(side, {}),
                                   "precision": (side[len("peer-"):] if side in PEER_RUNTIMES else
                                                 "bf16" if device.type == "cuda" or _cpu_bf16() else "float32"),
                                   "median_stage_s": {k: round(v / len(paths), 3) for k, v in st.items()},
                                   "output_bytes_per_image": int(sum(f.stat().st_size for f in out.iterdir()) / len(paths))}
                        else:
                            res = mcgr_side(side, tmp / "in", out, models, args)
                finally:
                    if side == "ray":
                        ray.shutdown()
                res["peak_rss_mib"] = round(mem.peak, 1)
                if device.type == "cuda":
                    res["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
                res.update(gpu.summary())
                res["images_per_s"] = round(res["images"] / res["wall_s"], 4)
                print(f"rep {rep} {side:12s} {res['wall_s']:7.2f} s  {res['images_per_s']:.3f} img/s  "
                      f"stages (median s/img) {res['median_stage_s']}  peak RSS {res['peak_rss_mib']:.0f} MiB"
                      + (f"  GPU busy {res['gpu_busy_fraction']:.0%}" if "gpu_busy_fraction" in res else ""), flush=True)
                if side not in best or res["wall_s"] < best[side]["wall_s"]:
                    best[side] = res
                shutil.rmtree(out, ignore_errors=True)
    rows = []
    peer = best.get("peer")
    # the fastest runtime peer: the target "x the best runtime driven by a plain sliding window"
    fastest = min((s for s in best if s in PEER_RUNTIMES), key=lambda s: best[s]["wall_s"], default=None)
    for side, res in best.items():
        ratio = round(peer["wall_s"] / res["wall_s"], 3) if peer else None
        vs_rt = round(best[fastest]["wall_s"] / res["wall_s"], 3) if fastest else None
        rows.append({"op": "archive", "backend": side, "shape": shape, "median_ms": round(1e3 * res["wall_s"] / res["images"], 1),
                     "ratio_vs_ref": ratio, "gbps": None, "note": note,
                     **({"fastest_runtime_peer": fastest, "ratio_vs_fastest_runtime_peer": vs_rt} if fastest else {}),
                     **{k: (round(v, 2) if k == "wall_s" else v) for k, v in res.items()}})
        print(f"{side:18s} {res['images_per_s']:.3f} img/s" + (f"  {ratio:.2f}x the peer loop" if ratio else "")
              + (f", {vs_rt:.2f}x {fastest}" if fastest and side not in PEER_RUNTIMES and side != "peer" else ""))
    if args.json:
        append_json(args.json, machine, rows)
    return rows


if __name__ == "__main__":
    main()
