"""Model files: safetensors weights + a JSON config beside them. Loading never unpickles.

A model directory holds ``model.safetensors`` (the weights, names as in ``state_dict()``) and
``config.json``::

    {"kind": "seg" | "rf", "model": {UNetConfig fields}, "format": 1, ...free metadata...}

``weights_sha256`` is the sha256 of ``model.safetensors``, written by :func:`write_model_config`
(which :func:`save_model` and ``mcgr.train.ship`` use) and checked by :func:`load_model`: weights
whose bytes changed (a flipped bit, a truncated copy that still parses) are refused; a folder
written before the hash was recorded loads with a :class:`UnverifiedWeightsWarning`.

Every failure names the file and the field: an unreadable or truncated safetensors file, a missing
or extra tensor, a tensor whose shape differs from what the config builds, an unknown config key.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from mcgr._digest import file_sha256
from mcgr.models.unet import UNet, UNetConfig

KINDS = ("seg", "rf")
FORMAT = 1
_CONFIG_KEYS = {"kind", "model", "format", "train", "metrics", "ema", "source", "operating_threshold",
                "operating_points", "adapted", "weights_sha256", "distilled_from"}


class CheckpointError(ValueError):
    """A model or training-state file that cannot be loaded; the message names the file and field."""


class UnverifiedWeightsWarning(UserWarning):
    """A model folder whose config records no sha256 of its weights (written before it was recorded)."""


def write_model_config(cfg: dict, directory: str | os.PathLike) -> dict:
    """Write ``directory/config.json`` from ``cfg`` with ``weights_sha256`` set to the digest of the
    ``model.safetensors`` beside it (every writer of a model folder's config goes through here, so
    each new folder carries its hash). Returns the config written."""
    directory = Path(directory)
    cfg = dict(cfg)
    cfg["weights_sha256"] = file_sha256(directory / "model.safetensors")
    write_json(cfg, directory / "config.json")
    return cfg


def read_safetensors(path: str | os.PathLike, device="cpu") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, with errors that name the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(
            f"{path}: not a readable safetensors file (truncated or corrupt?): {e}"
        ) from None


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write atomically (temp file + rename), so a run killed mid-save leaves the old file intact."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def write_json(obj: dict, path: str | os.PathLike) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def load_state_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``tensors`` into ``module``, checking names and shapes first (errors name ``source``)."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing:
        raise CheckpointError(f"{source}: missing tensor(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if extra:
        raise CheckpointError(f"{source}: unexpected tensor(s) {extra[:5]}{' ...' if len(extra) > 5 else ''}")
    for name, ref in expected.items():
        got = tensors[name]
        if tuple(got.shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{source}: tensor {name!r} has shape {tuple(got.shape)}, the model config expects {tuple(ref.shape)}"
            )
        if got.dtype != ref.dtype:
            raise CheckpointError(f"{source}: tensor {name!r} has dtype {got.dtype}, expected {ref.dtype}")
    module.load_state_dict(tensors, strict=True)


def save_model(model: UNet, directory: str | os.PathLike, kind: str, extra: dict | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory`` (created). ``extra`` is merged
    into the config (keys limited to train / metrics / ema / source)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = {"kind": kind, "format": FORMAT, "model": model.cfg.to_dict()}
    for k, v in (extra or {}).items():
        if k not in _CONFIG_KEYS:
            raise ValueError(f"extra config key {k!r} is not one of {sorted(_CONFIG_KEYS)}")
        cfg[k] = v
    write_safetensors(model.state_dict(), directory / "model.safetensors", metadata={"kind": kind})
    write_model_config(cfg, directory)
    return directory


def read_model_config(directory: str | os.PathLike) -> tuple[str, UNetConfig, dict]:
    """``(kind, UNetConfig, full config dict)`` from ``directory/config.json``, checking every key."""
    path = Path(directory) / "config.json"
    cfg = read_json(path)
    unknown = sorted(set(cfg) - _CONFIG_KEYS)
    if unknown:
        raise CheckpointError(f"{path}: unknown key(s) {unknown}; known keys are {sorted(_CONFIG_KEYS)}")
    for key in ("kind", "model"):
        if key not in cfg:
            raise CheckpointError(f"{path}: missing key {key!r}")
    if cfg["kind"] not in KINDS:
        raise CheckpointError(f"{path}: kind must be one of {KINDS}, got {cfg['kind']!r}")
    if cfg.get("format", FORMAT) != FORMAT:
        raise CheckpointError(f"{path}: format {cfg['format']!r} is not supported (expected {FORMAT})")
    if not isinstance(cfg["model"], dict):
        raise CheckpointError(f"{path}: 'model' must be an object of U-Net settings")
    try:
        ucfg = UNetConfig.from_dict(cfg["model"], source=f"{path}: model")
    except (TypeError, ValueError) as e:
        msg = str(e)
        raise CheckpointError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    return cfg["kind"], ucfg, cfg


def check_weights(directory: str | os.PathLike, cfg: dict) -> None:
    """``directory/model.safetensors`` against the ``weights_sha256`` of its config ``cfg``: a
    CheckpointError when they differ, a warning when no hash is recorded."""
    import warnings

    directory = Path(directory)
    wpath = directory / "model.safetensors"
    want = cfg.get("weights_sha256")
    if want is None:
        warnings.warn(f"{directory / 'config.json'}: no weights_sha256 recorded; {wpath.name} is loaded unverified "
                      f"(write the config again with mcgr.models.checkpoint.write_model_config to record it)",
                      UnverifiedWeightsWarning, stacklevel=3)
        return
    if not isinstance(want, str) or len(want) != 64:
        raise CheckpointError(f"{directory / 'config.json'}: weights_sha256 must be a 64-digit hex sha256, got {want!r}")
    if not wpath.is_file():
        raise FileNotFoundError(f"{wpath}: no such file")
    got = file_sha256(wpath)
    if got != want.lower():
        raise CheckpointError(f"{wpath}: sha256 {got} differs from the weights_sha256 {want} its config records: "
                              f"the weights are damaged or not the ones this config describes")


def load_model(directory: str | os.PathLike, device="cpu", kind: str | None = None) -> UNet:
    """Build the U-Net described by ``directory/config.json`` and load ``directory/model.safetensors``.

    ``kind`` ("seg" or "rf"), when given, must match the config. Returns the model in eval mode on
    ``device``; its ``kind`` and ``config`` attributes hold the config file's contents.
    """
    directory = Path(directory)
    got_kind, ucfg, cfg = read_model_config(directory)
    if kind is not None and got_kind != kind:
        raise CheckpointError(f"{directory / 'config.json'}: kind is {got_kind!r}, expected {kind!r}")
    model = UNet(ucfg)
    wpath = directory / "model.safetensors"
    # what is structurally wrong (unparsable, a tensor missing or misshapen) says so first; weights
    # that are whole but whose bytes changed are caught by their recorded hash
    load_state_into(model, read_safetensors(wpath), str(wpath))
    check_weights(directory, cfg)
    model.kind = got_kind
    model.config = cfg
    return model.to(device).eval()
