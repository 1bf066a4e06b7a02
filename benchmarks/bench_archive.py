"""Archive throughput of `mcgr infer`: images per minute for the local and the Ray engines.

    python -m benchmarks.bench_archive [--n 8] [--size 1280 1024] [--refine] [--engines local,ray]
                                       [--workers W] [--json PATH]

Writes N synthetic mammograms (16-bit DICOM, a breast phantom with texture) into a temporary
folder, then runs ``mcgr infer`` on it with each engine and reports, per engine: wall time of the
run (engine start included), the steady-state rate from the manifest's commit times (first result
to last), and the median per-image stage times. Models: the shipped weights when present;
otherwise random weights with the shipped architecture (the default preset's U-Nets, same compute
per tile; the segmentor's output bias is lowered so that a random net marks a few spots rather
than half the breast, keeping detection and overlay costs realistic) -- the row says which.

Local engine: one process with all cores as torch threads. Ray engine: a local Ray instance with
W workers (default: one per core) of one thread each. On a GPU host pass ``--device cuda`` and
``--gpus-per-worker G`` (e.g. 0.5: two workers share a GPU so one's CPU stages overlap the
other's GPU work).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._harness import append_json, machine_info  # noqa: E402


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


def run_engine(engine: str, inputs: Path, out: Path, models: Path | None, args) -> dict:
    from mcgr.cli import main

    argv = ["infer", str(inputs), "--out", str(out), "--quiet", "--device", args.device]
    if models is not None:
        argv += ["--models", str(models)]
    if not args.refine:
        argv.append("--no-refine")
    if engine == "local":
        argv += ["--threads", str(args.threads or os.cpu_count())]
    else:
        argv += ["--engine", "ray", "--workers", str(args.workers or os.cpu_count()), "--cpus-per-worker", "1"]
        if args.gpus_per_worker is not None:
            argv += ["--num-gpus-per-worker", str(args.gpus_per_worker)]
        argv[argv.index("--device") + 1] = "cuda" if args.device.startswith("cuda") else "cpu"
    t = time.perf_counter()
    rc = main(argv)
    wall = time.perf_counter() - t
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    ok = [r for r in lines if r["status"] == "ok"]
    if rc != 0 or len(ok) != len(lines):
        raise RuntimeError(f"{engine}: exit {rc}, {len(ok)}/{len(lines)} ok: {[r.get('error') for r in lines if r['status'] != 'ok'][:3]}")
    ts = sorted(r["finished_unix"] for r in ok)
    steady = (len(ts) - 1) / (ts[-1] - ts[0]) * 60 if len(ts) > 1 and ts[-1] > ts[0] else float("nan")
    stages = sorted({k for r in ok for k in r["timings"]})
    med = {k: round(statistics.median(r["timings"].get(k, 0.0) for r in ok), 3) for k in stages}
    sizes = statistics.median(sum(r["files"].values()) for r in ok)
    return {"images": len(ok), "wall_s": round(wall, 2), "images_per_min": round(len(ok) / wall * 60, 2),
            "steady_images_per_min": round(steady, 2), "median_stage_s": med,
            "refined_fraction": round(statistics.median(r["refined_fraction"] for r in ok), 3),
            "output_bytes_per_image": int(sizes)}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=8, help="images (default 8)")
    ap.add_argument("--size", type=int, nargs=2, default=(1280, 1024), metavar=("H", "W"),
                    help="image size in px at 0.07 mm (default 1280 1024; a full field is 3328 2560)")
    ap.add_argument("--refine", action="store_true", help="TT-GPR on (default: base segmentor only)")
    ap.add_argument("--engines", default="local,ray")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="local engine torch threads (default: all cores)")
    ap.add_argument("--workers", type=int, default=None, help="Ray workers (default: one per core)")
    ap.add_argument("--gpus-per-worker", type=float, default=None)
    ap.add_argument("--json", metavar="PATH", help="append the rows to this JSON file")
    args = ap.parse_args(argv)
    machine = machine_info(torch.device(args.device))
    rows = []
    with tempfile.TemporaryDirectory(prefix="mcgr-bench-archive-") as tmp:
        tmp = Path(tmp)
        write_archive(tmp / "in", args.n, tuple(args.size))
        models, note = make_models(tmp / "models")
        shape = f"{args.n}x{args.size[0]}x{args.size[1]} {'ttgpr' if args.refine else 'base'} {args.device}"
        for engine in args.engines.split(","):
            if engine == "ray":
                try:
                    import ray
                except ImportError:
                    print("ray: not installed (pip install 'mcgr[distributed]'); skipped")
                    continue
                ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="WARNING")
            try:
                res = run_engine(engine, tmp / "in", tmp / f"out-{engine}", models, args)
            finally:
                if engine == "ray":
                    ray.shutdown()
            row = {"op": "archive", "backend": engine, "shape": shape, "median_ms": round(60000 / res["images_per_min"], 1),
                   "note": note, **res}
            rows.append(row)
            print(f"{engine:5s} {shape}: {res['images_per_min']:.1f} img/min overall ({res['wall_s']} s for "
                  f"{res['images']}), steady {res['steady_images_per_min']:.1f} img/min; median stages (s) "
                  f"{res['median_stage_s']}; {res['output_bytes_per_image'] / 1e6:.1f} MB written per image [{note}]")
    if args.json:
        append_json(args.json, machine, rows)
    return rows


if __name__ == "__main__":
    main()
