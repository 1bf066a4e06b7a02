"""Training configuration: YAML files and named presets, checked key by key.

``load_config(kind, spec)``: ``spec`` is a preset name (``tiny``, ``default``: files
``mcgr/train/presets/<kind>_<name>.yaml``: the shipped recipes and the test-size ``tiny``) or a path to a
YAML file (the research candidates live in the repository's ``experiments/presets/``). A file may start from a preset
with ``preset: <name>`` and override any subset of keys; every key it sets must exist, otherwise
:class:`ConfigError` names the file and the dotted key.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

import yaml

from mcgr.models.unet import INPUT_SCALES, UNetConfig, scale_channels

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
KINDS = ("seg", "rf")


class ConfigError(ValueError):
    """A config file with an unknown key or a bad value; the message names the file and the key."""


@dataclass
class DataConfig:
    """On-the-fly synthetic pairs (mcgr.synth.dataset.SynthPairs) and the held-out validation set."""

    patch_size: int = 96
    batch_size: int = 8
    spacing_mm: float = 0.07
    mc_free_fraction: float = 0.1
    backgrounds: str | None = None  # None: procedural; else .npy/.safetensors of real MC-free patches, or several joined by ","
    real_fraction: float = 1.0  # with backgrounds: share of patches cut from them (the rest procedural)
    augment: bool = False  # site augmentation of real / hard-negative crops (mcgr.synth.augment)
    anatomy: float = 0.0  # probability of drawing anatomy / artefacts into a patch (mcgr.synth.anatomy)
    hard_negatives: str | None = None  # .npy of patches centred on an earlier model's false detections (several: ",")
    hard_fraction: float = 0.0  # share of patches cut from hard_negatives
    psf_sigma: tuple | None = None  # (min, max) px of the injector's PSF per batch; None: (0.4, 0.8); mcgr adapt sets the site's
    backend: str = "auto"
    val_n: int = 32
    val_patch_size: int = 256
    val_seed: int = 12345


@dataclass
class OptimConfig:
    steps: int = 6000
    lr: float = 2e-3
    min_lr_ratio: float = 0.05  # cosine decays from lr to lr * min_lr_ratio
    warmup: int = 200
    weight_decay: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 1.0
    ema: float = 0.0  # EMA decay of the exported weights; 0 = off (the generator uses ~0.999)
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU


@dataclass
class LossConfig:
    """Segmentor loss: bce * BCE(pos_weight) + dice * (1 - soft Dice).

    ignore_below_cnr: when > 0, calcifications whose contrast-to-noise ratio is under it
    (mcgr.synth.visibility.component_cnr) are left out of the loss, their pixels and a 1 px ring
    weighted 0: the image holds no evidence of them, and a target of 1 there teaches the network
    to fire on texture that looks the same. 0 = every calcification counts.
    faint_below_cnr, faint_weight: when faint_below_cnr > 0, the pixels of calcifications whose CNR
    lies in [ignore_below_cnr, faint_below_cnr) weigh faint_weight in both terms: the band the
    detector finds least of gets more of the gradient. 0 = off."""

    bce: float = 1.0
    dice: float = 1.0
    pos_weight: float = 3.0
    ignore_below_cnr: float = 0.0
    faint_below_cnr: float = 0.0
    faint_weight: float = 1.0
    hard_weight: float = 1.0  # weight of every pixel of a hard-negative patch (data.hard_negatives) in both terms
    # weight of mcgr.models.segmentor.distillation_loss against TrainConfig.teacher's logits (0 = no teacher)
    distill: float = 0.0
    distill_clip: float = 10.0


@dataclass
class RFConfig:
    """Generator objective and training seeds."""

    time_sampling: str = "uniform"  # or "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    seed_sigma: float = 1.5  # px, Gaussian dot of the seed map
    jitter: float = 1.0  # px, uniform per axis on true seeds
    dropout: float = 0.2  # probability of dropping a true seed
    decoys: int = 4  # decoy seeds per patch on MC-free bright texture
    decoy_min_dist: int = 8  # px from any calcification pixel
    hard_decoys: bool = True  # with data.hard_negatives: one more decoy at each hard patch's mined detection
    # true seeds only at calcifications with peak contrast >= this many texture sigmas (Rose's
    # criterion, mcgr.synth.visibility); 0 seeds every calcification, visible or not
    seed_min_cnr: float = 0.0
    val_t: tuple = (0.25, 0.5, 0.75)
    # "image": x1 is the observed patch (docs/design.md, method M3); "enhanced": the seeded calcifications of the
    # patch with their signal amplified to enhance_cnr texture sigmas (at most enhance_max_gain x),
    # mcgr.synth.enhance; needs model.image_condition (the generator must see what to enhance)
    target: str = "image"
    enhance_cnr: float = 10.0
    enhance_max_gain: float = 4.0


@dataclass
class LogConfig:
    log_every: int = 10
    val_every: int = 500
    ckpt_every: int = 200
    progress: bool = True


@dataclass
class TrainConfig:
    kind: str = "seg"
    seed: int = 0
    threads: int = 0  # torch.set_num_threads; 0 = leave as is
    init: str | None = None  # start from these weights: a model folder, or "shipped" (mcgr/weights/<kind>)
    # a frozen segmentor whose logits the model learns beside the masks (loss.distill > 0): a model folder,
    # "shipped" (mcgr/weights/seg) or "teacher" (mcgr/weights/teacher/seg, the width-16 one)
    teacher: str | None = None
    model: UNetConfig = field(default_factory=UNetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    rf: RFConfig = field(default_factory=RFConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rf"]["val_t"] = list(self.rf.val_t)
        if self.data.psf_sigma is not None:  # the JSON form, so a saved config compares equal to it
            d["data"]["psf_sigma"] = list(self.data.psf_sigma)
        return d


def _merge(obj, data: dict, source: str, prefix: str = ""):
    """Return a copy of dataclass ``obj`` with ``data`` applied, rejecting unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'the top level'} must be a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(obj)}
    kw = {}
    for key, val in data.items():
        if key not in known:
            raise ConfigError(
                f"{source}: unknown key {prefix + str(key)!r}; known keys here are {sorted(known)}"
            )
        cur = getattr(obj, key)
        if is_dataclass(cur):
            kw[key] = _merge(cur, val or {}, source, prefix + key + ".")
        else:
            kw[key] = _coerce(cur, val, source, prefix + key)
    if isinstance(obj, UNetConfig):
        merged = {**asdict(obj), **kw}
        try:
            return UNetConfig(**merged).validated()
        except ValueError as e:
            raise ConfigError(f"{source}: {e}") from None
    new = copy.deepcopy(obj)
    for k, v in kw.items():
        setattr(new, k, v)
    return new


def _coerce(cur, val, source: str, key: str):
    if val is None or cur is None:
        return val
    if isinstance(cur, bool):
        if not isinstance(val, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {val!r}")
        return val
    if isinstance(cur, int):
        if isinstance(val, bool) or not isinstance(val, int):
            raise ConfigError(f"{source}: {key} must be an integer, got {val!r}")
        return val
    if isinstance(cur, float):
        if isinstance(val, bool) or not isinstance(val, (int, float)):
            raise ConfigError(f"{source}: {key} must be a number, got {val!r}")
        return float(val)
    if isinstance(cur, tuple):
        if not isinstance(val, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {val!r}")
        return tuple(val)
    if isinstance(cur, str) and not isinstance(val, str):
        raise ConfigError(f"{source}: {key} must be a string, got {val!r}")
    return val


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def preset_path(kind: str, name: str) -> Path:
    return PRESETS_DIR / f"{kind}_{name}.yaml"


def preset_names(kind: str) -> list[str]:
    return sorted(p.stem[len(kind) + 1:] for p in PRESETS_DIR.glob(f"{kind}_*.yaml"))


def load_config(kind: str, spec: str | Path) -> TrainConfig:
    """The training config for ``kind`` ("seg" or "rf") from a preset name or a YAML file."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    spec = str(spec)
    path = preset_path(kind, spec)
    if not path.is_file():
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(
                f"{spec!r} is neither a {kind} preset ({', '.join(preset_names(kind))}) nor a file"
            )
    return _config_from_file(kind, path, depth=0)


def _config_from_file(kind: str, path: Path, depth: int) -> TrainConfig:
    data = _read_yaml(path)
    base = TrainConfig(kind=kind, model=_default_model(kind))
    preset = data.pop("preset", None)
    if preset is not None:
        ppath = preset_path(kind, str(preset))
        if not ppath.is_file() or depth > 3:
            raise ConfigError(f"{path}: preset {preset!r} is not one of {preset_names(kind)}")
        base = _config_from_file(kind, ppath, depth + 1)
    if data.get("kind", kind) != kind:
        raise ConfigError(f"{path}: kind is {data['kind']!r} but this is `mcgr train {kind}`")
    cfg = _merge(base, data, str(path))
    _check(cfg, str(path))
    return cfg


def _default_model(kind: str) -> UNetConfig:
    if kind == "rf":
        return UNetConfig(in_channels=2, time_embedding=True)
    return UNetConfig(in_channels=1, time_embedding=False)


def check_teacher(cfg: TrainConfig, source: str) -> None:
    """The distillation fields: ``teacher`` and ``loss.distill`` > 0 go together, for the segmentor
    only, with ``loss.distill_clip`` > 0 (ConfigError). The trainer calls it too, for configs changed
    after :func:`load_config`."""
    if not cfg.loss.distill >= 0 or not cfg.loss.distill_clip > 0:
        raise ConfigError(f"{source}: loss.distill must be >= 0 and loss.distill_clip > 0, got "
                          f"{cfg.loss.distill}, {cfg.loss.distill_clip}")
    if bool(cfg.teacher) != (cfg.loss.distill > 0):
        raise ConfigError(f"{source}: teacher and loss.distill > 0 go together (teacher {cfg.teacher!r}, "
                          f"loss.distill {cfg.loss.distill})")
    if cfg.teacher and cfg.kind != "seg":
        raise ConfigError(f"{source}: teacher is for the segmentor (kind seg), not {cfg.kind}")


def _check(cfg: TrainConfig, source: str) -> None:
    m = cfg.model
    if m.input_scale not in INPUT_SCALES or (cfg.kind == "rf" and m.input_scale == "image+detail"):
        ok = ("image", "detail") if cfg.kind == "rf" else INPUT_SCALES
        raise ConfigError(f"{source}: model.input_scale for {cfg.kind} must be one of {ok}, got {m.input_scale!r}")
    chans = scale_channels(m.input_scale)
    if m.image_condition and cfg.kind != "rf":
        raise ConfigError(f"{source}: model.image_condition is for the generator (kind rf), not {cfg.kind}")
    want_in, want_t = (chans + 1 + int(m.image_condition), True) if cfg.kind == "rf" else (chans, False)
    if m.in_channels != want_in or m.time_embedding != want_t or m.out_channels != 1:
        raise ConfigError(
            f"{source}: model for {cfg.kind} needs in_channels={want_in}, out_channels=1, "
            f"time_embedding={want_t}"
        )
    pos = {"data.patch_size": cfg.data.patch_size, "data.batch_size": cfg.data.batch_size,
           "data.val_n": cfg.data.val_n, "data.val_patch_size": cfg.data.val_patch_size,
           "optim.steps": cfg.optim.steps, "log.log_every": cfg.log.log_every,
           "log.val_every": cfg.log.val_every, "log.ckpt_every": cfg.log.ckpt_every}
    for k, v in pos.items():
        if v < 1:
            raise ConfigError(f"{source}: {k} must be >= 1, got {v}")
    if not 0 <= cfg.optim.ema < 1:
        raise ConfigError(f"{source}: optim.ema must be in [0, 1), got {cfg.optim.ema}")
    if cfg.optim.lr <= 0 or cfg.optim.warmup < 0:
        raise ConfigError(f"{source}: optim.lr must be > 0 and optim.warmup >= 0")
    if cfg.rf.time_sampling not in ("uniform", "logit_normal"):
        raise ConfigError(f"{source}: rf.time_sampling must be 'uniform' or 'logit_normal', got {cfg.rf.time_sampling!r}")
    if not 0 <= cfg.rf.dropout < 1:
        raise ConfigError(f"{source}: rf.dropout must be in [0, 1), got {cfg.rf.dropout}")
    if cfg.rf.target not in ("image", "enhanced"):
        raise ConfigError(f"{source}: rf.target must be 'image' or 'enhanced', got {cfg.rf.target!r}")
    if cfg.kind == "rf" and cfg.rf.target == "enhanced" and not m.image_condition:
        raise ConfigError(f"{source}: rf.target 'enhanced' needs model.image_condition: true (and in_channels={chans + 2})")
    if not cfg.rf.enhance_cnr > 0 or not cfg.rf.enhance_max_gain >= 1:
        raise ConfigError(f"{source}: rf.enhance_cnr must be > 0 and rf.enhance_max_gain >= 1, got "
                          f"{cfg.rf.enhance_cnr}, {cfg.rf.enhance_max_gain}")
    if not cfg.rf.seed_min_cnr >= 0:
        raise ConfigError(f"{source}: rf.seed_min_cnr must be >= 0, got {cfg.rf.seed_min_cnr}")
    if not cfg.loss.ignore_below_cnr >= 0:
        raise ConfigError(f"{source}: loss.ignore_below_cnr must be >= 0, got {cfg.loss.ignore_below_cnr}")
    if cfg.loss.faint_below_cnr and not cfg.loss.faint_below_cnr > cfg.loss.ignore_below_cnr:
        raise ConfigError(f"{source}: loss.faint_below_cnr must be 0 (off) or > loss.ignore_below_cnr, got "
                          f"{cfg.loss.faint_below_cnr}")
    d = cfg.data
    if d.psf_sigma is not None and (len(d.psf_sigma) != 2 or not 0 < d.psf_sigma[0] <= d.psf_sigma[1]):
        raise ConfigError(f"{source}: data.psf_sigma must be null or [min, max] with 0 < min <= max, got {d.psf_sigma}")
    for name in ("real_fraction", "anatomy", "hard_fraction"):
        if not 0 <= getattr(d, name) <= 1:
            raise ConfigError(f"{source}: data.{name} must lie in [0, 1], got {getattr(d, name)}")
    if not cfg.loss.hard_weight > 0:
        raise ConfigError(f"{source}: loss.hard_weight must be > 0, got {cfg.loss.hard_weight}")
    check_teacher(cfg, source)
    if not cfg.loss.faint_weight >= 0:
        raise ConfigError(f"{source}: loss.faint_weight must be >= 0, got {cfg.loss.faint_weight}")
