"""Models: the segmentor f and the seed-conditioned RF generator v (docs/design.md, method M3), their files,
and the weights shipped with the package."""
from __future__ import annotations

from pathlib import Path

from mcgr.models.checkpoint import CheckpointError, load_model, save_model
from mcgr.models.seeds import make_seed_map
from mcgr.models.unet import UNet, UNetConfig, standardise, unstandardise

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
# the width-16 segmentor the shipped width-8 one was distilled from (mcgr/weights/teacher/seg/card.md):
# the default teacher of ``python -m mcgr.train.distill``
TEACHER_DIR = WEIGHTS_DIR / "teacher" / "seg"


def segmentor_folder(spec: str) -> Path:
    """The folder a teacher / segmentor name means: "shipped" (the package's segmentor), "teacher"
    (the packaged width-16 teacher, :data:`TEACHER_DIR`) or a model folder."""
    return WEIGHTS_DIR / "seg" if spec == "shipped" else TEACHER_DIR if spec == "teacher" else Path(spec)


def load_pretrained(kind: str = "seg", device="cpu") -> UNet:
    """The shipped model ``kind`` ("seg": segmentor, "rf": generator) in eval mode on ``device``.

    Reads ``mcgr/weights/<kind>/`` (``model.safetensors``, ``config.json``; ``card.md`` says how it
    was trained and how it scores). Never unpickles.
    """
    if kind not in ("seg", "rf"):
        raise ValueError(f"kind must be 'seg' or 'rf', got {kind!r}")
    d = WEIGHTS_DIR / kind
    if not (d / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{d / 'model.safetensors'}: no shipped {kind} weights; train them with `mcgr train {kind} "
            f"--config default --out runs/{kind}` and copy model.safetensors + config.json there"
        )
    return load_model(d, device=device, kind=kind)


__all__ = ["CheckpointError", "TEACHER_DIR", "UNet", "UNetConfig", "WEIGHTS_DIR", "segmentor_folder", "load_model", "load_pretrained",
           "make_seed_map", "save_model", "standardise", "unstandardise"]
