"""TT-GPR under shift: seed recall of the proposers, base vs TT-GPR designs, oracle seeds, and the
generator's per-seed acceptance on real-background decoys (docs/ttgpr_shift.md).

    python -m experiments.seed_recall [--seg shipped|DIR] [--rf shipped|DIR] [--views rcc,rmlo]
        [--phantoms variant,faint] [--size 1536x1152] [--stages seeds,ttgpr,accept] [--threads 1]
        [--designs NAME,...] [--froc] [--out benchmarks/results/seed_recall.json] [--plot docs/ttgpr_shift_seed_recall.png]
    python -m experiments.seed_recall --table benchmarks/results/seed_recall.json   # the markdown tables

Images (none of them chose anything the shipped models were trained or tuned on):
* ``rcc`` / ``rmlo`` ...: the ``sfm-benign-0`` view at 0.07 mm with synthetic calcifications injected
  where the pipeline searches (:func:`mcgr.train.validate_real.inject_field`, seed 900001 + 1000 x
  (1 + view index), the first injection of ``validate_real``); with a leave-one-view-out model as
  ``--seg`` the view is one that model never saw;
* ``variant``: a procedural MLO phantom outside the training texture range
  (``validate_real.VARIANT_TEXTURE``, anatomy, seed 900051); ``faint`` / ``regular``: the phantoms
  of the demo (seeds 900061 / 900071).

Stage ``seeds``: seed recall (fraction of the true calcifications in the search region, i.e. where
the outputs keep pixels, within ``seed_radius`` px of a seed; all, visible = CNR >= 3, and the
visible ones the base model missed) against seeds per tile, for
the current proposer (maxima of the logits, p >= tau_seed, strongest first) and the fused ones.
Stage ``ttgpr``: base vs each TT-GPR design (Dice and pixel recall within the breast at 0.5,
object sensitivity, false objects per image, seeds, time), the base pass run once per image and
shared (``run_field(base_tiles=...)``). Stage ``accept``: the shipped generator's surrogate
probability at true seeds against decoy seeds (evidence maxima >= 8 px from every calcification:
grain, vessels, ligaments, the pectoral edge), as a ROC AUC.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mcgr import MODEL_SPACING_MM
from mcgr.infer.seeds import field_seeds, keep_found
from mcgr.infer.ttgpr import TTGPRConfig, run_field, segment_tiles
from mcgr.infer.ttgpr_config import SEED_RADIUS
from mcgr.ops import gather_tiles, stitch
from mcgr.ops._tiling import gaussian_weights

VIEWS = ("rcc", "lcc", "rmlo", "lmlo")
SEED0 = 900001
BUDGETS = (1, 2, 4, 8, 16, 32)

# The designs compared (TTGPRConfig overrides; "seeds": "oracle" = the true centres). Post-hoc rules
# on a design's output: "+add" keeps the base logits on the base detections (refine_rule "add").
DESIGNS = {
    "current": {"proposer": "logits", "refine_rule": "free", "accept_q": 0.0},  # the defaults before 2026-12-05
    "fused": {"proposer": "fused", "evidence_weight": 0.5, "evidence_floor": 4.0},
    "fused_add": {"proposer": "fused", "refine_rule": "add", "evidence_weight": 0.5, "evidence_floor": 4.0},
    "fused_add_gate": {"proposer": "fused", "refine_rule": "add", "accept_q": 0.9, "evidence_weight": 0.5,
                       "evidence_floor": 4.0},
    "rank_add_gate": {"proposer": "fused", "refine_rule": "add", "evidence_weight": 1.0, "evidence_floor": 4.0,
                      "accept_q": 0.9},
    "rank8_add_gate": {"proposer": "fused", "refine_rule": "add", "evidence_weight": 1.0, "evidence_floor": 4.0,
                       "accept_q": 0.9, "seeds_per_tile": 8},
    "current_add_gate": {"refine_rule": "add", "accept_q": 0.9},
    "fused1_add_gate": {"proposer": "fused", "refine_rule": "add", "evidence_weight": 1.0, "evidence_floor": 2.5,
                        "accept_q": 0.9, "seeds_per_tile": 1},
    "fused2_add_gate": {"proposer": "fused", "refine_rule": "add", "evidence_weight": 1.0, "evidence_floor": 2.5,
                        "accept_q": 0.9, "seeds_per_tile": 2},
    "rank1_add_gate": {"proposer": "fused", "refine_rule": "add", "evidence_weight": 1.0, "evidence_floor": 4.0,
                       "accept_q": 0.9, "seeds_per_tile": 1},
    "rank_add_gate_free": {"proposer": "fused", "refine_rule": "add", "evidence_weight": 1.0, "evidence_floor": 4.0,
                           "accept_q": 0.9, "refine_steps": 60, "refine": {"lambda_a": 0.0, "lambda_e": 0.0}},
    "fused_add_gate_free": {"proposer": "fused", "refine_rule": "add", "evidence_weight": 0.5, "evidence_floor": 4.0,
                            "accept_q": 0.9, "refine_steps": 60, "refine": {"lambda_a": 0.0, "lambda_e": 0.0}},
    "evidence_add": {"proposer": "fused", "refine_rule": "add", "evidence_weight": 0.0, "evidence_floor": 4.0},
    "oracle": {"seeds": "oracle"},
    "oracle_add_free_anchor": {"seeds": "oracle", "refine_rule": "add", "refine_steps": 60,
                               "refine": {"lambda_a": 0.0, "lambda_e": 0.0}},
}


def _view_image(view: str) -> dict:
    from mcgr.io import read_mammogram, to_model_spacing
    from mcgr.train.real import FILM_SPACING_MM, benign_views
    from mcgr.train.validate_real import inject_field, search_region

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = read_mammogram(benign_views()[view], spacing=FILM_SPACING_MM)
    img, _ = to_model_spacing(m, MODEL_SPACING_MM)
    img = np.ascontiguousarray(img, dtype=np.float32)
    bm, region = search_region(img)
    im, truth, bg, centres = inject_field(img, region, SEED0 + 1000 * (1 + VIEWS.index(view)))
    return {"name": view, "image": im, "truth": truth, "background": bg, "centres": centres.float(),
            "breast": None}


def _phantom_image(kind: str, size) -> dict:
    from mcgr.synth.phantom import breast_phantom
    from mcgr.train.validate_real import VARIANT_TEXTURE

    h, w = size
    if kind == "variant":
        ph = breast_phantom(h, w, seed=SEED0 + 50, anatomy=True, texture=VARIANT_TEXTURE)
    else:
        ph = breast_phantom(h, w, seed=SEED0 + (60 if kind == "faint" else 70), faint=kind == "faint")
    return {"name": kind, "image": ph.image, "truth": ph.truth.bool(), "background": ph.background,
            "centres": ph.centres.float(), "breast": ph.breast}


def _visible(im: dict) -> torch.Tensor:
    from mcgr.synth.visibility import ROSE_K, centre_cnr

    return centre_cnr(im["image"][None, None], im["background"][None, None], [im["centres"]])[0] >= ROSE_K


def _near(seeds: torch.Tensor, centres: torch.Tensor, r: float) -> torch.Tensor:
    """[K] bool: each centre within r px of some seed."""
    if seeds.shape[0] == 0:
        return torch.zeros(centres.shape[0], dtype=torch.bool)
    return (torch.cdist(centres.float(), seeds.float().cpu()) <= r).any(1)


class Prepared:
    """One image through the pipeline's prepare and base pass, kept for every design."""

    def __init__(self, pipe, im: dict):
        self.im = im
        self.pipe = pipe
        t = time.perf_counter()
        self.prep = pipe.prepare(im["image"], spacing=MODEL_SPACING_MM, breast_mask=im["breast"])
        self.t_prepare = time.perf_counter() - t
        p = self.prep
        t = time.perf_counter()
        Y = gather_tiles(p.x, p.grid)
        self.Z0 = segment_tiles(pipe.seg, Y, pipe.config.cpu_batch, pipe.autocast)
        self.base = stitch(self.Z0, p.grid, gaussian_weights(p.grid.tile))
        self.t_base = time.perf_counter() - t
        self.P = int(p.grid.origins.shape[0])
        self.centres = p.geometry.source_to_canvas(im["centres"]).float()  # canvas px
        self.visible = _visible(im)
        iy = self.centres[:, 0].round().long().clamp(0, self.base.shape[0] - 1)
        ix = self.centres[:, 1].round().long().clamp(0, self.base.shape[1] - 1)
        zpk = F.max_pool2d(self.base[None, None], 3, stride=1, padding=1)[0, 0]
        self.base_found = zpk[iy, ix] >= 0.0  # p >= 0.5 within 1 px of the centre
        inside = torch.zeros_like(self.base, dtype=torch.bool)
        T = p.grid.tile
        for y0, x0 in p.grid.origins.tolist():
            inside[y0:y0 + T, x0:x0 + T] = True
        self.region = inside & p.seed_region
        t = time.perf_counter()
        from mcgr.infer.proposals import DEFAULT_FILTERS, evidence_map

        self.evidence = evidence_map(p.x, self.region, MODEL_SPACING_MM)  # what the fused proposer uses
        self.t_evidence = {"+".join(DEFAULT_FILTERS): round(time.perf_counter() - t, 2)}
        self.by_filter = {}
        for f in ("matched", "dog", "tophat"):
            t = time.perf_counter()
            self.by_filter[f] = evidence_map(p.x, self.region, MODEL_SPACING_MM, filters=(f,))
            self.t_evidence[f] = round(time.perf_counter() - t, 2)
        # only centres in the search region can be seeded by any proposer (the oracle's too)
        iy0 = self.centres[:, 0].round().long().clamp(0, self.base.shape[0] - 1)
        ix0 = self.centres[:, 1].round().long().clamp(0, self.base.shape[1] - 1)
        self.in_region = self.region[iy0, ix0]


def stage_seeds(items, radius: int, budgets=BUDGETS) -> dict:
    base_cfg = TTGPRConfig()
    curves: dict = {}

    def add(name, b, per_img):
        tot = {"seeds": 0, "tiles": 0, "all": [0, 0], "visible": [0, 0], "missed_visible": [0, 0],
               "coverage_visible": [0, 0]}
        for it, seeds in per_img:
            hit = _near(seeds, it.centres, radius)
            tot["seeds"] += int(seeds.shape[0])
            tot["tiles"] += it.P
            r = it.in_region  # only these can be seeded by any proposer (the outputs drop the rest)
            for key, sel in (("all", r), ("visible", it.visible & r), ("missed_visible", it.visible & ~it.base_found & r),
                             ("coverage_visible", it.visible & r)):
                got = (hit | it.base_found) if key == "coverage_visible" else hit  # seeded or found by the base
                tot[key][0] += int((got & sel).sum())
                tot[key][1] += int(sel.sum())
        row = {"budget": b, "seeds_per_tile": round(tot["seeds"] / max(1, tot["tiles"]), 3)}
        for key in ("all", "visible", "missed_visible", "coverage_visible"):
            h, n = tot[key]
            row[f"recall_{key}"] = round(h / n, 4) if n else None
            row[f"n_{key}"] = n
        curves.setdefault(name, []).append(row)

    for b in budgets:
        # the current proposer: maxima of the logits with p >= tau_seed, strongest first, b per tile
        cur = TTGPRConfig(max_seeds=b)
        add("logits (p >= 0.3)", b, [(it, field_seeds(torch.where(it.region, it.base, torch.full_like(it.base, -1e4)),
                                                      it.prep.x, it.region, cur, it.prep.grid)) for it in items])
        # the same ranking without the probability floor
        low = TTGPRConfig(max_seeds=b, tau_seed=1e-4)
        add("logits (p >= 1e-4)", b, [(it, field_seeds(torch.where(it.region, it.base, torch.full_like(it.base, -1e4)),
                                                       it.prep.x, it.region, low, it.prep.grid)) for it in items])
        for f in ("matched", "dog", "tophat"):  # the image alone, each filter
            cfg = TTGPRConfig(proposer="fused", seeds_per_tile=b, evidence_weight=0.0, max_seeds=max(32, b))
            add(f"evidence: {f}", b, [(it, field_seeds(it.base, it.prep.x, it.region, cfg, it.prep.grid,
                                                       evidence=it.by_filter[f])) for it in items])
        for name, w, floor, tau in (("fused 0.5, floor 4", 0.5, 4.0, 0.3), ("fused 1.0, floor 4", 1.0, 4.0, 0.3),
                                    ("fused 1.0, floor 2.5", 1.0, 2.5, 0.3),
                                    ("logit maxima p >= 1e-4, no evidence", 1.0, 1e9, 1e-4)):
            cfg = TTGPRConfig(proposer="fused", seeds_per_tile=b, evidence_weight=w, max_seeds=max(32, b),
                              refine_rule="add", evidence_floor=floor, tau_seed=tau)
            add(name + ", base detections skipped", b,
                [(it, field_seeds(it.base, it.prep.x, it.region, cfg, it.prep.grid, base_logits=it.base,
                                  evidence=it.evidence)) for it in items])
    return curves


def _score(it, pipe, fr, maps: list | None = None) -> dict:
    from mcgr.demo import score

    res = pipe.finish(it.prep, fr)
    out = {}
    for name, prob in (("base", res.base_prob), ("ttgpr", res.prob)):
        s = score(prob, it.im["truth"], res.breast_mask, MODEL_SPACING_MM, pipe.config.threshold)
        out[name] = {k: s[k] for k in ("dice", "recall", "object_sensitivity", "fp_objects", "n_truth")}
    out["detections"] = len(res.detections)
    out["with_confidence"] = sum("confidence" in d for d in res.detections)
    if maps is not None:  # for the FROC: the maps, and the probability discounted by the spread
        unc = res.uncertainty if res.uncertainty is not None else torch.zeros_like(res.prob)
        maps.append((res.base_prob.numpy(), res.prob.numpy(), (res.prob * (1 - 2 * unc).clamp(0, 1)).numpy(),
                     it.im["truth"].numpy()))
    return out


FROC_THRESHOLDS = np.r_[np.linspace(0.05, 0.95, 19), 0.99, 0.999]
# the films carry tens of bright spots per view that no truth mask holds (sfm-benign-0 is a benign case with
# real calcifications): 1-5 false objects per image is below every operating point the segmentors reach
FROC_RATES = (10.0, 25.0, 50.0)


def froc_table(maps: list) -> dict:
    """Object sensitivity at FROC_RATES false objects per image (LUNA16 duplicate rule) of the base,
    TT-GPR ranked by probability, and TT-GPR ranked by probability x (1 - 2 x spread over the M
    projections)."""
    from mcgr.eval.objects import froc

    truths = [m[3] for m in maps]
    out = {}
    for k, name in ((0, "base"), (1, "ttgpr"), (2, "ttgpr_by_uncertainty")):
        f = froc([m[k] for m in maps], truths, MODEL_SPACING_MM, thresholds=FROC_THRESHOLDS, rates=FROC_RATES,
                 duplicates="ignore")
        out[name] = {str(r): round(v, 4) for r, v in f["at_rates"].items()}
    return out


def stage_ttgpr(items, designs, with_froc: bool = False) -> dict:
    from mcgr.infer.ttgpr import FieldResult

    rows = {}
    for name in designs:
        spec = dict(DESIGNS[name])
        oracle = spec.pop("seeds", None) == "oracle"
        cfg = TTGPRConfig.from_dict(spec)
        per, maps = [], ([] if with_froc else None)
        for it in items:
            p, pipe = it.prep, it.pipe
            pipe.config = cfg
            t = time.perf_counter()
            seeds = it.centres[it.in_region].to(p.x.device) if oracle else None
            fr = run_field(p.x, p.grid, pipe.seg, pipe.gen, cfg, refine_on=True, backend=pipe.backend,
                           autocast=pipe.autocast, seed_region=p.seed_region, seeds=seeds, base_tiles=it.Z0,
                           evidence=None)
            extra = time.perf_counter() - t
            fr2 = None
            if cfg.refine_rule == "free":  # the "add" rule on the same refinement (post hoc)
                fr2 = FieldResult(fr.base_logits, keep_found(fr.logits, fr.base_logits, cfg.threshold),
                                  fr.uncertainty, fr.grid, fr.refined_fraction, fr.seeds, {})
            s = _score(it, pipe, fr, maps)  # (finish crops fr's maps in place)
            s.update({"image": it.im["name"], "seeds": fr.seeds, "t_base": round(it.t_base, 1),
                      "t_ttgpr_extra": round(extra, 1),
                      "time_ratio": round((it.t_base + extra) / it.t_base, 2)})
            if fr2 is not None:
                s["ttgpr_add"] = _score(it, pipe, fr2)["ttgpr"]
            per.append(s)
            print(json.dumps({"design": name, **s}), flush=True)
        rows[name] = {"config": DESIGNS[name], "images": per, "mean": _mean(per)}
        if maps:
            rows[name]["froc"] = froc_table(maps)
        print(json.dumps({"design": name, "mean": rows[name]["mean"]}), flush=True)
    return rows


def _mean(per: list) -> dict:
    out = {}
    for key in ("base", "ttgpr", "ttgpr_add"):
        vals = [p[key] for p in per if key in p]
        if vals:
            out[key] = {k: round(float(np.nanmean([v[k] for v in vals])), 4)
                        for k in ("dice", "recall", "object_sensitivity", "fp_objects")}
    out["seeds"] = round(float(np.mean([p["seeds"] for p in per])), 1)
    out["time_ratio"] = round(float(np.mean([p["time_ratio"] for p in per])), 2)
    return out


@torch.inference_mode()
def acceptance(it, pipe, n: int = 48, win: int = 64, rng_seed: int = 0) -> dict:
    """The generator's surrogate probability at single seeds: true visible centres against decoys
    (evidence maxima >= 8 px from every calcification pixel, anywhere in the breast)."""
    from mcgr.models import make_seed_map
    from mcgr.models.rf import from_flow, generator_condition, to_flow, velocity
    from mcgr.models.sampling import sample
    from mcgr.models.segmentor import segment_logits
    from mcgr.models.unet import input_scale_of

    cfg = TTGPRConfig()
    x, H, W = it.prep.x, *it.prep.x.shape
    g = torch.Generator().manual_seed(rng_seed)
    true = it.centres[it.visible & it.in_region]
    true = true[torch.randperm(true.shape[0], generator=g)[:n]]
    truth = it.prep.geometry.to_canvas(it.im["truth"] > 0, "constant")
    far = F.max_pool2d(truth.float()[None, None], 17, stride=1, padding=8)[0, 0] == 0
    ev = it.evidence
    peaks = (ev >= F.max_pool2d(ev[None, None], 7, stride=1, padding=3)[0, 0]) & (ev >= cfg.evidence_floor) & far
    dy, dx = peaks.nonzero(as_tuple=True)
    order = torch.argsort(-ev[dy, dx])[: 4 * n]  # the strongest decoys: what the proposer would seed first
    pick = order[torch.randperm(order.numel(), generator=g)[:n]]
    decoy = torch.stack([dy[pick], dx[pick]], 1).float()
    # the pectoral edge of an MLO view (outside the search region: what the exclusion protects from)
    pec = it.prep.pectoral or {}
    edge = it.prep.geometry.source_to_canvas(torch.tensor(pec.get("boundary") or [], dtype=torch.float64)).float()
    if edge.shape[0]:
        edge = edge[torch.linspace(0, edge.shape[0] - 1, min(16, edge.shape[0])).round().long()]
        ok = (edge[:, 0] >= 0) & (edge[:, 0] <= H - 1) & (edge[:, 1] >= 0) & (edge[:, 1] <= W - 1)
        edge = edge[ok]
    # the base model's own false detections (peaks of its objects at p >= 0.5 far from every
    # calcification): the decoys a ranking of the base's detections has to push down (dust, grain)
    zb0 = it.base
    fpk = (zb0 >= F.max_pool2d(zb0[None, None], 7, stride=1, padding=3)[0, 0]) & (zb0 >= 0.0) & far & it.region
    fy, fx = fpk.nonzero(as_tuple=True)
    fsel = torch.randperm(fy.numel(), generator=g)[:n]
    false_det = torch.stack([fy[fsel], fx[fsel]], 1).float()
    pts = torch.cat([true, decoy, edge, false_det])
    label = torch.cat([torch.ones(true.shape[0]), torch.zeros(decoy.shape[0]), torch.full((edge.shape[0],), -1.0),
                       torch.full((false_det.shape[0],), -2.0)])
    scale = input_scale_of(pipe.gen)
    M = cfg.projections
    qs, ps, us = [], [], []
    zb = it.base
    for s in range(0, pts.shape[0], 16):
        chunk = pts[s:s + 16]
        ys, locs = [], []
        for cy, cx in chunk.tolist():
            y0 = int(min(max(round(cy) - win // 2, 0), H - win))
            x0 = int(min(max(round(cx) - win // 2, 0), W - win))
            ys.append(x[y0:y0 + win, x0:x0 + win])
            locs.append(torch.tensor([[cy - y0, cx - x0]]))
        ys = torch.stack(ys)[:, None]
        smap = make_seed_map(locs, (win, win), cfg.seed_sigma)
        xs, ctx = to_flow(ys, scale)
        cond = generator_condition(pipe.gen, smap, xs)
        x1 = sample(lambda a, t, c: velocity(pipe.gen, a, t, c), xs.repeat(M, 1, 1, 1), cond.repeat(M, 1, 1, 1),
                    t0=cfg.t0, steps=cfg.steps, method=cfg.method, seed=rng_seed, offset=s)
        pr = torch.sigmoid(segment_logits(pipe.seg, from_flow(x1.float(), ctx.repeat(M)).clamp(0, 1)).float())
        pr = pr.view(M, len(chunk), win, win)
        q, u = pr.mean(0), pr.std(0, unbiased=False)
        for i, l in enumerate(locs):
            ly, lx = int(round(float(l[0, 0]))), int(round(float(l[0, 1])))
            qs.append(float(q[i, max(0, ly - 1):ly + 2, max(0, lx - 1):lx + 2].max()))
            us.append(float(u[i, ly, lx]))
            cy, cx = int(round(float(chunk[i, 0]))), int(round(float(chunk[i, 1])))
            ps.append(float(torch.sigmoid(zb[max(0, cy - 1):cy + 2, max(0, cx - 1):cx + 2]).max()))
    qs, ps = np.array(qs), np.array(ps)
    edge_sel = label.numpy() == -1
    lab = label.numpy() == 1
    pec_out = {}
    if edge_sel.any():
        pec_out = {"n_pectoral_edge": int(edge_sel.sum()), "auc_q_vs_pectoral_edge": _auc(qs[lab], qs[edge_sel]),
                   "q_pectoral_edge_above_0.5": round(float((qs[edge_sel] >= 0.5).mean()), 3)}
    us = np.array(us)
    fd_sel = label.numpy() == -2
    fd_out = {"n_false_detections": int(fd_sel.sum())}
    if fd_sel.any():  # the ranking question: does q (or p x q) put true seeds above the base's false detections?
        fd_out.update({"auc_q_vs_false_det": _auc(qs[lab], qs[fd_sel]), "auc_p_vs_false_det": _auc(ps[lab], ps[fd_sel]),
                       "auc_pq_vs_false_det": _auc(ps[lab] * qs[lab], ps[fd_sel] * qs[fd_sel]),
                       "q_false_det_above_0.5": round(float((qs[fd_sel] >= 0.5).mean()), 3)})
    per_seed = {"label": label.numpy().astype(int).tolist(), "p": np.round(ps, 6).tolist(),
                "q": np.round(qs, 6).tolist(), "spread": np.round(us, 6).tolist()}
    keep = label.numpy() >= 0
    qs, ps, us, lab = qs[keep], ps[keep], us[keep], lab[keep]
    return {"image": it.im["name"], **pec_out, **fd_out, "n_true": int(lab.sum()), "n_decoy": int((~lab).sum()),
            "auc_q": _auc(qs[lab], qs[~lab]), "auc_base_p": _auc(ps[lab], ps[~lab]),
            "auc_pq": _auc(ps[lab] * qs[lab], ps[~lab] * qs[~lab]),
            "auc_rise": _auc(qs[lab] - ps[lab], qs[~lab] - ps[~lab]),
            "auc_low_spread": _auc(-us[lab], -us[~lab]),
            "q_true_median": round(float(np.median(qs[lab])), 3) if lab.any() else None,
            "q_decoy_median": round(float(np.median(qs[~lab])), 3) if (~lab).any() else None,
            "q_decoy_above_0.5": round(float((qs[~lab] >= 0.5).mean()), 3) if (~lab).any() else None,
            "q_true_above_0.5": round(float((qs[lab] >= 0.5).mean()), 3) if lab.any() else None,
            "per_seed": per_seed}


def _auc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    """Mann-Whitney AUC: P(pos > neg) + P(pos = neg) / 2."""
    if len(pos) == 0 or len(neg) == 0:
        return None
    d = pos[:, None] - neg[None, :]
    return round(float((d > 0).mean() + 0.5 * (d == 0).mean()), 4)


def plot(curves: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    for ax, key, lab in zip(axes, ("recall_visible", "recall_coverage_visible", "recall_missed_visible"),
                            ("seeded", "seeded or found by the base", "missed by the base, seeded")):
        for name, rows in curves.items():
            xs = [r["seeds_per_tile"] for r in rows]
            ys = [r[key] for r in rows]
            ax.plot(xs, ys, marker="o", label=name)
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlabel("seeds per tile (256 px)")
        ax.set_ylabel("seed recall")
        n = rows[0]["n_" + key[len("recall_"):]] if rows else 0
        ax.set_title(f"{lab} (n={n})")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def tables(rep: dict) -> str:
    """Markdown tables of a results JSON (the figures in docs/ttgpr_shift.md)."""
    out = []
    designs = rep.get("ttgpr") or {}
    if designs and all(isinstance(v, dict) and "mean" not in v for v in designs.values()):  # {seg: {design: ...}}
        designs = {k: v for d in designs.values() for k, v in d.items()}
    if designs:
        out.append("| design | Dice | recall | object sens. | false obj./image | seeds/image | time / base |")
        out.append("|---|---|---|---|---|---|---|")
        first = next(iter(designs.values()))["mean"]["base"]
        out.append(f"| base | {first['dice']:.3f} | {first['recall']:.3f} | {first['object_sensitivity']:.3f} | "
                   f"{first['fp_objects']:.1f} | - | 1 |")
        for name, r in designs.items():
            m = r["mean"]
            for key, label in (("ttgpr", name), ("ttgpr_add", name + " + add rule (post hoc)")):
                if key not in m:
                    continue
                t, b = m[key], m["base"]
                out.append(f"| {label} | {t['dice']:.3f} ({t['dice'] - b['dice']:+.3f}) | {t['recall']:.3f} "
                           f"({t['recall'] - b['recall']:+.3f}) | {t['object_sensitivity']:.3f} "
                           f"({t['object_sensitivity'] - b['object_sensitivity']:+.3f}) | {t['fp_objects']:.1f} "
                           f"({t['fp_objects'] / max(b['fp_objects'], 1e-9):.2f}x) | {m['seeds']:.0f} | {m['time_ratio']:.2f} |")
        if any("froc" in r for r in designs.values()):
            r0, r1, r2 = (str(r) for r in FROC_RATES)
            out += ["", f"| design | map | sens. @{r0} | @{r1} | @{r2} false obj./image |", "|---|---|---|---|---|"]
            for name, r in designs.items():
                for k, v in (r.get("froc") or {}).items():
                    if k == "base" and name != next(iter(designs)):
                        continue
                    if r0 not in v:
                        continue
                    out.append(f"| {name if k != 'base' else 'base'} | {k} | {v[r0]:.3f} | {v[r1]:.3f} | {v[r2]:.3f} |")
    if rep.get("acceptance"):
        out += ["", "| image | true | decoys | AUC q | AUC base p | AUC q - p | AUC low spread | decoys q >= 0.5 | "
                "pectoral edge: AUC q, q >= 0.5 |", "|---|---|---|---|---|---|---|---|---|"]
        for a in rep["acceptance"]:
            pe = (f"{a['auc_q_vs_pectoral_edge']} ({a['n_pectoral_edge']}), {a['q_pectoral_edge_above_0.5']}"
                  if "n_pectoral_edge" in a else "-")
            out.append(f"| {a['image']} | {a['n_true']} | {a['n_decoy']} | {a['auc_q']} | {a['auc_base_p']} | "
                       f"{a['auc_rise']} | {a.get('auc_low_spread', '-')} | {a['q_decoy_above_0.5']} | {pe} |")
    if rep.get("seed_recall"):
        out += ["", "| proposer | seeds/tile: missed-and-seeded recall (coverage) |", "|---|---|"]
        for name, rows in rep["seed_recall"].items():
            cells = ", ".join(f"{r['seeds_per_tile']:.1f}: {r['recall_missed_visible']:.2f} ({r['recall_coverage_visible']:.2f})"
                              for r in rows)
            out.append(f"| {name} | {cells} |")
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", default=None, help="print the markdown tables of this results JSON and exit")
    ap.add_argument("--seg", default="shipped", help="segmentor folder, or 'shipped'; VIEW=DIR,... for one per view")
    ap.add_argument("--rf", default="shipped")
    ap.add_argument("--views", default="rcc,rmlo")
    ap.add_argument("--phantoms", default="variant,faint")
    ap.add_argument("--size", default="1536x1152")
    ap.add_argument("--stages", default="seeds,ttgpr,accept")
    ap.add_argument("--designs", default="current,fused_add,rank_add_gate,rank_add_gate_free,fused_add_gate_free,oracle,"
                    "oracle_add_free_anchor")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--froc", action="store_true", help="also the FROC table per design (ranking by uncertainty)")
    ap.add_argument("--out", default="benchmarks/results/seed_recall.json")
    ap.add_argument("--plot", default="docs/ttgpr_shift_seed_recall.png")
    a = ap.parse_args(argv)
    if a.table:
        print(tables(json.loads(Path(a.table).read_text())))
        return
    torch.set_num_threads(a.threads)
    from mcgr.infer.pipeline import Pipeline
    from mcgr.models import load_model, load_pretrained

    def seg_for(name):
        spec = a.seg
        if "=" in spec:
            m = dict(s.split("=", 1) for s in spec.split(","))
            spec = m.get(name, m.get("default", "shipped"))
        return spec

    gen = load_pretrained("rf") if a.rf == "shipped" else load_model(Path(a.rf), kind="rf")
    pipes: dict = {}

    def pipe_for(spec):
        if spec not in pipes:
            seg = load_pretrained("seg") if spec == "shipped" else load_model(Path(spec), kind="seg")
            pipes[spec] = Pipeline(seg, gen, config=TTGPRConfig())
        return pipes[spec]

    h, w = (int(v) for v in a.size.split("x"))
    items, specs = [], []
    t0 = time.perf_counter()
    for v in [s for s in a.views.split(",") if s]:
        spec = seg_for(v)
        items.append(Prepared(pipe_for(spec), _view_image(v)))
        specs.append(spec)
    for k in [s for s in a.phantoms.split(",") if s]:
        spec = seg_for(k)
        items.append(Prepared(pipe_for(spec), _phantom_image(k, (h, w))))
        specs.append(spec)
    rep = {"seg": a.seg, "rf": a.rf, "images": [{"name": it.im["name"], "seg": s, "shape": list(it.im["image"].shape),
                                                 "tiles": it.P, "n_calcifications": int(it.centres.shape[0]),
                                                 "n_visible": int(it.visible.sum()),
                                                 "n_in_region": int(it.in_region.sum()),
                                                 "visible_missed_by_base": int((it.visible & ~it.base_found).sum()),
                                                 "t_base_s": round(it.t_base, 1), "t_evidence_s": it.t_evidence}
                                                for it, s in zip(items, specs)],
           "torch_threads": a.threads, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps(rep["images"]), flush=True)
    stages = a.stages.split(",")
    if "seeds" in stages:
        rep["seed_recall"] = stage_seeds(items, SEED_RADIUS)
        print(json.dumps(rep["seed_recall"]), flush=True)
        if a.plot:
            plot(rep["seed_recall"], Path(a.plot), f"seed recall, {', '.join(it.im['name'] for it in items)} (seg {a.seg})")
    if "ttgpr" in stages:
        rep["ttgpr"] = stage_ttgpr(items, [d for d in a.designs.split(",") if d], a.froc)
    if "accept" in stages:
        rep["acceptance"] = [acceptance(it, it.pipe) for it in items]
        print(json.dumps([{k: v for k, v in r.items() if k != "per_seed"} for r in rep["acceptance"]]), flush=True)
    rep["wall_s"] = round(time.perf_counter() - t0, 1)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rep, indent=1) + "\n")


if __name__ == "__main__":
    main()
