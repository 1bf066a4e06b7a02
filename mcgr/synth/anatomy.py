"""Anatomy and artefacts that real detectors fire on, drawn into MC-free background patches.

The procedural texture of :mod:`mcgr.synth.backgrounds` is tissue alone. On real films the false
calcifications of a texture-only segmentor sit on the pectoral muscle and its edge, the skin line,
film edges, markers and burnt-in text, vessels, ligaments, scratches, dust and film grain
(docs/design.md, method M3b). :func:`add_anatomy` draws one or two of these into a share of the patches:

``pectoral``  a half-plane behind a near-straight edge (MLO), brighter, with striations along it;
``border``    air beyond a curved skin line, with the thin bright skin band inside it;
``film_edge`` a straight edge to unexposed (bright) or clear (dark) film;
``marker``    burnt-in letters and digits, lead markers (discs, squares) and their blur;
``vessel``    a long tube (elliptic cross-profile, 0.5-3 mm wide), sometimes beaded;
``ligament``  thin bright curves (0.1-0.3 mm) that cross one another;
``scratch``   long, sharp 1 px lines, bright or dark;
``dust``      sharp specks (bright: dust blocks a film scanner's light; some dark) and thin hairs (lint).

Everything here is MC-free: patches keep an empty mask unless the injector adds calcifications
afterwards (the injector stays the only source of labels). Sizes are in mm and converted with
``spacing_mm``; every draw comes from the caller's generator.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from mcgr.ops._filters import gaussian_blur

KINDS = ("pectoral", "border", "film_edge", "marker", "vessel", "ligament", "scratch", "dust")


def _u(g, n=1):
    return torch.rand(n, generator=g).tolist()


def _grid(P: int):
    ar = torch.arange(P, dtype=torch.float32)
    return ar[:, None].expand(P, P), ar[None, :].expand(P, P)


def _half_plane(P, g, curvature=0.0):
    """Signed distance (px) to a random line through the patch, bent by ``curvature`` px at the
    patch's half width: > 0 on the far side."""
    yy, xx = _grid(P)
    u = _u(g, 3)
    th = 2 * math.pi * u[0]
    c = (0.15 + 0.7 * u[1]) * (P - 1)
    ny, nx = math.sin(th), math.cos(th)
    along = -(yy - c) * nx + (xx - c) * ny
    return (yy - c) * ny + (xx - c) * nx + curvature * (along / (P / 2)) ** 2


def _curve_distance(P, g, straight=False, length=None):
    """Distance (px) from every pixel to a random quadratic Bezier curve crossing the patch, and the
    curve parameter t of the nearest sample (for beading)."""
    u = _u(g, 6)
    diag = math.hypot(P, P)
    L = diag * (0.6 + 0.8 * u[0]) if length is None else length
    th = 2 * math.pi * u[1]
    cy, cx = (0.1 + 0.8 * u[2]) * P, (0.1 + 0.8 * u[3]) * P
    p0 = torch.tensor([cy - 0.5 * L * math.sin(th), cx - 0.5 * L * math.cos(th)])
    p2 = torch.tensor([cy + 0.5 * L * math.sin(th), cx + 0.5 * L * math.cos(th)])
    bow = 0.0 if straight else (u[4] - 0.5) * 0.5 * L
    p1 = (p0 + p2) / 2 + bow * torch.tensor([math.cos(th), -math.sin(th)])
    n = int(L * 1.5) + 2
    t = torch.linspace(0, 1, n)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # [n, 2]
    yy, xx = _grid(P)
    pix = torch.stack([yy.reshape(-1), xx.reshape(-1)], 1)
    d = torch.cdist(pix, pts)  # [P*P, n]
    dmin, idx = d.min(1)
    return dmin.view(P, P), (idx.float() / (n - 1)).view(P, P)


def _pectoral(y, g, px_mm):
    P = y.shape[0]
    u = _u(g, 6)
    d = _half_plane(P, g, curvature=(u[0] - 0.5) * 0.1 * P)
    edge = 0.3 + 2.0 * u[1]
    inside = torch.sigmoid(d / edge)
    # muscle striations: texture correlated along the edge, fine across it
    stri = gaussian_blur(torch.randn(1, P, P, generator=g), 1.0 + 2 * u[2])[0]
    stri = stri / stri.std().clamp(min=1e-6)
    level = 0.55 + 0.4 * u[3]
    muscle = (level + (0.02 + 0.05 * u[4]) * stri).clamp(0, 1)
    # the muscle is denser than the tissue in front of it: the tissue texture shows through it, damped
    return y * (1 - inside) + (muscle * (0.6 + 0.4 * u[5]) + y * 0.4 * (1 - u[5])) * inside


def _border(y, g, px_mm):
    P = y.shape[0]
    u = _u(g, 5)
    d = _half_plane(P, g, curvature=(u[0] - 0.5) * 0.3 * P)
    edge = 0.5 + 1.5 * u[1]
    air = 0.01 + 0.08 * u[2] + 0.01 * torch.randn(P, P, generator=g)
    air_w = torch.sigmoid(d / edge)
    # tissue thins towards the skin: fade the texture over a few mm before the line
    fade = torch.clamp(-d / (3.0 / px_mm), 0, 1) ** 0.5
    tissue = air + (y - air) * (0.5 + 0.5 * fade)
    skin_w = (0.2 + 0.4 * u[3]) / px_mm
    skin = (0.05 + 0.15 * u[4]) * torch.exp(-0.5 * ((d + skin_w) / (skin_w / 2)) ** 2)
    return (tissue + skin) * (1 - air_w) + air * air_w


def _film_edge(y, g, px_mm):
    P = y.shape[0]
    u = _u(g, 3)
    d = _half_plane(P, g)
    edge = 0.3 + 0.7 * u[0]
    film = (0.85 + 0.15 * u[1]) if u[2] < 0.6 else 0.01 + 0.04 * u[1]
    w = torch.sigmoid(d / edge)
    return y * (1 - w) + (film + 0.005 * torch.randn(P, P, generator=g)) * w


_GLYPHS = "LRCCMLOXCCRMLO0123456789"


def _marker(y, g, px_mm):
    from PIL import Image, ImageDraw, ImageFont

    P = y.shape[0]
    u = _u(g, 8)
    canvas = Image.new("L", (P, P), 0)
    draw = ImageDraw.Draw(canvas)
    if u[0] < 0.6:  # burnt-in text, 3-10 mm tall
        size = max(8, int((3 + 7 * u[1]) / px_mm))
        try:
            font = ImageFont.load_default(size=size)
        except TypeError:  # Pillow without FreeType sizes
            font = ImageFont.load_default()
        n = 1 + int(u[2] * 4)
        text = "".join(_GLYPHS[int(v * len(_GLYPHS)) % len(_GLYPHS)] for v in _u(g, n))
        draw.text((int((u[3] - 0.3) * P), int((u[4] - 0.3) * P)), text, fill=255, font=font,
                  stroke_width=int(u[5] * 3))
        if u[6] < 0.5:
            canvas = canvas.rotate(90 * int(u[7] * 4), expand=False)
    else:  # a lead marker: disc or square, 2-8 mm
        r = (1 + 3 * u[1]) / px_mm
        cy, cx = u[3] * P, u[4] * P
        box = [cx - r, cy - r, cx + r, cy + r]
        (draw.ellipse if u[2] < 0.5 else draw.rectangle)(box, fill=255)
    m = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0)
    m = gaussian_blur(m[None], 0.4 + 0.8 * u[5])[0].clamp(0, 1)
    level = 0.85 + 0.15 * u[6]
    background_air = u[7] < 0.5  # labels sit on air or on film as often as on tissue
    base = (0.02 + 0.05 * torch.rand(1, generator=g)) * torch.ones_like(y) if background_air else y
    return base * (1 - m) + level * m


def _vessel(y, g, px_mm):
    P = y.shape[0]
    u = _u(g, 5)
    d, t = _curve_distance(P, g)
    r = (0.25 + 1.25 * u[0]) / px_mm
    prof = torch.sqrt((1 - (d / r) ** 2).clamp(min=0))
    if u[1] < 0.3:  # beaded (a vessel crossing fat lobules): width varies along it
        prof = prof * (0.7 + 0.3 * torch.cos(2 * math.pi * t * (3 + 6 * u[2])))
    prof = gaussian_blur(prof[None], 0.5)[0]
    amp = 0.04 + 0.2 * u[3]
    return y + amp * (1 - y) * prof


def _ligament(y, g, px_mm):
    P = y.shape[0]
    for _ in range(2 + int(_u(g)[0] * 4)):
        u = _u(g, 2)
        d, _ = _curve_distance(P, g)
        s = (0.05 + 0.1 * u[0]) / px_mm
        y = y + (0.03 + 0.12 * u[1]) * (1 - y) * torch.exp(-0.5 * (d / s) ** 2)
    return y


def _scratch(y, g, px_mm):
    P = y.shape[0]
    for _ in range(1 + int(_u(g)[0] * 3)):
        u = _u(g, 2)
        d, _ = _curve_distance(P, g, straight=True)
        line = (d < 0.5 + 0.5 * u[0]).float()
        y = y + (1 if u[1] < 0.5 else -1) * (0.02 + 0.13 * _u(g)[0]) * line
    return y


def specks(y: torch.Tensor, g: torch.Generator, n: int, bright: float = 1.0) -> torch.Tensor:
    """``n`` sharp specks of 1 to ~7 px (a random subset of a disc of radius 0.5-1.5 px), not blurred
    by the system PSF: dust on the film or the digitiser's glass. Dust blocks the scanner's light, so
    on a scanned film it is bright after canonicalisation (``bright`` of them, the rest dark) and
    looks like a punctate calcification but sharper than any detail the breast's image can hold."""
    P = y.shape[-1]
    yy, xx = _grid(P)
    for _ in range(n):
        u = _u(g, 6)
        r = 0.5 + 1.0 * u[0]
        cy, cx = u[1] * (P - 1), u[2] * (P - 1)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r
        keep = torch.rand(P, P, generator=g) < 0.6 + 0.4 * u[3]
        spot = (disc & (keep | ((yy - round(cy)) ** 2 + (xx - round(cx)) ** 2 == 0))).float()
        a = 0.1 + 0.5 * u[4]
        y = y + spot * a * (1 - y) if u[5] < bright else y * (1 - spot * a)
    return y


def _dust(y, g, px_mm):
    P = y.shape[0]
    y = specks(y, g, 2 + int(_u(g)[0] * 10), bright=0.7)
    if _u(g)[0] < 0.5:  # a hair: a thin sharp curve, dark or bright
        d, _ = _curve_distance(P, g, length=P * (0.2 + 0.5 * _u(g)[0]))
        hair = (d < 0.6).float()
        y = y + (0.1 if _u(g)[0] < 0.5 else -0.1) * hair
    return y


_DRAW = {"pectoral": _pectoral, "border": _border, "film_edge": _film_edge, "marker": _marker,
         "vessel": _vessel, "ligament": _ligament, "scratch": _scratch, "dust": _dust}


def add_anatomy(x: torch.Tensor, g: torch.Generator, probability: float = 0.5, spacing_mm: float = 0.07,
                kinds=KINDS) -> tuple[torch.Tensor, list[list[str]]]:
    """Draw anatomy / artefacts into a share ``probability`` of the patches ``x`` [B, P, P] (float32 in
    [0, 1]). Each chosen patch gets one element of ``kinds`` (a third of them a second one).

    Returns ``(patches, drawn)``: new [B, P, P] in [0, 1] and, per patch, the names drawn into it.
    """
    if not 0 <= probability <= 1:
        raise ValueError(f"probability must lie in [0, 1], got {probability}")
    bad = [k for k in kinds if k not in _DRAW]
    if bad or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {list(kinds)}")
    if x.dim() != 3 or x.shape[1] != x.shape[2]:
        raise ValueError(f"x must be square patches [B, P, P], got shape {tuple(x.shape)}")
    out = x.clone()
    drawn: list[list[str]] = []
    for b in range(x.shape[0]):
        u = _u(g, 4)
        names: list[str] = []
        if u[0] < probability:
            names.append(kinds[int(u[1] * len(kinds)) % len(kinds)])
            if u[2] < 1 / 3:
                names.append(kinds[int(u[3] * len(kinds)) % len(kinds)])
        y = out[b]
        for name in names:
            y = _DRAW[name](y, g, spacing_mm)
        out[b] = y.clamp(0, 1)
        drawn.append(names)
    return out, drawn
