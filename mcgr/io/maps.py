"""Probability and uncertainty maps in a form an archive can keep, and read back on the input grid.

A map written by :func:`encode_map` is a 16-bit greyscale PNG holding ``q = round(value / scale)``
(uint16) over the box of its non-zero pixels; a ``tEXt`` chunk named ``mcgr-map`` carries what puts
it back: ``{"format": "mcgr-map/1", "kind", "shape": [H, W], "box": [r0, r1, c0, c1], "scale",
"offset"}`` (the box half-open, in pixels of the full map). The full map is ``offset + q * scale``
inside the box and ``offset`` outside, so every value is within ``scale / 2`` of the one written
(``scale`` = 1/65535 for a probability: 7.6e-6, far below the gap between the operating threshold
0.99 and the nearest 8-bit level, 0.0020). The pipeline sets the map to 0 outside the region it
searched (breast less skin band, film edge, pectoral), so the box lies inside the breast box and
cropping to it loses nothing. :func:`read_prob_map` reads this form and the full float32 ``.npy``
that mcgr wrote before, returning the same thing: a float32 [H, W] map on the input file's grid.
"""
from __future__ import annotations

import io as _io
import json
import os

import numpy as np

MAP_FORMAT = "mcgr-map/1"
MAP_CHUNK = "mcgr-map"
QMAX = 65535
# zlib level of the 16-bit map PNG: on a 3328 x 2560 base probability map of a breast phantom
# (2026-12-06, 2-core EPYC; benchmarks/bench_archive.py --footprint) level 1 and 6 differ by <10 % in
# bytes and level 6 costs several times the time, so the fast level is kept.
MAP_PNG_LEVEL = 1


def quantise_map(values: np.ndarray, hi: float | None = None) -> tuple[np.ndarray, float, list[int]]:
    """``(q uint16 [r1 - r0, c1 - c0], scale, [r0, r1, c0, c1])`` for a map of values in ``[0, hi]``.

    ``hi`` defaults to the map's maximum (1 when it is all zero). ``q = round(v / scale)`` with
    ``scale = hi / 65535`` and the box the bounding box of ``q != 0`` (``[0, 1, 0, 1]`` holding a 0 when
    every ``q`` is 0, a PNG having at least one pixel).
    """
    a = np.asarray(values)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"values must be a non-empty [H, W] map, got shape {a.shape}")
    a = a.astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        raise ValueError("values hold NaN or inf")
    if float(a.min()) < 0:
        raise ValueError(f"values must be >= 0, got a minimum of {float(a.min())}")
    top = float(a.max())
    if hi is None:
        hi = top if top > 0 else 1.0
    if not hi > 0 or top > hi * (1 + 1e-6):
        raise ValueError(f"hi must be > 0 and hold the map's maximum {top}, got {hi}")
    scale = float(hi) / QMAX
    q = np.minimum(np.rint(a.astype(np.float64) / scale), QMAX).astype(np.uint16)
    rows, cols = np.flatnonzero(q.any(axis=1)), np.flatnonzero(q.any(axis=0))
    if rows.size == 0:
        return np.zeros((1, 1), np.uint16), scale, [0, 1, 0, 1]
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return np.ascontiguousarray(q[r0:r1, c0:c1]), scale, [r0, r1, c0, c1]


def encode_map(values: np.ndarray, kind: str, hi: float | None = None,
               compress_level: int = MAP_PNG_LEVEL) -> tuple[bytes, dict]:
    """The 16-bit PNG of ``values`` (float [H, W] >= 0, on the input grid) and its record (the
    ``mcgr-map`` chunk's fields, also written into the result's JSON). ``kind``: "prob" or
    "uncertainty"; ``hi`` as :func:`quantise_map` (1 for a probability)."""
    from PIL import Image, PngImagePlugin

    if kind not in ("prob", "uncertainty"):
        raise ValueError(f"kind must be 'prob' or 'uncertainty', got {kind!r}")
    q, scale, box = quantise_map(values, hi)
    rec = {"format": MAP_FORMAT, "kind": kind, "shape": [int(s) for s in np.shape(values)], "box": box,
           "scale": scale, "offset": 0.0}
    info = PngImagePlugin.PngInfo()
    info.add_text(MAP_CHUNK, json.dumps(rec, sort_keys=True))
    buf = _io.BytesIO()
    Image.fromarray(q).save(buf, format="PNG", compress_level=compress_level, pnginfo=info)
    return buf.getvalue(), rec


def _map_record(text: str | None, path: str) -> dict:
    try:
        rec = json.loads(text) if text is not None else None
    except ValueError:
        rec = None
    if not isinstance(rec, dict) or rec.get("format") != MAP_FORMAT:
        raise ValueError(f"{path}: not an mcgr map PNG (no '{MAP_CHUNK}' chunk of format {MAP_FORMAT})")
    try:
        shape = [int(v) for v in rec["shape"]]
        box = [int(v) for v in rec["box"]]
        scale, offset = float(rec["scale"]), float(rec["offset"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path}: its '{MAP_CHUNK}' chunk lacks shape, box, scale or offset") from None
    r0, r1, c0, c1 = box if len(box) == 4 else (0, -1, 0, -1)
    if len(shape) != 2 or min(shape) < 1 or not (0 <= r0 < r1 <= shape[0] and 0 <= c0 < c1 <= shape[1]) \
            or not (np.isfinite(scale) and scale > 0 and np.isfinite(offset)):
        raise ValueError(f"{path}: its '{MAP_CHUNK}' chunk is inconsistent (shape {shape}, box {box}, scale {scale})")
    return {"shape": shape, "box": [r0, r1, c0, c1], "scale": scale, "offset": offset}


def read_prob_map(path) -> np.ndarray:
    """A probability (or uncertainty) map written by mcgr, as float32 [H, W] on the input file's grid.

    ``path``: a ``<stem>.prob.png`` / ``<stem>.uncertainty.png`` (16-bit, cropped, quantised; see the
    module docstring: every value within ``scale / 2`` of the one computed) or a full float32
    ``<stem>.prob.npy`` / ``.uncertainty.npy`` as mcgr wrote before. Raises ValueError naming the
    file when it is neither.
    """
    p = os.fspath(path)
    low = p.lower()
    if low.endswith(".npy"):
        a = np.load(p, allow_pickle=False)
        if a.ndim != 2 or a.dtype.kind != "f":
            raise ValueError(f"{p}: expected a float [H, W] map, got {a.dtype} of shape {a.shape}")
        return a.astype(np.float32, copy=False)
    if not low.endswith(".png"):
        raise ValueError(f"{p}: expected an mcgr map (.prob.png, .uncertainty.png, or a float32 .npy)")
    from PIL import Image

    with Image.open(p) as im:
        im.load()
        rec = _map_record(getattr(im, "text", {}).get(MAP_CHUNK), p)
        q = np.asarray(im)
    r0, r1, c0, c1 = rec["box"]
    if q.ndim != 2 or q.shape != (r1 - r0, c1 - c0):
        raise ValueError(f"{p}: pixels {q.shape} do not fill the recorded box {rec['box']}")
    out = np.full(rec["shape"], rec["offset"], np.float32)
    out[r0:r1, c0:c1] = (rec["offset"] + q.astype(np.float64) * rec["scale"]).astype(np.float32)
    return out


def map_file_name(stem: str, kind: str) -> str:
    return f"{stem}.{kind}.png"


__all__ = ["MAP_FORMAT", "encode_map", "map_file_name", "quantise_map", "read_prob_map"]
