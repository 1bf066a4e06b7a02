"""One way from a model folder to the networks of a pipeline and their operating threshold, used by
every command (``mcgr infer``, ``mcgr eval``, ``mcgr demo``, ``python -m mcgr.train.validate_real``)
and by :meth:`mcgr.infer.pipeline.Pipeline.from_pretrained`, so that one folder gives one pipeline
whichever way it is named.

A model folder ``DIR`` holds ``seg/`` (the segmentor) and ``rf/`` (the generator), each with
``model.safetensors`` and ``config.json`` (as ``mcgr train``, ``mcgr adapt`` and
``python -m mcgr.train.ship`` write them); None names the weights shipped in the package
(:data:`mcgr.models.WEIGHTS_DIR`), and the keyword ``"teacher"`` the packaged width-16 segmentor the
shipped width-8 one was distilled from (:data:`mcgr.models.TEACHER_DIR`) with the shipped generator.
For the segmentor alone (``refine=False``) ``DIR`` may also be
the segmentor's own folder (``<run>/model`` of ``mcgr train seg``). The operating threshold is the
segmentor's (:func:`operating_point`: its config's ``operating_threshold``, or
the point of its calibration curve for ``fp_per_image``), else :class:`TTGPRConfig`'s default.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from mcgr.infer.ttgpr import TTGPRConfig

KINDS = ("seg", "rf")


class ModelFolderError(FileNotFoundError):
    """A model folder without the networks asked for; the message names the folder, what is missing
    and how to get it. ``missing``: the kinds not found ("seg", "rf")."""

    def __init__(self, message: str, missing=()):
        super().__init__(message)
        self.missing = tuple(missing)


@dataclass
class Models:
    """The networks of one model folder, ready for a :class:`~mcgr.infer.pipeline.Pipeline`.

    nets: ``{"seg": UNet[, "rf": UNet]}`` in eval mode. sources: ``{kind: {"source": folder,
    "sha256": digest of its model.safetensors}}``. operating_point: ``{"threshold", "source"[, ...]}``
    (:func:`operating_point`; threshold None: the config's own).
    """

    nets: dict
    sources: dict
    operating_point: dict

    @property
    def seg(self):
        return self.nets["seg"]

    @property
    def rf(self):
        return self.nets.get("rf")

    @property
    def threshold(self) -> float:
        """The threshold a pipeline of these models runs at."""
        return self.config().threshold

    def config(self, config: TTGPRConfig | None = None) -> TTGPRConfig:
        """``config`` (default :class:`TTGPRConfig`) at the operating threshold (its own threshold
        when the weights prescribe none)."""
        cfg = config or TTGPRConfig()
        t = self.operating_point["threshold"]
        return replace(cfg, threshold=float(t)) if t is not None else cfg


def operating_point(segmentor, fp_per_image: float | None = None) -> dict:
    """The threshold the segmentor's weights prescribe: ``{"threshold", "source"[, "fp_per_image"]}``.

    Without ``fp_per_image``: the ``operating_threshold`` its config carries (``mcgr adapt`` chooses it
    on its leave-image-out FROC; the shipped weights carry one too), else None. With it: the lowest
    threshold of the weights' calibration curve (``operating_points``, written by ``mcgr adapt``) whose
    measured false objects per image are <= ``fp_per_image``; weights without a curve raise ValueError."""
    cfg = getattr(segmentor, "config", None) or {}
    if fp_per_image is None:
        t = cfg.get("operating_threshold")
        return {"threshold": None if t is None else float(t), "source": "weights" if t is not None else "default"}
    if not (isinstance(fp_per_image, (int, float)) and not isinstance(fp_per_image, bool) and fp_per_image > 0):
        raise ValueError(f"fp_per_image must be a number > 0, got {fp_per_image!r}")
    pts = cfg.get("operating_points")
    if not pts or not pts.get("thresholds"):
        raise ValueError("these weights carry no calibration curve (operating_points); fp_per_image needs "
                         "weights written by mcgr adapt, or give a threshold in the config")
    ok = [t for t, f in zip(pts["thresholds"], pts["fp_per_image"]) if f <= fp_per_image]
    t = min(ok) if ok else max(pts["thresholds"])
    i = pts["thresholds"].index(t)
    return {"threshold": float(t), "source": "calibration", "fp_per_image_target": float(fp_per_image),
            "fp_per_image_measured": round(float(pts["fp_per_image"][i]), 3)}


def operating_config(segmentor, config: TTGPRConfig | None = None, fp_per_image: float | None = None) -> TTGPRConfig:
    """``config`` (default :class:`TTGPRConfig`) at the segmentor's operating threshold
    (:func:`operating_point`), else the config's own threshold."""
    cfg = config or TTGPRConfig()
    t = operating_point(segmentor, fp_per_image)["threshold"]
    return replace(cfg, threshold=float(t)) if t is not None else cfg


def _has_model(folder: Path) -> bool:
    return (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()


def _shipped_folders(kinds: tuple, argument: str) -> dict:
    import mcgr.models

    root = Path(mcgr.models.WEIGHTS_DIR)
    missing = [k for k in kinds if not (root / k / "model.safetensors").is_file()]
    if missing:
        need = " and ".join(f"`mcgr train {k} --config default --out runs/{k}` + "
                            f"`python -m mcgr.train.ship {k} runs/{k}`" for k in missing)
        raise ModelFolderError(f"no shipped {'/'.join(missing)} weights in {root}: train and install them with "
                               f"{need}, or pass {argument} DIR holding seg/ and rf/ model folders", missing)
    return {k: root / k for k in kinds}


TEACHER = "teacher"  # the models keyword of the packaged width-16 segmentor with the shipped generator


def _teacher_folders(kinds: tuple, argument: str) -> dict:
    import mcgr.models

    if Path(TEACHER).exists():
        raise ModelFolderError(f"{argument} teacher: names both the packaged width-16 segmentor and the folder "
                               f"./teacher here; write ./teacher/ for the folder", kinds)
    folders = _shipped_folders(kinds, argument)
    folders["seg"] = Path(mcgr.models.TEACHER_DIR)
    if not _has_model(folders["seg"]):
        raise ModelFolderError(f"{argument} teacher: no packaged teacher in {folders['seg']}", ("seg",))
    return folders


def model_folders(models: str | os.PathLike | None = None, refine: bool = True, argument: str = "models") -> dict:
    """``{kind: folder}`` of "seg" and, when ``refine``, "rf" in ``models`` (None: the shipped
    weights), checked to hold ``model.safetensors`` and ``config.json``. ``argument``: how the
    caller names ``models`` in messages (``--models`` on a command line). Raises
    :class:`ModelFolderError`."""
    kinds = KINDS if refine else ("seg",)
    if models is None:
        return _shipped_folders(kinds, argument)
    if isinstance(models, str) and models == TEACHER:  # a Path("teacher") is a folder
        return _teacher_folders(kinds, argument)
    root = Path(models)
    if not root.is_dir():
        raise ModelFolderError(f"{argument} {models}: no such folder", kinds)
    if not refine and not (root / "seg").is_dir() and _has_model(root):
        return {"seg": root}  # the segmentor's own folder
    for k in kinds:
        if not _has_model(root / k):
            raise ModelFolderError(f"{argument} {models}: no {k} model in {root / k} (model.safetensors + "
                                   f"config.json, as written by `mcgr train {k}` in <run>/model)", (k,))
    return {k: root / k for k in kinds}


def load_models(models: str | os.PathLike | None = None, refine: bool = True, fp_per_image: float | None = None,
                threshold: float | None = None, device="cpu", argument: str = "models") -> Models:
    """The networks in ``models`` (see the module doc; None: the shipped weights) on ``device``, with
    their operating point: the segmentor's threshold, or for ``fp_per_image`` the point of its
    calibration curve (ValueError for weights without one), or ``threshold`` when given.

    Missing folders raise :class:`ModelFolderError` (a FileNotFoundError), damaged ones
    :class:`mcgr.models.CheckpointError` (a ValueError); both name the file.
    """
    from mcgr._digest import file_sha256
    from mcgr.models import load_model

    folders = model_folders(models, refine, argument)
    nets = {k: load_model(d, device=device, kind=k) for k, d in folders.items()}
    sources = {k: {"source": str(d.resolve()), "sha256": file_sha256(d / "model.safetensors")}
               for k, d in folders.items()}
    if threshold is not None:
        point = {"threshold": float(threshold), "source": "argument"}
    else:
        point = operating_point(nets["seg"], fp_per_image)
    return Models(nets=nets, sources=sources, operating_point=point)
