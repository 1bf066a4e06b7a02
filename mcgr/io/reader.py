"""Read a mammogram (DICOM, PNG, TIFF, NPY) into the canonical image domain of docs/design.md, method M1.

Intensity: the stored values go through the Modality LUT (Rescale Slope/Intercept or a Modality LUT
Sequence) and are then mapped linearly onto [0, 1] through the robust window of
:mod:`mcgr.io.intensity` (the image's own minimum and maximum with padding, saturated markers and
outliers above a breast-tissue fence left out; padding reads 0); MONOCHROME1 and TIFF MinIsWhite are
inverted so that bright = attenuating. Float data already within [0, 1] is kept as stored. The VOI LUT / window is NOT applied by default
(``voi=False``): a window clips everything above its top, which is exactly where calcifications
live, and sigmoid VOI functions compress the bright end; MC detection wants the raw, linear data.
``voi=True`` applies the first VOI transform, the VOI LUT Sequence winning over Window Center/Width
when both are present (pydicom's ``prefer_lut``: an explicit LUT is the vendor's full mapping).

Pixel spacing (mm at the breast): an explicit ``spacing=`` wins; then PixelSpacing (0028,0030)
(already calibrated to the object plane); then ImagerPixelSpacing (0018,1164) divided by
EstimatedRadiographicMagnificationFactor (0018,1114) when present (the detector pitch is magnified
by the geometry; MC sizes in the synthetic model are sizes in the breast); else a warning and
``DEFAULT_FILM_SPACING_MM`` = 0.05 mm (the CBIS-DDSM scanned films carry no spacing; DDSM's
digitisers scanned at 42 to 50 um, 50 um being the LUMISYS scanner of most cases). Only a MISSING
tag is guessed: a PixelSpacing or ImagerPixelSpacing that is present but not two numbers within
0.005 to 2.0 mm (0, negative, 0.001, one value, text) is an error naming the tag, since the standard
gives these tags two values (row\\column) and a wrong one would silently rescale every size; pass
``spacing=`` (``--spacing``) to read such a file anyway. The model grid the image will be resampled
to is checked as soon as the spacing is known (:func:`mcgr.io.resample.check_model_grid`): a 640 x
512 px image claiming 2.0 mm pixels is refused with its size at 0.07 mm and the memory it would take.

Stored values: pydicom's blind masking of the bits above BitsStored is NOT used. Bits above it that
hold one constant fill are masked off (PS3.5 8.1.1); values that vary above it mean a wrong header
(the data use more bits: masking would wrap the bright end onto dark values and the detector fires
all over the image), so the file is read with its real range and a loud warning, also kept in
``meta["warnings"]`` (the archive writes it into the manifest and prints it). Signed data not
sign-extended past BitsStored is sign-extended.

Content: an image too small to hold a breast (a side under ``MIN_SIDE_PX`` px), blank (one value)
or binary (two values only, e.g. a boolean mask) is refused: it is not a mammogram, and segmenting
it would report detections that mean nothing.

Orientation: the canonical image has the chest wall on the LEFT. Patient Orientation (0020,0020)
decides when its row direction is A or P, unless the image plainly contradicts it (the other outer
third holds over ``ORIENTATION_CONTRADICTION`` times the signal: then a warning, and the image
decides); otherwise the image decides (the side whose outer third
holds more signal is the chest wall: the breast touches it along its whole height). Laterality comes
from ImageLaterality (0020,0062), Laterality (0020,0060), then view codes in text tags or the file
name ("RCC", "LEFT_MLO"), else from the image under the usual display convention (a left breast
hangs with its chest wall on the left).
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mcgr import MODEL_SPACING_MM
from mcgr.io.errors import MammogramReadError, MammogramWarning

DEFAULT_FILM_SPACING_MM = 0.05
MAX_SIDE_PX = 20000
# Smallest side of an image taken as a mammogram: 16 px is 1.1 mm at the model spacing, less than the
# smallest calcification cluster (2 mm); any real view is over 1000 px a side.
MIN_SIDE_PX = 16
_SPACING_RANGE_MM = (0.005, 2.0)
# Source pixels, checked from the header before any decoding (with the memory they would take): the
# largest film (24 x 30 cm) at the finest digitiser pitch in use (25 um; DDSM scanned at 42 to 50 um)
# is 115 Mpx. A 174 KB PNG of 13000 x 13000 px (169 Mpx) at 0.005 mm peaked at 4.4 GB and wrote a
# 645 MB result folder (2-core CPU box, 2026-12-06): about 26 bytes per source pixel from reading to
# the written outputs, counted on top of the model grid's own cost.
MAX_SOURCE_PIXELS = 120_000_000
SOURCE_BYTES_PER_PX = 26
# A damaged Rows/Columns must not make a decoder allocate gigabytes: past 64 MiB decoded, a
# compression ratio over 1000:1 is taken as a damaged header (real mammograms compress < 20:1).
_MAX_BLIND_DECODE = 64 << 20
_MAX_RATIO = 1000
_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit, MammogramReadError)

_VIEWS = ("XCCL", "XCCM", "MLO", "LMO", "CC", "ML", "LM", "FB", "SIO", "AT")
_VIEW_MEANINGS = {
    "cranio-caudal": "CC", "medio-lateral oblique": "MLO", "medio-lateral": "ML", "latero-medial": "LM",
    "latero-medial oblique": "LMO", "exaggerated cranio-caudal": "XCCL", "caudo-cranial": "FB",
    "superolateral to inferomedial oblique": "SIO", "axillary tail": "AT",
}
_LAT_VIEW_RE = re.compile(r"(?:^|[^A-Z])(L|R)[_ -]?(XCCL|XCCM|MLO|CC|ML|LM)(?:$|[^A-Z])")
_WORD_LAT_RE = re.compile(r"(?:^|[^A-Z])(LEFT|RIGHT)(?:$|[^A-Z])")
_VIEW_RE = re.compile(r"(?:^|[^A-Z])(XCCL|XCCM|MLO|CC|ML|LM)(?:$|[^A-Z])")


@dataclass(frozen=True)
class DicomRef:
    """What the DICOM SEG writer needs from the source: its path, its UIDs and ``header``, the
    header as it was read (a pydicom Dataset without the pixel data), so that the SEG describes the
    file that was segmented even if the path has since been replaced."""

    path: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str | None
    header: object = field(default=None, compare=False, repr=False)


@dataclass
class Mammogram:
    """A mammogram in the canonical domain.

    ``image``: float32 [H, W] in [0, 1], bright = attenuating, chest wall on the left (when
    ``canonical``); ``spacing_mm``: its pixel spacing; ``source_shape``: (rows, cols) of the file's
    pixel array; ``flipped``: ``image`` is the source mirrored left-right.
    """

    image: np.ndarray
    spacing_mm: float
    laterality: str
    view: str
    source: str
    source_shape: tuple[int, int]
    flipped: bool
    spacing_source: str
    dicom: DicomRef | None = None
    meta: dict = field(default_factory=dict)

    def to_source(self, arr, spacing_mm: float | None = None):
        """``arr`` (canonical, [h, w]) back on the file's grid and orientation (NumPy).

        ``arr`` on the grid of ``image`` is only un-mirrored. ``arr`` on another grid (e.g. the model
        grid of :func:`mcgr.io.to_model_spacing`) is resampled back first: its spacing is
        ``spacing_mm`` (default: the model spacing, 0.07 mm). Bool arrays are resampled as masks,
        float arrays bilinearly.
        """
        from mcgr.io.resample import ModelTransform, output_length

        a = np.asarray(arr.detach().cpu() if hasattr(arr, "detach") else arr)
        if a.ndim != 2:
            raise ValueError(f"arr must be [H, W], got shape {a.shape}")
        if a.shape == self.image.shape and spacing_mm is None:
            return np.ascontiguousarray(a[:, ::-1]) if self.flipped else a
        mm = MODEL_SPACING_MM if spacing_mm is None else float(spacing_mm)
        h, w = self.source_shape
        expected = (output_length(h, self.spacing_mm, mm), output_length(w, self.spacing_mm, mm))
        if a.shape != expected:
            raise ValueError(f"arr has shape {a.shape}: neither the image grid {self.image.shape} nor the "
                             f"{mm} mm grid {expected}; pass spacing_mm= for another grid")
        t = ModelTransform(tuple(self.source_shape), expected, float(self.spacing_mm), mm, bool(self.flipped))
        return t.to_source(a)


def _check_spacing_arg(spacing) -> float | None:
    if spacing is None:
        return None
    try:
        s = float(spacing)
    except (TypeError, ValueError):
        raise TypeError(f"spacing must be a number of mm or None, got {spacing!r}") from None
    if not (_SPACING_RANGE_MM[0] <= s <= _SPACING_RANGE_MM[1]):
        raise ValueError(f"spacing must be a pixel spacing in mm within {_SPACING_RANGE_MM}, got {spacing!r}")
    return s


def _check_size(path: str, shape) -> None:
    if len(shape) < 2 or min(shape[:2]) <= 0:
        raise MammogramReadError(path, f"zero-size image (shape {tuple(shape)})")
    if max(shape[:2]) > MAX_SIDE_PX:
        raise MammogramReadError(path, f"image of {shape[0]} x {shape[1]} px is larger than {MAX_SIDE_PX} px a side")


def _check_source(path: str, shape, spacing_mm: float, spacing_from: str = "argument") -> None:
    """Refuse, from the header alone (before decoding), an image whose pixel count or memory cannot
    fit: over ``MAX_SOURCE_PIXELS``, a model grid that :func:`mcgr.io.resample.check_model_grid`
    refuses, or more memory than this machine has for the source grid and the model grid together."""
    from mcgr._memory import available_bytes, format_bytes
    from mcgr.io.resample import PIPELINE_BYTES_PER_PX, check_model_grid

    _check_size(path, shape)
    h, w = int(shape[0]), int(shape[1])
    if h * w > MAX_SOURCE_PIXELS:
        raise MammogramReadError(path, f"{h} x {w} px is {h * w / 1e6:.0f} Mpx, more than the {MAX_SOURCE_PIXELS / 1e6:.0f} "
                                       f"Mpx of the largest film at 25 um; refused before decoding")
    try:
        oh, ow = check_model_grid((h, w), spacing_mm, spacing_from=spacing_from)
    except ValueError as exc:
        raise MammogramReadError(path, str(exc)) from None
    need = float(h) * w * SOURCE_BYTES_PER_PX + float(oh) * ow * PIPELINE_BYTES_PER_PX
    avail = available_bytes()
    if avail is not None and need > avail:
        raise MammogramReadError(path, f"{h} x {w} px at {spacing_mm:g} mm needs about {format_bytes(need)} of memory; "
                                       f"this machine has {format_bytes(avail)} available; refused before decoding")


def _check_content(path: str, values: np.ndarray, lo: float, hi: float) -> None:
    """Refuse what is not a mammogram: too small, blank (one value) or binary (two values)."""
    h, w = values.shape[:2]
    if min(h, w) < MIN_SIDE_PX:
        raise MammogramReadError(path, f"not a mammogram: {h} x {w} px is too small to hold a breast "
                                       f"(a side under {MIN_SIDE_PX} px)")
    if not hi > lo:
        raise MammogramReadError(path, f"not a mammogram: the image is blank (every pixel is {lo:g})")
    # binary: no value strictly between the extremes (a coarse subsample answers for almost any real image)
    for a in (values[::7, ::7], values):
        if bool(((a > lo) & (a < hi)).any()):
            return
    raise MammogramReadError(path, f"not a mammogram: the image is binary (only the values {lo:g} and {hi:g}: "
                                   f"a mask?)")


AS_STORED_MIN = 1e-3  # float data within [0, 1] reaching at least this is an image in the canonical domain
EXTREME_MAGNITUDE = 1e20  # beyond it (or below its inverse) values are divided by their magnitude first


def _normalise(path: str, values: np.ndarray, invert: bool, spacing_mm: float | None = None, *,
               padding_value=None, padding_limit=None) -> tuple[np.ndarray, float, float, dict]:
    """``values`` onto [0, 1] (float32) through the robust window of :mod:`mcgr.io.intensity`
    (``invert`` for MONOCHROME1 / MinIsWhite); returns (image, stored min, stored max, window info).
    Float data already within [0, 1] is taken as the canonical domain as it is (what the Python API
    takes from a tensor), so an array saved as ``.npy`` reads back unchanged."""
    from mcgr.io.intensity import IntensityWindow, apply_window, intensity_window

    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise MammogramReadError(path, "pixel values hold NaN or inf")
    lo, hi = float(values.min()), float(values.max())
    if values.dtype.kind == "f" and lo >= 0.0 and hi <= 1.0 and hi >= AS_STORED_MIN and not invert \
            and padding_value is None:
        win = IntensityWindow(0.0, 1.0, None, {"window": [0.0, 1.0], "as_stored": True})
        return apply_window(values, win), lo, hi, win.info
    # Finite extremes (a RescaleSlope of 1e300 or 1e-300, float32 data of order 1e-40) are divided by
    # their largest magnitude first, in float64: the window's arithmetic then neither overflows in
    # hi - lo nor in its reciprocal, and the image is that of slope 1.
    mag = max(abs(lo), abs(hi))
    if mag > EXTREME_MAGNITUDE or 0 < mag < 1.0 / EXTREME_MAGNITUDE:
        values = np.asarray(values, dtype=np.float64) / mag
        padding_value = None if padding_value is None else float(padding_value) / mag
        padding_limit = None if padding_limit is None else float(padding_limit) / mag
    att = values
    pv, pl = padding_value, padding_limit
    if invert:
        att = np.negative(values, dtype=np.float64 if values.dtype == np.float64 else np.float32)
        pv = None if pv is None else -float(pv)
        pl = None if pl is None else -float(pl)
    win = intensity_window(att, spacing_mm, padding_value=pv, padding_limit=pl)
    return apply_window(values, win, invert=invert), lo, hi, win.info


def _text_laterality_view(*texts: str) -> tuple[str, str]:
    lat = view = ""
    for t in texts:
        t = (t or "").upper()
        m = _LAT_VIEW_RE.search(t)
        if m:
            lat = lat or m.group(1)
            view = view or m.group(2)
        m = _WORD_LAT_RE.search(t)
        if m and not lat:
            lat = m.group(1)[0]
        m = _VIEW_RE.search(t)
        if m and not view:
            view = m.group(1)
    return lat, view


def _outer_thirds(image: np.ndarray) -> tuple[float, float]:
    """Signal in the left and the right outer third of ``image`` (a subsample: the sums decide a side)."""
    step = max(1, min(image.shape) // 256)
    a = image[::step, ::step]
    third = max(1, a.shape[1] // 3)
    return float(a[:, :third].sum()), float(a[:, -third:].sum())


def _chest_wall_on_left(image: np.ndarray) -> bool:
    """True when the left outer third of ``image`` holds at least as much signal as the right one."""
    left, right = _outer_thirds(image)
    return left >= right


# A header's chest-wall side is overruled when the other outer third holds this many times more
# signal: the chest wall's third is tissue along the whole height, the nipple's mostly air (a
# breast phantom and the sfm-benign-0 views: 3x to 20x); a crop with tissue on both sides (ratio
# near 1) keeps the header.
ORIENTATION_CONTRADICTION = 2.0

def read_mammogram(path, spacing: float | None = None, *, canonical: bool = True, voi: bool = False) -> Mammogram:
    """Read the mammogram at ``path`` (DICOM, PNG, TIFF or NPY).

    ``spacing``: pixel spacing of the file in mm; wins over the DICOM tags, required for PNG/TIFF/NPY.
    ``canonical``: mirror so that the chest wall is on the left (else keep the file's orientation).
    ``voi``: apply the DICOM VOI LUT/window (off by default: see the module docstring).
    Returns a :class:`Mammogram` whose ``image`` is float32 [rows, cols] in [0, 1], bright =
    attenuating. Raises :class:`MammogramReadError` (file name + reason) for anything that is not a
    readable 2-D grayscale image.
    """
    spacing = _check_spacing_arg(spacing)
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise MammogramReadError(p, "no such file")
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise MammogramReadError(p, f"cannot open ({exc.strerror or exc})") from None
    if not head:
        raise MammogramReadError(p, "empty file")
    if head.startswith(b"\x93NUMPY"):
        reader = _read_npy
    elif head.startswith(b"\x89PNG\r\n\x1a\n"):
        reader = _read_png
    elif head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        reader = _read_tiff
    else:
        reader = None
    if reader is None:
        m = _read_dicom(p, spacing, voi)
    else:
        if spacing is None:
            kind = reader.__name__[6:].upper()
            raise MammogramReadError(p, f"{kind} files carry no pixel spacing: pass spacing=<mm per pixel>")
        values = reader(p, spacing)
        # TIFF PhotometricInterpretation MinIsWhite (0): larger values are darker, like MONOCHROME1
        invert = reader is _read_tiff and _tiff_min_is_white(p)
        _check_content(p, values, float(values.min()), float(values.max()))
        image, lo, hi, window = _normalise(p, values, invert=invert, spacing_mm=spacing)
        lat, view = _text_laterality_view(Path(p).stem)
        meta = {"format": reader.__name__[6:], "dtype": str(values.dtype), "value_range": (lo, hi), "intensity": window}
        if reader is _read_tiff:
            meta["photometric"] = "MinIsWhite" if invert else "MinIsBlack"
        m = Mammogram(image=image, spacing_mm=spacing, laterality=lat, view=view, source=p,
                      source_shape=tuple(image.shape), flipped=False, spacing_source="argument", meta=meta)
    _check_grid(m)
    return _canonicalise(m, canonical)


def _check_grid(m: Mammogram) -> None:
    """Refuse, with the numbers, an image whose model grid would not fit (before anything resamples it)."""
    from mcgr.io.resample import check_model_grid

    try:
        check_model_grid(m.source_shape, m.spacing_mm, spacing_from=m.spacing_source)
    except ValueError as exc:
        raise MammogramReadError(m.source, str(exc)) from None


def _canonicalise(m: Mammogram, canonical: bool) -> Mammogram:
    row_dir = m.meta.get("patient_orientation_row", "")
    if row_dir in ("A", "P"):
        left = row_dir == "A"
        m.meta["orientation_from"] = "PatientOrientation"
        lsum, rsum = _outer_thirds(m.image)
        wall, other = (lsum, rsum) if left else (rsum, lsum)
        if other > ORIENTATION_CONTRADICTION * max(wall, 1e-12):
            msg = (f"{os.path.basename(m.source)}: PatientOrientation (0020,0020) puts the chest wall on the "
                   f"{'left' if left else 'right'} but the image shows it on the {'right' if left else 'left'} "
                   f"(outer thirds hold {other / max(wall, 1e-12):.1f}x more signal there); following the image")
            m.meta.setdefault("warnings", []).append(msg)
            warnings.warn(msg, MammogramWarning, stacklevel=4)
            left = not left
            m.meta["orientation_from"] = "image (PatientOrientation contradicted)"
    else:
        left = _chest_wall_on_left(m.image)
        m.meta["orientation_from"] = "image"
    if not m.laterality:
        m.laterality = "L" if left else "R"
        m.meta["laterality_from"] = "image"
    if canonical and not left:
        m.image = np.ascontiguousarray(m.image[:, ::-1])
        m.flipped = True
    return m


def _read_npy(p: str, spacing: float) -> np.ndarray:
    try:
        a = np.load(p, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
        raise MammogramReadError(p, f"not a readable NPY file ({type(exc).__name__}: {exc})") from None
    if a.ndim >= 2:  # memory-mapped: the shape is the header's, nothing is read yet
        _check_source(p, a.shape[:2] if not (a.ndim == 3 and a.shape[0] == 1) else a.shape[1:], spacing)
    return _grey_array(p, a)


def _grey_array(p: str, a: np.ndarray) -> np.ndarray:
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        _check_size(p, a.shape)
        rgb = np.asarray(a[..., :3])
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all():
            a = rgb[..., 0]
        else:
            a = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    elif a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise MammogramReadError(p, f"expected a 2-D grayscale image, got shape {tuple(a.shape)}")
    _check_size(p, a.shape)
    if a.dtype == np.bool_:
        raise MammogramReadError(p, "not a mammogram: the image is binary (boolean pixels: a mask?)")
    if a.dtype.kind not in "uif":
        raise MammogramReadError(p, f"unsupported pixel type {a.dtype}")
    a = np.asarray(a)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        bad = np.argwhere(~np.isfinite(a))[0].tolist()
        raise MammogramReadError(p, f"pixel values hold NaN or inf (first at {bad})")
    return a


def _read_png(p: str, spacing: float) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(p) as im:
            w, h = im.size  # the header's: nothing is decoded yet
            _check_source(p, (h, w), spacing)
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F", "L", "1"):
                a = np.array(im)
            else:
                a = np.array(im.convert("RGB"))
    except MammogramReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds on a bad file
        raise MammogramReadError(p, f"not a readable PNG ({type(exc).__name__}: {exc})") from None
    return _grey_array(p, a)


def _tiff_min_is_white(p: str) -> bool:
    """Whether the first page of the TIFF at ``p`` is PhotometricInterpretation MinIsWhite."""
    import tifffile

    with tifffile.TiffFile(p) as tf:
        return int(tf.pages[0].photometric) == int(tifffile.PHOTOMETRIC.MINISWHITE)


def _read_tiff(p: str, spacing: float) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(p) as tf:
            if not tf.pages:
                raise MammogramReadError(p, "TIFF holds no image")
            # one mammogram per file: several full images (not reduced-resolution previews) are refused
            full = [pg for pg in tf.pages if not getattr(pg, "is_reduced", False)]
            if len(full) > 1:
                raise MammogramReadError(p, f"multi-page TIFF ({len(full)} images): mcgr reads one mammogram per "
                                            f"file; save each page as its own TIFF")
            page = full[0] if full else tf.pages[0]
            _check_source(p, page.shape[-3:-1] if page.samplesperpixel > 1 and page.shape[-1] == page.samplesperpixel
                          else page.shape[-2:], spacing)  # the header's: nothing is decoded yet
            a = page.asarray()
    except MammogramReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - tifffile raises many kinds on a bad file
        raise MammogramReadError(p, f"not a readable TIFF ({type(exc).__name__}: {exc})") from None
    return _grey_array(p, a)


_SPACING_TAGS = {"PixelSpacing": "(0028,0030)", "ImagerPixelSpacing": "(0018,1164)"}


def _dicom_spacing(p: str, ds, notes: list) -> tuple[float | None, str, dict]:
    """``(spacing mm or None when no tag is present, tag used, info)``; a tag present with a value
    that is not two pixel spacings in mm raises :class:`MammogramReadError` naming it."""
    from pydicom.multival import MultiValue

    info: dict = {}
    lo, hi = _SPACING_RANGE_MM
    for keyword, tag in _SPACING_TAGS.items():
        fix = "fix the header, or pass spacing= (--spacing MM) to override it"
        try:
            raw = ds.get(keyword)
        except Exception as exc:  # noqa: BLE001 - a damaged value cannot be parsed at all
            raise MammogramReadError(p, f"{keyword} {tag} cannot be parsed ({type(exc).__name__}): {fix}") from None
        if raw is None or (isinstance(raw, (str, bytes)) and not raw.strip()):
            continue  # absent, or present without a value (Type 2): treated as missing
        vals = list(raw) if isinstance(raw, (list, tuple, MultiValue)) else [raw]
        if not vals:
            continue
        shown = "\\".join(str(v) for v in vals)
        if len(vals) != 2:
            raise MammogramReadError(p, f"{keyword} {tag} is {shown!r}: {len(vals)} value(s) where the standard "
                                        f"gives two (row\\column spacing in mm); {fix}")
        try:
            f = [float(v) for v in vals]
        except (TypeError, ValueError):
            raise MammogramReadError(p, f"{keyword} {tag} is {shown!r}: not numbers; {fix}") from None
        if not all(np.isfinite(v) and lo <= v <= hi for v in f):
            raise MammogramReadError(p, f"{keyword} {tag} is {shown!r}: not a pixel spacing (each value must lie "
                                        f"within {lo} to {hi} mm); {fix}")
        if abs(f[0] - f[1]) > 0.01 * max(f):
            msg = f"{os.path.basename(p)}: {keyword} {f} is not square; using the mean"
            notes.append(msg)
            warnings.warn(msg, MammogramWarning, stacklevel=5)
        s = float(np.mean(f))
        if keyword == "ImagerPixelSpacing":
            try:
                emf = float(ds.get("EstimatedRadiographicMagnificationFactor", 1.0) or 1.0)
            except (TypeError, ValueError):
                emf = 1.0
            if np.isfinite(emf) and 1.0 <= emf <= 4.0:
                info["magnification"] = emf
                s /= emf
        return s, keyword, info
    return None, "default", info


def _fit_bits_stored(p: str, stored: np.ndarray, bits_stored: int, notes: list) -> np.ndarray:
    """Stored integers read without pydicom's masking: kept when they fit ``bits_stored``; signed ones
    not sign-extended past it are sign-extended; bits above it that hold one constant fill are
    masked off; values that vary above it (a wrong BitsStored: the data use more bits) are kept as
    they are, with a loud warning, instead of being wrapped onto dark values."""
    nbits = stored.dtype.itemsize * 8
    if stored.dtype.kind not in "ui" or not 1 <= bits_stored < nbits or stored.size == 0:
        return stored
    vmin, vmax = int(stored.min()), int(stored.max())
    if stored.dtype.kind == "u":
        top = (1 << bits_stored) - 1
        if vmax <= top:
            return stored
        high = stored >> np.asarray(bits_stored, stored.dtype)
        if int(high.min()) == int(high.max()):  # one constant fill above HighBit (PS3.5 8.1.1): not image data
            return stored & np.asarray(top, stored.dtype)
        used = f"values reach {vmax} (> {top}: {vmax.bit_length()} bits used)"
    else:
        half = 1 << (bits_stored - 1)
        if -half <= vmin and vmax < half:
            return stored
        if vmin >= 0 and vmax < 2 * half:  # two's complement in bits_stored bits, not sign-extended
            shift = nbits - bits_stored
            return (stored << shift) >> shift
        used = f"values span {vmin} to {vmax} (outside the {bits_stored}-bit range {-half} to {half - 1})"
    msg = (f"{os.path.basename(p)}: BitsStored (0028,0101) is {bits_stored} but the pixel {used}: the header is "
           f"wrong; using the stored values' real range {vmin} to {vmax} instead of wrapping them to {bits_stored} bits")
    notes.append(msg)
    warnings.warn(msg, MammogramWarning, stacklevel=5)
    return stored


def _dicom_text(ds, keyword: str) -> str:
    try:
        v = ds.get(keyword, "")
        return "" if v is None else str(v)
    except Exception:  # noqa: BLE001 - a damaged element reads as absent
        return ""


def _dicom_view(ds) -> str:
    vp = _dicom_text(ds, "ViewPosition").strip().upper()
    if vp in _VIEWS:
        return vp
    try:
        seq = ds.get("ViewCodeSequence")
        meaning = str(seq[0].CodeMeaning).strip().lower() if seq else ""
    except Exception:  # noqa: BLE001
        meaning = ""
    if meaning in _VIEW_MEANINGS:
        return _VIEW_MEANINGS[meaning]
    po = _dicom_text(ds, "PatientOrientation").strip().upper()
    if po in _VIEWS:
        return po
    return ""


def _read_dicom(p: str, spacing: float | None, voi: bool) -> Mammogram:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder

    try:
        ds = pydicom.dcmread(p, force=True)
        ds.get("PixelData")  # parses lazily read elements up to the pixel data
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on a damaged file
        raise MammogramReadError(p, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    try:
        return _dicom_to_mammogram(p, ds, spacing, voi, apply_modality_lut, apply_voi_lut, get_decoder)
    except MammogramReadError:
        raise
    except MemoryError:
        raise MammogramReadError(p, "pixel data too large for memory") from None
    except _PASS_THROUGH:
        raise
    except BaseException as exc:  # noqa: BLE001 - decoders written in Rust (pyo3) panic with a BaseException
        raise MammogramReadError(p, f"damaged DICOM ({type(exc).__name__}: {exc})") from None


def _dicom_to_mammogram(p, ds, spacing, voi, apply_modality_lut, apply_voi_lut, get_decoder) -> Mammogram:
    import pydicom.dataset

    sop_class = _dicom_text(ds, "SOPClassUID")
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise MammogramReadError(p, "float pixel data is not a mammogram")
        what = f"SOP class {sop_class}" if sop_class else "no SOP class"
        raise MammogramReadError(p, f"no PixelData element: not an image ({what})")
    for kw in ("Rows", "Columns", "BitsAllocated"):
        if ds.get(kw) is None:
            raise MammogramReadError(p, f"missing {kw} (0028) element")
    rows, cols = int(ds.Rows), int(ds.Columns)
    _check_size(p, (rows, cols))
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if spp != 1:
        raise MammogramReadError(p, f"{spp} samples per pixel: a mammogram is grayscale")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise MammogramReadError(p, f"{frames} frames: expected a single 2-D mammogram (not tomosynthesis)")
    photometric = _dicom_text(ds, "PhotometricInterpretation").strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise MammogramReadError(p, f"photometric interpretation {photometric or '(missing)'} is not MONOCHROME1/2")
    meta_group = getattr(ds, "file_meta", None)
    tsyntax = getattr(meta_group, "TransferSyntaxUID", None) if meta_group is not None else None
    if tsyntax is None:
        tsyntax = pydicom_default_syntax(ds)
        ds.file_meta = getattr(ds, "file_meta", None) or pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = tsyntax
    if not tsyntax.is_transfer_syntax:
        raise MammogramReadError(p, f"unknown transfer syntax {tsyntax}: no pixel data decoder for it")
    if tsyntax.is_compressed:
        try:
            decoder = get_decoder(tsyntax)
        except NotImplementedError:
            raise MammogramReadError(p, f"transfer syntax {tsyntax.name} ({tsyntax}) has no pixel data decoder") from None
        if not decoder.is_available:
            missing = "; ".join(str(v) for v in getattr(decoder, "missing_dependencies", []) or [])
            raise MammogramReadError(p, f"transfer syntax {tsyntax.name} needs a decoder that is not installed "
                                        f"(install pylibjpeg plugins or python-gdcm){': ' + missing if missing else ''}")
    if tsyntax.is_compressed:
        decoded = rows * cols * int(ds.BitsAllocated) // 8
        stored_len = len(ds.PixelData or b"")
        if decoded > _MAX_BLIND_DECODE and decoded > _MAX_RATIO * stored_len:
            raise MammogramReadError(p, f"{rows} x {cols} px from {stored_len} bytes of compressed data: damaged header")
    notes: list[str] = []
    if spacing is not None:
        s, s_source, s_info = spacing, "argument", {}
    else:
        s, s_source, s_info = _dicom_spacing(p, ds, notes)
    if s is None:
        msg = (f"{os.path.basename(p)}: no pixel spacing in the DICOM; assuming {DEFAULT_FILM_SPACING_MM} mm "
               f"(scanned film); pass spacing= to override")
        notes.append(msg)
        warnings.warn(msg, MammogramWarning, stacklevel=4)
        s = DEFAULT_FILM_SPACING_MM
    _check_source(p, (rows, cols), s, s_source)  # pixel count and memory from the header, before decoding
    try:
        ds.pixel_array_options(correct_unused_bits=False)  # _fit_bits_stored decides what the high bits mean
        stored = ds.pixel_array
    except _PASS_THROUGH:
        raise
    except BaseException as exc:  # noqa: BLE001 - pylibjpeg-rle panics (pyo3 PanicException) on bad data
        raise MammogramReadError(p, f"pixel data cannot be decoded ({type(exc).__name__}: {exc})") from None
    if stored.shape != (rows, cols):
        raise MammogramReadError(p, f"decoded pixel array has shape {stored.shape}, header says {(rows, cols)}")
    try:
        bits_stored = int(ds.get("BitsStored", ds.BitsAllocated))
    except (TypeError, ValueError):
        bits_stored = int(ds.BitsAllocated)
    stored = _fit_bits_stored(p, stored, bits_stored, notes)
    values = apply_modality_lut(stored, ds)
    if voi:
        values = apply_voi_lut(values, ds, index=0, prefer_lut=True)
    _check_content(p, values, float(values.min()), float(values.max()))
    pad_value, pad_limit = _dicom_padding(ds, values)
    image, lo, hi, window = _normalise(p, values, invert=photometric == "MONOCHROME1", spacing_mm=float(s),
                                       padding_value=pad_value, padding_limit=pad_limit)

    lat = ""
    for kw in ("ImageLaterality", "Laterality"):
        v = _dicom_text(ds, kw).strip().upper()
        if v in ("L", "R"):
            lat = v
            break
    view = _dicom_view(ds)
    t_lat, t_view = _text_laterality_view(*(_dicom_text(ds, k) for k in
                                            ("SeriesDescription", "ProtocolName", "PatientName", "PatientID",
                                             "StudyDescription")), Path(p).stem)
    lat_from = "tags" if lat else ("text" if t_lat else "")
    lat, view = lat or t_lat, view or t_view
    po = _dicom_text(ds, "PatientOrientation").replace("'", "").strip().upper()
    po_parts = [x.strip() for x in re.split(r"[\\,\[\] ]+", po) if x.strip()]
    row_dir = po_parts[0][0] if len(po_parts) == 2 and po_parts[0][:1] in ("A", "P") else ""

    frame_uid = _dicom_text(ds, "FrameOfReferenceUID") or None
    ref = DicomRef(path=p, sop_class_uid=sop_class, sop_instance_uid=_dicom_text(ds, "SOPInstanceUID"),
                   study_instance_uid=_dicom_text(ds, "StudyInstanceUID"),
                   series_instance_uid=_dicom_text(ds, "SeriesInstanceUID"), frame_of_reference_uid=frame_uid,
                   header=_header_only(ds))
    meta = {
        "format": "dicom", "transfer_syntax": str(tsyntax), "photometric": photometric,
        "bits_stored": bits_stored, "rescale": (float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)),
        "voi_applied": bool(voi), "value_range": (lo, hi), "manufacturer": _dicom_text(ds, "Manufacturer"),
        "patient_orientation_row": row_dir, "laterality_from": lat_from, "intensity": window, **s_info,
    }
    if notes:
        meta["warnings"] = notes
    return Mammogram(image=image, spacing_mm=float(s), laterality=lat, view=view, source=p,
                     source_shape=(rows, cols), flipped=False, spacing_source=s_source, dicom=ref, meta=meta)


_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float and Double Float Pixel Data


def _header_only(ds):
    """A pydicom Dataset of ``ds``'s elements but the pixel data (shared, not copied), with its file meta."""
    from pydicom.dataset import Dataset

    hdr = Dataset()
    for tag in ds.keys():
        if int(tag) not in _PIXEL_TAGS:
            hdr[tag] = ds[tag]
    if getattr(ds, "file_meta", None) is not None:
        hdr.file_meta = ds.file_meta
    return hdr


def _dicom_padding(ds, values: np.ndarray) -> tuple[float | None, float | None]:
    """PixelPaddingValue (0028,0120) and PixelPaddingRangeLimit (0028,0121) as values after the
    Modality LUT (they are given as stored values, PS3.3 C.7.5.1.1.2); (None, None) without the tag."""
    def tag(kw):
        try:
            v = ds.get(kw)
            return None if v is None or v == "" else float(v)
        except (TypeError, ValueError):
            return None

    pv, pl = tag("PixelPaddingValue"), tag("PixelPaddingRangeLimit")
    if pv is None:
        return None, None
    slope = float(ds.get("RescaleSlope", 1) or 1)
    icpt = float(ds.get("RescaleIntercept", 0) or 0)
    if values.dtype.kind == "f" and not (slope == 1 and icpt == 0):
        return pv * slope + icpt, None if pl is None else pl * slope + icpt
    return pv, pl


def pydicom_default_syntax(ds):
    """Transfer syntax of a file without file meta: what pydicom parsed it as."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian

    if getattr(ds, "is_implicit_VR", True):
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if getattr(ds, "is_little_endian", True) else ExplicitVRBigEndian
