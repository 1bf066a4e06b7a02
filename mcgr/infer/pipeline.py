"""The full-field pipeline (docs/design.md, method M5) and its Python API, :class:`Pipeline`.

read -> canonicalise -> resample to 0.07 mm -> breast mask -> tiles over the breast -> batched
segmentor -> stitch -> TT-GPR on gated tiles -> probability -> mask, calcifications, clusters ->
mapped back to the input grid.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mcgr import MODEL_SPACING_MM
from mcgr.infer.detect import HYSTERESIS_LOW, MERGE_MM, clusters_from_detections, detections_from_prob
from mcgr.infer.loader import Models, load_models
from mcgr.infer.runtime import OnnxSegmentor, cpu_has_bf16, resolve_runtime
from mcgr.infer.tiling import tile_grid
from mcgr.infer.ttgpr import TTGPRConfig, run_field
from mcgr.io.field_geometry import FieldGeometry
from mcgr.io.search_region import deeper_than, search_region  # noqa: F401 - deeper_than: its old home


@dataclass
class Result:
    """One mammogram's results.

    prob, mask, uncertainty: [H, W] on the grid the caller gave (a tensor input: its own grid; a file:
        the file's pixel grid, as stored, unless ``canonical=True`` was asked for: then mirrored to
        the chest wall on the left, as ``mammogram.image``). ``orientation`` says which.
    base_prob: the synthetic-only segmentor's probability (before TT-GPR), same grid.
    detections / clusters: calcifications (centroids ``y``/``x`` in px of ``prob``'s grid, ``y_mm``/``x_mm``
        = px x spacing on that grid, so as stored for a file by default) and clusters.
    timings: seconds per stage. refined_fraction: share of breast tiles that TT-GPR refined.
    """

    prob: torch.Tensor
    mask: torch.Tensor
    uncertainty: torch.Tensor | None
    base_prob: torch.Tensor
    detections: list
    clusters: list
    spacing_mm: float
    breast_mask: torch.Tensor
    timings: dict = field(default_factory=dict)
    refined_fraction: float = 0.0
    seeds: int = 0
    mammogram: object = None
    pectoral: dict | None = None  # {"found", "contrast", "boundary": [[row, col], ...] in px of prob's grid}
    orientation: str = "canonical"  # "canonical" (chest wall on the left) or "source" (the file as stored)


@dataclass
class Prepared:
    """An image made ready for the networks by :meth:`Pipeline.prepare` (all on the CPU but ``x``).

    x: the reflect-padded canvas (``geometry.canvas_shape``) at the model spacing, on the pipeline's
    device. grid: its breast tiles. bm / keep: the breast mask and the kept region (breast less skin
    band, film edge and scan lines) on the unpadded model grid; seed_region: ``keep`` on the canvas.
    geometry: the input's grid, the model grid and the canvas (:class:`FieldGeometry`); ``pad``,
    ``src_shape``, ``model_shape`` and ``spacing`` read from it. timings: read, resample, mask, grid.
    """

    x: torch.Tensor
    grid: object
    bm: torch.Tensor
    keep: torch.Tensor
    seed_region: torch.Tensor
    geometry: FieldGeometry
    mammogram: object = None
    timings: dict = field(default_factory=dict)
    pectoral: dict | None = None

    @property
    def pad(self) -> int:
        return self.geometry.pad

    @property
    def src_shape(self) -> tuple[int, int]:
        return self.geometry.source_shape

    @property
    def model_shape(self) -> tuple[int, int]:
        return self.geometry.model_shape

    @property
    def spacing(self) -> float:
        return self.geometry.source_mm


def _rounded(points) -> list:
    """[K, 2] points as a JSON-ready list of [row, col] pairs at 0.1 px."""
    return [[round(float(r), 1), round(float(c), 1)] for r, c in np.asarray(points).reshape(-1, 2)]


def _check_image(image) -> torch.Tensor:
    """An API image checked as the file path checks a file: a real-valued [H, W] array (not bool or
    complex, not on the meta device) with sides within the reader's limits, finite, in [0, 1].
    Returns it as a float32 tensor detached from any autograd graph."""
    from mcgr._interop import as_tensor
    from mcgr.io.reader import MAX_SIDE_PX, MIN_SIDE_PX

    if isinstance(image, (bool, int, float, complex)) or image is None:
        raise TypeError(f"image must be a [H, W] array or a path, got {type(image).__name__}")
    img, _ = as_tensor(image, "image")
    if img.is_meta:
        raise ValueError("image is a meta tensor (it has no data)")
    if img.dtype == torch.bool or img.is_complex() or not (img.is_floating_point() or img.dtype in
                                                            (torch.uint8, torch.int8, torch.int16, torch.int32,
                                                             torch.int64)):
        raise TypeError(f"image must hold real numbers in [0, 1] (float), got dtype {img.dtype}"
                        + (" (a boolean mask is not a mammogram)" if img.dtype == torch.bool else ""))
    if img.dim() != 2:
        raise ValueError(f"image must be [H, W], got shape {tuple(img.shape)}")
    h, w = img.shape
    if min(h, w) < MIN_SIDE_PX or max(h, w) > MAX_SIDE_PX:
        raise ValueError(f"image of {h} x {w} px: each side must be {MIN_SIDE_PX} to {MAX_SIDE_PX} px")
    img = img.detach().float()
    if not bool(torch.isfinite(img).all()):
        raise ValueError("image holds NaN or inf")
    if float(img.min()) < 0 or float(img.max()) > 1:
        raise ValueError(f"image must lie in [0, 1] (canonical domain), got [{float(img.min())}, {float(img.max())}]")
    return img


def _check_api_spacing(spacing, shape) -> float:
    """``spacing`` (None: the model spacing) checked as the file path checks it: a real number of mm
    (not a bool) within the reader's range, whose model grid fits (sizes and memory)."""
    from mcgr.io.reader import _SPACING_RANGE_MM
    from mcgr.io.resample import check_model_grid

    if spacing is None:
        spacing = MODEL_SPACING_MM
    if isinstance(spacing, (bool, np.bool_)) or not isinstance(spacing, (int, float, np.integer, np.floating)):
        raise TypeError(f"spacing must be a number of mm, got {spacing!r}")
    s = float(spacing)
    lo, hi = _SPACING_RANGE_MM
    if not lo <= s <= hi:
        raise ValueError(f"spacing must be a pixel spacing in mm within [{lo}, {hi}], got {spacing!r}")
    check_model_grid(shape, s, advice="check spacing=")
    return s


def _shifted(projector, geometry: FieldGeometry):
    """``projector`` seen from the canvas: window origins moved from canvas px to model-grid px."""
    def call(windows, origins, seeds):
        model = geometry.canvas_to_model(np.asarray(origins, dtype=np.int64).reshape(-1, 2))
        return projector(windows, [(y0, x0) for y0, x0 in model.tolist()], seeds)

    return call


def _seed_points(seeds, shape: tuple[int, int] | None = None) -> torch.Tensor:
    """``seeds`` (a [K, 2] array of (row, col) numbers) as float64 [K, 2]; with ``shape``, each checked
    to lie on that grid (0 <= row <= rows - 1, 0 <= col <= cols - 1)."""
    try:
        arr = np.asarray(seeds.detach().cpu() if isinstance(seeds, torch.Tensor) else seeds)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError("seeds must be a [K, 2] array of (row, col) points") from None
    if arr.dtype.kind not in "iuf" or not (arr.ndim == 2 and arr.shape[1] == 2 or arr.size == 0):
        raise ValueError(f"seeds must be a [K, 2] array of (row, col) numbers, got shape {tuple(arr.shape)} "
                         f"of {arr.dtype}")
    sd = torch.as_tensor(arr.astype(np.float64)).reshape(-1, 2)
    if shape is not None:
        h, w = shape
        bad = ~torch.isfinite(sd).all(1) | (sd[:, 0] < 0) | (sd[:, 0] > h - 1) | (sd[:, 1] < 0) | (sd[:, 1] > w - 1)
        if bool(bad.any()):
            raise ValueError(f"seeds must be (row, col) points on the {h} x {w} image; {int(bad.sum())} of {len(sd)} are not")
    return sd


class Pipeline:
    """Segment microcalcifications in full-field mammograms.

    >>> pipe = Pipeline.from_pretrained(device="cpu")
    >>> res = pipe(image, spacing=0.07)          # image [H, W] float32 in [0, 1], canonical
    >>> res = pipe("case.dcm")                    # or a path (DICOM / PNG / TIFF / NPY with spacing=)

    ``runtime`` (:mod:`mcgr.infer.runtime`): "auto" (default: ONNX Runtime on a CPU without native
    bf16 when installed, else PyTorch), "torch" or "onnxruntime". On ONNX Runtime the pipeline runs an
    export of the segmentor's weights as they were when it was made: a segmentor trained further
    afterwards needs a new pipeline (or ``runtime="torch"``, which runs the module itself).
    """

    def __init__(self, segmentor, generator=None, config: TTGPRConfig | None = None, device="cpu",
                 backend: str = "auto", tile: int = 256, overlap: float = 0.25, autocast: bool | None = None,
                 skin_margin_mm: float = 1.5, border_pad: int = 32, border_margin_mm: float = 1.0,
                 drop_scan_lines: bool = True, exclude_pectoral: bool = True, pectoral_margin_mm: float = 1.0,
                 runtime: str = "auto"):
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' was asked for but torch sees no CUDA device")
        # the segmentor's runtime (mcgr.infer.runtime): "torch", "onnxruntime" (CPU), or "auto"
        self.runtime = resolve_runtime(runtime, self.device)
        self.seg = segmentor.to(self.device).eval()
        if self.runtime == "onnxruntime":
            self.seg = OnnxSegmentor(self.seg)
        self.gen = generator.to(self.device).eval() if generator is not None else None
        # bf16 autocast + channels-last: on CUDA, and on CPUs with native bf16 (AVX512-BF16 / AMX),
        # where oneDNN runs the convolutions ~4x faster than fp32 NCHW (docs/design.md)
        fast = self.device.type == "cuda" or (self.device.type == "cpu" and cpu_has_bf16())
        self.autocast = fast if autocast is None else bool(autocast)
        if self.device.type == "cuda" or self.autocast:
            self.seg = self.seg.to(memory_format=torch.channels_last)
            if self.gen is not None:
                self.gen = self.gen.to(memory_format=torch.channels_last)
        self.config = (config or TTGPRConfig()).validated()
        from mcgr._backends import check_backend

        check_backend(backend, self.device)  # before any compute, not per image after the segmentor ran
        self.backend = backend
        self.tile = int(tile)
        self.overlap = float(overlap)
        if not skin_margin_mm >= 0:
            raise ValueError(f"skin_margin_mm must be >= 0, got {skin_margin_mm}")
        self.skin_margin_mm = float(skin_margin_mm)
        if not border_margin_mm >= 0:
            raise ValueError(f"border_margin_mm must be >= 0, got {border_margin_mm}")
        self.border_margin_mm = float(border_margin_mm)
        self.border_pad = int(border_pad)
        self.drop_scan_lines = bool(drop_scan_lines)
        self.exclude_pectoral = bool(exclude_pectoral)
        if not pectoral_margin_mm >= 0:
            raise ValueError(f"pectoral_margin_mm must be >= 0, got {pectoral_margin_mm}")
        self.pectoral_margin_mm = float(pectoral_margin_mm)

    @classmethod
    def from_pretrained(cls, models=None, device="cpu", backend: str = "auto", config: TTGPRConfig | None = None,
                        fp_per_image: float | None = None, threshold: float | None = None, refine: bool = True,
                        **kw) -> "Pipeline":
        """The pipeline with the models in folder ``models`` (``seg/`` and ``rf/``, e.g. written by
        ``mcgr adapt``), or with the weights shipped in the package when None, loaded as every mcgr
        command loads them (:func:`mcgr.infer.loader.load_models`): ``config`` (default
        :class:`TTGPRConfig`) at the segmentor's operating threshold, or at the point of its
        calibration curve for ``fp_per_image`` false objects per image (:func:`mcgr.infer.loader.operating_point`),
        or at ``threshold`` when given. ``refine=False``: the segmentor alone (no TT-GPR)."""
        loaded = load_models(models, refine=refine, fp_per_image=fp_per_image, threshold=threshold, device=device)
        return cls.from_models(loaded, config, device=device, backend=backend, **kw)

    @classmethod
    def from_models(cls, models: Models, config: TTGPRConfig | None = None, **kw) -> "Pipeline":
        """The pipeline of networks :func:`mcgr.infer.loader.load_models` loaded, at their operating
        threshold (:meth:`Models.config`); ``kw``: the pipeline's other arguments (device, backend, tile, ...)."""
        return cls(models.seg, models.rf, config=models.config(config), **kw)

    def __call__(self, image, spacing: float | None = None, refine: bool | None = None, breast_mask=None,
                 progress=None, seeds=None, projector=None, view: str | None = None, canonical: bool = False) -> Result:
        """Run on a canonical image tensor/array [H, W] in [0, 1] (``spacing`` in mm, default 0.07),
        or on a path to a mammogram file (DICOM, PNG, TIFF, NPY; see :func:`mcgr.io.read_mammogram`).

        refine: run TT-GPR on top of the base segmentor (needs the generator). Default (None): only
        when ``seeds`` or ``projector`` are given, as ``mcgr infer`` runs the base unless told
        ``--refine``: on held-out film and procedural views TT-GPR left the FROC at <= 5 false
        objects per image where the base put it (docs/ttgpr_designs.md).

        seeds: optional [K, 2] (row, col) points in the input's pixels (a file's: in the orientation
        the results come back in, see ``canonical``): TT-GPR refines at these
        instead of at the maxima of the base logits (a reader's marks, another detector's
        candidates). Each must lie on the image. Marks one trusts are better served without the
        anchor to the base logits (``TTGPRConfig(refine=RefineParams(lambda_a=0.0, lambda_e=0.0),
        refine_steps=60)``): with seeds at the true calcifications of the held-out faint phantoms
        it gave recall +0.074 / Dice +0.004 against +0.043 / +0.016 at the defaults, which are
        tuned for seeds from the prediction (docs/design.md, "Where the limits are").
        projector: optional callable replacing the RF projections (see :func:`mcgr.infer.ttgpr.run_field`);
        its window origins are given in model-spacing pixels of the input (the canvas is the input
        resampled to the model spacing and reflect-padded, so origins near a border are negative).
        view: the view code ("CC", "MLO", ...) of a tensor input, for the search region (a file's comes
        from the file); CC views are not searched for a pectoral muscle.
        canonical: for a file, return the arrays and coordinates mirrored to the canonical orientation
        (chest wall on the left) instead of the file's own (the default, as ``mcgr infer`` writes them).
        ``seeds`` are then in the file's orientation too. A tensor or array input is taken as
        canonical already and used as it is: its values are not re-stretched (the reader leaves float
        data in [0, 1] alone too) and it is never mirrored."""
        if refine is None:
            refine = seeds is not None or projector is not None
        prep = self.prepare(image, spacing=spacing, breast_mask=breast_mask, view=view)
        if seeds is not None and not canonical:
            # the caller's points are in the orientation the results come back in: the file's
            seeds = prep.geometry.stored_to_source(_seed_points(seeds))
        fr = self.network(prep, refine=refine, progress=progress, seeds=seeds, projector=projector)
        return self.finish(prep, fr, canonical=canonical)

    def prepare(self, image, spacing: float | None = None, breast_mask=None, view: str | None = None) -> "Prepared":
        """The CPU stages before the networks (read, resample, breast mask, kept region, padded canvas,
        tile grid) for :meth:`network`; arguments as :meth:`__call__`. Holds no state of the
        pipeline's, so it may run in another thread while the networks run on an earlier image."""
        timings: dict = {}
        t = time.perf_counter()
        mammo = None
        if isinstance(image, (str, Path)):
            from mcgr.io import read_mammogram

            mammo = read_mammogram(image, spacing=spacing)
            img = torch.from_numpy(np.ascontiguousarray(mammo.image, dtype=np.float32)) if isinstance(mammo.image, np.ndarray) else mammo.image
            spacing = mammo.spacing_mm
        else:
            img = _check_image(image)
            spacing = _check_api_spacing(spacing, tuple(img.shape))
        timings["read"] = time.perf_counter() - t
        t = time.perf_counter()
        geo = FieldGeometry.for_image(tuple(img.shape), spacing, MODEL_SPACING_MM, border_pad=self.border_pad,
                                      flipped=mammo is not None and bool(mammo.flipped))
        x = geo.to_model(img.to(self.device)).contiguous()
        timings["resample"] = time.perf_counter() - t
        t = time.perf_counter()
        bm_given = None
        if breast_mask is not None:
            from mcgr._interop import as_tensor

            bm_given, _ = as_tensor(breast_mask, "breast_mask")
            bm_given = bm_given.to("cpu").bool()
            if tuple(bm_given.shape) != geo.source_shape:
                raise ValueError(f"breast_mask must match the image shape {geo.source_shape}, got {tuple(bm_given.shape)}")
            bm_given = geo.mask_to_model(bm_given).numpy()
        if view is None and mammo is not None:
            view = mammo.view
        # one decision of where to search (mcgr.io.search_region): breast or the whole image when it
        # has no air, less skin band, film edge, scan lines, saturated markers and the pectoral muscle
        region = search_region(x.float().cpu().numpy(), MODEL_SPACING_MM, view=view, breast=bm_given,
                               skin_mm=self.skin_margin_mm, border_mm=self.border_margin_mm,
                               scan_lines=self.drop_scan_lines, pectoral=self.exclude_pectoral,
                               pectoral_margin_mm=self.pectoral_margin_mm)
        bm = torch.from_numpy(region.breast)
        keep = torch.from_numpy(region.keep)
        pectoral = None
        if region.pectoral is not None:
            pectoral = {k: v for k, v in region.pectoral.items() if k != "boundary"}
            pectoral["boundary"] = _rounded(geo.model_to_source(np.asarray(region.pectoral["boundary"], np.float64)))
        timings["mask"] = time.perf_counter() - t
        t = time.perf_counter()
        # Reflect-pad the canvas: where tissue runs into the image border (the chest wall), a tile
        # flush with the border puts a cut-off bright edge against the U-Net's zero padding, and the
        # segmentor fires along it. Padding by reflection moves that seam outside the image (three
        # regular phantoms: Dice 0.48/0.38/0.26 without, 0.62/0.42/0.28 with; neutral on the
        # sfm-benign-0 views, experiments/border_rules.py).
        x = geo.to_canvas(x, "reflect")
        grid = tile_grid(tuple(x.shape), tile=self.tile, overlap=self.overlap, breast_mask=geo.to_canvas(bm, "replicate"))
        timings["grid"] = time.perf_counter() - t
        return Prepared(x=x, grid=grid, bm=bm, keep=keep, seed_region=geo.to_canvas(keep, "constant"), geometry=geo,
                        mammogram=mammo, timings=timings, pectoral=pectoral)

    def network(self, prep: "Prepared", refine: bool = True, progress=None, seeds=None, projector=None):
        """The segmentor and TT-GPR on a :meth:`prepare`'d image: the canvas's field result (logits,
        uncertainty, timings), for :meth:`finish`. ``seeds``/``projector`` as :meth:`__call__`."""
        geo = prep.geometry
        canvas_seeds = None
        if seeds is not None:
            sd = _seed_points(seeds, geo.source_shape)
            canvas_seeds = geo.source_to_canvas(sd, clamp=True).float().to(self.device)
        fr = run_field(prep.x, prep.grid, self.seg, self.gen, self.config, refine_on=refine, backend=self.backend,
                       autocast=self.autocast, progress=progress, seed_region=prep.seed_region, seeds=canvas_seeds,
                       projector=_shifted(projector, geo) if projector is not None else None)
        return fr

    def finish(self, prep: "Prepared", fr, canonical: bool = True) -> Result:
        """Probability, mask, calcifications and clusters on the input's grid from :meth:`network`'s
        result (CPU-side post-processing; may run in another thread than :meth:`network`).
        ``canonical=False``: a mirrored file's arrays and coordinates are given back as stored.
        A new :class:`Result`; ``prep`` and ``fr`` are left as they were."""
        geo, spacing, mammo = prep.geometry, prep.spacing, prep.mammogram
        timings = dict(prep.timings)
        for k, v in fr.timings.items():
            timings[k] = timings.get(k, 0.0) + v
        t = time.perf_counter()
        keep = prep.keep.to(self.device)
        prob = geo.to_source(torch.sigmoid(geo.crop_canvas(fr.logits)) * keep).clamp(0, 1).cpu()
        base = geo.to_source(torch.sigmoid(geo.crop_canvas(fr.base_logits)) * keep).clamp(0, 1).cpu()
        unc = vote = None
        if fr.uncertainty is not None:
            unc = geo.to_source(geo.crop_canvas(fr.uncertainty) * keep).clamp(min=0).cpu()
        if fr.uncertainty is not None and fr.vote is not None:  # TT-GPR ran: each detection keeps its q
            vote = geo.to_source(geo.crop_canvas(fr.vote) * keep).clamp(0, 1).cpu()
        bm_src = geo.mask_to_source(prep.bm.cpu())
        pectoral = prep.pectoral
        orientation = "source" if mammo is not None and not canonical else "canonical"
        if orientation == "source" and geo.flipped:
            # the file's own orientation: every array and coordinate mirrored once, here
            prob, base, bm_src = geo.to_stored(prob), geo.to_stored(base), geo.to_stored(bm_src)
            unc = geo.to_stored(unc) if unc is not None else None
            vote = geo.to_stored(vote) if vote is not None else None
            if pectoral is not None:
                boundary = np.asarray(pectoral.get("boundary", []), np.float64).reshape(-1, 2)
                pectoral = dict(pectoral, boundary=_rounded(geo.source_to_stored(boundary)))
        mask = prob >= self.config.threshold
        # with TT-GPR a detection carries the numbers its score was made of: the base model's
        # probability and the generator's vote (the maxima over the object's pixels)
        evidence = {"base_prob": base, "generator_vote": vote} if vote is not None else None
        dets = detections_from_prob(prob, spacing, self.config.threshold, uncertainty=unc, low=HYSTERESIS_LOW,
                                    merge_mm=MERGE_MM, evidence=evidence)
        clusters = clusters_from_detections(dets, spacing)
        timings["detect"] = time.perf_counter() - t
        return Result(prob=prob, mask=mask, uncertainty=unc, base_prob=base, detections=dets, clusters=clusters,
                      spacing_mm=spacing, breast_mask=bm_src, timings=timings,
                      refined_fraction=fr.refined_fraction, seeds=fr.seeds, mammogram=mammo, pectoral=pectoral,
                      orientation=orientation)
