"""TT-GPR: test-time generative posterior refinement across a whole mammogram (docs/design.md, method M4, M5).

For every tile y of the breast with base logits z0 = f(y), repeat for k = 1..K:

1. seeds, found once on the canvas (a seed in the overlap of several tiles is one seed): local
   maxima of the stitched logits with probability >= ``tau_seed`` (``proposer="logits"``), or
   candidates from image evidence and the logits fused by rank within a per-tile budget
   (``proposer="fused"``, :mod:`mcgr.infer.proposals`); a tile that no projection window touches
   is not refined (gating);
2. M RF projections of the canvas in ``window`` px windows around the seeds: from ``x_t0 = t0 y + (1 - t0) eps`` integrate
   dx/dt = v(x, t, s) to t = 1 in N steps (the fused ``rf_start`` / ``rf_step`` ops);
3. surrogate target q = mean_m sigmoid(f(x_m)) through the frozen segmentor; the spread over m is
   the per-pixel uncertainty;
4. a few steps of the fused ``refine`` op on the regularised energy, with zbar the stitched
   overlap-weighted average of every tile's current logits (the fused ``stitch`` op), so that
   overlapping tiles agree; with ``refine_rule="add"`` (the default) the base detections keep
   their base logits, so TT-GPR only adds calcifications, and only where the projections agree
   (``accept_q``).

All tiles refine together: zbar is recomputed from the whole canvas before each outer iteration.
Memory is bounded by ``batch`` tiles (times M projections) in flight plus the per-tile logit maps.

The stages are functions a test can call alone, and :func:`run_field` is their driver:
:func:`base_pass` (the sliding-window segmentor, a ``predictor`` callable), :func:`propose`,
:func:`project`, :class:`SurrogateField` (the surrogate through the same predictor),
:func:`refine_stage` and :func:`accept`. The options are :class:`mcgr.infer.ttgpr_config.TTGPRConfig`
and the seeds' parts live in :mod:`mcgr.infer.seeds`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mcgr.ops._tiling import TileGrid, gaussian_weights
from mcgr.models import make_seed_map
from mcgr.models.rf import from_flow, generator_condition, to_flow, velocity
from mcgr.models.segmentor import segment_logits
from mcgr.models.unet import input_scale_of
from mcgr.infer.seeds import field_seeds, keep_found, seed_windows
from mcgr.infer.ttgpr_config import ZBAR_EVERY, TTGPRConfig
from mcgr.ops import gather_tiles, refine, stitch


@dataclass
class FieldResult:
    """Outputs on the model-spacing canvas [H, W]; ``vote``: the last surrogate's q (the mean over
    the projections of sigmoid(f(x_m)), 0 outside its windows), None without TT-GPR."""

    base_logits: torch.Tensor
    logits: torch.Tensor
    uncertainty: torch.Tensor | None
    grid: TileGrid
    refined_fraction: float
    seeds: int
    timings: dict
    vote: torch.Tensor | None = None


def _timed(timings: dict, key: str, device: torch.device, t0: float) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    timings[key] = timings.get(key, 0.0) + (t - t0)
    return t


def predict_batched(predictor, x: torch.Tensor, batch: int) -> torch.Tensor:
    """``predictor`` (a callable ``[n, 1, h, w] -> [n, 1, h, w]``, e.g. the segmentor's logits) over
    ``x`` [N, 1, h, w] in chunks of ``batch`` (MONAI's habit: the tiler knows no model); [N, 1, h, w]."""
    outs = [predictor(x[s:s + batch]) for s in range(0, x.shape[0], batch)]
    return torch.cat(outs) if outs else x.new_zeros(x.shape)


def segmentor_predictor(seg, autocast: bool = False):
    """The frozen segmentor as a predictor: images [n, 1, h, w] in [0, 1] -> float32 logits."""
    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            return segment_logits(seg, x).float()
    return predict


@torch.inference_mode()
def segment_tiles(seg, tiles: torch.Tensor, batch: int, autocast: bool = False) -> torch.Tensor:
    """Base logits [P, T, T] of image tiles [P, T, T] in [0, 1], ``batch`` tiles per call."""
    return predict_batched(segmentor_predictor(seg, autocast), tiles.unsqueeze(1), batch).squeeze(1)


def _projected(projector, ys: torch.Tensor, chunk: list) -> torch.Tensor:
    """A user projector's renderings of the windows ``ys`` as ``[M', n, 1, h, w]``, checked."""
    out = projector(ys, [(y0, x0) for _, y0, x0, _ in chunk], [loc for _, _, _, loc in chunk])
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"projector must return a tensor, got {type(out).__name__}")
    if out.dim() == 4:
        out = out.unsqueeze(0)
    if out.dim() != 5 or tuple(out.shape[1:]) != tuple(ys.shape):
        raise ValueError(f"projector must return [M, {', '.join(map(str, ys.shape))}] or "
                         f"[{', '.join(map(str, ys.shape))}], got {tuple(out.shape)}")
    if not bool(torch.isfinite(out).all()):
        raise ValueError("projector returned NaN or inf")
    return out.to(ys.device, torch.float32).clamp(0, 1)


# ---------------------------------------------------------------- the stages
#
# base -> propose -> project -> surrogate -> refine -> accept. Each stage is a function of typed
# inputs that a test can call alone; run_field is their driver. Timings accumulate in a dict each
# stage is given (seconds per stage name).

@dataclass
class BasePass:
    """The base segmentation of a canvas: tiles ``Y`` [P, T, T], their logits ``Z0`` [P, T, T], the
    stitched logits ``canvas`` [H, W], the grid (on the canvas's device) and the stitch weights."""

    Y: torch.Tensor
    Z0: torch.Tensor
    canvas: torch.Tensor
    grid: TileGrid
    weights: torch.Tensor


def base_pass(image: torch.Tensor, grid: TileGrid, predictor, batch: int, backend: str = "auto",
              timings: dict | None = None, base_tiles: torch.Tensor | None = None) -> BasePass:
    """Stage *base*: sliding-window ``predictor`` over ``grid``'s tiles of ``image`` [H, W] and the
    Gaussian-weighted stitch. ``base_tiles``: [P, T, T] logits of a base pass already run (reused as is)."""
    timings = {} if timings is None else timings
    dev = image.device
    t = time.perf_counter()
    gdev = grid.to(dev)
    with torch.inference_mode(False):  # a normal tensor: stitch caches its validity check by version
        weights = gaussian_weights(grid.tile, device=dev)
    Y = gather_tiles(image, gdev, backend=backend)
    t = _timed(timings, "tiles", dev, t)
    if base_tiles is not None:
        if tuple(base_tiles.shape) != tuple(Y.shape):
            raise ValueError(f"base_tiles must be {list(Y.shape)} (the grid's tiles), got {list(base_tiles.shape)}")
        Z0 = base_tiles.to(dev, torch.float32).clone()
    else:
        Z0 = predict_batched(predictor, Y.unsqueeze(1), batch).squeeze(1)
    t = _timed(timings, "base", dev, t)
    canvas = stitch(Z0, gdev, weights, backend=backend)
    _timed(timings, "stitch", dev, t)
    return BasePass(Y, Z0, canvas, gdev, weights)


@dataclass
class Proposal:
    """Stage *propose*'s output: seeds [K, 2] (y, x canvas px, strongest first) and the projection
    windows ``(plane, y0, x0, local seeds)`` that cover them (:func:`seed_windows`)."""

    seeds: torch.Tensor
    windows: list


def covered_region(grid: TileGrid, shape, seed_region: torch.Tensor | None, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inside, region)``: canvas pixels some tile covers, and those of them where seeds may lie."""
    H, W = shape
    T = grid.tile
    inside = torch.zeros(H, W, dtype=torch.bool, device=device)
    for y0, x0 in grid.origins.tolist():
        inside[y0:y0 + T, x0:x0 + T] = True
    if seed_region is None:
        return inside, inside
    if tuple(seed_region.shape) != (H, W):
        raise ValueError(f"seed_region must be [{H}, {W}], got {tuple(seed_region.shape)}")
    return inside, inside & seed_region.to(device, torch.bool)


def propose(canvas: torch.Tensor, base: torch.Tensor, image: torch.Tensor, inside: torch.Tensor,
            region: torch.Tensor, grid: TileGrid, cfg: TTGPRConfig, window: int, seeds: torch.Tensor | None = None,
            evidence: torch.Tensor | None = None) -> Proposal:
    """Stage *propose*: the seeds of one outer iteration (``seeds`` given: those) and their windows.

    Seeds are read from the maxima of the current logits ``canvas`` (not of the probability:
    sigmoid saturates to exactly 1.0 over a confident calcification, and every pixel of that plateau
    would be a maximum)."""
    if seeds is None:
        z_c = torch.where(inside, canvas, torch.full_like(canvas, -1e4))
        seeds = field_seeds(z_c, image, region, cfg, grid, base_logits=base, evidence=evidence)
    return Proposal(seeds, seed_windows([seeds], tuple(image.shape), window))


@dataclass
class Projections:
    """Stage *project*'s output for a chunk of windows: renderings [M, n, 1, h, w] in [0, 1], and
    the windows they belong to."""

    renderings: torch.Tensor
    windows: list


def project(image: torch.Tensor, windows: list, size: tuple[int, int], gen, cfg: TTGPRConfig, offset: int = 0,
            autocast: bool = False, backend: str = "auto", projector=None) -> tuple[Projections, int]:
    """Stage *project*: M RF projections of each ``size`` (h, w) window of ``image``, started at
    ``x_t0 = t0 y + (1 - t0) eps`` and integrated to t = 1 in ``cfg.steps`` steps (``projector``: a
    callable that renders instead, see :func:`run_field`). Returns the projections and the noise
    stream's next offset (the draws of every window differ, and a run is reproducible from ``cfg.seed``)."""
    from mcgr.models.sampling import sample

    wy, wx = size
    ys = torch.stack([image[y0:y0 + wy, x0:x0 + wx] for _, y0, x0, _ in windows]).unsqueeze(1)
    if projector is not None:
        return Projections(_projected(projector, ys, windows), windows), offset
    M = cfg.projections
    smap = make_seed_map([loc for _, _, _, loc in windows], (wy, wx), cfg.seed_sigma, device=image.device)
    xs, ctx = to_flow(ys, input_scale_of(gen))
    cond = generator_condition(gen, smap, xs)
    with torch.autocast(ys.device.type, dtype=torch.bfloat16, enabled=autocast):
        x1 = sample(lambda x, tt, c: velocity(gen, x, tt, c), xs.repeat(M, 1, 1, 1), cond.repeat(M, 1, 1, 1),
                    t0=cfg.t0, steps=cfg.steps, method=cfg.method, seed=cfg.seed, offset=offset, backend=backend)
    offset += x1.numel()
    out = from_flow(x1.float(), ctx.repeat(M)).clamp(0, 1)
    return Projections(out.view(M, len(windows), 1, wy, wx), windows), offset


@dataclass
class Surrogate:
    """Stage *surrogate*'s canvas maps: ``q`` the mean over the projections of sigmoid(f(x_m))
    (0 outside every window), ``u`` its spread, ``covered`` the pixels some window holds."""

    q: torch.Tensor
    u: torch.Tensor
    covered: torch.Tensor


class SurrogateField:
    """Accumulates stage *surrogate* over chunks of projections on the canvas (windows overlap)."""

    def __init__(self, shape, device):
        self.qsum = torch.zeros(shape, device=device)
        self.usum = torch.zeros(shape, device=device)
        self.cnt = torch.zeros(shape, device=device)

    def add(self, proj: Projections, predictor) -> None:
        M, n, _, wy, wx = proj.renderings.shape
        probs = torch.sigmoid(predictor(proj.renderings.flatten(0, 1))).view(M, n, wy, wx)
        q = probs.mean(0)
        u = probs.std(0, unbiased=False) if M > 1 else torch.zeros_like(q)
        for i, (_, y0, x0, _) in enumerate(proj.windows):
            self.qsum[y0:y0 + wy, x0:x0 + wx] += q[i]
            self.usum[y0:y0 + wy, x0:x0 + wx] += u[i]
            self.cnt[y0:y0 + wy, x0:x0 + wx] += 1.0

    def result(self) -> Surrogate:
        cov = self.cnt > 0
        c = self.cnt.clamp(min=1.0)
        return Surrogate(torch.where(cov, self.qsum / c, torch.zeros_like(self.qsum)), self.usum / c, cov)


def projected_surrogate(image, windows: list, size, per_call: int, gen, predictor, cfg: TTGPRConfig, offset: int = 0,
                        autocast: bool = False, backend: str = "auto", projector=None, timings: dict | None = None,
                        progress=None) -> tuple[Surrogate, int]:
    """Stages *project* and *surrogate* over ``windows`` in chunks of ``per_call`` (bounded memory):
    the canvas surrogate and the noise stream's next offset. ``progress(n)`` after each chunk."""
    timings = {} if timings is None else timings
    acc = SurrogateField(tuple(image.shape), image.device)
    t = time.perf_counter()
    for s in range(0, len(windows), per_call):
        proj, offset = project(image, windows[s:s + per_call], size, gen, cfg, offset, autocast, backend, projector)
        t = _timed(timings, "rf", image.device, t)
        acc.add(proj, predictor)
        t = _timed(timings, "surrogate", image.device, t)
        if progress is not None:
            progress(len(proj.windows))
    return acc.result(), offset


def refine_stage(Z: torch.Tensor, Z0: torch.Tensor, bp: BasePass, sur: Surrogate, canvas: torch.Tensor,
                 cfg: TTGPRConfig, backend: str = "auto") -> torch.Tensor:
    """Stage *refine*: the fused ``refine`` op on every tile a projection window touches (gating),
    towards the surrogate target (``surrogate="raise"``: never below the current probability; outside
    the windows the current probability, so the data term holds z there), with zbar the stitched
    canvas of the tiles' current logits refreshed every ``ZBAR_EVERY`` steps. Updates ``Z`` [P, T, T]
    in place; returns the indices of the refined tiles."""
    g = bp.grid
    covT = gather_tiles(sur.covered.float(), g, backend=backend) > 0.5
    gated = covT.flatten(1).any(1).nonzero().flatten()
    if gated.numel() == 0:
        return gated
    qT = gather_tiles(sur.q, g, backend=backend)[gated]
    Zg = Z[gated]
    Q = torch.sigmoid(Zg)
    if cfg.surrogate == "raise":
        qT = torch.maximum(qT, Q)
    Q = torch.where(covT[gated], qT, Q)
    Z0g, Yg = Z0[gated], bp.Y[gated]
    Zbar = gather_tiles(canvas, g, backend=backend)
    done = 0
    while done < cfg.refine_steps:
        n = min(ZBAR_EVERY, cfg.refine_steps - done)
        if done:  # zbar from the tiles' current logits, not the canvas the iteration started from
            Zbar = gather_tiles(stitch(Z, g, bp.weights, backend=backend), g, backend=backend)
        # one call for every gated tile: refine is memory-bound and a few MB per tile
        Z[gated] = refine(Z[gated], Q, Z0g, Yg, Zbar[gated], cfg.refine, steps=n, backend=backend)
        done += n
    return gated


def verified_logits(base: torch.Tensor, vote: torch.Tensor, covered: torch.Tensor, floor: float = -40.0) -> torch.Tensor:
    """refine_rule "verify": the logit of p x q where a projection window covers a pixel (``vote``
    q in [0, 1], ``covered`` bool), the ``base`` logit elsewhere; computed in log space, so a base p
    of 1 - 1e-7 (a logit float32's sigmoid rounds to 1) keeps its rank: logit(pq) = log(pq) -
    log((1 - p) + p (1 - q)). Clamped below at ``floor``."""
    logp, log1mp = F.logsigmoid(base), F.logsigmoid(-base)
    logq = torch.log(vote.clamp(min=0.0, max=1.0))
    log1mq = torch.log1p(-vote.clamp(min=0.0, max=1.0))
    z = (logp + logq) - torch.logaddexp(log1mp, logp + log1mq)
    return torch.where(covered, z.clamp(min=floor), base)


def accept(canvas: torch.Tensor, base: torch.Tensor, vote: torch.Tensor | None, cfg: TTGPRConfig,
           covered: torch.Tensor | None = None) -> torch.Tensor:
    """Stage *accept*: what of the refined ``canvas`` becomes a detection. With ``refine_rule="add"`` a
    pixel rises above its ``base`` logit only where the projections' mean vote ``vote`` (the last
    surrogate's q, 0 outside its windows) is >= ``accept_q``, and the base detections keep their
    base logits pixel for pixel (:func:`keep_found`); ``"free"`` accepts the refinement as it is;
    ``"verify"`` scores p x q where a window ``covered`` a pixel (:func:`verified_logits`)."""
    if cfg.refine_rule == "verify":
        return base if vote is None or covered is None else verified_logits(base, vote, covered)
    if cfg.refine_rule != "add":
        return canvas
    if cfg.accept_q > 0 and vote is not None:
        canvas = torch.where(vote >= cfg.accept_q, canvas, torch.minimum(canvas, base))
    return keep_found(canvas, base, cfg.threshold)


def _evidence(image, region, timings, dev, t):
    from mcgr import MODEL_SPACING_MM
    from mcgr.infer.proposals import evidence_map

    ev = evidence_map(image, region, MODEL_SPACING_MM)
    _timed(timings, "evidence", dev, t)
    return ev


@torch.inference_mode()
def run_field(image: torch.Tensor, grid: TileGrid, seg, gen=None, cfg: TTGPRConfig | None = None,
              refine_on: bool = True, backend: str = "auto", autocast: bool = False,
              progress=None, seed_region: torch.Tensor | None = None,
              seeds: torch.Tensor | None = None, projector=None, base_tiles: torch.Tensor | None = None,
              evidence: torch.Tensor | None = None) -> FieldResult:
    """Base segmentation and (``refine_on``) TT-GPR of one canvas ``image`` [H, W] in [0, 1].

    seed_region: optional bool [H, W], where seeds may lie (the pipeline passes the pixels its
    outputs keep: the breast less the skin band, not the border padding); None = every pixel a
    tile covers.
    seeds: optional float [K, 2] (y, x) canvas px: these points are the seeds of every outer
    iteration instead of the maxima of the logits (a reader's marks, another detector's
    candidates, or the truth, to measure what TT-GPR does given perfect seeds).
    projector: optional callable that replaces the RF projections (another generative model, or an
    oracle that renders the ideal target to measure what TT-GPR does given a perfect generator):
    ``projector(windows, origins, seeds) -> renderings``, windows ``[n, 1, h, w]`` canvas crops in
    [0, 1], origins n (y0, x0) canvas px, seeds n tensors [K, 2] of window px; renderings
    ``[M', n, 1, h, w]`` (M' draws; ``[n, 1, h, w]`` is one) in [0, 1], passed through the frozen
    segmentor exactly as the generator's projections are.
    base_tiles: optional [P, T, T] base logits of ``grid``'s tiles of this image (a base pass already
    run, e.g. to compare TT-GPR settings without repeating it); None = computed here.
    evidence: optional [H, W] :func:`mcgr.infer.proposals.evidence_map` of the canvas for the
    fused proposer (computed here when None)."""
    cfg = (cfg or TTGPRConfig()).validated()
    dev, (H, W), timings = image.device, image.shape, {}
    seeds = _checked_seeds(seeds, H, W, dev)
    batch = cfg.batch if dev.type == "cuda" else cfg.cpu_batch
    predictor = segmentor_predictor(seg, autocast)
    bp = base_pass(image, grid, predictor, batch, backend, timings, base_tiles)
    P = bp.Y.shape[0]
    if not refine_on or (gen is None and projector is None) or cfg.iterations == 0 or P == 0:
        return FieldResult(bp.canvas, bp.canvas, None, grid, 0.0, 0, timings)
    Z0, canvas, win, size, per_call = _refinement_setup(bp, cfg, (H, W), batch)
    Z, refined, sur, unc, offset, n_seeds = Z0.clone(), torch.zeros(P, dtype=torch.bool, device=dev), None, None, 0, 0
    inside, region = covered_region(grid, (H, W), seed_region, dev)
    for _ in range(cfg.iterations):
        t = time.perf_counter()
        if seeds is None and cfg.proposer == "fused" and evidence is None:
            evidence = _evidence(image, region, timings, dev, t)
        prop = propose(canvas, bp.canvas, image, inside, region, bp.grid, cfg, win, seeds, evidence)
        n_seeds += int(prop.seeds.shape[0])
        t = _timed(timings, "seeds", dev, t)
        if not prop.windows:
            break
        sur, offset = projected_surrogate(image, prop.windows, size, per_call, gen, predictor, cfg, offset, autocast,
                                          backend, projector, timings, progress)
        unc = torch.where(sur.covered, sur.u, unc if unc is not None else torch.zeros_like(sur.u))
        if cfg.refine_rule == "verify":  # the generator re-scores the base's candidates: no refinement
            refined |= _tiles_touched(sur.covered, bp.grid, backend)
            break
        t = time.perf_counter()
        gated = refine_stage(Z, Z0, bp, sur, canvas, cfg, backend)
        if gated.numel() == 0:
            break
        refined[gated] = True
        t = _timed(timings, "refine", dev, t)
        canvas = stitch(Z, bp.grid, bp.weights, backend=backend)
        _timed(timings, "stitch", dev, t)
    canvas = accept(canvas, bp.canvas, sur.q if sur else None, cfg, sur.covered if sur else None)
    unc, vote = (unc, sur.q) if sur else (torch.zeros_like(bp.canvas), torch.zeros_like(bp.canvas))
    return FieldResult(bp.canvas, canvas, unc, grid, float(refined.float().mean()), n_seeds, timings, vote)


def _refinement_setup(bp: BasePass, cfg: TTGPRConfig, shape, batch: int):
    """The refinement's start and anchor (the base logits), the projection window, its (h, w) and
    the windows per generator call (the memory of ``batch`` tiles)."""
    H, W = shape
    win = cfg.window if 0 < cfg.window < max(H, W) else max(H, W)
    size = (min(win, H), min(win, W))
    per_call = max(1, batch * bp.grid.tile ** 2 // (cfg.projections * size[0] * size[1]))
    return bp.Z0, bp.canvas, win, size, per_call


def _tiles_touched(covered: torch.Tensor, grid: TileGrid, backend: str) -> torch.Tensor:
    """[P] bool: the tiles some projection window touches."""
    return (gather_tiles(covered.float(), grid, backend=backend) > 0.5).flatten(1).any(1)


def _checked_seeds(seeds, H: int, W: int, dev) -> torch.Tensor | None:
    if seeds is None:
        return None
    seeds = torch.as_tensor(seeds, dtype=torch.float32).reshape(-1, 2).to(dev)
    ok = torch.isfinite(seeds).all(1) & (seeds[:, 0] >= 0) & (seeds[:, 0] <= H - 1) & (seeds[:, 1] >= 0) & (seeds[:, 1] <= W - 1)
    if not bool(ok.all()):
        raise ValueError(f"seeds must lie on the {H} x {W} canvas; {int((~ok).sum())} of {len(seeds)} do not")
    return seeds
