"""On-the-fly synthetic image/mask pairs for training (docs/design.md, method M2).

Batch ``k`` of a dataset is a pure function of ``(seed, k)`` and the options: its generator is seeded
from a SplitMix64 hash of both, and DataLoader workers take interleaved ``k`` (worker ``w`` of ``n``
makes ``w, w + n, ...``), so the stream is identical whatever the number of workers.

Image formation parameters (contrast, PSF, gamma, mu, noise, local_sigma) are drawn once per batch
from ``inject_ranges`` so that one batched :func:`mcgr.ops.inject` call serves the whole batch; the
variation within a batch comes from per-calcification thickness (``thickness_jitter`` of the
sampler), size (0.1 mm calcifications are faint after the PSF), and the local density of the
background (dense tissue hides calcifications). Across batches, faint and strong regimes alternate.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch.utils.data import IterableDataset, get_worker_info

from mcgr._interop import as_tensor
from mcgr._validate import check_float_image, check_range
from mcgr.ops.inject import InjectParams, inject
from mcgr.synth.backgrounds import procedural_backgrounds
from mcgr.synth.patterns import sample_calcifications

DEFAULT_INJECT_RANGES = {
    "contrast": (0.5, 1.0),  # c: overall MC visibility
    "psf_sigma": (0.4, 0.8),  # px, docs/design.md, method M2
    "gamma": (0.5, 1.5),  # how much dense tissue hides MCs
    # 1/mm: effective attenuation as seen in processed (for-presentation) images, whose contrast
    # enhancement makes MCs stand out far more than raw hydroxyapatite attenuation (~1.2/mm) would
    "mu": (2.0, 8.0),
    "noise": (0.0, 0.02),  # signal-dependent noise factor
    "local_sigma": (6.0, 12.0),  # px, scale of the local density that modulates contrast
}
_TRAIN_SALT = 0x6D636772  # "mcgr"
_VALIDATION_SALT = 0x76616C69  # "vali": the held-out stream never meets a training stream
_M64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def batch_seed(seed: int, k: int, salt: int = _TRAIN_SALT) -> int:
    """The 63-bit generator seed of batch ``k`` of stream ``seed``."""
    return _splitmix64(_splitmix64((seed & _M64) ^ salt) + k) >> 1


def _check_ranges(ranges) -> dict:
    out = dict(DEFAULT_INJECT_RANGES)
    if ranges is None:
        return out
    if not isinstance(ranges, dict):
        raise TypeError(f"inject_ranges must be a dict of name -> (min, max), got {type(ranges).__name__}")
    for name, r in ranges.items():
        if name not in DEFAULT_INJECT_RANGES:
            raise ValueError(f"inject_ranges: unknown parameter {name!r}; expected some of {sorted(DEFAULT_INJECT_RANGES)}")
        try:
            lo, hi = (float(v) for v in r)
        except (TypeError, ValueError):
            raise TypeError(f"inject_ranges[{name!r}] must be a pair (min, max), got {r!r}") from None
        if hi < lo:
            raise ValueError(f"inject_ranges[{name!r}] must satisfy min <= max, got {r!r}")
        for v in (lo, hi):
            try:
                InjectParams(**{name: v}).validated()
            except ValueError as exc:
                raise ValueError(f"inject_ranges[{name!r}] = {r!r}: {exc}") from None
        out[name] = (lo, hi)
    return out


class SynthPairs(IterableDataset):
    """Synthetic image/mask batches, generated on the fly. Use ``DataLoader(ds, batch_size=None)``.

    patch_size: side of the square patches (px). batch_size: patches per batch.
    spacing_mm: pixel size (mm) the calcification sizes are converted with.
    seed: the stream; batch ``k`` depends only on ``(seed, k)`` and the options.
    backgrounds: None for procedural texture, or a float32 tensor/array [M, H', W'] in [0, 1] of real
        MC-free patches (H', W' >= patch_size): random crops, randomly flipped, are used.
    inject_ranges: dict name -> (min, max) overriding :data:`DEFAULT_INJECT_RANGES` (per-batch draws).
    mc_free_fraction: probability that a patch gets no calcification (empty mask, no centres).
    backend: inject backend ("auto", "reference", "cpu", "triton", "cuda").
    num_batches: batches per epoch (None = endless).
    device: where inject runs (sampling is on the CPU, so the stream does not depend on it).
    with_signal: also return ``signal`` [B, 1, H, W], the noise-free calcification signal
        ``I_clean - B`` (a second, noise-free inject of the same primitives when the batch draws
        noise): what an enhancing generator's target amplifies (mcgr.synth.enhance).
    real_fraction: with ``backgrounds``, the share of patches cut from them (the rest procedural).
    augment: True or a dict of :data:`mcgr.synth.augment.DEFAULT_AUGMENT` overrides: real and hard
        negative crops are resampled over +-20 % pixel spacing and given a new site
        (:func:`mcgr.synth.augment.site_augment`); None/False: crops are only flipped.
    anatomy: probability that a procedural or real patch gets anatomy / artefacts drawn into it
        (:func:`mcgr.synth.anatomy.add_anatomy`: pectoral edge, skin line, film edge, markers, vessels,
        ligaments, scratches, dust).
    hard_negatives: None, or float32 [M, H', W'] patches centred on false detections of an earlier
        model (``python -m mcgr.train.mine``); hard_fraction: the share of patches cut from them, each crop
        holding the patch's centre (more weight than their share of the field).
    pattern_options, background_options: extra keyword arguments of
        :func:`~mcgr.synth.patterns.sample_calcifications` and
        :func:`~mcgr.synth.backgrounds.procedural_backgrounds`.

    Each batch is a dict: ``image`` [B, 1, H, W] float32 in [0, 1]; ``mask`` [B, 1, H, W] float32 in
    {0, 1}; ``background`` [B, 1, H, W] (the MC-free input); ``centres`` list of B float32 tensors
    [K_b, 2] (cy, cx in px, one per calcification); ``index`` [B] int64 global sample ids ``k B + b``;
    ``hard`` [B] bool, the patches cut from ``hard_negatives``; ``hard_centre`` [B, 2] float32, where
    in each hard patch its mined detection (the source patch's centre pixel) lies (NaN elsewhere).
    """

    def __init__(
        self,
        patch_size: int = 256,
        batch_size: int = 16,
        spacing_mm: float = 0.07,
        seed: int = 0,
        backgrounds=None,
        inject_ranges: dict | None = None,
        mc_free_fraction: float = 0.1,
        backend: str = "auto",
        num_batches: int | None = None,
        *,
        device="cpu",
        with_signal: bool = False,
        pattern_options: dict | None = None,
        background_options: dict | None = None,
        real_fraction: float = 1.0,
        augment=None,
        anatomy: float = 0.0,
        hard_negatives=None,
        hard_fraction: float = 0.0,
        _salt: int = _TRAIN_SALT,
    ):
        super().__init__()
        for name, v, lo in (("patch_size", patch_size, 8), ("batch_size", batch_size, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an integer, got {seed!r}")
        if num_batches is not None and (isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 0):
            raise ValueError(f"num_batches must be None or a non-negative integer, got {num_batches!r}")
        self.patch_size = patch_size
        self.batch_size = batch_size
        self.spacing_mm = check_range("spacing_mm", spacing_mm, 0.0, 10.0, lo_open=True)
        self.seed = seed
        self.inject_ranges = _check_ranges(inject_ranges)
        self.mc_free_fraction = check_range("mc_free_fraction", mc_free_fraction, 0.0, 1.0)
        self.backend = backend
        self.num_batches = num_batches
        self.device = torch.device(device)
        self.with_signal = bool(with_signal)
        self.pattern_options = dict(pattern_options or {})
        self.background_options = dict(background_options or {})
        self._salt = _salt
        self.backgrounds = None
        if backgrounds is not None:
            bg, _ = as_tensor(backgrounds, "backgrounds")
            check_float_image(bg, "backgrounds", ndims=(3,))
            if bg.shape[0] == 0 or bg.shape[1] < patch_size or bg.shape[2] < patch_size:
                raise ValueError(
                    f"backgrounds must be [M, H', W'] with M >= 1 and H', W' >= patch_size = {patch_size}, got {tuple(bg.shape)}"
                )
            if float(bg.min()) < 0.0 or float(bg.max()) > 1.0:
                raise ValueError(f"backgrounds must lie in [0, 1], got range [{float(bg.min())}, {float(bg.max())}]")
            self.backgrounds = bg.cpu()
        self.real_fraction = check_range("real_fraction", real_fraction, 0.0, 1.0)
        self.augment = (dict(augment) if isinstance(augment, dict) else {}) if augment else None
        if self.augment is not None:
            from mcgr.synth.augment import DEFAULT_AUGMENT

            unknown = sorted(set(self.augment) - set(DEFAULT_AUGMENT))
            if unknown:
                raise ValueError(f"augment: unknown options {unknown}; known: {sorted(DEFAULT_AUGMENT)}")
        self.anatomy = check_range("anatomy", anatomy, 0.0, 1.0)
        self.hard_fraction = check_range("hard_fraction", hard_fraction, 0.0, 1.0)
        self.hard_negatives = None
        if hard_negatives is not None:
            hn, _ = as_tensor(hard_negatives, "hard_negatives")
            check_float_image(hn, "hard_negatives", ndims=(3,))
            if hn.shape[0] == 0 or hn.shape[1] < patch_size or hn.shape[2] < patch_size:
                raise ValueError(f"hard_negatives must be [M, H', W'] with M >= 1 and H', W' >= patch_size = "
                                 f"{patch_size}, got {tuple(hn.shape)}")
            self.hard_negatives = hn.cpu().clamp(0, 1)
        elif self.hard_fraction > 0:
            raise ValueError("hard_fraction > 0 needs hard_negatives")
        # fail now, not in a worker: one tiny draw with these options
        sample_calcifications(1, patch_size, patch_size, self.spacing_mm, torch.Generator().manual_seed(0), **self.pattern_options)
        if self.backgrounds is None:
            procedural_backgrounds(1, patch_size, patch_size, torch.Generator().manual_seed(0),
                                   spacing_mm=self.spacing_mm, **self.background_options)

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("an endless SynthPairs (num_batches=None) has no length")
        return self.num_batches

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        k = wid
        while self.num_batches is None or k < self.num_batches:
            yield self.batch(k)
            k += nw

    def _crop_backgrounds(self, g: torch.Generator, B: int) -> torch.Tensor:
        src = self.backgrounds
        M, Hs, Ws = src.shape
        P = self.patch_size
        idx = torch.randint(0, M, (B,), generator=g)
        oy = torch.randint(0, Hs - P + 1, (B,), generator=g)
        ox = torch.randint(0, Ws - P + 1, (B,), generator=g)
        flip = torch.rand(B, 2, generator=g) < 0.5
        ar = torch.arange(P)
        rows = oy[:, None] + torch.where(flip[:, 0:1], P - 1 - ar, ar)
        cols = ox[:, None] + torch.where(flip[:, 1:2], P - 1 - ar, ar)
        return src[idx[:, None, None], rows[:, :, None], cols[:, None, :]].contiguous()

    def _mixed(self) -> bool:
        return (self.augment is not None or self.anatomy > 0 or self.hard_negatives is not None
                or (self.backgrounds is not None and self.real_fraction < 1))

    def _mixed_backgrounds(self, g: torch.Generator, B: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per patch: a hard negative (``hard_fraction``), else a real crop (``real_fraction`` of the
        rest, when there are real backgrounds), else procedural texture; then anatomy drawn into
        procedural and real patches with probability ``anatomy``."""
        from mcgr.synth.anatomy import add_anatomy
        from mcgr.synth.augment import DEFAULT_AUGMENT, resampled_crop, site_augment, turned_point

        P = self.patch_size
        u = torch.rand(B, 2, generator=g)
        hard = (u[:, 0] < self.hard_fraction) if self.hard_negatives is not None else torch.zeros(B, dtype=torch.bool)
        real = ~hard & (u[:, 1] < self.real_fraction) if self.backgrounds is not None else torch.zeros(B, dtype=torch.bool)
        proc = ~hard & ~real
        out = torch.empty(B, P, P)
        if bool(proc.any()):
            out[proc] = procedural_backgrounds(int(proc.sum()), P, P, g, spacing_mm=self.spacing_mm, **self.background_options)
        scale = (self.augment or {}).get("scale", DEFAULT_AUGMENT["scale"]) if self.augment is not None else (1.0, 1.0)
        centre = torch.full((B, 2), float("nan"))
        for src, sel, centred in ((self.backgrounds, real, False), (self.hard_negatives, hard, True)):
            idx = torch.nonzero(sel).flatten().tolist()
            if not idx:
                continue
            pick = torch.randint(0, src.shape[0], (len(idx),), generator=g).tolist()
            where: list = []
            crops = torch.stack([resampled_crop(src, j, P, g, scale, centred=centred, where=where) for j in pick])
            turns: list = []
            if self.augment is not None:
                crops = site_augment(crops, g, self.augment, turns=turns)
            else:
                flip = torch.rand(len(idx), 2, generator=g) < 0.5
                crops = torch.stack([c.flip(0) if f[0] else c for c, f in zip(crops, flip)])
                crops = torch.stack([c.flip(1) if f[1] else c for c, f in zip(crops, flip)])
                turns = [(2, True) if f[0] else (0, False) for f in flip.tolist()]  # flip(0) == rot 180 + flip(1)
                turns = [(k, fl != bool(f[1])) for (k, fl), f in zip(turns, flip.tolist())]
            out[torch.tensor(idx)] = crops
            if centred:  # where the mined detection (the source patch's centre pixel) now lies
                for i, (oy, ox, w), (k, fl) in zip(idx, where, turns):
                    cy = (src.shape[1] // 2 - oy + 0.5) * P / w - 0.5
                    cx = (src.shape[2] // 2 - ox + 0.5) * P / w - 0.5
                    centre[i] = torch.tensor(turned_point(cy, cx, P, k, fl))
        if self.anatomy > 0:
            keep = torch.nonzero(~hard).flatten()
            if keep.numel():
                out[keep] = add_anatomy(out[keep], g, self.anatomy, self.spacing_mm)[0]
        return out.clamp(0, 1), hard, centre

    def draw_params(self, g: torch.Generator) -> InjectParams:
        """One :class:`InjectParams` drawn uniformly within ``inject_ranges``."""
        u = torch.rand(len(self.inject_ranges), generator=g, dtype=torch.float64).tolist()
        vals = {name: lo + (hi - lo) * ui for (name, (lo, hi)), ui in zip(sorted(self.inject_ranges.items()), u)}
        noise_seed = int(torch.randint(0, 2**32, (1,), generator=g, dtype=torch.int64))
        return InjectParams(seed=noise_seed, **vals)

    def batch(self, k: int) -> dict:
        """Batch ``k`` of this stream (see the class docstring for its keys)."""
        g = torch.Generator().manual_seed(batch_seed(self.seed, k, self._salt))
        B, P = self.batch_size, self.patch_size
        calcs = sample_calcifications(B, P, P, self.spacing_mm, g, **self.pattern_options)
        mc_free = torch.rand(B, generator=g) < self.mc_free_fraction
        calcs = calcs.select(~mc_free)
        hard = torch.zeros(B, dtype=torch.bool)
        hard_centre = torch.full((B, 2), float("nan"))
        if self._mixed():
            bg, hard, hard_centre = self._mixed_backgrounds(g, B)
        elif self.backgrounds is None:
            bg = procedural_backgrounds(B, P, P, g, spacing_mm=self.spacing_mm, **self.background_options)
        else:
            bg = self._crop_backgrounds(g, B)
        params = self.draw_params(g)
        bg = bg.to(self.device)
        image, mask = inject(bg, calcs.prims.to(self.device), params, backend=self.backend)
        out = {
            "image": image.unsqueeze(1),
            "mask": mask.unsqueeze(1).to(torch.float32),
            "background": bg.unsqueeze(1),
            "centres": calcs.centres_per_patch(),
            "index": k * B + torch.arange(B, dtype=torch.int64),
            "hard": hard,
            "hard_centre": hard_centre,
        }
        if self.with_signal:
            clean = image
            if params.noise > 0:
                clean = inject(bg, calcs.prims.to(self.device), replace(params, noise=0.0), backend=self.backend)[0]
            out["signal"] = (clean - bg).unsqueeze(1)
        return out


def validation_set(n: int, patch_size: int = 256, seed: int = 12345, draw_every: int = 4, **options) -> dict:
    """The fixed held-out set of ``n`` patches (same keys as a :class:`SynthPairs` batch).

    Drawn from a stream salted apart from every training stream, so it never repeats a training
    batch even when ``seed`` equals a training seed. A training batch shares one image-formation
    draw (contrast, mu, PSF, noise); the validation set is built from ``ceil(n / draw_every)``
    batches of ``draw_every`` patches so it spans that distribution instead of sitting on one draw
    of it. ``options``: the other SynthPairs arguments.
    """
    for bad in ("batch_size", "num_batches", "_salt"):
        if bad in options:
            raise TypeError(f"validation_set() does not take {bad!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if isinstance(draw_every, bool) or not isinstance(draw_every, int) or draw_every < 1:
        raise ValueError(f"draw_every must be an integer >= 1, got {draw_every!r}")
    per = min(draw_every, n)
    nb = -(-n // per)
    ds = SynthPairs(patch_size=patch_size, batch_size=per, seed=seed, num_batches=nb, _salt=_VALIDATION_SALT, **options)
    parts = [ds.batch(k) for k in range(nb)]
    keys = ("image", "mask", "background", "index") + (("signal",) if "signal" in parts[0] else ())
    out = {key: torch.cat([b[key] for b in parts])[:n] for key in keys}
    out["centres"] = [c for b in parts for c in b["centres"]][:n]
    return out
