"""Array interop: the public ops take torch tensors, NumPy arrays or CuPy arrays, and return the
caller's kind. NumPy goes through ``torch.from_numpy`` and CuPy through DLPack, both zero-copy where
the memory allows (a read-only or byte-swapped NumPy array is copied)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

TORCH, NUMPY, CUPY = "torch", "numpy", "cupy"


def array_kind(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return TORCH
    if isinstance(x, np.ndarray):
        return NUMPY
    mod = type(x).__module__ or ""
    if mod.startswith("cupy") and hasattr(x, "__dlpack__"):
        return CUPY
    raise TypeError(
        f"expected a torch.Tensor, numpy.ndarray or cupy.ndarray, got {type(x).__module__}.{type(x).__name__}"
    )


def as_tensor(x: Any, name: str) -> tuple[torch.Tensor, str]:
    """``(tensor, kind)``: ``x`` as a torch tensor sharing its memory where possible."""
    try:
        kind = array_kind(x)
    except TypeError as exc:
        raise TypeError(f"{name}: {exc}") from None
    if kind == TORCH:
        return x, kind
    if kind == NUMPY:
        if not x.dtype.isnative or not x.flags.writeable:
            x = np.array(x, dtype=x.dtype.newbyteorder("=") if not x.dtype.isnative else x.dtype)
        if x.dtype == np.float64 or x.dtype == np.float32 or np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
            return torch.from_numpy(x), kind
        raise TypeError(f"{name}: unsupported NumPy dtype {x.dtype}")
    return torch.from_dlpack(x), kind


def to_kind(t: torch.Tensor, kind: str):
    """``t`` returned as the caller's array kind (zero-copy)."""
    if kind == TORCH:
        return t
    if kind == NUMPY:
        return t.detach().cpu().numpy()
    import cupy

    return cupy.from_dlpack(t.detach())
