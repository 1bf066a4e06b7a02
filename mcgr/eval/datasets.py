"""Evaluation datasets: INbreast, CBIS-DDSM, a folder of images with masks, and the synthetic benchmark.

A :class:`Dataset` is a list of :class:`Case` objects read lazily: building the list reads only file
names, CSV rows and (INbreast) the small XML annotation files, and ``case.load()`` reads the pixels.
Every image is returned in the canonical domain of docs/design.md, method M1 (float32 [H, W] in [0, 1], bright =
attenuating, chest wall on the left, via :func:`mcgr.io.read_mammogram`) at its own pixel spacing,
with its truth mask on the same grid and orientation.

What each reader takes as truth, and what it skips (every skip is counted in ``Dataset.counts``
and listed in ``Dataset.skipped`` so that the report can show it):

* INbreast (Moreira et al., 2012): ``AllDICOMs/*.dcm`` and ``AllXML/<id>.xml`` (OsiriX plist:
  ``Images`` -> ``ROIs`` -> ``Name`` and ``Point_px``, strings ``"(x, y)"`` in source pixels). ROIs
  named "Calcification" are calcifications: with 3 or more points a filled polygon; with 1 point a
  disk of radius ``point_radius_mm`` (default 0.2 mm, ~3 px at 0.07 mm: a punctate calcification's
  radius, since a point carries no extent); with 2 points a disk on their midpoint whose radius is the
  larger of half their distance and ``point_radius_mm`` (OsiriX's 2-point ROI is a length drawn
  across the calcification). Other known lesion ROIs (mass, cluster, asymmetry, distortion,
  spiculated region, and OsiriX's "Point N" landmarks) are skipped and counted by name; a ROI name
  outside that list is an unknown ROI type: skipped and counted under ``unknown_roi`` (or an error
  with ``unknown_roi="error"``). An image without an XML file has no annotated finding, so its truth
  is empty (INbreast ships XML files only for annotated images); it is counted under ``no_xml``.
* CBIS-DDSM (Lee et al., 2017): the calcification description CSVs (``calc_case_description_*.csv``,
  columns "image file path", "ROI mask file path", "abnormality type"). One case per full image; its
  truth is the union of the ROI masks of its calcification rows (rows of another abnormality type
  are skipped and counted). CBIS-DDSM ROI masks outline lesions (often a whole cluster), so object
  metrics on it are lesion-level. The CSV paths are tried under the root as written, then, since the
  TCIA download renames the folders under each subject, by the subject folder (the path's first
  component): the full image is its largest DICOM, the ROI mask the DICOM whose size equals the full
  image's (the other one in the ROI folder is the cropped lesion). The films carry no pixel spacing:
  the reader's 0.05 mm default applies unless ``spacing_mm`` is given.
* folder: every image (DICOM, PNG, TIFF, NPY) in a folder with its truth ``<stem>.mask.png``
  (non-zero = calcification, on the image file's grid) and optionally ``<stem>.breast.png``. An image
  without a mask file is skipped and counted under ``missing_truth`` (or an error with
  ``missing_truth="error"``). Spacing: from the DICOM, else the ``spacing_mm`` argument (required).
* synthetic: ``n`` full-field phantoms (:func:`mcgr.synth.phantom.breast_phantom`, seeds
  ``seed, seed + 1, ...``), the first half regular and the second half faint (the shifted subset).

Errors that concern one case (an unreadable image, a mask of the wrong size) are raised by
``case.load()`` as :class:`DatasetError` or :class:`mcgr.io.MammogramReadError` so that an evaluation
can count the case as failed and go on.
"""
from __future__ import annotations

import csv
import math
import os
import plistlib
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

INBREAST_POINT_RADIUS_MM = 0.2
INBREAST_CALC_NAMES = ("calcification", "calcifications")
INBREAST_OTHER_NAMES = ("mass", "cluster", "asymmetry", "assymetry", "distortion", "spiculated region",
                        "espiculated region")
IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".tif", ".tiff", ".npy")
_POINT_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


class DatasetError(ValueError):
    """A dataset file (annotation, CSV, mask) that cannot be used; the message names it and says why."""

    def __init__(self, path, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass
class CaseData:
    """One case's pixels. image: float32 [H, W] in [0, 1] (canonical); truth: bool [H, W] on the same
    grid; breast: bool [H, W] or None (computed by the evaluation); spacing_mm: pixel size in mm."""

    image: np.ndarray
    truth: np.ndarray
    spacing_mm: float
    breast: np.ndarray | None = None
    laterality: str = ""


@dataclass
class Case:
    """A case to evaluate: ``load()`` reads it. ``spacing_mm`` is None when only the file knows it."""

    id: str
    loader: Callable[[], CaseData]
    spacing_mm: float | None = None
    laterality: str = ""
    subset: str = ""
    source: str = ""

    def load(self) -> CaseData:
        data = self.loader()
        if data.truth.shape != data.image.shape:
            raise DatasetError(self.source or self.id, f"truth mask of shape {data.truth.shape} does not match "
                               f"the image's {data.image.shape}")
        if data.breast is not None and data.breast.shape != data.image.shape:
            raise DatasetError(self.source or self.id, f"breast mask of shape {data.breast.shape} does not match "
                               f"the image's {data.image.shape}")
        if not data.laterality:
            data.laterality = self.laterality
        return data


@dataclass
class Dataset:
    """name, the cases, the inputs left out (``skipped``: ``{"id", "reason"}``), counts of what was
    skipped or assumed (ROI types, rows, missing files), and notes on the conventions used."""

    name: str
    cases: list[Case]
    skipped: list[dict] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.cases)

    def __iter__(self):
        return iter(self.cases)

    def __getitem__(self, i) -> Case:
        return self.cases[i]

    @property
    def subsets(self) -> list[str]:
        return sorted({c.subset for c in self.cases if c.subset})

    def summary(self) -> dict:
        return {"name": self.name, "cases": len(self.cases), "subsets": {s: sum(c.subset == s for c in self.cases)
                for s in self.subsets}, "skipped": list(self.skipped), "counts": dict(self.counts),
                "notes": list(self.notes)}


def _check_dir(path, what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{what} {os.fspath(path)!r} is not a folder")
    return p


def _check_spacing(spacing_mm) -> float | None:
    if spacing_mm is None:
        return None
    s = float(spacing_mm)
    if not s > 0 or not math.isfinite(s):
        raise ValueError(f"spacing_mm must be a positive number of mm, got {spacing_mm!r}")
    return s


def _read(path, spacing_mm):
    from mcgr.io import read_mammogram

    return read_mammogram(path, spacing=spacing_mm)


# ---------------------------------------------------------------------------------------- INbreast

@dataclass
class InbreastROI:
    """One ROI of an INbreast XML file: its name, kind ("calcification", "other", "unknown") and its
    points [K, 2] as (x, y) source pixels."""

    name: str
    kind: str
    points: np.ndarray
    image_index: int = 0


def parse_point(text: str, path, where: str) -> tuple[float, float]:
    """``"(x, y)"`` or ``"(x, y, z)"`` -> (x, y); raises :class:`DatasetError` naming ``where``."""
    nums = _POINT_RE.findall(str(text))
    if len(nums) < 2:
        raise DatasetError(path, f"{where}: point {text!r} is not of the form '(x, y)'")
    return float(nums[0]), float(nums[1])


def roi_kind(name: str) -> str:
    n = " ".join(str(name).strip().lower().split())
    if n in INBREAST_CALC_NAMES:
        return "calcification"
    if n in INBREAST_OTHER_NAMES or re.fullmatch(r"point \d+", n):
        return "other"
    return "unknown"


def parse_inbreast_xml(path) -> tuple[list[InbreastROI], dict]:
    """Every ROI of an INbreast/OsiriX XML annotation file, and the image size it states (may be {}).

    Raises :class:`DatasetError` for a file that is not such a plist.
    """
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            doc = plistlib.load(fh, fmt=plistlib.FMT_XML)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - expat and plistlib raise several kinds on a bad file
        raise DatasetError(p, f"not an OsiriX XML plist ({type(exc).__name__}: {exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("Images"), list):
        raise DatasetError(p, "no 'Images' array at the top of the plist")
    rois: list[InbreastROI] = []
    size: dict = {}
    for i, im in enumerate(doc["Images"]):
        if not isinstance(im, dict):
            raise DatasetError(p, f"Images[{i}] is not a dict")
        if "ImageHeight" in im and "ImageWidth" in im:
            size = {"height": int(im["ImageHeight"]), "width": int(im["ImageWidth"])}
        for j, roi in enumerate(im.get("ROIs", []) or []):
            where = f"Images[{i}].ROIs[{j}]"
            if not isinstance(roi, dict):
                raise DatasetError(p, f"{where} is not a dict")
            name = str(roi.get("Name", ""))
            raw = roi.get("Point_px", [])
            if not isinstance(raw, list):
                raise DatasetError(p, f"{where}.Point_px is not an array")
            pts = np.array([parse_point(s, p, where) for s in raw], dtype=np.float64).reshape(-1, 2)
            rois.append(InbreastROI(name=name, kind=roi_kind(name), points=pts, image_index=i))
    return rois, size


def _disk_into(mask: np.ndarray, cy: float, cx: float, r: float) -> bool:
    h, w = mask.shape
    y0, y1 = max(0, int(math.floor(cy - r))), min(h, int(math.ceil(cy + r)) + 1)
    x0, x1 = max(0, int(math.floor(cx - r))), min(w, int(math.ceil(cx + r)) + 1)
    if y0 >= y1 or x0 >= x1:
        return False
    yy, xx = np.ogrid[y0:y1, x0:x1]
    d = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    if not d.any():  # a radius under half a pixel still marks the pixel holding the centre
        iy, ix = int(round(cy)), int(round(cx))
        if 0 <= iy < h and 0 <= ix < w:
            mask[iy, ix] = True
            return True
        return False
    mask[y0:y1, x0:x1] |= d
    return True


def render_calcifications(rois: list[InbreastROI], shape: tuple[int, int], spacing_mm: float,
                          point_radius_mm: float = INBREAST_POINT_RADIUS_MM) -> tuple[np.ndarray, Counter]:
    """Truth mask bool [H, W] (source grid) of the calcification ROIs, and counts of how each was drawn
    (``polygon``, ``point``, ``two_points``, ``empty``, ``outside_image``)."""
    from PIL import Image, ImageDraw

    h, w = shape
    mask = np.zeros(shape, dtype=bool)
    counts: Counter = Counter()
    r_px = point_radius_mm / spacing_mm
    poly = None
    for roi in rois:
        if roi.kind != "calcification":
            continue
        pts = roi.points
        if len(pts) == 0:
            counts["empty"] += 1
            continue
        if len(pts) >= 3:
            if poly is None:
                poly = Image.new("1", (w, h), 0)
                draw = ImageDraw.Draw(poly)
            xy = [(float(x), float(y)) for x, y in pts]
            inside = any(-0.5 <= x < w - 0.5 and -0.5 <= y < h - 0.5 for x, y in xy)
            draw.polygon(xy, fill=1, outline=1)
            counts["polygon" if inside else "outside_image"] += 1
            continue
        if len(pts) == 1:
            (cx, cy), r = pts[0], r_px
            kind = "point"
        else:
            cx, cy = pts.mean(axis=0)
            r = max(r_px, 0.5 * float(np.hypot(*(pts[1] - pts[0]))))
            kind = "two_points"
        counts[kind if _disk_into(mask, float(cy), float(cx), r) else "outside_image"] += 1
    if poly is not None:
        mask |= np.array(poly, dtype=bool)
    return mask, counts


def _inbreast_laterality(stem: str) -> str:
    m = re.search(r"_MG_([LR])_", stem.upper())
    return m.group(1) if m else ""


def _find_folder(root: Path, name: str) -> Path | None:
    for p in root.iterdir():
        if p.is_dir() and p.name.lower() == name.lower():
            return p
    return None


def inbreast(root, point_radius_mm: float = INBREAST_POINT_RADIUS_MM, unknown_roi: str = "skip",
             spacing_mm: float | None = None) -> Dataset:
    """The INbreast dataset under ``root`` (``AllDICOMs/`` and ``AllXML/``, else any ``*.dcm`` and
    ``*.xml`` below ``root``). See the module docstring for what is read and what is skipped.

    point_radius_mm: radius of the disk drawn for a 1-point calcification; unknown_roi: "skip"
    (count it) or "error" (raise :class:`DatasetError` naming the file and the ROI name).
    """
    root = _check_dir(root, "INbreast root")
    if unknown_roi not in ("skip", "error"):
        raise ValueError(f"unknown_roi must be 'skip' or 'error', got {unknown_roi!r}")
    if not point_radius_mm > 0:
        raise ValueError(f"point_radius_mm must be > 0, got {point_radius_mm!r}")
    spacing_mm = _check_spacing(spacing_mm)
    dcm_dir, xml_dir = _find_folder(root, "AllDICOMs"), _find_folder(root, "AllXML")
    dcms = sorted((dcm_dir or root).rglob("*.dcm"))
    xmls = {p.stem.split("_")[0]: p for p in sorted((xml_dir or root).rglob("*.xml"))}
    if not dcms:
        raise FileNotFoundError(f"no DICOM (*.dcm) files under INbreast root {os.fspath(root)!r}")
    counts: dict = {"roi_types": Counter(), "unknown_roi": Counter(), "calcification_rois": 0, "no_xml": 0,
                    "xml_without_image": 0}
    cases: list[Case] = []
    used = set()
    for d in dcms:
        cid = d.stem.split("_")[0]
        xml = xmls.get(cid)
        rois: list[InbreastROI] = []
        size: dict = {}
        if xml is None:
            counts["no_xml"] += 1
        else:
            used.add(cid)
            rois, size = parse_inbreast_xml(xml)
            for r in rois:
                if r.kind == "calcification":
                    counts["calcification_rois"] += 1
                elif r.kind == "other":
                    counts["roi_types"][r.name.strip()] += 1
                else:
                    if unknown_roi == "error":
                        raise DatasetError(xml, f"unknown ROI type {r.name!r} (known: {', '.join(INBREAST_CALC_NAMES + INBREAST_OTHER_NAMES)}, 'Point N')")
                    counts["unknown_roi"][r.name] += 1
        cases.append(Case(id=cid, loader=_inbreast_loader(d, xml, rois, size, point_radius_mm, spacing_mm),
                          spacing_mm=spacing_mm, laterality=_inbreast_laterality(d.stem), source=os.fspath(d)))
    counts["xml_without_image"] = len(set(xmls) - used)
    counts["roi_types"] = dict(counts["roi_types"])
    counts["unknown_roi"] = dict(counts["unknown_roi"])
    skipped = [{"id": k, "reason": f"XML {xmls[k].name} has no matching DICOM"} for k in sorted(set(xmls) - used)]
    notes = [f"1-point calcifications drawn as disks of radius {point_radius_mm} mm; 2-point ones as disks on "
             "their midpoint (radius max(half the distance, that radius)); 3+ points as filled polygons",
             "ROIs other than 'Calcification' skipped (counted in roi_types); unknown ROI names counted in unknown_roi",
             "images without an XML file have an empty truth (no_xml)"]
    return Dataset("inbreast", cases, skipped=skipped, counts=counts, notes=notes)


def _inbreast_loader(dcm: Path, xml: Path | None, rois, size: dict, point_radius_mm: float, spacing_mm):
    def load() -> CaseData:
        m = _read(dcm, spacing_mm)
        shape = tuple(m.source_shape)
        if size and (size["height"], size["width"]) != shape:
            raise DatasetError(xml, f"states an image of {size['height']} x {size['width']} px but "
                               f"{dcm.name} is {shape[0]} x {shape[1]}")
        truth, _ = render_calcifications(rois, shape, m.spacing_mm, point_radius_mm)
        if m.flipped:
            truth = np.ascontiguousarray(truth[:, ::-1])
        return CaseData(image=m.image, truth=truth, spacing_mm=m.spacing_mm, laterality=m.laterality)

    return load


# -------------------------------------------------------------------------------------- CBIS-DDSM

def _norm_col(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(name).strip().lower()).strip("_")


def _dicom_shape(path: Path) -> tuple[int, int, str]:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        return int(ds.Rows), int(ds.Columns), str(ds.get("SeriesDescription", "") or "")
    except Exception as exc:  # noqa: BLE001 - a damaged header reads as unusable
        raise DatasetError(path, f"unreadable DICOM header ({type(exc).__name__}: {exc})") from None


def _subject_dicoms(root: Path, rel: str) -> tuple[Path | None, list[Path]]:
    rel = rel.strip().replace("\\", "/")
    direct = root / rel
    if direct.is_file():
        return direct, []
    subject = rel.split("/")[0]
    for base in (root, root / "CBIS-DDSM"):
        d = base / subject
        if d.is_dir():
            return None, sorted(d.rglob("*.dcm"))
    return None, []


def _resolve_image(root: Path, rel: str, csv_path: Path) -> Path:
    direct, found = _subject_dicoms(root, rel)
    if direct is not None:
        return direct
    if not found:
        raise DatasetError(csv_path, f"image file {rel!r} not found under {os.fspath(root)!r}")
    if len(found) == 1:
        return found[0]
    return max(found, key=lambda p: (lambda s: s[0] * s[1])(_dicom_shape(p)))


def _resolve_mask(root: Path, rel: str, csv_path: Path, shape: tuple[int, int]) -> Path:
    direct, found = _subject_dicoms(root, rel)
    if direct is not None:
        return direct
    if not found:
        raise DatasetError(csv_path, f"ROI mask file {rel!r} not found under {os.fspath(root)!r}")
    same = [p for p in found if _dicom_shape(p)[:2] == tuple(shape)]
    if len(same) == 1:
        return same[0]
    named = [p for p in (same or found) if "mask" in _dicom_shape(p)[2].lower()]
    if len(named) == 1:
        return named[0]
    raise DatasetError(csv_path, f"cannot tell the ROI mask of {rel!r} among {[p.name for p in found]}")


def _read_mask_dicom(path: Path) -> np.ndarray:
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=True)
        a = ds.pixel_array
    except Exception as exc:  # noqa: BLE001
        raise DatasetError(path, f"unreadable ROI mask DICOM ({type(exc).__name__}: {exc})") from None
    if a.ndim != 2:
        raise DatasetError(path, f"ROI mask must be a 2-D image, got shape {a.shape}")
    return a > 0


def cbis_ddsm(root, csv_files=None, spacing_mm: float | None = None) -> Dataset:
    """The CBIS-DDSM calcification cases under ``root``.

    csv_files: description CSVs (default: ``root/calc_case_description*.csv``, searched also one
    folder down); paths in them are relative to ``root``. See the module docstring.
    """
    root = _check_dir(root, "CBIS-DDSM root")
    spacing_mm = _check_spacing(spacing_mm)
    if csv_files is None:
        csv_files = sorted(root.glob("calc_case_description*.csv")) or sorted(root.glob("*/calc_case_description*.csv"))
        if not csv_files:
            raise FileNotFoundError(f"no calc_case_description*.csv under CBIS-DDSM root {os.fspath(root)!r}")
    groups: dict[str, dict] = {}
    counts: dict = {"rows": 0, "calcification_rows": 0, "other_abnormality_rows": Counter()}
    for cf in map(Path, csv_files):
        if not cf.is_file():
            raise FileNotFoundError(f"CBIS-DDSM description CSV {os.fspath(cf)!r} not found")
        with open(cf, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            cols = {_norm_col(c): c for c in (reader.fieldnames or [])}
            need = ("image_file_path", "roi_mask_file_path", "abnormality_type")
            missing = [n for n in need if n not in cols]
            if missing:
                raise DatasetError(cf, f"missing column(s) {missing}; found {list(reader.fieldnames or [])}")
            subset = "test" if "test" in cf.name.lower() else ("train" if "train" in cf.name.lower() else "")
            for row in reader:
                counts["rows"] += 1
                kind = str(row[cols["abnormality_type"]]).strip().lower()
                if kind != "calcification":
                    counts["other_abnormality_rows"][kind or "(empty)"] += 1
                    continue
                counts["calcification_rows"] += 1
                img = str(row[cols["image_file_path"]]).strip()
                g = groups.setdefault(img, {"masks": [], "csv": cf, "subset": subset,
                                            "lat": str(row.get(cols.get("left_or_right_breast", ""), "")).strip()[:1].upper()})
                g["masks"].append(str(row[cols["roi_mask_file_path"]]).strip())
    counts["other_abnormality_rows"] = dict(counts["other_abnormality_rows"])
    cases = []
    for img, g in groups.items():
        cid = img.replace("\\", "/").split("/")[0]
        if not g["subset"]:
            g["subset"] = "test" if "test" in cid.lower() else ("train" if "train" in cid.lower() else "")
        cases.append(Case(id=cid, loader=_cbis_loader(root, img, g["masks"], g["csv"], spacing_mm),
                          spacing_mm=spacing_mm, laterality=g["lat"], subset=g["subset"], source=img))
    notes = ["truth = union of the calcification ROI masks of each full image (lesion outlines, not single calcifications)",
             "rows of another abnormality type skipped (other_abnormality_rows)",
             f"spacing: {spacing_mm} mm" if spacing_mm else "spacing: the reader's 0.05 mm film default (the DICOMs carry none)"]
    return Dataset("cbis-ddsm", cases, counts=counts, notes=notes)


def _cbis_loader(root: Path, img: str, masks: list[str], csv_path: Path, spacing_mm):
    def load() -> CaseData:
        ipath = _resolve_image(root, img, csv_path)
        m = _read(ipath, spacing_mm)
        shape = tuple(m.source_shape)
        truth = np.zeros(shape, dtype=bool)
        for rel in masks:
            mp = _resolve_mask(root, rel, csv_path, shape)
            a = _read_mask_dicom(mp)
            if a.shape != shape:
                raise DatasetError(mp, f"ROI mask of {a.shape[0]} x {a.shape[1]} px does not match its image "
                                   f"{ipath.name} of {shape[0]} x {shape[1]} px")
            truth |= a
        if m.flipped:
            truth = np.ascontiguousarray(truth[:, ::-1])
        return CaseData(image=m.image, truth=truth, spacing_mm=m.spacing_mm, laterality=m.laterality)

    return load


# ----------------------------------------------------------------------------------------- folder

def _read_png_mask(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            a = np.array(im)
    except Exception as exc:  # noqa: BLE001 - PIL raises several kinds on a bad file
        raise DatasetError(path, f"not a readable PNG mask ({type(exc).__name__}: {exc})") from None
    if a.ndim == 3:
        a = a[..., :3].max(axis=-1)
    return a > 0


def image_folder(path, spacing_mm: float | None = None, missing_truth: str = "skip") -> Dataset:
    """Every image in folder ``path`` with its ``<stem>.mask.png`` truth (see the module docstring).

    spacing_mm: pixel size for files without one (PNG, TIFF, NPY; wins over DICOM tags when given);
    missing_truth: "skip" (count the image) or "error" (raise FileNotFoundError naming the mask file).
    """
    root = _check_dir(path, "image folder")
    if missing_truth not in ("skip", "error"):
        raise ValueError(f"missing_truth must be 'skip' or 'error', got {missing_truth!r}")
    spacing_mm = _check_spacing(spacing_mm)
    images = [p for p in sorted(root.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
              and not p.name.lower().endswith((".mask.png", ".breast.png"))]
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {os.fspath(root)!r}")
    cases, skipped = [], []
    for p in images:
        mask = p.with_name(p.stem + ".mask.png")
        if not mask.is_file():
            if missing_truth == "error":
                raise FileNotFoundError(f"truth file {os.fspath(mask)!r} for image {p.name} not found")
            skipped.append({"id": p.stem, "reason": f"missing truth file {mask.name}"})
            continue
        breast = p.with_name(p.stem + ".breast.png")
        cases.append(Case(id=p.stem, loader=_folder_loader(p, mask, breast if breast.is_file() else None, spacing_mm),
                          spacing_mm=spacing_mm, source=os.fspath(p)))
    notes = ["truth: <stem>.mask.png (non-zero = calcification) on the image file's grid; optional <stem>.breast.png"]
    return Dataset("folder", cases, skipped=skipped, counts={"missing_truth": len(skipped)}, notes=notes)


def _folder_loader(image: Path, mask: Path, breast: Path | None, spacing_mm):
    def load() -> CaseData:
        m = _read(image, spacing_mm)
        shape = tuple(m.source_shape)
        out = []
        for p in (mask, breast):
            if p is None:
                out.append(None)
                continue
            a = _read_png_mask(p)
            if a.shape != shape:
                raise DatasetError(p, f"mask of {a.shape[0]} x {a.shape[1]} px does not match image {image.name} "
                                   f"of {shape[0]} x {shape[1]} px")
            out.append(np.ascontiguousarray(a[:, ::-1]) if m.flipped else a)
        return CaseData(image=m.image, truth=out[0], breast=out[1], spacing_mm=m.spacing_mm, laterality=m.laterality)

    return load


# -------------------------------------------------------------------------------------- synthetic

def synthetic(n: int, seed: int = 0, size: tuple[int, int] = (1536, 1152), spacing_mm: float = 0.07) -> Dataset:
    """The built-in benchmark: ``n`` phantoms of ``size`` (H, W) px, seeds ``seed + i``; cases
    ``0 .. n - n // 2 - 1`` are "regular", the rest "faint" (the shifted subset)."""
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    h, w = (int(v) for v in size)
    if min(h, w) < 128:
        raise ValueError(f"size must be at least 128 x 128 px, got {h} x {w}")
    spacing_mm = _check_spacing(spacing_mm)
    n_regular = n - n // 2
    cases = []
    for i in range(n):
        subset = "regular" if i < n_regular else "faint"
        cases.append(Case(id=f"synth-{i:04d}-{subset}", loader=_phantom_loader(h, w, spacing_mm, seed + i, subset == "faint"),
                          spacing_mm=spacing_mm, laterality="L", subset=subset, source=f"breast_phantom(seed={seed + i})"))
    notes = [f"{n} phantoms of {h} x {w} px at {spacing_mm} mm, seeds {seed}..{seed + n - 1}; "
             f"{n_regular} regular, {n // 2} faint (fainter than the training median: the shifted subset)"]
    return Dataset("synthetic", cases, counts={"regular": n_regular, "faint": n // 2}, notes=notes)


def _phantom_loader(h: int, w: int, spacing_mm: float, seed: int, faint: bool):
    def load() -> CaseData:
        from mcgr.synth.phantom import breast_phantom

        ph = breast_phantom(h, w, spacing_mm=spacing_mm, seed=seed, faint=faint)
        return CaseData(image=ph.image.numpy(), truth=ph.truth.numpy().astype(bool), breast=ph.breast.numpy(),
                        spacing_mm=spacing_mm, laterality="L")

    return load
