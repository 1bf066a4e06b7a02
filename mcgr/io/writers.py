"""Clinical outputs, all on the ORIGINAL grid and orientation of the input file.

The output set (``outputs``, :data:`OUTPUT_KINDS`) chooses among ``<stem>.mask.png`` (uint8 0/255),
``<stem>.json`` (source, spacing, detections and clusters in source pixels and mm),
``<stem>.seg.dcm`` (for DICOM input: a binary DICOM Segmentation referencing the source image),
``<stem>.overlay.png`` (the mammogram downsized for viewing with detections outlined, clusters
circled, isolated calcifications boxed and a legend, plus a zoomed crop of each cluster and then of
each isolated calcification by peak probability, ``MAX_CROPS`` in all) -- :data:`DEFAULT_OUTPUTS`,
what an archive keeps -- and, when asked, ``<stem>.prob.png`` and (TT-GPR) ``<stem>.uncertainty.png``:
16-bit quantised maps cropped to the box of their non-zero pixels (:mod:`mcgr.io.maps`; read back on
the input grid with :func:`mcgr.io.read_prob_map`, the scale and box also in the JSON's ``maps``).
Every file is written to a temporary name in ``out_dir`` and renamed into place, so a reader never
sees a half-written file.
"""
from __future__ import annotations

import io as _io
import json
import math
import os
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np

from mcgr import MODEL_SPACING_MM, __version__
from mcgr.io.reader import Mammogram
from mcgr.io.resample import ModelTransform, output_length

OVERLAY_MAX_SIDE = 1600
CROP_MM = 12.0
CROP_PX = 256
MAX_CROPS = 12
OUTPUT_KINDS = ("mask", "json", "seg", "overlay", "prob", "uncertainty")
DEFAULT_OUTPUTS = ("mask", "json", "seg", "overlay")
MAP_KINDS = ("prob", "uncertainty")


def output_set(outputs) -> tuple[str, ...]:
    """``outputs`` (an iterable of :data:`OUTPUT_KINDS`, or a comma-separated string) as a tuple in
    :data:`OUTPUT_KINDS` order without repeats; ValueError naming the unknown kinds."""
    items = outputs.split(",") if isinstance(outputs, str) else list(outputs)
    kinds = [str(k).strip().lower() for k in items if str(k).strip()]
    bad = sorted(set(kinds) - set(OUTPUT_KINDS))
    if not kinds or bad:
        raise ValueError(f"outputs must be a non-empty subset of {','.join(OUTPUT_KINDS)}, got {outputs!r}")
    return tuple(k for k in OUTPUT_KINDS if k in kinds)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# zlib level of the overlay PNG: measured on a 1743 x 1600 full-field overlay (2026-12-05, 2-core EPYC):
# level 6 (PIL's default) 0.47 s / 1.01 MB, level 3 0.18 s / 1.04 MB, level 1 0.14 s / 1.17 MB.
# The binary mask keeps level 6 (0.08 s / 15 KB; level 1 is 3x larger for 0.03 s).
OVERLAY_PNG_LEVEL = 3


def _png_bytes(img, compress_level: int = 6) -> bytes:
    buf = _io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def _transform_for(m: Mammogram, shape: tuple[int, int], model_mm: float) -> ModelTransform:
    """The transform from the canonical grid ``shape`` (the image grid or the ``model_mm`` grid) to the source."""
    if tuple(shape) == tuple(m.image.shape):
        return ModelTransform(tuple(m.source_shape), tuple(shape), float(m.spacing_mm), float(m.spacing_mm), bool(m.flipped))
    h, w = m.source_shape
    expected = (output_length(h, m.spacing_mm, model_mm), output_length(w, m.spacing_mm, model_mm))
    if tuple(shape) != expected:
        raise ValueError(f"prob_canonical has shape {tuple(shape)}: neither the image grid {m.image.shape} "
                         f"nor the {model_mm} mm model grid {expected}")
    return ModelTransform(tuple(m.source_shape), expected, float(m.spacing_mm), float(model_mm), bool(m.flipped))


def _as_numpy(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be [H, W], got shape {a.shape}")
    return a


def _check_detections(detections, clusters) -> tuple[list[dict], list[dict]]:
    dets = list(detections or [])
    for i, d in enumerate(dets):
        missing = {"id", "y", "x", "area_px", "peak_prob", "cluster"} - set(d)
        if missing:
            raise ValueError(f"detections[{i}] lacks {sorted(missing)}")
    cls = list(clusters or [])
    for i, c in enumerate(cls):
        missing = {"id", "members", "y", "x"} - set(c)
        if missing:
            raise ValueError(f"clusters[{i}] lacks {sorted(missing)}")
    return dets, cls


def _num(v):
    if v is None:
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    f = float(v)
    return f if math.isfinite(f) else None


class WrittenOutputs(dict):
    """``{kind: path}`` of the outputs written, and ``failed``: ``{kind: reason}`` of those that could
    not be made from this input (e.g. a SEG from a header without its Study Instance UID)."""

    def __init__(self):
        super().__init__()
        self.failed: dict[str, str] = {}


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return first if isinstance(exc, ValueError) and first else f"{type(exc).__name__}: {first}"


def write_outputs(out_dir, stem: str, mammogram: Mammogram, prob_canonical, mask_canonical, detections, clusters,
                  *, uncertainty=None, model_mm: float = MODEL_SPACING_MM, excluded: dict | None = None,
                  outputs=DEFAULT_OUTPUTS, provenance: dict | None = None) -> dict:
    """Write the results for one mammogram into ``out_dir``; return ``{kind: path}``.

    ``prob_canonical`` (float [h, w] in [0, 1]) and ``mask_canonical`` (bool [h, w]) are on the
    canonical model grid (``model_mm``) or on the grid of ``mammogram.image``; ``uncertainty`` the same
    shape (optional). ``detections``: dicts ``{"id", "y", "x", "area_px", "peak_prob", "cluster"[,
    "confidence", "base_prob", "generator_vote"]}`` with y, x in canonical model-grid pixels and area in model-grid pixels;
    ``clusters``: dicts ``{"id", "members", "y", "x"}``. ``outputs``: the kinds to write
    (:func:`output_set`; default :data:`DEFAULT_OUTPUTS`); "seg" is written for DICOM input only and
    "uncertainty" only when ``uncertainty`` is given. Returns ``{kind: path}`` of the files written.
    ``excluded``: regions the pipeline did not search, e.g. ``{"pectoral": {"found", "contrast",
    "boundary": [[y, x], ...]}}`` with the boundary on ``prob_canonical``'s grid: written to the JSON
    in source pixels and outlined (green) on the overlay. ``provenance``: what produced the result
    (the models' folders and sha256, the operating point), written to the JSON as ``model``.
    """
    if not isinstance(mammogram, Mammogram):
        raise TypeError(f"mammogram must be a Mammogram, got {type(mammogram).__name__}")
    if not isinstance(stem, str) or not stem or os.sep in stem or stem.startswith("."):
        raise ValueError(f"stem must be a plain file name stem, got {stem!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prob = _as_numpy(prob_canonical, "prob_canonical").astype(np.float32, copy=False)
    mask = _as_numpy(mask_canonical, "mask_canonical")
    if mask.shape != prob.shape:
        raise ValueError(f"mask_canonical {mask.shape} must match prob_canonical {prob.shape}")
    if not np.isfinite(prob).all():
        raise ValueError("prob_canonical holds NaN or inf")
    unc = None
    if uncertainty is not None:
        unc = _as_numpy(uncertainty, "uncertainty").astype(np.float32, copy=False)
        if unc.shape != prob.shape:
            raise ValueError(f"uncertainty {unc.shape} must match prob_canonical {prob.shape}")
    dets, cls = _check_detections(detections, clusters)
    kinds = output_set(outputs)
    t = _transform_for(mammogram, prob.shape, float(model_mm))

    mask_src = t.to_source(mask.astype(bool, copy=False), kind="mask")
    paths = WrittenOutputs()
    maps: dict[str, dict] = {}
    from PIL import Image

    from mcgr.io.maps import encode_map, map_file_name

    def write(kind: str, name: str, make) -> None:
        """One output on its own: a content failure (a header the SEG cannot be made from) is kept in
        ``paths.failed`` with its reason and the others are still written; a failing disk or folder
        (OSError) fails the whole result."""
        p = out / name
        try:
            _atomic_write(p, make())
        except OSError:
            raise
        except Exception as exc:  # noqa: BLE001 - one writer never takes the others with it
            paths.failed[kind] = _reason(exc)
            return
        paths[kind] = str(p)

    if "mask" in kinds:
        write("mask", f"{stem}.mask.png", lambda: _png_bytes(Image.fromarray((mask_src.astype(np.uint8) * 255))))
    for kind, arr, hi in (("prob", prob, 1.0), ("uncertainty", unc, None)):
        if kind not in kinds or arr is None:
            continue
        src = np.clip(t.to_source(arr, kind="map"), 0.0, hi).astype(np.float32)
        data, rec = encode_map(src, kind, hi=hi)
        write(kind, map_file_name(stem, kind), lambda data=data: data)
        if kind in paths:
            maps[kind] = dict(rec, file=map_file_name(stem, kind))

    det_rows, cl_rows = _records(t, dets, cls)
    excl = _excluded_records(t, excluded)
    if "overlay" in kinds:
        write("overlay", f"{stem}.overlay.png",
              lambda: _png_bytes(_overlay(mammogram, mask_src, det_rows, cl_rows, excl), OVERLAY_PNG_LEVEL))
    if "seg" in kinds and mammogram.dicom is not None:
        write("seg", f"{stem}.seg.dcm", lambda: _seg_bytes(mammogram, mask_src))

    if "json" not in kinds:
        return paths
    p = out / f"{stem}.json"
    doc = {
        "source": mammogram.source, "source_shape": list(mammogram.source_shape),
        "spacing_mm": float(mammogram.spacing_mm), "spacing_source": mammogram.spacing_source,
        "laterality": mammogram.laterality, "view": mammogram.view, "flipped": bool(mammogram.flipped),
        "model_spacing_mm": float(MODEL_SPACING_MM), "canonical_grid_spacing_mm": round(float(t.model_mm), 6),
        "coordinates": "row/col: source pixel indices (pixel centres) of the input file as stored; y_mm/x_mm: "
        "row/col * spacing_mm (as stored, the API's y_mm/x_mm for a file); y/x: pixels of the canonical grid "
        "(chest wall on the left) at canonical_grid_spacing_mm",
        "mcgr_version": __version__, "n_detections": len(det_rows), "n_clusters": len(cl_rows),
        "detections": det_rows, "clusters": cl_rows, "excluded": excl,
        "files": {k: os.path.basename(v) for k, v in paths.items()}, "outputs": list(kinds),
        "maps": maps, "failed_outputs": dict(paths.failed),
    }
    if provenance is not None:
        doc["model"] = provenance
    _atomic_write(p, json.dumps(doc, indent=1).encode())
    paths["json"] = str(p)
    for kind, why in paths.failed.items():
        from mcgr.io.errors import MammogramWarning

        warnings.warn(f"{os.path.basename(mammogram.source)}: no {kind} output: {why}", MammogramWarning, stacklevel=2)
    return paths


def _records(t: ModelTransform, dets: list[dict], cls: list[dict]) -> tuple[list[dict], list[dict]]:
    src_mm = t.source_mm
    model_area_mm2 = t.model_mm ** 2
    rows = []
    for d in dets:
        r, c = t.model_to_source_px(float(d["y"]), float(d["x"]))
        # rounded to what they mean: 0.01 px, 0.001 mm, 0.0001 mm^2, 4 digits of probability
        rec = {
            "id": _num(d["id"]), "cluster": _num(d["cluster"]) if d["cluster"] is not None else None,
            "row": round(float(r), 2), "col": round(float(c), 2),
            "y_mm": round(float(r) * src_mm, 3), "x_mm": round(float(c) * src_mm, 3),
            "y": round(float(d["y"]), 2), "x": round(float(d["x"]), 2),
            "area_px": _num(d["area_px"]), "area_mm2": round(float(d["area_px"]) * model_area_mm2, 4),
            "area_source_px": round(float(d["area_px"]) * model_area_mm2 / src_mm ** 2, 2),
            "peak_prob": round(float(d["peak_prob"]), 4),
        }
        for k in ("length_mm", "width_mm"):
            if k in d:
                rec[k] = round(float(d[k]), 3)
        if "morphology" in d:
            rec["morphology"] = str(d["morphology"])
        if "confidence" in d:
            rec["confidence"] = round(float(d["confidence"]), 4)
        for k in ("base_prob", "generator_vote"):  # TT-GPR: the numbers the detection's score was made of
            if k in d:
                rec[k] = round(float(d[k]), 6)
        rows.append(rec)
    crow = []
    for c in cls:
        r, cc = t.model_to_source_px(float(c["y"]), float(c["x"]))
        rec = {"id": _num(c["id"]), "members": [_num(v) for v in c["members"]], "n": len(c["members"]),
               "row": round(float(r), 2), "col": round(float(cc), 2),
               "y_mm": round(float(r) * src_mm, 3), "x_mm": round(float(cc) * src_mm, 3),
               "y": round(float(c["y"]), 2), "x": round(float(c["x"]), 2)}
        if "extent_mm" in c:  # the same cluster fields as the API's (extent: rows x cols, in mm)
            rec["extent_mm"] = [round(float(v), 3) for v in c["extent_mm"]]
        if "compact" in c:
            rec["compact"] = bool(c["compact"])
        crow.append(rec)
    return rows, crow


def _excluded_records(t: ModelTransform, excluded: dict | None) -> dict:
    """Excluded regions with their boundaries mapped to source pixels (row, col)."""
    out = {}
    for name, reg in (excluded or {}).items():
        if reg is None:
            continue
        rec = {k: v for k, v in reg.items() if k != "boundary"}
        rec["boundary_rowcol"] = [[round(float(a), 1) for a in t.model_to_source_px(float(y), float(x))]
                                  for y, x in reg.get("boundary", [])]
        if name == "pectoral":
            rec["rule"] = ("MLO pectoral muscle found from the image (mcgr.io.pectoral); no calcification is reported "
                           "on it or within the pipeline's pectoral_margin_mm of its edge")
        out[name] = rec
    return out


def _outline(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _text_inside(draw, xy, text: str, size: tuple[int, int], fill) -> None:
    """``text`` at ``xy`` moved so that it lies wholly inside an image of ``size`` (w, h)."""
    w, h = size
    tw = draw.textlength(text)
    x = min(max(2.0, xy[0]), max(2.0, w - tw - 2))
    y = min(max(2.0, xy[1]), max(2.0, h - 14))
    draw.text((x, y), text, fill=fill)


RED, YELLOW, CYAN, GREEN = (255, 40, 40), (255, 220, 0), (0, 200, 255), (60, 220, 90)


def _legend(draw, size: tuple[int, int], excluded: bool) -> None:
    rows = [(RED, "calcification outline"), (YELLOW, "Cn: cluster (>= 3 calcifications, 5 mm circle)"),
            (CYAN, "Dn: isolated calcification")]
    if excluded:
        rows.append((GREEN, "pectoral muscle: not searched"))
    w = int(max(draw.textlength(t) for _, t in rows)) + 30
    h = 14 * len(rows) + 6
    x0, y0 = 4, max(0, size[1] - h - 4)
    draw.rectangle([x0, y0, x0 + w, y0 + h], fill=(0, 0, 0), outline=(200, 200, 200))
    for i, (c, t) in enumerate(rows):
        y = y0 + 4 + 14 * i
        draw.rectangle([x0 + 5, y + 2, x0 + 15, y + 10], outline=c, width=2)
        draw.text((x0 + 22, y), t, fill=c)


def _crop_items(dets: list[dict], cls: list[dict]) -> list[tuple]:
    """What gets a zoomed crop, in order: clusters, then isolated calcifications by peak probability;
    at most ``MAX_CROPS`` in all."""
    items = [("cluster", c) for c in cls]
    iso = sorted((d for d in dets if d["cluster"] is None or d["cluster"] < 0), key=lambda d: -float(d["peak_prob"]))
    items += [("detection", d) for d in iso]
    return items[:MAX_CROPS]


def _overlay(m: Mammogram, mask_src: np.ndarray, dets: list[dict], cls: list[dict], excluded: dict | None = None):
    """Overview (source orientation, downsized) with outlines, circled clusters, boxed isolated
    calcifications and a legend, then a zoomed crop of each cluster and isolated calcification
    (:func:`_crop_items`), each labelled with what it shows and its size."""
    from PIL import Image, ImageDraw

    from mcgr.io.resample import resample, resample_mask

    img_src = m.image[:, ::-1] if m.flipped else m.image
    h, w = img_src.shape
    f = max(1.0, max(h, w) / OVERLAY_MAX_SIDE)
    view_mm = m.spacing_mm * f
    small = resample(np.ascontiguousarray(img_src), m.spacing_mm, view_mm, "area") if f > 1 else img_src
    small_mask = resample_mask(mask_src, m.spacing_mm, view_mm) if f > 1 else mask_src
    grey = (np.clip(small, 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    rgb[_outline(small_mask)] = RED
    overview = Image.fromarray(rgb)
    size = overview.size
    draw = ImageDraw.Draw(overview)
    shown_excluded = False
    for name, reg in (excluded or {}).items():  # what was not searched, and why, where a reader can see it
        pts = [((c[1]) / f, (c[0]) / f) for c in reg.get("boundary_rowcol", [])]
        if len(pts) >= 2:
            draw.line(pts, fill=GREEN, width=2)
            _text_inside(draw, (pts[0][0] + 4, pts[0][1] + 4), f"{name} (not searched)", size, GREEN)
            shown_excluded = True
    radius = max(6.0, 5.0 / view_mm)  # 5 mm circles around clusters
    for c in cls:
        y, x = c["row"] / f, c["col"] / f
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], outline=YELLOW, width=2)
        _text_inside(draw, (x + radius + 2, y - radius), f"C{c['id']}", size, YELLOW)
    box = max(5.0, 1.5 / view_mm)  # 3 mm boxes around isolated calcifications
    for d in dets:
        if d["cluster"] is None or d["cluster"] < 0:
            y, x = d["row"] / f, d["col"] / f
            draw.rectangle([x - box, y - box, x + box, y + box], outline=CYAN, width=2)
            _text_inside(draw, (x + box + 2, y - box), f"D{d['id']}", size, CYAN)
    _legend(draw, size, shown_excluded)

    crops = []
    half = CROP_MM / m.spacing_mm / 2
    for kind, o in _crop_items(dets, cls):
        r0 = int(round(min(max(o["row"] - half, 0), max(h - 2 * half, 0))))
        c0 = int(round(min(max(o["col"] - half, 0), max(w - 2 * half, 0))))
        r1, c1 = min(h, r0 + int(2 * half)), min(w, c0 + int(2 * half))
        patch = img_src[r0:r1, c0:c1]
        lo, hi = float(patch.min()), float(patch.max())
        g = ((patch - lo) / (hi - lo if hi > lo else 1.0) * 255).astype(np.uint8)
        prgb = np.repeat(g[..., None], 3, axis=2)
        prgb[_outline(mask_src[r0:r1, c0:c1])] = RED
        crop = Image.fromarray(prgb).resize((CROP_PX, CROP_PX), Image.NEAREST)
        cd = ImageDraw.Draw(crop)
        if kind == "cluster":
            ext = o.get("extent_mm")
            size_txt = f", spread {ext[0]:.1f} x {ext[1]:.1f} mm" if ext else ""
            label, colour = f"C{o['id']}: {o['n']} calcifications{size_txt}", YELLOW
        else:
            size_txt = f"{o['length_mm']:.2f} mm " if "length_mm" in o else ""
            label = f"D{o['id']}: {size_txt}{o.get('morphology', '')} p={float(o['peak_prob']):.3f}".replace("  ", " ")
            colour = CYAN
        _text_inside(cd, (4, 4), label, crop.size, colour)
        # scale bar: what the crop's width is, drawn as a bar of 5 mm
        bar = 5.0 / (2 * half * m.spacing_mm) * CROP_PX
        cd.line([(6, CROP_PX - 8), (6 + bar, CROP_PX - 8)], fill=(255, 255, 255), width=2)
        _text_inside(cd, (10 + bar, CROP_PX - 16), f"5 mm (crop {2 * half * m.spacing_mm:.0f} mm wide)", crop.size,
                     (255, 255, 255))
        crops.append(crop)
    if not crops:
        return overview
    per_col = max(1, overview.height // CROP_PX)
    ncols = -(-len(crops) // per_col)
    canvas = Image.new("RGB", (overview.width + ncols * CROP_PX, max(overview.height, min(len(crops), per_col) * CROP_PX)))
    canvas.paste(overview, (0, 0))
    for i, crop in enumerate(crops):
        canvas.paste(crop, (overview.width + (i // per_col) * CROP_PX, (i % per_col) * CROP_PX))
    return canvas


_SEG_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate", "StudyTime",
              "ReferringPhysicianName", "AccessionNumber")
# The source's UIDs the SEG cannot do without (Type 1 there): it belongs to the source's study and
# references the source's series and instance by them. None can be generated: a new Study Instance
# UID would file the SEG in a study of its own, and a made-up reference points at nothing. (The
# SEG's own Series and SOP Instance UIDs are always generated.)
_SEG_SOURCE_UIDS = {"SOPClassUID": "(0008,0016)", "SOPInstanceUID": "(0008,0018)",
                    "StudyInstanceUID": "(0020,000D)", "SeriesInstanceUID": "(0020,000E)"}
_ORIENTATION_RE = re.compile(r"^[AHPLRF]{1,3}$")


def _valid_uid(value) -> bool:
    from pydicom.uid import UID

    text = "" if value is None else str(value).strip()
    return bool(text) and UID(text).is_valid


def _seg_source(m: Mammogram):
    """The source header the SEG is made from, checked and with what it copies made valid: the header
    as it was read (``m.dicom.header``; re-read from the path only for a Mammogram built without it),
    its UIDs checked (a ValueError names the missing one), Patient and Study attributes whose value is
    not valid for their VR emptied (Type 2: empty is allowed), and a Patient Orientation that is not
    two direction codes (scanned films store the view there: 'CC') emptied."""
    import pydicom
    from pydicom.dataset import Dataset

    hdr = getattr(m.dicom, "header", None)
    if hdr is None:
        hdr = pydicom.dcmread(m.dicom.path, stop_before_pixels=True, force=True)
    src = Dataset()
    src.update(hdr)  # a shallow copy: the fixes below never touch the Mammogram's header
    if getattr(hdr, "file_meta", None) is not None:
        src.file_meta = hdr.file_meta
    for kw, tag in _SEG_SOURCE_UIDS.items():
        if not _valid_uid(src.get(kw)):
            got = src.get(kw)
            what = "missing" if got is None else ("empty" if not str(got).strip() else f"not a valid UID ({str(got)!r})")
            raise ValueError(f"the source's {kw} {tag} is {what}: a DICOM SEG must reference its source by it "
                             f"(no SEG written; the other outputs are)")
    from highdicom._standard_utils import get_sop_class_iod_map  # highdicom's table of the standard's IODs

    if str(src.SOPClassUID) not in get_sop_class_iod_map():
        raise ValueError(f"the source's SOPClassUID {src.SOPClassUID} is not a storage class of the standard: "
                         f"a DICOM SEG cannot reference it (no SEG written; the other outputs are)")
    if not _dicom_value_ok(src, "Modality"):
        raise ValueError("the source has no Modality (0008,0060) (Type 1 of its series): a DICOM SEG cannot be "
                         "made from it (no SEG written; the other outputs are)")
    # The Patient and Study modules' Type 2 attributes must be present (empty is allowed), and
    # highdicom copies them from the source; anonymised or minimal files often drop them, and
    # damaged ones hold values their VR does not allow ('19xx0101' as a date, two patient names).
    for kw in _SEG_TYPE2:
        if kw not in src or not _dicom_value_ok(src, kw):
            setattr(src, kw, "")
    # General Image: Patient Orientation is Type 2C, required without Image Orientation (Patient); the
    # SEG's rows and columns are the source's, so are their directions, when the source states them.
    po = src.get("PatientOrientation")
    vals = [] if po is None else ([str(v) for v in po] if not isinstance(po, str) else [po])
    if not (len(vals) == 2 and all(_ORIENTATION_RE.match(v.strip()) for v in vals)):
        if "PatientOrientation" in src:
            del src.PatientOrientation
        vals = []
    return src, vals


def _dicom_value_ok(ds, keyword: str) -> bool:
    """Whether ``ds``'s ``keyword`` is present with one value that is valid for its VR."""
    import datetime

    from pydicom import config
    from pydicom.valuerep import validate_value

    try:
        elem = ds[keyword]
        value = elem.value
    except Exception:  # noqa: BLE001 - a value that cannot even be parsed
        return False
    if value is None or (isinstance(value, str) and not value.strip()):
        return keyword != "Modality"
    if elem.VM != 1:
        return False
    try:
        validate_value(elem.VR, value, config.RAISE)
    except Exception:  # noqa: BLE001
        return False
    if elem.VR == "DA":
        try:
            datetime.datetime.strptime(str(value).strip(), "%Y%m%d")
        except ValueError:
            return False
    if elem.VR == "TM":
        t = str(value).strip().split(".")[0]
        if not (t.isdigit() and len(t) in (2, 4, 6) and int(t[:2]) < 24 and (len(t) < 4 or int(t[2:4]) < 60)
                and (len(t) < 6 or int(t[4:6]) < 61)):
            return False
    return True


def _seg_bytes(m: Mammogram, mask_src: np.ndarray) -> bytes:
    import highdicom as hd
    from pydicom.uid import generate_uid

    src, orientation = _seg_source(m)
    # A projection mammogram has no plane in patient coordinates (no Image Position / Orientation
    # (Patient)), so the SEG cannot place its frame in the source's Frame of Reference: with a Frame of
    # Reference UID the standard (PS3.3 A.51.5) wants Pixel Measures with a Slice Thickness and plane
    # positions, which a projection has not got (highdicom.seg.segread rejected the Pixel Measures it
    # wrote without one). The SEG is instead pixel for pixel on the source grid, tied to the source by
    # the Derivation Image functional group and the Referenced Series Sequence, highdicom's route for
    # projection radiographs; the pixel spacing stays in the source it references.
    if "FrameOfReferenceUID" in src:
        del src.FrameOfReferenceUID
    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label="microcalcification",
        segmented_property_category=hd.sr.CodedConcept("49755003", "SCT", "Morphologically Altered Structure"),
        segmented_property_type=hd.sr.CodedConcept("129748009", "SCT", "Calcification"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="mcgr MC-GenRef", version=__version__,
            family=hd.sr.CodedConcept("123109", "DCM", "Artificial Intelligence")),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # source names like "Mass-Test_P_00173" are not PN-shaped
        seg = hd.seg.Segmentation(
            source_images=[src], pixel_array=mask_src.astype(bool), segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[desc], series_instance_uid=generate_uid(), series_number=900,
            sop_instance_uid=generate_uid(), instance_number=1, manufacturer="mcgr",
            manufacturer_model_name="MC-GenRef", software_versions=__version__, device_serial_number="0",
            omit_empty_frames=False, series_description="mcgr microcalcifications",
        )
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "PixelMeasuresSequence" in shared:
        del shared.PixelMeasuresSequence
    # General Image: Patient Orientation is Type 2C, required without Image Orientation (Patient); the
    # SEG's rows and columns are the source's, so are their directions.
    seg.PatientOrientation = orientation
    buf = _io.BytesIO()
    seg.save_as(buf)
    return buf.getvalue()
