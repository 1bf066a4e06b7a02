"""Training state on disk without pickle: tensors in safetensors, scalars in JSON.

A checkpoint directory ``<out>/ckpt/`` holds

* ``model.safetensors``: the weights being optimised;
* ``state.safetensors``: AdamW moments (``opt.<param>.exp_avg`` / ``.exp_avg_sq`` / ``.step``), the EMA
  weights (``ema.<param>``) and the torch CPU RNG state (``rng.torch_cpu``, uint8);
* ``state.json``: step, AdamW param-group scalars, the training config, format version.

It is written into ``ckpt.tmp/`` and renamed over ``ckpt/``, so a run killed while saving keeps the
previous complete checkpoint.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from mcgr.models.checkpoint import (CheckpointError, load_state_into, read_json, read_safetensors,
                                    write_json, write_safetensors)

STATE_FORMAT = 1
_GROUP_SCALARS = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize")


def save_training_state(ckpt_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        ema: dict[str, torch.Tensor] | None, step: int, train_config: dict,
                        extra: dict | None = None) -> None:
    ckpt_dir = Path(ckpt_dir)
    tmp = ckpt_dir.with_name(ckpt_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    names = {id(p): n for n, p in model.named_parameters()}
    tensors: dict[str, torch.Tensor] = {}
    groups = []
    for g in optimizer.param_groups:
        groups.append({k: (list(g[k]) if isinstance(g[k], tuple) else g[k]) for k in _GROUP_SCALARS if k in g})
        for p in g["params"]:
            st = optimizer.state.get(p, {})
            for k, v in st.items():
                tensors[f"opt.{names[id(p)]}.{k}"] = torch.as_tensor(v).detach().cpu().clone()
    if ema is not None:
        for k, v in ema.items():
            tensors[f"ema.{k}"] = v
    tensors["rng.torch_cpu"] = torch.get_rng_state()
    write_safetensors(model.state_dict(), tmp / "model.safetensors")
    write_safetensors(tensors, tmp / "state.safetensors")
    write_json({"format": STATE_FORMAT, "step": int(step), "param_groups": groups, "train": train_config,
                **(extra or {})}, tmp / "state.json")
    old = ckpt_dir.with_name(ckpt_dir.name + ".old")
    if ckpt_dir.exists():
        if old.exists():
            shutil.rmtree(old)
        ckpt_dir.rename(old)
    tmp.rename(ckpt_dir)
    if old.exists():
        shutil.rmtree(old)


def load_training_state(ckpt_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        ema: dict[str, torch.Tensor] | None) -> dict:
    """Restore model, optimizer, EMA and RNG from ``ckpt_dir``; returns ``state.json``'s contents."""
    ckpt_dir = Path(ckpt_dir)
    meta_path = ckpt_dir / "state.json"
    meta = read_json(meta_path)
    for key in ("format", "step", "param_groups", "train"):
        if key not in meta:
            raise CheckpointError(f"{meta_path}: missing key {key!r}")
    if meta["format"] != STATE_FORMAT:
        raise CheckpointError(f"{meta_path}: format {meta['format']!r} is not supported (expected {STATE_FORMAT})")
    load_state_into(model, read_safetensors(ckpt_dir / "model.safetensors"), str(ckpt_dir / "model.safetensors"))
    spath = ckpt_dir / "state.safetensors"
    tensors = read_safetensors(spath)
    params = dict(model.named_parameters())
    if len(meta["param_groups"]) != len(optimizer.param_groups):
        raise CheckpointError(
            f"{meta_path}: {len(meta['param_groups'])} optimizer param groups, the run has {len(optimizer.param_groups)}"
        )
    state: dict[int, dict] = {}
    index = {}
    i = 0
    for g in optimizer.param_groups:
        for p in g["params"]:
            index[id(p)] = i
            i += 1
    for key, val in tensors.items():
        if not key.startswith("opt."):
            continue
        pname, field = key[4:].rsplit(".", 1)
        if pname not in params:
            raise CheckpointError(f"{spath}: tensor {key!r} names no parameter of the model")
        p = params[pname]
        if field in ("exp_avg", "exp_avg_sq") and tuple(val.shape) != tuple(p.shape):
            raise CheckpointError(f"{spath}: tensor {key!r} has shape {tuple(val.shape)}, expected {tuple(p.shape)}")
        state.setdefault(index[id(p)], {})[field] = val.to(p.device) if field != "step" else val
    groups = []
    for saved, g in zip(meta["param_groups"], optimizer.param_groups):
        ng = {k: v for k, v in g.items() if k != "params"}
        for k, v in saved.items():
            ng[k] = tuple(v) if k == "betas" else v
        ng["params"] = [index[id(p)] for p in g["params"]]
        groups.append(ng)
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    if ema is not None:
        for k in ema:
            key = f"ema.{k}"
            if key not in tensors:
                raise CheckpointError(f"{spath}: missing tensor {key!r} (EMA)")
            if tuple(tensors[key].shape) != tuple(ema[k].shape):
                raise CheckpointError(f"{spath}: tensor {key!r} has shape {tuple(tensors[key].shape)}, expected {tuple(ema[k].shape)}")
            ema[k].copy_(tensors[key])
    if "rng.torch_cpu" in tensors:
        torch.set_rng_state(tensors["rng.torch_cpu"])
    return meta
