"""Synthetic pairs on disk: ``mcgr synth`` writes them, :func:`load_shard` reads them back.

Layout of the output folder::

    manifest.json            what was generated (options, counts, shard list, format)
    shard_00000.npz ...      np.savez_compressed, ``shard_size`` pairs each
    previews/preview_000.png image | image with the mask outlined, side by side

A shard holds ``image`` uint16 [n, H, W] (intensity * 65535, rounded: mammograms are 12-16 bit
integer images natively, and the 1.5e-5 step is far below the noise; float16 would carry only
11 bits near 0.5 and compress worse), ``mask`` uint8 [n, H, W] in {0, 1}, ``centres`` float32
[K, 2] (cy, cx px) with ``centres_offsets`` int64 [n + 1] (pair i owns rows
``offsets[i]:offsets[i+1]``), ``index`` int64 [n] (global sample ids of the SynthPairs stream),
and, with ``save_background``, ``background`` uint16 [n, H, W].
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

import mcgr
from mcgr.synth.dataset import SynthPairs

FORMAT_VERSION = 1
UINT16_SCALE = 65535.0


def _to_u16(x: torch.Tensor) -> np.ndarray:
    return torch.round(x.clamp(0.0, 1.0) * UINT16_SCALE).to(torch.int32).numpy().astype(np.uint16)


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` [H, W] bool with a 4-neighbour outside the mask (a one-pixel object is its own outline)."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def render_pair(image: np.ndarray, mask: np.ndarray, gap: int = 4) -> np.ndarray:
    """RGB uint8 [H, 2W + gap, 3]: the image, and the image with the mask outlined in red."""
    g = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    rgb = np.repeat((g * 255.0 + 0.5).astype(np.uint8)[..., None], 3, axis=2)
    over = rgb.copy()
    over[mask_outline(np.asarray(mask, dtype=bool))] = (255, 32, 32)
    sep = np.full((g.shape[0], gap, 3), 255, dtype=np.uint8)
    return np.concatenate((rgb, sep, over), axis=1)


def _save_png(rgb: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(rgb).save(path)


def _prepare_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"--out {out} is not empty; pass --force to overwrite its shards and previews")
        # remove only what a previous run wrote, so a stale shard cannot mix into this dataset
        for p in list(out.glob("shard_*.npz")) + list(out.glob("previews/preview_*.png")) + [out / "manifest.json"]:
            if p.is_file():
                p.unlink()
    (out / "previews").mkdir(parents=True, exist_ok=True)


def write_shards(
    out,
    n: int,
    patch: int = 256,
    seed: int = 0,
    shard_size: int = 256,
    spacing_mm: float = 0.07,
    previews: int = 8,
    *,
    batch_size: int = 32,
    force: bool = False,
    progress: bool = True,
    save_background: bool = False,
    **dataset_options,
) -> dict:
    """Generate ``n`` synthetic pairs into folder ``out`` (see the module docstring); returns the manifest.

    The pairs are samples ``0 .. n-1`` of ``SynthPairs(patch, batch_size, spacing_mm, seed, **dataset_options)``,
    so the same arguments reproduce the same files. Refuses a non-empty ``out`` unless ``force``.
    """
    for name, v, lo in (("n", n, 1), ("shard_size", shard_size, 1), ("previews", previews, 0), ("batch_size", batch_size, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    out = Path(out)
    nb = math.ceil(n / batch_size)
    ds = SynthPairs(patch_size=patch, batch_size=batch_size, spacing_mm=spacing_mm, seed=seed, num_batches=nb, **dataset_options)
    _prepare_dir(out, force)
    from tqdm import tqdm

    shards: list[dict] = []
    buf: dict[str, list] = {"image": [], "mask": [], "centres": [], "index": [], "background": []}
    held = 0
    n_prev = 0

    def flush():
        nonlocal held
        if not held:
            return
        counts = [c.shape[0] for c in buf["centres"]]
        arrays = {
            "image": np.concatenate(buf["image"]),
            "mask": np.concatenate(buf["mask"]),
            "centres": np.concatenate(buf["centres"]).astype(np.float32).reshape(-1, 2),
            "centres_offsets": np.concatenate(([0], np.cumsum(counts))).astype(np.int64),
            "index": np.concatenate(buf["index"]),
        }
        if save_background:
            arrays["background"] = np.concatenate(buf["background"])
        name = f"shard_{len(shards):05d}.npz"
        np.savez_compressed(out / name, **arrays)
        shards.append({"file": name, "n": held, "calcifications": int(sum(counts))})
        for v in buf.values():
            v.clear()
        held = 0

    with tqdm(total=n, unit="pair", desc="mcgr synth", disable=not progress) as bar:
        for k in range(nb):
            batch = ds.batch(k)
            take = min(batch_size, n - k * batch_size)
            for b in range(take):
                if n_prev < previews:
                    rgb = render_pair(batch["image"][b, 0].cpu().numpy(), batch["mask"][b, 0].cpu().numpy() > 0.5)
                    _save_png(rgb, out / "previews" / f"preview_{n_prev:03d}.png")
                    n_prev += 1
                buf["image"].append(_to_u16(batch["image"][b : b + 1, 0].cpu()))
                buf["mask"].append(batch["mask"][b : b + 1, 0].cpu().to(torch.uint8).numpy())
                buf["centres"].append(batch["centres"][b].cpu().numpy())
                buf["index"].append(batch["index"][b : b + 1].numpy())
                if save_background:
                    buf["background"].append(_to_u16(batch["background"][b : b + 1, 0].cpu()))
                held += 1
                if held == shard_size:
                    flush()
            bar.update(take)
    flush()
    manifest = {
        "format": FORMAT_VERSION,
        "mcgr": mcgr.__version__,
        "n": n,
        "patch": patch,
        "seed": seed,
        "batch_size": batch_size,
        "spacing_mm": spacing_mm,
        "shard_size": shard_size,
        "image_dtype": "uint16 (intensity * 65535)",
        "save_background": save_background,
        "inject_ranges": {k: list(v) for k, v in ds.inject_ranges.items()},
        "mc_free_fraction": ds.mc_free_fraction,
        "backend": ds.backend,
        "shards": shards,
        "previews": [f"previews/preview_{i:03d}.png" for i in range(n_prev)],
    }
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, out / "manifest.json")
    return manifest


def load_shard(path) -> dict:
    """A shard as a batch dict like :class:`SynthPairs`'s: ``image`` [n, 1, H, W] float32 in [0, 1],
    ``mask`` [n, 1, H, W] float32, ``centres`` list of [K_i, 2] float32, ``index`` [n] int64
    (and ``background`` when it was saved)."""
    with np.load(path) as z:
        out = {
            "image": torch.from_numpy(z["image"].astype(np.float32) / UINT16_SCALE).unsqueeze(1),
            "mask": torch.from_numpy(z["mask"].astype(np.float32)).unsqueeze(1),
            "index": torch.from_numpy(z["index"]),
        }
        offs = z["centres_offsets"]
        cen = torch.from_numpy(z["centres"])
        out["centres"] = [cen[offs[i] : offs[i + 1]] for i in range(len(offs) - 1)]
        if "background" in z:
            out["background"] = torch.from_numpy(z["background"].astype(np.float32) / UINT16_SCALE).unsqueeze(1)
    return out
