"""Accumulate per-image results of several methods and write the evaluation report.

:class:`Evaluator` takes one probability map per (case, method) as it is produced and keeps only
counts and a few small crops, so a dataset of full-field images is evaluated in constant memory:

* pixel counts at the operating threshold over the whole image and within the breast mask
  (:mod:`mcgr.eval.metrics`: micro and macro with bootstrap CI);
* calcification matching at the operating threshold (:func:`mcgr.eval.objects.match_objects`):
  sensitivity, FP per image and per cm^2 of breast;
* FROC counts at every FROC threshold, summed into the curve and its sensitivities at 0.25, 0.5, 1, 2
  and 4 FP/image and their mean;
* cluster matching at the operating threshold (:func:`mcgr.eval.objects.match_clusters`);
* the worst misses (largest missed true calcifications) and false positives (highest peak
  probability) for the gallery.

:func:`write_report` writes ``report.json``, ``report.md``, ``per_image.csv``, ``froc.png`` and
``gallery.png`` into a folder. Every group is reported for all cases and for each subset (e.g. the
synthetic set's regular and faint halves). Failed cases (an unreadable file, a truth of the wrong
shape) are listed with their error and left out of the figures.
"""
from __future__ import annotations

import csv
import heapq
import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from mcgr.eval.metrics import METRICS, PixelCounts, aggregate, metrics_from_counts, pixel_counts
from mcgr.eval.objects import (DEFAULT_FROC_THRESHOLDS, FROC_RATES, components, froc_counts, froc_from_counts,
                               match_clusters, match_objects, object_metrics)

METHOD_LABELS = {"base": "base (segmentor)", "ttgpr": "TT-GPR", "dog": "DoG + Hessian", "tophat": "top-hat"}
# low thresholds too, so that the classic maps' curves reach 4 FP/image
EVAL_FROC_THRESHOLDS = tuple(sorted(set(DEFAULT_FROC_THRESHOLDS) | {0.99, 0.98, 0.03, 0.02, 0.01}, reverse=True))


@dataclass
class EvalSettings:
    """threshold: operating point on the probability maps; dist_mm / iou_min: calcification matching;
    froc_thresholds: where the FROC is sampled; cluster_*: cluster rule and matching (see
    :func:`mcgr.eval.objects.match_clusters`); gallery_k: crops per row; crop_px: crop side;
    n_boot: bootstrap resamples of the macro CIs."""

    threshold: float = 0.5
    dist_mm: float = 0.35
    iou_min: float = 0.3
    froc_thresholds: tuple = EVAL_FROC_THRESHOLDS
    cluster_link_mm: float = 5.0
    cluster_min_members: int = 3
    cluster_area_cm2: float = 1.0
    cluster_dist_mm: float = 5.0
    cluster_min_shared: int = 2
    gallery_k: int = 6
    crop_px: int = 48
    n_boot: int = 2000

    def validated(self) -> "EvalSettings":
        if not 0.0 < float(self.threshold) < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold!r}")
        if not self.dist_mm > 0 or not 0 < self.iou_min <= 1:
            raise ValueError(f"dist_mm must be > 0 and iou_min in (0, 1], got {self.dist_mm!r}, {self.iou_min!r}")
        if not self.froc_thresholds or any(not 0 < t < 1 for t in self.froc_thresholds):
            raise ValueError(f"froc_thresholds must be non-empty, each in (0, 1), got {self.froc_thresholds!r}")
        if self.gallery_k < 0 or self.crop_px < 8:
            raise ValueError(f"gallery_k must be >= 0 and crop_px >= 8, got {self.gallery_k}, {self.crop_px}")
        return self


@dataclass
class _Record:
    case: str
    subset: str
    method: str
    image: PixelCounts
    breast: PixelCounts
    objects: dict
    clusters: dict
    froc: dict
    breast_cm2: float
    seconds: float


@dataclass
class _Crop:
    case: str
    method: str
    kind: str
    score: float
    yx: tuple[float, float]
    image: np.ndarray
    truth: np.ndarray
    pred: np.ndarray


@dataclass
class Evaluator:
    """Collects results per (case, method). ``add`` returns the per-image row it recorded."""

    methods: list[str]
    settings: EvalSettings = field(default_factory=EvalSettings)
    records: list = field(default_factory=list)
    failures: list = field(default_factory=list)
    rows: list = field(default_factory=list)
    _gallery: dict = field(default_factory=dict)
    _tick: itertools.count = field(default_factory=itertools.count)

    def __post_init__(self):
        self.settings = self.settings.validated()

    def fail(self, case: str, subset: str, error: BaseException | str, method: str = "") -> None:
        """Count ``case`` as failed (for ``method``, or for every method when empty)."""
        msg = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self.failures.append({"case": case, "subset": subset, "method": method or "all", "error": msg})

    def add(self, case: str, subset: str, method: str, prob, truth, spacing_mm: float, breast=None, image=None,
            seconds: float = float("nan")) -> dict:
        """Record method ``method``'s probability map ``prob`` [H, W] in [0, 1] on a case.

        truth: bool [H, W] on the same grid; spacing_mm: its pixel size; breast: bool [H, W] (the
        region of the in-breast pixel metrics and of FP/cm^2; None = the whole image); image: the
        case's image [H, W] (for the gallery crops). Raises ValueError on mismatched shapes or a map
        outside [0, 1].
        """
        s = self.settings
        p = _np(prob).astype(np.float32, copy=False)
        t = _np(truth).astype(bool, copy=False)
        if p.ndim != 2:
            raise ValueError(f"{method}: prediction must be [H, W], got shape {p.shape}")
        if p.shape != t.shape:
            raise ValueError(f"{method}: prediction of shape {p.shape} and truth of shape {t.shape} differ")
        if not np.isfinite(p).all() or (p.size and (float(p.min()) < 0 or float(p.max()) > 1)):
            raise ValueError(f"{method}: prediction must be finite and in [0, 1]")
        b = np.ones_like(t) if breast is None else _np(breast).astype(bool, copy=False)
        if b.shape != t.shape:
            raise ValueError(f"{method}: breast mask of shape {b.shape} and truth of shape {t.shape} differ")
        pred = p >= s.threshold
        obj = match_objects(t, pred, spacing_mm, s.dist_mm, s.iou_min, duplicates="ignore")
        obj["fp"] += obj["duplicate_pred"]  # the strict count; duplicates reported beside it
        clu = match_clusters(obj["truth_centroids"], obj["pred_centroids"], spacing_mm, obj["pairs"],
                             link_mm=s.cluster_link_mm, min_members=s.cluster_min_members,
                             area_cm2=s.cluster_area_cm2, dist_mm=s.cluster_dist_mm, min_shared=s.cluster_min_shared)
        fr = froc_counts(p, t, spacing_mm, s.froc_thresholds, s.dist_mm, s.iou_min)
        rec = _Record(case=case, subset=subset, method=method, image=pixel_counts(pred, t), breast=pixel_counts(pred, t, b),
                      objects={**{k: obj[k] for k in ("tp", "fn", "fp", "n_truth", "n_pred")},
                               "duplicates": obj["duplicate_pred"]},
                      clusters={k: clu[k] for k in ("tp", "fn", "fp", "n_truth", "n_pred")}, froc=fr,
                      breast_cm2=float(b.sum()) * spacing_mm**2 / 100.0, seconds=float(seconds))
        self.records.append(rec)
        if image is not None and s.gallery_k > 0:
            self._collect_crops(case, method, _np(image), t, pred, p, obj)
        row = _row(rec)
        self.rows.append(row)
        return row

    def _collect_crops(self, case, method, image, truth, pred, prob, obj) -> None:
        k = self.settings.gallery_k
        matched_t = {i for i, _ in obj["pairs"]}
        matched_p = {j for _, j in obj["pairs"]}
        if obj["n_truth"] > len(matched_t):
            lab, n, cen, area = components(truth)
            for i in range(n):
                if i not in matched_t:
                    self._push(method, "miss", float(area[i]), case, cen[i], image, truth, pred)
        if obj["n_pred"] > len(matched_p):
            lab, n, cen, _ = components(pred)
            peak = np.asarray(ndimage.maximum(prob, lab, np.arange(1, n + 1))).reshape(-1)
            for j in range(n):
                if j not in matched_p:
                    self._push(method, "fp", float(peak[j]), case, cen[j], image, truth, pred)
        for key in list(self._gallery):
            while len(self._gallery[key]) > k:
                heapq.heappop(self._gallery[key])

    def _push(self, method, kind, score, case, yx, image, truth, pred) -> None:
        heap = self._gallery.setdefault((method, kind), [])
        if len(heap) >= self.settings.gallery_k and score <= heap[0][0]:
            return
        half = self.settings.crop_px // 2
        y, x = int(round(yx[0])), int(round(yx[1]))
        crops = [_crop(a, y, x, half) for a in (image, truth, pred)]
        item = _Crop(case, method, kind, score, (float(yx[0]), float(yx[1])), *crops)
        heapq.heappush(heap, (score, next(self._tick), item))
        if len(heap) > self.settings.gallery_k:
            heapq.heappop(heap)

    def gallery(self, method: str, kind: str) -> list[_Crop]:
        """The kept crops of ``method`` ("miss" or "fp"), worst first."""
        return [c for _, _, c in sorted(self._gallery.get((method, kind), []), key=lambda e: (-e[0], e[1]))]

    def group_summary(self, method: str, subset: str | None = None) -> dict:
        """Every metric of ``method`` over all cases (``subset`` None) or over one subset."""
        recs = [r for r in self.records if r.method == method and (subset is None or r.subset == subset)]
        if not recs:
            return {"images": 0}
        s = self.settings
        fr_tp = np.sum([r.froc["tp"] for r in recs], axis=0)
        fr_fp = np.sum([r.froc["fp"] for r in recs], axis=0)
        n_t = sum(r.froc["n_truth"] for r in recs)
        clu = object_metrics([r.clusters for r in recs])
        secs = [r.seconds for r in recs if not math.isnan(r.seconds)]
        return {
            "images": len(recs),
            "pixel": {"breast": aggregate([r.breast for r in recs], n_boot=s.n_boot),
                      "image": aggregate([r.image for r in recs], n_boot=s.n_boot)},
            "objects": object_metrics([r.objects for r in recs], [r.breast_cm2 for r in recs]),
            "froc": froc_from_counts(s.froc_thresholds, fr_tp, fr_fp, n_t, len(recs), FROC_RATES),
            "clusters": {"sensitivity": clu["sensitivity"], "tp": clu["tp"], "n_truth": clu["n_truth"],
                         "fp": clu["fp"], "fp_per_image": clu["fp_per_image"]},
            "seconds_per_image": float(np.mean(secs)) if secs else float("nan"),
        }

    def subsets(self) -> list[str]:
        return sorted({r.subset for r in self.records if r.subset})

    def summary(self) -> dict:
        """``{method: {"all": group, "subsets": {name: group}}}`` for every method."""
        subs = self.subsets()
        return {m: {"all": self.group_summary(m), "subsets": {s: self.group_summary(m, s) for s in subs}}
                for m in self.methods}


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _crop(a: np.ndarray, y: int, x: int, half: int) -> np.ndarray:
    pad = [(half, half), (half, half)]
    padded = np.pad(a, pad, mode="constant")
    return padded[y: y + 2 * half, x: x + 2 * half].copy()


def _row(r: _Record) -> dict:
    o, c = r.objects, r.clusters
    row = {"case": r.case, "subset": r.subset, "method": r.method, "n_truth": o["n_truth"], "n_pred": o["n_pred"],
           "tp": o["tp"], "fn": o["fn"], "fp": o["fp"],
           "sensitivity": o["tp"] / o["n_truth"] if o["n_truth"] else float("nan"),
           "breast_cm2": r.breast_cm2, "fp_per_cm2": o["fp"] / r.breast_cm2 if r.breast_cm2 > 0 else float("nan"),
           "true_clusters": c["n_truth"], "found_clusters": c["tp"], "fp_clusters": c["fp"]}
    for region, counts in (("breast", r.breast), ("image", r.image)):
        for k, v in metrics_from_counts(counts).items():
            row[f"{k}_{region}"] = v
    row["seconds"] = r.seconds
    return row


def _clean(x):
    """JSON-safe copy: NaN/inf -> None, NumPy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    return x


def _f(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def _label(m: str) -> str:
    return METHOD_LABELS.get(m, m)


def _markdown_group(summary: list, title: str) -> list[str]:
    out = [f"## {title}", ""]
    head_obj = "| method | images | sensitivity | FP/image | FP/image, duplicates not counted | FP/cm² | " + \
        " | ".join(f"FROC@{r:g}" for r in FROC_RATES) + \
        " | FROC mean | cluster sens. | cluster FP/image | s/image |"
    out += ["Calcifications (object level, operating threshold for sensitivity and FPs):", "", head_obj,
            "|" + "---|" * (head_obj.count("|") - 1)]
    for m, g in summary:
        if not g.get("images"):
            out.append(f"| {_label(m)} | 0 |" + " n/a |" * (head_obj.count("|") - 3))
            continue
        o, fr, c = g["objects"], g["froc"], g["clusters"]
        dup = o.get("duplicates_per_image")
        out.append(f"| {_label(m)} | {g['images']} | {_f(o['sensitivity'])} | {_f(o['fp_per_image'], 2)} | "
                   f"{_f(None if dup is None else o['fp_per_image'] - dup, 2)} | "
                   f"{_f(o.get('fp_per_cm2'), 3)} | " + " | ".join(_f(fr["at_rates"][str(float(r))]) for r in FROC_RATES)
                   + f" | {_f(fr['mean_sensitivity'])} | {_f(c['sensitivity'])} | {_f(c['fp_per_image'], 2)} | "
                   f"{_f(g['seconds_per_image'], 2)} |")
    out.append("")
    for region, what in (("breast", "within the breast mask"), ("image", "over the whole image")):
        head = "| method | " + " | ".join(METRICS) + " |"
        out += [f"Pixel metrics {what}, pooled over images (micro):", "", head, "|" + "---|" * (len(METRICS) + 1)]
        for m, g in summary:
            if g.get("images"):
                mi = g["pixel"][region]["micro"]
                out.append(f"| {_label(m)} | " + " | ".join(_f(mi[k]) for k in METRICS) + " |")
        out.append("")
        out += [f"Pixel metrics {what}, per image (macro: mean [95% bootstrap CI], n defined):", "", head,
                "|" + "---|" * (len(METRICS) + 1)]
        for m, g in summary:
            if g.get("images"):
                ma = g["pixel"][region]["macro"]
                out.append(f"| {_label(m)} | " + " | ".join(
                    f"{_f(ma[k]['mean'])} [{_f(ma[k]['ci95'][0])}, {_f(ma[k]['ci95'][1])}] n={ma[k]['n']}"
                    for k in METRICS) + " |")
        out.append("")
    return out


def report_markdown(report: dict) -> str:
    """The Markdown report of a :func:`write_report` JSON dict."""
    methods = report["methods"]
    res = report["results"]
    ds = report["dataset"]
    s = report["settings"]
    lines = ["# mcgr evaluation report", "",
             f"Command: `{report['command']}`  ", f"mcgr {report['version']}, git {report['git']}, {report['created']}", "",
             f"Dataset **{ds['name']}**: {ds['cases']} case(s), {report['evaluated']} evaluated, "
             f"{len(report['failures'])} failed, {len(ds['skipped'])} skipped before evaluation.", ""]
    for note in ds.get("notes", []):
        lines.append(f"- {note}")
    lines += ["", f"Operating threshold {s['threshold']}; a true calcification is found by a predicted component "
              f"whose centroid is within {s['dist_mm']} mm or whose IoU is >= {s['iou_min']} (one-to-one); every "
              "unmatched component is a false positive, and the column 'duplicates not counted' leaves out "
              "those that hit a calcification another component found (the LUNA16 rule); "
              f"clusters: >= {s['cluster_min_members']} calcifications linked within {s['cluster_link_mm']} mm "
              f"(compact when within {s['cluster_area_cm2']} cm²), found when centroids lie within "
              f"{s['cluster_dist_mm']} mm or >= {s['cluster_min_shared']} calcifications match. "
              "FROC sensitivities are interpolated at the given FP/image (the curve's last value where it stops short).", ""]
    lines += _markdown_group([(m, res[m]["all"]) for m in methods], "All cases")
    for sub in report.get("subsets", []):
        lines += _markdown_group([(m, res[m]["subsets"].get(sub, {"images": 0})) for m in methods], f"Subset: {sub}")
    lines += ["## Figures", "", "![FROC](froc.png)", "", "![Worst misses and false positives](gallery.png)", "",
              "Gallery: per method, the largest missed true calcifications (top row) and the false positives "
              "of highest peak probability (bottom row); truth outlined in green, prediction in red, the object "
              "of each crop at the crop's centre (yellow ticks).", ""]
    lines += ["## Failures and skips", ""]
    if report["failures"]:
        lines += ["| case | method | error |", "|---|---|---|"]
        lines += [f"| {f['case']} | {f['method']} | {f['error']} |" for f in report["failures"]]
    else:
        lines.append("No case failed.")
    lines.append("")
    if ds["skipped"]:
        lines += ["Skipped before evaluation:", ""] + [f"- {k['id']}: {k['reason']}" for k in ds["skipped"]]
    lines += ["", "Counts: `" + json.dumps(ds.get("counts", {}), sort_keys=True) + "`", ""]
    return "\n".join(lines)


def plot_froc(report: dict, path) -> bool:
    """FROC curves (one per method; one panel for all cases and one per subset) as a PNG. False when
    matplotlib is not installed (the report says so)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    groups = [("all cases", "all", None)] + [(f"subset: {s}", "subsets", s) for s in report.get("subsets", [])]
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4.2), squeeze=False)
    for ax, (title, key, sub) in zip(axes[0], groups):
        for m in report["methods"]:
            g = report["results"][m][key] if sub is None else report["results"][m][key].get(sub, {})
            fr = g.get("froc") if g else None
            if not fr:
                continue
            xs = np.asarray([np.nan if v is None else v for v in fr["fp_per_image"]], dtype=float)
            ys = np.asarray([np.nan if v is None else v for v in fr["sensitivity"]], dtype=float)
            # in threshold order: lowering the threshold can merge components, so the raw curve may
            # step back; the FROC@rate figures read its running maximum
            mean = fr["mean_sensitivity"]
            ax.plot(xs, ys, marker=".", label=f"{_label(m)} (mean {_f(mean)})")
        ax.set_xscale("symlog", linthresh=0.25)
        ax.set_xlim(0, max(8.0, ax.get_xlim()[1]))
        ax.set_ylim(0, 1.02)
        for r in FROC_RATES:
            ax.axvline(r, color="0.85", lw=0.8, zorder=0)
        ax.set_xlabel("false positives per image")
        ax.set_ylabel("sensitivity (calcifications)")
        ax.set_title(title)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def render_gallery(ev: Evaluator, path, zoom: int = 4) -> None:
    """PNG of the worst misses and false positives of each method as zoomed crops: the crop
    contrast-stretched, truth outlined in green and the prediction in red."""
    from PIL import Image, ImageDraw

    from mcgr.synth.shards import mask_outline

    side = ev.settings.crop_px * zoom
    k = max(1, ev.settings.gallery_k)
    label_w, gap, text_h = 150, 4, 14
    rows = [(m, kind) for m in ev.methods for kind in ("miss", "fp")]
    width = label_w + k * (side + gap)
    height = max(1, len(rows)) * (side + text_h + gap)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (m, kind) in enumerate(rows):
        y0 = r * (side + text_h + gap)
        draw.text((4, y0 + side // 2), f"{_label(m)}\n{'misses' if kind == 'miss' else 'false positives'}", fill=(0, 0, 0))
        crops = ev.gallery(m, kind)
        if not crops:
            draw.text((label_w, y0 + side // 2), "none", fill=(90, 90, 90))
        for c_i, c in enumerate(crops):
            x0 = label_w + c_i * (side + gap)
            canvas.paste(Image.fromarray(_crop_rgb(c, zoom, mask_outline)), (x0, y0 + text_h))
            score = f"area {c.score:.0f}px" if kind == "miss" else f"p {c.score:.2f}"
            draw.text((x0, y0), f"{c.case[-18:]} {score}", fill=(0, 0, 0))
    canvas.save(path)


def _crop_rgb(c: _Crop, zoom: int, mask_outline) -> np.ndarray:
    g = c.image.astype(np.float32)
    lo, hi = np.percentile(g, 1), np.percentile(g, 99.8)
    g = np.clip((g - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(g)
    g = np.kron(g, np.ones((zoom, zoom), np.float32))
    rgb = np.repeat((g * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=2)
    for mask, colour in ((c.truth, (40, 220, 40)), (c.pred, (255, 40, 40))):
        big = np.kron(mask.astype(np.uint8), np.ones((zoom, zoom), np.uint8)).astype(bool)
        rgb[mask_outline(big)] = colour
    # ticks on the four borders point at the crop's centre: the object the crop is about
    h, w = rgb.shape[:2]
    t = max(3, zoom * 2)
    rgb[:t, w // 2 - 1: w // 2 + 1] = rgb[-t:, w // 2 - 1: w // 2 + 1] = (255, 200, 0)
    rgb[h // 2 - 1: h // 2 + 1, :t] = rgb[h // 2 - 1: h // 2 + 1, -t:] = (255, 200, 0)
    return rgb


def write_report(ev: Evaluator, out, dataset_summary: dict, command: str, extra: dict | None = None) -> dict:
    """Write report.json, report.md, per_image.csv, froc.png and gallery.png into ``out``; return the
    report dict (as written to JSON)."""
    import datetime
    import subprocess

    from mcgr import __version__

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        git = "unknown"
    report = {
        "command": command,
        "version": __version__,
        "git": git,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dataset": dataset_summary,
        "settings": asdict(ev.settings),
        "methods": list(ev.methods),
        "subsets": ev.subsets(),
        "evaluated": len({r.case for r in ev.records}),
        "failures": list(ev.failures),
        "results": ev.summary(),
        **(extra or {}),
    }
    report = _clean(report)
    (out / "report.json").write_text(json.dumps(report, indent=1, sort_keys=False) + "\n")
    fields = list(ev.rows[0].keys()) if ev.rows else ["case", "subset", "method"]
    with open(out / "per_image.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for row in ev.rows:
            w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    report["froc_png"] = plot_froc(report, out / "froc.png")
    render_gallery(ev, out / "gallery.png")
    md = report_markdown(report)
    if not report["froc_png"]:
        md = md.replace("![FROC](froc.png)", "(froc.png not written: matplotlib is not installed)")
    (out / "report.md").write_text(md)
    return report
