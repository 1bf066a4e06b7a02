"""Clinical outputs, all on the ORIGINAL grid and orientation of the input file.

``<stem>.mask.png`` (uint8 0/255), ``<stem>.prob.npy`` (float32), optional ``<stem>.uncertainty.npy``,
``<stem>.overlay.png`` (the mammogram downsized for viewing with detections outlined, clusters
circled, isolated calcifications boxed and a legend, plus a zoomed crop of each cluster and then of
each isolated calcification by peak probability, ``MAX_CROPS`` in all), ``<stem>.json`` (source, spacing, detections and
clusters in source pixels and mm) and, for DICOM input, ``<stem>.seg.dcm`` (a binary DICOM
Segmentation referencing the source image). Every file is written to a temporary name in
``out_dir`` and renamed into place, so a reader never sees a half-written file.
"""
from __future__ import annotations

import io as _io
import json
import math
import os
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


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = _io.BytesIO()
    np.save(buf, a, allow_pickle=False)
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


def write_outputs(out_dir, stem: str, mammogram: Mammogram, prob_canonical, mask_canonical, detections, clusters,
                  *, uncertainty=None, model_mm: float = MODEL_SPACING_MM, excluded: dict | None = None) -> dict:
    """Write the results for one mammogram into ``out_dir``; return ``{kind: path}``.

    ``prob_canonical`` (float [h, w] in [0, 1]) and ``mask_canonical`` (bool [h, w]) are on the
    canonical model grid (``model_mm``) or on the grid of ``mammogram.image``; ``uncertainty`` the same
    shape (optional). ``detections``: dicts ``{"id", "y", "x", "area_px", "peak_prob", "cluster"[,
    "confidence"]}`` with y, x in canonical model-grid pixels and area in model-grid pixels;
    ``clusters``: dicts ``{"id", "members", "y", "x"}``. Keys of the result: mask, prob, overlay,
    json, uncertainty (if given), seg (DICOM input only).
    ``excluded``: regions the pipeline did not search, e.g. ``{"pectoral": {"found", "contrast",
    "boundary": [[y, x], ...]}}`` with the boundary on ``prob_canonical``'s grid: written to the JSON
    in source pixels and outlined (green) on the overlay.
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
    t = _transform_for(mammogram, prob.shape, float(model_mm))

    mask_src = t.to_source(mask.astype(bool, copy=False), kind="mask")
    prob_src = np.clip(t.to_source(prob, kind="map"), 0.0, 1.0).astype(np.float32)
    paths: dict[str, str] = {}
    from PIL import Image

    p = out / f"{stem}.mask.png"
    _atomic_write(p, _png_bytes(Image.fromarray((mask_src.astype(np.uint8) * 255))))
    paths["mask"] = str(p)
    p = out / f"{stem}.prob.npy"
    _atomic_write(p, _npy_bytes(prob_src))
    paths["prob"] = str(p)
    if unc is not None:
        p = out / f"{stem}.uncertainty.npy"
        _atomic_write(p, _npy_bytes(t.to_source(unc, kind="map").astype(np.float32)))
        paths["uncertainty"] = str(p)

    det_rows, cl_rows = _records(t, dets, cls)
    excl = _excluded_records(t, excluded)
    p = out / f"{stem}.overlay.png"
    _atomic_write(p, _png_bytes(_overlay(mammogram, mask_src, det_rows, cl_rows, excl), OVERLAY_PNG_LEVEL))
    paths["overlay"] = str(p)

    if mammogram.dicom is not None:
        p = out / f"{stem}.seg.dcm"
        _write_seg(p, mammogram, mask_src)
        paths["seg"] = str(p)

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
        "files": {k: os.path.basename(v) for k, v in paths.items()},
    }
    _atomic_write(p, json.dumps(doc, indent=1).encode())
    paths["json"] = str(p)
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


def _write_seg(path: Path, m: Mammogram, mask_src: np.ndarray) -> None:
    import highdicom as hd
    import pydicom
    from pydicom.uid import generate_uid

    src = pydicom.dcmread(m.dicom.path, stop_before_pixels=True, force=True)
    if src.get("SOPInstanceUID") != m.dicom.sop_instance_uid:
        raise ValueError(f"{m.dicom.path} changed since it was read (SOPInstanceUID differs)")
    # The Patient and Study modules' Type 2 attributes must be present (empty is allowed), and
    # highdicom copies them from the source; anonymised or minimal files often drop them.
    for kw in _SEG_TYPE2:
        if kw not in src:
            setattr(src, kw, "")
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
    seg.PatientOrientation = src.get("PatientOrientation", "")
    buf = _io.BytesIO()
    seg.save_as(buf)
    _atomic_write(path, buf.getvalue())
