"""The 2-D U-Net shared by the segmentor and the rectified-flow generator (docs/design.md, method M3).

One architecture, two uses:

* segmentor f: ``UNet(UNetConfig(in_channels=1, time_embedding=False))``, input ``2 I - 1``,
  output one logit per pixel;
* generator v: ``UNet(UNetConfig(in_channels=2, time_embedding=True))``, input
  ``cat([x_t, seed_map])`` and ``t``, output the velocity ``dx/dt``.

Each level is a residual block (conv3x3 - norm - SiLU - conv3x3 - norm, FiLM by the time embedding,
SiLU, + skip); downsampling is a stride-2 conv, upsampling nearest x2 + conv3x3, skips are
concatenated. Inputs of any size are padded (reflect) up to a multiple of ``2**depth`` and the
output is cropped back, so odd tile sizes work. All ops are plain convolutions and norms, so the
model runs in ``torch.channels_last`` memory format unchanged.

Normalisation: GroupNorm by default. It does not depend on the batch, so a model trained on
batches of 8-16 patches behaves the same on a single full-field tile at inference and in train
and eval mode alike; BatchNorm (``norm="batch"``) is faster on some GPUs but ties the
statistics to the training batch.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

NORMS = ("group", "batch", "none")
INPUT_SCALES = ("image", "detail", "image+detail")
DETAIL_SIGMA = 5.0  # px: the low-pass that the detail layer leaves out


@dataclass(frozen=True)
class UNetConfig:
    """U-Net hyper-parameters.

    in_channels: input channels (1 for the segmentor, 2 = image + seed map for the generator).
    out_channels: output channels (1: a logit, or a velocity).
    width: channels at full resolution; level k has ``width * min(2**k, max_mult)``.
    depth: number of stride-2 downsamplings (the bottleneck is at 1 / 2**depth resolution).
    max_mult: cap on the channel multiplier, to keep deep models small.
    norm: "group" (GroupNorm), "batch" (BatchNorm2d) or "none".
    groups: GroupNorm groups (must divide every level's channels).
    time_embedding: add a sinusoidal embedding of t in [0, 1] that scales and shifts (FiLM)
        every residual block; the forward pass then requires ``t``.
    time_dim: width of the time embedding MLP.
    input_scale: how an image in [0, 1] becomes the network's input: "image" (``2 I - 1``,
        :func:`standardise`), "detail" (:func:`detail_layer`: ``I - G_5 * I`` in units of its own
        robust std) or, for the segmentor, "image+detail" (both, two channels). The generator's
        flow space is "image" or "detail" (mcgr.models.rf.to_flow). Old checkpoints without the
        key are "image".
    image_condition: generator only: the velocity also sees the observed patch ``y`` in flow space
        as a third input channel (``cat([x_t, seed_map, y])``, mcgr.models.rf.generator_condition),
        so what it renders at a seed can depend on what the image holds there rather than on what
        survives the noise of ``x_t``. Old checkpoints without the key: False.
    """

    in_channels: int = 1
    out_channels: int = 1
    width: int = 16
    depth: int = 3
    max_mult: int = 4
    norm: str = "group"
    groups: int = 8
    time_embedding: bool = False
    time_dim: int = 64
    input_scale: str = "image"
    image_condition: bool = False

    def validated(self) -> "UNetConfig":
        for name in ("in_channels", "out_channels", "width", "depth", "max_mult", "groups", "time_dim"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "depth" else 1):
                raise ValueError(f"model.{name} must be a positive integer, got {v!r}")
        if self.depth > 6:
            raise ValueError(f"model.depth must be <= 6, got {self.depth}")
        if self.input_scale not in INPUT_SCALES:
            raise ValueError(f"model.input_scale must be one of {INPUT_SCALES}, got {self.input_scale!r}")
        if not isinstance(self.image_condition, bool):
            raise ValueError(f"model.image_condition must be true or false, got {self.image_condition!r}")
        if self.image_condition and (not self.time_embedding or self.in_channels < 3):
            raise ValueError("model.image_condition is for the generator: it needs time_embedding and "
                             f"in_channels >= 3 (x_t, seed map, y), got in_channels={self.in_channels}, "
                             f"time_embedding={self.time_embedding}")
        if self.norm not in NORMS:
            raise ValueError(f"model.norm must be one of {NORMS}, got {self.norm!r}")
        if self.norm == "group":
            for k in range(self.depth + 1):
                ch = self.channels(k)
                if ch % self.groups:
                    raise ValueError(
                        f"model.groups={self.groups} must divide every level's channels; level {k} has {ch}"
                    )
        return self

    def channels(self, level: int) -> int:
        return self.width * min(2 ** level, self.max_mult)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "model config") -> "UNetConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown}; known keys are {sorted(known)}")
        return cls(**d).validated()


def _fused():
    from mcgr.ops import group_norm_silu

    return group_norm_silu


def _norm(kind: str, ch: int, groups: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(groups, ch)
    if kind == "batch":
        return nn.BatchNorm2d(ch)
    return nn.Identity()


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding ``[B, dim]`` of ``t`` ``[B]`` in [0, 1] (scaled by 1000, as in DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, cfg: UNetConfig):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm1 = _norm(cfg.norm, cout, cfg.groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.norm2 = _norm(cfg.norm, cout, cfg.groups)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.film = nn.Linear(cfg.time_dim, 2 * cout) if cfg.time_embedding else None
        if self.film is not None:
            # Start as the identity modulation so an untrained generator is a plain U-Net.
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        if isinstance(self.norm1, nn.GroupNorm) and _fused().fused_available(x):
            return self._forward_fused(x, temb)
        h = F.silu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        if self.film is not None:
            scale, shift = self.film(temb)[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        return F.silu(h + self.skip(x))

    def _forward_fused(self, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        """The same block with each norm - (modulation) - (residual) - SiLU tail in one kernel
        (:mod:`mcgr.ops.group_norm_silu`); inference on CPU only."""
        gns = _fused().group_norm_silu
        n1, n2 = self.norm1, self.norm2
        # conv outputs are fresh temporaries: overwritten in place
        h = gns(self.conv1(x), n1.num_groups, n1.weight, n1.bias, n1.eps, inplace=True)
        h = self.conv2(h)
        scale = shift = None
        if self.film is not None:
            scale, shift = self.film(temb).float().chunk(2, dim=1)
        return gns(h, n2.num_groups, n2.weight, n2.bias, n2.eps, scale=scale, shift=shift, residual=self.skip(x),
                   inplace=True)


class UNet(nn.Module):
    """U-Net ``[B, in_channels, H, W] -> [B, out_channels, H, W]`` for any H, W >= 1.

    ``forward(x, t=None)``: ``t`` ``[B]`` (or a scalar) in [0, 1] is required when the config has
    ``time_embedding`` and ignored otherwise.
    """

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        cfg = cfg.validated()
        self.cfg = cfg
        ch = [cfg.channels(k) for k in range(cfg.depth + 1)]
        self.stem = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        if cfg.time_embedding:
            self.time_mlp = nn.Sequential(
                nn.Linear(cfg.time_dim, cfg.time_dim), nn.SiLU(), nn.Linear(cfg.time_dim, cfg.time_dim)
            )
        else:
            self.time_mlp = None
        self.enc = nn.ModuleList([ResBlock(ch[0], ch[0], cfg)])
        self.down = nn.ModuleList()
        for k in range(1, cfg.depth + 1):
            self.down.append(nn.Conv2d(ch[k - 1], ch[k - 1], 3, stride=2, padding=1))
            self.enc.append(ResBlock(ch[k - 1], ch[k], cfg))
        self.mid = ResBlock(ch[-1], ch[-1], cfg)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for k in range(cfg.depth, 0, -1):
            self.up.append(nn.Conv2d(ch[k], ch[k - 1], 3, padding=1))
            self.dec.append(ResBlock(2 * ch[k - 1], ch[k - 1], cfg))
        self.head = nn.Conv2d(ch[0], cfg.out_channels, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float | None = None) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(
                f"x must be [B, {self.cfg.in_channels}, H, W], got shape {tuple(x.shape)}"
            )
        temb = None
        if self.time_mlp is not None:
            if t is None:
                raise ValueError("t is required: this U-Net has a time embedding (the RF generator)")
            t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
            if t.dim() == 0:
                t = t.expand(x.shape[0])
            if t.shape != (x.shape[0],):
                raise ValueError(f"t must be a scalar or [B] with B={x.shape[0]}, got shape {tuple(t.shape)}")
            temb = self.time_mlp(timestep_embedding(t, self.cfg.time_dim).to(x.dtype))
        h_in, w_in = x.shape[-2:]
        x = pad_to_multiple(x, 2 ** self.cfg.depth)
        h = self.stem(x)
        h = self.enc[0](h, temb)
        skips = [h]
        for k in range(self.cfg.depth):
            h = self.enc[k + 1](self.down[k](h), temb)
            skips.append(h)
        h = self.mid(skips.pop(), temb)
        for up, dec in zip(self.up, self.dec):
            skip = skips.pop()
            h = up(F.interpolate(h, size=skip.shape[-2:], mode="nearest"))
            h = dec(torch.cat([h, skip], dim=1), temb)
        out = self.head(h)
        return out[..., :h_in, :w_in]


def pad_to_multiple(x: torch.Tensor, m: int) -> torch.Tensor:
    """``x`` ``[..., H, W]`` padded at the bottom and right to multiples of ``m`` (reflect; replicate
    for inputs too small to reflect), as the U-Net pads before its ``depth`` halvings; unchanged when
    both already are."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    if not (ph or pw):
        return x
    # Reflect padding needs pad < size; tiny inputs fall back to replicate.
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def scale_channels(scale: str) -> int:
    """Image channels of an ``input_scale`` (2 for "image+detail", else 1)."""
    if scale not in INPUT_SCALES:
        raise ValueError(f"input_scale must be one of {INPUT_SCALES}, got {scale!r}")
    return 2 if scale == "image+detail" else 1


def detail_layer(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, low, sigma)`` of ``image`` ``[B, 1, H, W]`` in [0, 1]: ``low = G_5 * I`` (reflect
    padding), ``sigma = 1.4826 MAD(I - low)`` per patch ``[B, 1, 1, 1]`` (floored at 1e-4) and
    ``x = (I - low) / sigma``, computed in float32 outside any autocast. Texture and noise have unit
    spread in ``x``, so a calcification at 5 texture sigmas stands 5 units high; ``low + sigma * x``
    gives the image back."""
    if image.dim() != 4 or image.shape[1] != 1:
        raise ValueError(f"image must be [B, 1, H, W], got {tuple(image.shape)}")
    from mcgr.ops._filters import gaussian_blur, robust_sigma

    with torch.autocast(image.device.type, enabled=False):
        img = image.float()
        r = max(1, int(math.ceil(3 * DETAIL_SIGMA)))
        # reflect needs the pad under the size (tiny test patches fall back to replicate)
        low = gaussian_blur(img, DETAIL_SIGMA, "reflect" if min(img.shape[-2:]) > r else "replicate")
        d = img - low
        sig = robust_sigma(d).clamp(min=1e-4).view(-1, 1, 1, 1)
        return d / sig, low, sig


def config_of(model):
    """The ``cfg`` of ``model`` (a UNet, or a wrapper with ``.module`` such as DDP); None for a
    network without one (e.g. a test's stand-in)."""
    return getattr(getattr(model, "module", model), "cfg", None)


def input_scale_of(model) -> str:
    """The ``input_scale`` of ``model`` (:func:`config_of`); "image" for a network without a config."""
    return getattr(config_of(model), "input_scale", "image")


def network_input(image: torch.Tensor, scale: str) -> torch.Tensor:
    """The segmentor's input for ``image`` ``[B, 1, H, W]`` in [0, 1] under ``input_scale``."""
    if scale == "image":
        return standardise(image)
    if scale == "detail":
        return detail_layer(image)[0].to(image.dtype)
    if scale == "image+detail":
        return torch.cat([standardise(image), detail_layer(image)[0].to(image.dtype)], dim=1)
    raise ValueError(f"input_scale must be one of {INPUT_SCALES}, got {scale!r}")


def standardise(image: torch.Tensor) -> torch.Tensor:
    """Map an image in [0, 1] to the networks' input scale [-1, 1] (``2 I - 1``)."""
    return image * 2.0 - 1.0


def unstandardise(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`standardise`: ``(x + 1) / 2`` (not clamped)."""
    return (x + 1.0) * 0.5
