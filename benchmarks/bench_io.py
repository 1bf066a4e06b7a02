"""Full-field I/O: read + canonicalise, breast mask, and the tile-ready image at 0.07 mm, for a
4096 x 3072 16-bit DICOM (0.05 mm, a right breast so the mirror is exercised), uncompressed and RLE.

    python benchmarks/bench_io.py [--reps N] [--json PATH]

Prints one row per stage and transfer syntax (median ms over ``--reps`` runs after a warm-up) and,
with ``--json``, appends them in the shared harness's schema (op "io/<stage>", backend = syntax).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: find `benchmarks` without shadowing an installed mcgr
    sys.path.append(str(Path(__file__).resolve().parent.parent))
from benchmarks._harness import append_json, machine_info  # noqa: E402

from mcgr.io import breast_mask, read_mammogram, to_model_spacing  # noqa: E402

ROWS, COLS, SPACING = 4096, 3072, 0.05


def make_dicom(path: Path, syntax: str) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:ROWS, 0:COLS].astype(np.float32)
    inside = ((y - ROWS / 2) / (0.42 * ROWS)) ** 2 + ((COLS - 1 - x) / (0.7 * COLS)) ** 2 <= 1
    tissue = 20000 + 15000 * np.sin(y / 97.0) * np.cos(x / 61.0) + 800 * rng.standard_normal((ROWS, COLS))
    pixels = np.where(inside, tissue, 300 + 40 * rng.standard_normal((ROWS, COLS)))
    pixels = np.clip(pixels, 0, 65535).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.ImageLaterality, ds.ViewPosition = "MG", "R", "CC"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing = [SPACING, SPACING]
    ds.PixelData = pixels.tobytes()
    if syntax == "rle":
        ds.compress(RLELossless, pixels)
    ds.save_as(path, enforce_file_format=True)


def median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for syntax in ("native", "rle"):
            path = Path(tmp) / f"{syntax}.dcm"
            make_dicom(path, syntax)
            size_mb = os.path.getsize(path) / 1e6
            m = read_mammogram(path)
            img, _ = to_model_spacing(m)
            stages = {
                "read+canonicalise": lambda: read_mammogram(path),
                "breast_mask": lambda: breast_mask(m.image, m.spacing_mm),
                "to_model_spacing": lambda: to_model_spacing(m),
                "total": lambda: _all(path),
            }
            for stage, fn in stages.items():
                ms = median_ms(fn, args.reps)
                rows.append({"op": f"io/{stage}", "backend": syntax, "shape": f"{ROWS}x{COLS} u16 ({size_mb:.1f} MB file)",
                             "median_ms": round(ms, 2), "ratio_vs_ref": None, "gbps": None})
    print(f"{'stage':<20} {'syntax':<8} {'input':<32} {'median ms':>10}")
    for r in rows:
        print(f"{r['op'][3:]:<20} {r['backend']:<8} {r['shape']:<32} {r['median_ms']:>10.1f}")
    print(f"(model grid {img.shape[0]}x{img.shape[1]} at 0.07 mm; torch threads {torch.get_num_threads()})")
    if args.json:
        append_json(args.json, machine_info(torch.device("cpu")), rows)
        print(f"wrote {args.json}")


def _all(path):
    m = read_mammogram(path)
    mask = breast_mask(m.image, m.spacing_mm)
    img, t = to_model_spacing(m)
    return img, t, mask


if __name__ == "__main__":
    main()
