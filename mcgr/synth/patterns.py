"""Microcalcification pattern sampler (docs/design.md, method M2): clusters, isolated calcifications and their
shapes, as analytic primitives for :func:`mcgr.ops.inject`.

Every calcification is built inside a disc of diameter ``d`` (its extent, drawn in ``size_mm``)
around its centre, with its first primitive centred on that centre (so the centre pixel is always
in inject's mask):

* punctate (kind 0): one ellipsoid, long semi-axis ``d/2``, aspect 0.55..1, peak chord (thickness)
  about its mean diameter;
* pleomorphic (kind 1): a central ellipsoid plus two lobes touching the disc at opposite ends of a
  random axis (so the extent is exactly ``d``) and, half the time, a fourth lobe inside; lobes differ
  in size, aspect and orientation, which makes the union irregular;
* linear / branching (kind 2): a rod (capsule) across the disc through the centre, plus 0 to 2
  branches (capsules) leaving from the rod's endpoints towards other points of the disc: rods,
  V and Z shapes, as in casting-type calcifications.

Clusters: 3..30 calcifications whose discs lie inside a cluster disc of diameter 2..10 mm
(capped by the patch), placed by best-candidate (Mitchell) sampling so that members spread out like
real clusters rather than piling up. A cluster's members share a dominant morphology and a typical
size. Isolated calcifications are placed uniformly. Every calcification lies entirely inside the
patch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mcgr._validate import check_range
from mcgr.ops.inject import MAX_RADIUS_PX, SHAPE_CAPSULE, SHAPE_ELLIPSOID

PUNCTATE, PLEOMORPHIC, LINEAR = 0, 1, 2
KIND_NAMES = ("punctate", "pleomorphic", "linear")
MAX_PRIMS_PER_CALC = 4
_CANDIDATES = 8  # best-candidate sampling: tries per cluster member


@dataclass
class CalcSample:
    """Sampled calcifications for ``n_patches`` patches.

    prims: [N, 8] float32, rows ``(batch, cy, cx, ry, rx, angle, thickness_mm, shape)`` for
        :func:`mcgr.ops.inject` (px, radians, mm); batch index in ``[0, n_patches)``.
    centres: [K, 3] float32 ``(batch, cy, cx)``, one row per calcification, sorted by batch.
    calc_index: [N] int64, the row of ``centres`` each primitive belongs to.
    kind: [K] int64, 0 punctate, 1 pleomorphic, 2 linear/branching.
    cluster: [K] int64, cluster id (unique within the sample), -1 for isolated calcifications.
    extent_mm: [K] float32, the diameter ``d`` of the disc each calcification was built in.
    """

    prims: torch.Tensor
    centres: torch.Tensor
    calc_index: torch.Tensor
    kind: torch.Tensor
    cluster: torch.Tensor
    extent_mm: torch.Tensor
    n_patches: int

    def select(self, keep_patch: torch.Tensor) -> "CalcSample":
        """The calcifications of the patches where ``keep_patch`` [n_patches] bool is True
        (batch indices unchanged)."""
        keep_calc = keep_patch[self.centres[:, 0].long()]
        new_row = torch.cumsum(keep_calc.long(), 0) - 1
        keep_prim = keep_calc[self.calc_index]
        return CalcSample(
            prims=self.prims[keep_prim],
            centres=self.centres[keep_calc],
            calc_index=new_row[self.calc_index[keep_prim]],
            kind=self.kind[keep_calc],
            cluster=self.cluster[keep_calc],
            extent_mm=self.extent_mm[keep_calc],
            n_patches=self.n_patches,
        )

    def centres_per_patch(self) -> list[torch.Tensor]:
        """List of ``n_patches`` float32 tensors [K_b, 2] (cy, cx in px)."""
        counts = torch.bincount(self.centres[:, 0].long(), minlength=self.n_patches).tolist()
        return list(torch.split(self.centres[:, 1:3], counts))


def _int_range(name: str, r, lo: int) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in r)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair of integers (min, max), got {r!r}") from None
    if a < lo or b < a:
        raise ValueError(f"{name} must satisfy {lo} <= min <= max, got {r!r}")
    return a, b


def _float_range(name: str, r, lo: float, hi: float, lo_open: bool = True) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in r)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair of numbers (min, max), got {r!r}") from None
    check_range(f"{name}[0]", a, lo, hi, lo_open=lo_open)
    check_range(f"{name}[1]", b, lo, hi, lo_open=lo_open)
    if b < a:
        raise ValueError(f"{name} must satisfy min <= max, got {r!r}")
    return a, b


def _probs(name: str, p) -> torch.Tensor:
    t = torch.as_tensor(p, dtype=torch.float64)
    if t.shape != (3,) or not bool(torch.isfinite(t).all()) or bool((t < 0).any()) or float(t.sum()) <= 0:
        raise ValueError(f"{name} must be 3 non-negative weights (punctate, pleomorphic, linear), got {p!r}")
    return (t / t.sum()).to(torch.float32)


def _uniform(g, shape, lo, hi):
    return lo + (hi - lo) * torch.rand(shape, generator=g)


def _randint_incl(g, lo: int, hi: int, n: int) -> torch.Tensor:
    return torch.randint(lo, hi + 1, (n,), generator=g)


def _place_clusters(g, radius: torch.Tensor, members: torch.Tensor, calc_r: torch.Tensor) -> torch.Tensor:
    """Member offsets [C, M, 2] (dy, dx) in px: member j's disc (radius calc_r[c, j]) inside the
    cluster disc (radius[c]), best of ``_CANDIDATES`` uniform candidates by clearance to earlier members."""
    C, M = calc_r.shape
    pos = torch.zeros(C, M, 2)
    if C == 0 or M == 0:
        return pos
    room = (radius[:, None] - calc_r).clamp(min=0.0)  # [C, M]
    u = torch.rand(C, M, _CANDIDATES, generator=g)
    phi = torch.rand(C, M, _CANDIDATES, generator=g) * (2 * math.pi)
    rr = torch.sqrt(u) * room[:, :, None]
    cand = torch.stack((rr * torch.sin(phi), rr * torch.cos(phi)), dim=-1)  # [C, M, T, 2]
    pos[:, 0] = cand[:, 0, 0]
    for j in range(1, M):
        d = torch.cdist(cand[:, j], pos[:, :j])  # [C, T, j]
        clearance = (d - calc_r[:, None, :j] - calc_r[:, j, None, None]).amin(dim=2)
        best = clearance.argmax(dim=1)
        pos[:, j] = cand[torch.arange(C), j, best]
    return pos


def sample_calcifications(
    n_patches: int,
    height: int,
    width: int,
    spacing_mm: float = 0.07,
    generator: torch.Generator | None = None,
    *,
    clusters=(0, 2),
    isolated=(0, 4),
    size_mm=(0.1, 0.7),
    cluster_size=(3, 30),
    cluster_diameter_mm=(2.0, 10.0),
    kind_probs=(0.4, 0.35, 0.25),
    isolated_kind_probs=(0.7, 0.2, 0.1),
    cluster_homogeneity: float = 0.7,
    thickness_jitter=(0.5, 1.3),
) -> CalcSample:
    """Sample calcification patterns for ``n_patches`` patches of ``height x width`` px.

    n_patches, height, width: batch size and patch size (px); a patch must hold the largest
        calcification (``size_mm[1] / spacing_mm + 2`` px).
    spacing_mm: pixel size (mm); sizes and distances are drawn in mm and converted.
    generator: CPU ``torch.Generator``; the result is a pure function of its state and the arguments.
    clusters, isolated: inclusive (min, max) counts per patch of clusters and of isolated calcifications.
    size_mm: (min, max) extent of a calcification (mm), drawn log-uniformly (small ones are commoner);
        members of a cluster scatter (log-normal, sd 0.25) around a size drawn for the cluster.
    cluster_size: inclusive (min, max) calcifications per cluster.
    cluster_diameter_mm: (min, max) diameter (mm) of the disc holding a cluster's calcifications
        entirely; capped by the patch's shorter side.
    kind_probs: weights of (punctate, pleomorphic, linear) for a cluster's dominant morphology and for
        its other members; isolated_kind_probs: the same for isolated calcifications.
    cluster_homogeneity: probability that a member takes its cluster's dominant morphology.
    thickness_jitter: (min, max) factor on each calcification's thickness (all its primitives): some
        calcifications are faint, some dense, within one image-formation call.

    Returns :class:`CalcSample`.
    """
    for name, v in (("n_patches", n_patches), ("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "n_patches" else 1):
            raise ValueError(f"{name} must be a {'non-negative' if name == 'n_patches' else 'positive'} integer, got {v!r}")
    spacing = check_range("spacing_mm", spacing_mm, 0.0, 10.0, lo_open=True)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise TypeError(f"generator must be a CPU torch.Generator, got {generator!r}")
    g = generator
    n_cl_rng = _int_range("clusters", clusters, 0)
    n_iso_rng = _int_range("isolated", isolated, 0)
    m_rng = _int_range("cluster_size", cluster_size, 1)
    s_lo, s_hi = _float_range("size_mm", size_mm, 0.0, 100.0)
    d_lo, d_hi = _float_range("cluster_diameter_mm", cluster_diameter_mm, 0.0, 1000.0)
    tj_lo, tj_hi = _float_range("thickness_jitter", thickness_jitter, 0.0, 100.0)
    homog = check_range("cluster_homogeneity", cluster_homogeneity, 0.0, 1.0)
    p_cl = _probs("kind_probs", kind_probs)
    p_iso = _probs("isolated_kind_probs", isolated_kind_probs)
    if s_hi / spacing / 2 > MAX_RADIUS_PX:
        raise ValueError(f"size_mm[1] / spacing_mm = {s_hi / spacing:.1f} px exceeds inject's limit of {2 * MAX_RADIUS_PX:.0f} px")
    if min(height, width) < s_hi / spacing + 2:
        raise ValueError(
            f"patch {height}x{width} px cannot hold a {s_hi} mm calcification at {spacing} mm/px "
            f"(needs at least {math.ceil(s_hi / spacing + 2)} px a side)"
        )
    log_lo, log_hi = math.log(s_lo), math.log(s_hi)

    # --- counts
    n_cl = _randint_incl(g, *n_cl_rng, n_patches)
    n_iso = _randint_incl(g, *n_iso_rng, n_patches)
    C = int(n_cl.sum())
    cl_batch = torch.repeat_interleave(torch.arange(n_patches), n_cl)
    m = _randint_incl(g, *m_rng, C)
    M = int(m.max()) if C else 0

    # --- clusters: size, morphology, extent, placement (px)
    cl_logsize = _uniform(g, (C,), log_lo, log_hi)
    cl_kind = torch.multinomial(p_cl, C, replacement=True, generator=g) if C else torch.zeros(0, dtype=torch.int64)
    mem_logsize = (cl_logsize[:, None] + 0.25 * torch.randn(C, M, generator=g)).clamp(log_lo, log_hi)
    mem_d = torch.exp(mem_logsize) / spacing  # px extent
    mem_own = torch.multinomial(p_cl, C * M, replacement=True, generator=g).view(C, M) if C * M else torch.zeros(C, M, dtype=torch.int64)
    mem_kind = torch.where(torch.rand(C, M, generator=g) < homog, cl_kind[:, None], mem_own)
    cap = (min(height, width) - 1) / 2.0  # cluster radius that still fits the patch
    cl_r = (_uniform(g, (C,), d_lo, d_hi) / (2 * spacing)).clamp(max=cap)
    cl_cy = _uniform(g, (C,), 0.0, 1.0) * (height - 1 - 2 * cl_r) + cl_r
    cl_cx = _uniform(g, (C,), 0.0, 1.0) * (width - 1 - 2 * cl_r) + cl_r
    offs = _place_clusters(g, cl_r, m, mem_d / 2)
    valid = torch.arange(M)[None, :] < m[:, None]
    c_cy = (cl_cy[:, None] + offs[..., 0])[valid]
    c_cx = (cl_cx[:, None] + offs[..., 1])[valid]
    c_d = mem_d[valid]
    c_kind = mem_kind[valid]
    c_batch = cl_batch[:, None].expand(C, M)[valid]
    c_cluster = torch.arange(C)[:, None].expand(C, M)[valid]

    # --- isolated calcifications
    I = int(n_iso.sum())
    i_batch = torch.repeat_interleave(torch.arange(n_patches), n_iso)
    i_d = torch.exp(_uniform(g, (I,), log_lo, log_hi)) / spacing
    i_kind = torch.multinomial(p_iso, I, replacement=True, generator=g) if I else torch.zeros(0, dtype=torch.int64)
    i_cy = i_d / 2 + _uniform(g, (I,), 0.0, 1.0) * (height - 1 - i_d)
    i_cx = i_d / 2 + _uniform(g, (I,), 0.0, 1.0) * (width - 1 - i_d)

    batch = torch.cat((c_batch, i_batch))
    order = torch.argsort(batch, stable=True)
    batch = batch[order]
    cy = torch.cat((c_cy, i_cy))[order]
    cx = torch.cat((c_cx, i_cx))[order]
    d = torch.cat((c_d, i_d))[order]
    kind = torch.cat((c_kind, i_kind))[order]
    cluster = torch.cat((c_cluster, torch.full((I,), -1, dtype=torch.int64)))[order]

    prims, calc_index = _shapes(g, batch, cy, cx, d, kind, spacing, tj_lo, tj_hi)
    centres = torch.stack((batch.to(torch.float32), cy, cx), dim=1)
    return CalcSample(
        prims=prims,
        centres=centres.contiguous(),
        calc_index=calc_index,
        kind=kind,
        cluster=cluster,
        extent_mm=(d * spacing).to(torch.float32),
        n_patches=n_patches,
    )


def _shapes(g, batch, cy, cx, d, kind, spacing, tj_lo, tj_hi):
    """Primitives [N, 8] and their calcification rows [N] for calcifications of extent d (px)."""
    K = batch.shape[0]
    P = MAX_PRIMS_PER_CALC
    R = d / 2
    theta = torch.rand(K, generator=g) * (2 * math.pi)  # main axis (x = cos, y = sin)
    U = torch.rand(K, P, 6, generator=g)  # shape randomness, shared by the three constructions
    ey, ex = torch.sin(theta), torch.cos(theta)

    # columns per slot: oy, ox (offset of primitive centre), ry, rx, angle, shape, present
    oy = torch.zeros(K, P)
    ox = torch.zeros(K, P)
    ry = torch.zeros(K, P)
    rx = torch.zeros(K, P)
    ang = torch.zeros(K, P)
    shp = torch.zeros(K, P)
    present = torch.zeros(K, P, dtype=torch.bool)
    thick = torch.zeros(K, P)

    # punctate: one ellipsoid of long semi-axis R
    pun = kind == PUNCTATE
    a = R
    b = R * (0.55 + 0.45 * U[:, 0, 0])
    rx[:, 0] = torch.where(pun, a, rx[:, 0])
    ry[:, 0] = torch.where(pun, b, ry[:, 0])
    ang[:, 0] = torch.where(pun, theta, ang[:, 0])
    thick[:, 0] = torch.where(pun, 2 * torch.sqrt(a * b), thick[:, 0])
    present[:, 0] |= pun

    # pleomorphic: central lobe, two tip lobes on +-theta (extent exactly d), optional fourth lobe
    ple = kind == PLEOMORPHIC
    a0 = R * (0.45 + 0.25 * U[:, 0, 1])
    b0 = a0 * (0.5 + 0.5 * U[:, 0, 2])
    a_tip = R[:, None] * (0.45 + 0.25 * U[:, 1:3, 0])  # [K, 2]
    b_tip = a_tip * (0.45 + 0.55 * U[:, 1:3, 1])
    sign = torch.tensor([1.0, -1.0])
    o_tip = (R[:, None] - a_tip) * sign
    a3 = R * (0.3 + 0.25 * U[:, 3, 0])
    b3 = a3 * (0.5 + 0.5 * U[:, 3, 1])
    r3 = (R - a3) * U[:, 3, 2]
    phi3 = U[:, 3, 3] * (2 * math.pi)
    lobe_a = torch.cat((a0[:, None], a_tip, a3[:, None]), 1)
    lobe_b = torch.cat((b0[:, None], b_tip, b3[:, None]), 1)
    lobe_oy = torch.cat((torch.zeros(K, 1), o_tip * ey[:, None], (r3 * torch.sin(phi3))[:, None]), 1)
    lobe_ox = torch.cat((torch.zeros(K, 1), o_tip * ex[:, None], (r3 * torch.cos(phi3))[:, None]), 1)
    lobe_ang = torch.cat(
        ((U[:, 0, 3] * math.pi)[:, None], theta[:, None].expand(K, 2), (U[:, 3, 4] * math.pi)[:, None]), 1
    )
    lobe_on = torch.ones(K, P, dtype=torch.bool)
    lobe_on[:, 3] = U[:, 3, 5] < 0.5
    sel = ple[:, None]
    rx = torch.where(sel, lobe_a, rx)
    ry = torch.where(sel, lobe_b, ry)
    oy = torch.where(sel, lobe_oy, oy)
    ox = torch.where(sel, lobe_ox, ox)
    ang = torch.where(sel, lobe_ang, ang)
    thick = torch.where(sel, 2 * torch.sqrt(lobe_a * lobe_b), thick)
    present |= sel & lobe_on

    # linear / branching: rod E1-E2 through the centre, branches from E2 (V) and from E1 (Z)
    lin = kind == LINEAR
    tube = R * (0.12 + 0.18 * U[:, 0, 4])
    reach = R - tube  # endpoints stay within the disc shrunk by the tube radius
    n_br = (U[:, 0, 5] * 3).floor().clamp(max=2)  # 0, 1 or 2 branches
    bend = (0.4 + 0.8 * U[:, 1:3, 2]) * torch.where(U[:, 1:3, 3] < 0.5, -1.0, 1.0)  # [K, 2]
    blen = 0.5 + 0.5 * U[:, 1:3, 4]
    # branch k leaves endpoint E(k) at angle base_k and ends at F_k inside the disc
    base = torch.stack((theta, theta + math.pi), 1)  # E2 at +theta, E1 at -theta
    Ey, Ex = reach[:, None] * torch.sin(base), reach[:, None] * torch.cos(base)
    Fy = reach[:, None] * blen * torch.sin(base + bend)
    Fx = reach[:, None] * blen * torch.cos(base + bend)
    seg_my = torch.cat((torch.zeros(K, 1), (Ey + Fy) / 2), 1)
    seg_mx = torch.cat((torch.zeros(K, 1), (Ex + Fx) / 2), 1)
    seg_half = torch.cat((reach[:, None], 0.5 * torch.hypot(Fy - Ey, Fx - Ex)), 1).clamp(min=1e-3)
    seg_ang = torch.cat((theta[:, None], torch.atan2(Fy - Ey, Fx - Ex)), 1)
    sel = lin[:, None]
    seg_on = torch.stack((torch.ones(K, dtype=torch.bool), n_br >= 1, n_br >= 2), 1)
    pad = torch.zeros(K, 1)
    rx = torch.where(sel, torch.cat((seg_half, pad), 1), rx)
    ry = torch.where(sel, tube[:, None].expand(K, P), ry)
    oy = torch.where(sel, torch.cat((seg_my, pad), 1), oy)
    ox = torch.where(sel, torch.cat((seg_mx, pad), 1), ox)
    ang = torch.where(sel, torch.cat((seg_ang, pad), 1), ang)
    shp = torch.where(sel, torch.full((K, P), float(SHAPE_CAPSULE)), shp)
    thick = torch.where(sel, 2 * tube[:, None].expand(K, P), thick)
    present |= sel & torch.cat((seg_on, torch.zeros(K, 1, dtype=torch.bool)), 1)

    jitter = tj_lo + (tj_hi - tj_lo) * torch.rand(K, generator=g)
    thick = thick * spacing * jitter[:, None]  # px -> mm, per-calcification density
    prims = torch.stack(
        (
            batch[:, None].expand(K, P).to(torch.float32),
            cy[:, None] + oy,
            cx[:, None] + ox,
            ry.clamp(max=MAX_RADIUS_PX),
            rx.clamp(max=MAX_RADIUS_PX),
            ang,
            thick,
            torch.where(shp == SHAPE_CAPSULE, float(SHAPE_CAPSULE), float(SHAPE_ELLIPSOID)),
        ),
        dim=-1,
    )
    calc_index = torch.arange(K)[:, None].expand(K, P)
    return prims[present].to(torch.float32).contiguous(), calc_index[present].contiguous()
