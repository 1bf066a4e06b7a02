"""`mcgr train seg|rf`: the training loop for the segmentor and the RF generator (docs/design.md, method M3).

Exact resume: every random draw of step k (diffusion time, noise, seed jitter/dropout, decoys) comes
from a generator seeded by ``(seed, k)``, the synthetic batch of step k is a function of
``(seed, k)`` only, the learning rate is a function of k, and the checkpoint holds the weights, the
AdamW moments, the EMA and the torch RNG state. A run killed after its step-k checkpoint and resumed
therefore produces, on the CPU with the same thread count, weights equal bit for bit to an
uninterrupted run's.
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from mcgr.models.checkpoint import save_model
from mcgr.models.rf import flow_like, generator_condition, rf_loss, sample_times, to_flow
from mcgr.models.seeds import decoy_seeds, make_seed_map, training_seeds
from mcgr.models.segmentor import segment_logits, segmentation_loss, soft_dice
from mcgr.models.unet import UNet
from mcgr.train.config import TrainConfig
from mcgr.train.data import dataset_kwargs
from mcgr.train.state import load_training_state, save_training_state

_MIX = 0x9E3779B97F4A7C15


def step_seed(seed: int, step: int, stream: int = 0) -> int:
    """A 63-bit seed for ``(seed, step, stream)`` (splitmix64 finaliser), stable across runs."""
    z = (seed * 0x100000001B3 + step * _MIX + stream * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from ``lr`` to ``lr * min_lr_ratio``."""
    o = cfg.optim
    if o.warmup and step < o.warmup:
        return o.lr * (step + 1) / o.warmup
    span = max(1, o.steps - o.warmup)
    frac = min(1.0, (step - o.warmup) / span)
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


# ---------------------------------------------------------------- data

def batch_stream(cfg: TrainConfig, start_step: int):
    """Synthetic training batches for steps ``start_step, start_step + 1, ...``; batch k depends on
    ``(cfg.seed, k)`` only, so a resumed run sees the same stream as an uninterrupted one."""
    from mcgr.synth.dataset import SynthPairs

    ds = SynthPairs(seed=cfg.seed, **dataset_kwargs(cfg))
    k = start_step
    while True:
        yield ds.batch(k)
        k += 1


def validation_batch(cfg: TrainConfig, patch_size: int | None = None, n: int | None = None) -> dict:
    from mcgr.synth.dataset import validation_set

    d = cfg.data
    kw = dataset_kwargs(cfg)
    kw.pop("batch_size")
    kw["patch_size"] = patch_size or d.val_patch_size
    return validation_set(n or d.val_n, seed=d.val_seed, **kw)


def _to(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def rf_seed_map(batch: dict, cfg: TrainConfig, g: torch.Generator, train: bool = True) -> torch.Tensor:
    """Seed map ``[B, 1, H, W]`` for a batch: true centres (jittered and dropped when ``train``) plus
    decoys on MC-free bright texture."""
    return rf_seeds(batch, cfg, g, train)[0]


def rf_seeds(batch: dict, cfg: TrainConfig, g: torch.Generator, train: bool = True) -> tuple:
    """``(seed_map, true_seeds)``: :func:`rf_seed_map` and the B ``[K_b, 2]`` true seeds in it."""
    img = batch["image"]
    shape = tuple(img.shape[-2:])
    r = cfg.rf
    cen = [torch.as_tensor(c, dtype=torch.float32).reshape(-1, 2).cpu() for c in batch["centres"]]
    if r.seed_min_cnr > 0:
        from mcgr.synth.visibility import visible_centres

        vis = visible_centres(img, batch["background"], cen, r.seed_min_cnr)
        cen = [c[v] for c, v in zip(cen, vis)]
    true = training_seeds(cen, shape, g, jitter=r.jitter if train else 0.0, dropout=r.dropout if train else 0.0)
    dec = decoy_seeds(batch["background"].cpu(), batch["mask"].cpu(), r.decoys, r.decoy_min_dist, g)
    if r.hard_decoys and "hard_centre" in batch:
        dec = _with_hard_decoys(dec, batch["hard_centre"].cpu(), batch["mask"].cpu(), r.decoy_min_dist)
    seeds = [torch.cat([a, b.to(a.dtype)], 0) for a, b in zip(true, dec)]
    return make_seed_map(seeds, shape, r.seed_sigma, device=img.device), true


def _with_hard_decoys(dec: list, centres: torch.Tensor, mask: torch.Tensor, min_dist: float) -> list:
    """A decoy seed at each hard-negative patch's mined detection (``centres`` [B, 2], NaN where the
    patch is not one), unless a calcification was injected within ``min_dist`` px of it: the
    generator learns to say no exactly where an earlier segmentor said yes."""
    out = []
    h, w = mask.shape[-2:]
    d = int(min_dist)
    for b, c in enumerate(dec):
        cy, cx = centres[b].tolist()
        if cy == cy and cx == cx:
            y, x = min(max(int(round(cy)), 0), h - 1), min(max(int(round(cx)), 0), w - 1)
            if not bool(mask[b, 0, max(0, y - d):y + d + 1, max(0, x - d):x + d + 1].any()):
                c = torch.cat([c, torch.tensor([[float(y), float(x)]], dtype=c.dtype, device=c.device)], 0)
        out.append(c)
    return out


def rf_pair(model: UNet, batch: dict, cfg: TrainConfig, g: torch.Generator, train: bool = True) -> tuple:
    """``(x1, cond, y)`` for the RF loss: the target in flow space, what :func:`velocity` is
    conditioned on (the seed map, plus the observed patch for an image-conditioned generator), and
    the observed patch the noisy state is built from (None: from x1, the plain objective)."""
    xy, ctx = to_flow(batch["image"], cfg.model.input_scale)
    smap, true = rf_seeds(batch, cfg, g, train)
    x1 = xy
    if cfg.rf.target == "enhanced":
        from mcgr.synth.enhance import enhanced_target

        tgt = enhanced_target(batch["image"], batch["signal"], batch["background"], batch["mask"], true,
                              cfg.rf.enhance_cnr, cfg.rf.enhance_max_gain)
        return flow_like(tgt, ctx), generator_condition(model, smap, xy), xy
    return x1, generator_condition(model, smap, xy), None


# ---------------------------------------------------------------- one step

def _loss_weight(batch: dict, cfg: TrainConfig) -> torch.Tensor | None:
    """The segmentor's per-pixel loss weights (None: all 1); see LossConfig.ignore_below_cnr and
    faint_below_cnr."""
    lc = cfg.loss
    hard = batch.get("hard")
    hard_on = lc.hard_weight != 1.0 and hard is not None and bool(hard.any())
    if lc.ignore_below_cnr <= 0 and lc.faint_below_cnr <= 0 and not hard_on:
        return None
    w = torch.ones_like(batch["mask"])
    if lc.ignore_below_cnr > 0 or lc.faint_below_cnr > 0:
        from mcgr.synth.visibility import band_rule, component_weight, difficult_rule

        rules = [difficult_rule(lc.ignore_below_cnr)] if lc.ignore_below_cnr > 0 else []
        if lc.faint_below_cnr > 0:
            rules.append(band_rule(lc.ignore_below_cnr, lc.faint_below_cnr, lc.faint_weight))
        # one labelling and CNR pass for both rules
        w = component_weight(batch["image"].cpu(), batch["background"].cpu(), batch["mask"].cpu(), rules)
        w = w.to(batch["mask"].device)
    if hard_on:  # an earlier model's false detections weigh more (mcgr.train.mine)
        w = w * torch.where(hard.to(w.device), lc.hard_weight, 1.0).view(-1, 1, 1, 1)
    return w


def compute_loss(model: UNet, batch: dict, cfg: TrainConfig, g: torch.Generator, teacher: UNet | None = None) -> torch.Tensor:
    """The step's loss; ``teacher`` (a frozen segmentor, with ``loss.distill`` > 0) adds
    ``loss.distill * distillation_loss`` against its logits on the same images."""
    if cfg.kind == "seg":
        logits = segment_logits(model, batch["image"])
        lc = cfg.loss
        loss = segmentation_loss(logits, batch["mask"], lc.bce, lc.dice, lc.pos_weight, weight=_loss_weight(batch, cfg))
        if teacher is not None and lc.distill > 0:
            from mcgr.models.segmentor import distillation_loss

            with torch.no_grad():
                target = segment_logits(teacher, batch["image"])
            loss = loss + lc.distill * distillation_loss(logits, target, lc.distill_clip)
        return loss
    x1, smap, y = rf_pair(model, batch, cfg, g)
    b = x1.shape[0]
    t = sample_times(b, g, cfg.rf.time_sampling, cfg.rf.logit_mean, cfg.rf.logit_std).to(x1.device)
    x0 = torch.randn(x1.shape, generator=g).to(x1.device)
    return rf_loss(model, x1, smap, t, x0, y)


@torch.no_grad()
def validate(model: UNet, val: dict, cfg: TrainConfig, device, chunk: int = 8) -> dict:
    """Held-out figures: seg: loss and pixel Dice at 0.5; rf: RF loss at fixed t and noise."""
    was = model.training
    model.eval()
    n = val["image"].shape[0]
    out: dict[str, float] = {}
    if cfg.kind == "seg":
        losses, inter, psum, tsum = [], 0.0, 0.0, 0.0
        for i in range(0, n, chunk):
            img = val["image"][i:i + chunk].to(device)
            m = val["mask"][i:i + chunk].to(device)
            logits = segment_logits(model, img).float()
            losses.append(float(segmentation_loss(logits, m, cfg.loss.bce, cfg.loss.dice, cfg.loss.pos_weight)) * img.shape[0])
            pred = (logits > 0).float()
            inter += float((pred * m).sum())
            psum += float(pred.sum())
            tsum += float(m.sum())
        out["val_loss"] = sum(losses) / n
        out["val_dice"] = 2 * inter / (psum + tsum) if psum + tsum else 1.0
    else:
        g = torch.Generator().manual_seed(cfg.data.val_seed)
        x1, smap, y = rf_pair(model, val, cfg, g, train=False)
        x0 = torch.randn(x1.shape, generator=g)
        for tv in cfg.rf.val_t:
            tot = 0.0
            for i in range(0, n, chunk):
                sl = slice(i, i + chunk)
                t = torch.full((x1[sl].shape[0],), float(tv))
                ys = None if y is None else y[sl].to(device)
                tot += float(rf_loss(model, x1[sl].to(device), smap[sl].to(device), t.to(device), x0[sl].to(device),
                                     ys)) * t.shape[0]
            out[f"val_loss_t{tv:g}"] = tot / n
        out["val_loss"] = sum(out[f"val_loss_t{tv:g}"] for tv in cfg.rf.val_t) / len(cfg.rf.val_t)
    model.train(was)
    return out


# ---------------------------------------------------------------- the loop

class _Stop:
    """SIGTERM/SIGINT set a flag; the loop checkpoints after the current step and exits."""

    def __init__(self):
        self.flag = False
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._set)
            except ValueError:  # not the main thread
                pass
        return self

    def _set(self, *_):
        self.flag = True

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def _truncate_metrics(path: Path, step: int) -> None:
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            break  # a line cut by a kill: everything after it is gone too
    path.write_text("".join(k + "\n" for k in keep))


def train(cfg: TrainConfig, out: str | os.PathLike, resume: bool = False, device="cpu",
          stop_after: int | None = None, progress: bool | None = None, micro_batches: int | None = None) -> dict:
    """Train ``cfg.kind`` for ``cfg.optim.steps`` steps, writing into ``out``:

    * ``ckpt/`` the resumable training state (every ``log.ckpt_every`` steps, at the end, at
      ``stop_after`` and on SIGTERM/SIGINT);
    * ``metrics.jsonl`` one JSON object per logged step / validation;
    * ``model/`` the final weights (EMA weights when ``optim.ema`` > 0) + ``config.json``;
    * ``train_config.json`` the resolved config.

    ``stop_after``: stop (checkpointed) once this many steps are done in total, as if killed there.
    Returns a summary dict (steps done, final validation figures, wall time).

    Under torchrun (WORLD_SIZE > 1) every process calls this; see :mod:`mcgr.train.distributed`.
    ``micro_batches``: micro-batches per step (default: the number of processes; 1 alone).
    """
    from mcgr.train.distributed import setup

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dist, device = setup(device)
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, out, resume, device, stop_after, progress, dist, micro_batches)
    finally:
        torch.set_num_threads(threads_before)
        dist.close()


def _train(cfg: TrainConfig, out: Path, resume: bool, device: torch.device, stop_after: int | None,
           progress: bool | None, dist=None, micro_batches: int | None = None) -> dict:
    from mcgr.train.distributed import (Dist, local_micro_batches, micro_batch_stream,
                                        resolve_micro_batches)

    dist = dist or Dist()
    ckpt = out / "ckpt"
    metrics_path = out / "metrics.jsonl"
    cfg_dict = cfg.to_dict()
    if dist.is_main:
        (out / "train_config.json").write_text(json.dumps(cfg_dict, indent=2) + "\n")

    torch.manual_seed(cfg.seed)
    model = UNet(cfg.model).to(device)
    decay, no_decay = [], []
    for n_, p in model.named_parameters():
        (no_decay if p.dim() <= 1 else decay).append(p)
    o = cfg.optim
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=o.lr, betas=(o.beta1, o.beta2), foreach=False)
    if cfg.init and not resume:
        _init_weights(model, cfg)
    teacher = _load_teacher(cfg, device)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()} if o.ema > 0 else None

    start = 0
    saved_micro = None
    if resume:
        if not (ckpt / "state.json").is_file():
            raise FileNotFoundError(f"{ckpt / 'state.json'}: nothing to resume (no checkpoint in {out})")
        meta = load_training_state(ckpt, model, opt, ema)
        saved_micro = int(meta.get("micro_batches", 1))
        if meta["train"] != cfg_dict:
            diff = sorted(k for k in cfg_dict if meta["train"].get(k) != cfg_dict[k])
            raise ValueError(
                f"{ckpt / 'state.json'}: the checkpoint was written with a different config "
                f"(sections {diff} differ); resume with the same --config and --steps"
            )
        start = int(meta["step"])
        if dist.is_main:
            _truncate_metrics(metrics_path, start)
    elif ckpt.exists():
        raise FileExistsError(f"{ckpt} exists: pass --resume to continue that run, or choose another --out")
    elif dist.is_main:
        metrics_path.write_text("")
    # ---- distributed hook: micro-batches of this rank, the DDP-wrapped model for the forward
    n_micro = resolve_micro_batches(micro_batches, saved_micro, dist.world, cfg.data.batch_size)
    local = local_micro_batches(n_micro, dist.rank, dist.world)
    train_model = dist.wrap(model, device)

    total = o.steps
    end = total if stop_after is None else min(total, stop_after)
    use_amp = o.amp and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else nullcontext
    val = validation_batch(cfg) if start < end and dist.is_main else None
    show = (cfg.log.progress if progress is None else progress) and dist.is_main
    try:
        from tqdm import tqdm
        bar = tqdm(total=total, initial=start, disable=not show, desc=f"train {cfg.kind}", dynamic_ncols=True)
    except ImportError:
        bar = None

    model.train()
    t_start = time.perf_counter()
    t_data = t_comp = 0.0
    acc_loss, acc_n = 0.0, 0
    last_val: dict = {}
    step = start
    with _Stop() as stop, open(metrics_path if dist.is_main else os.devnull, "a") as mlog:
        def log(rec):
            if dist.is_main:
                mlog.write(json.dumps(rec) + "\n")
                mlog.flush()

        def checkpoint(s):
            if dist.is_main:
                save_training_state(ckpt, model, opt, ema, s, cfg_dict,
                                    extra={"micro_batches": n_micro} if n_micro != 1 else None)

        if start >= end:
            stream = iter(())
        elif n_micro == 1:
            stream = ([(0, b)] for b in batch_stream(cfg, start))
        else:
            stream = micro_batch_stream(cfg, start, n_micro, local)
        while step < end:
            t0 = time.perf_counter()
            parts = [(j, _to(b, device)) for j, b in next(stream)]
            t1 = time.perf_counter()
            for grp in opt.param_groups:
                grp["lr"] = lr_at(step, cfg)
            opt.zero_grad(set_to_none=True)
            step_loss = 0.0
            for i, (j, batch) in enumerate(parts):
                # micro-batch j draws from stream j of the step's seed: the same draws whatever the world size
                g = torch.Generator().manual_seed(step_seed(cfg.seed, step, j))
                with dist.no_sync(train_model, last=i == len(parts) - 1):
                    with autocast():
                        loss = compute_loss(train_model, batch, cfg, g, teacher)
                    if len(parts) > 1:
                        loss = loss / len(parts)
                    loss.backward()
                step_loss += loss.item()
            if o.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip, foreach=False)
            opt.step()
            if ema is not None:
                with torch.no_grad():
                    for k, v in model.state_dict().items():
                        if v.dtype.is_floating_point:
                            ema[k].mul_(o.ema).add_(v.detach(), alpha=1 - o.ema)
                        else:
                            ema[k].copy_(v)
            t2 = time.perf_counter()
            t_data += t1 - t0
            t_comp += t2 - t1
            acc_loss += step_loss
            acc_n += 1
            step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{acc_loss / max(acc_n, 1):.4f}")
            if step % cfg.log.log_every == 0 or step == end:
                bs = cfg.data.batch_size // dist.world
                log({"step": step, "loss": dist.mean(acc_loss / acc_n, device), "lr": lr_at(step - 1, cfg),
                     "elapsed_s": round(time.perf_counter() - t_start, 3),
                     "pairs_generated_per_s": round(acc_n * bs / max(t_data, 1e-9), 2),
                     "pairs_consumed_per_s": round(acc_n * bs / max(t_comp, 1e-9), 2)})
                acc_loss, acc_n, t_data, t_comp = 0.0, 0, 0.0, 0.0
            if (step % cfg.log.val_every == 0 or step == total) and dist.is_main:
                vm = _ema_swap(model, ema, lambda: validate(model, val, cfg, device))
                last_val = vm
                log({"step": step, **vm})
            stopping = dist.any(stop.flag, device)
            if step % cfg.log.ckpt_every == 0 or step == end or stopping:
                checkpoint(step)
            if stopping:
                break
    if bar is not None:
        bar.close()
    summary = {"kind": cfg.kind, "steps_done": step, "total_steps": total,
               "wall_s": round(time.perf_counter() - t_start, 2), **last_val}
    if step >= total and dist.is_main:
        export_model(model, ema, out / "model", cfg, last_val)
    dist.barrier()  # every rank returns once rank 0's files are written
    return summary


def _init_weights(model: UNet, cfg: TrainConfig) -> None:
    """Load ``cfg.init`` (a model folder, or "shipped") into ``model``; the architectures must match."""
    from mcgr.models import load_model, load_pretrained

    src = load_pretrained(cfg.kind) if cfg.init == "shipped" else load_model(Path(cfg.init), kind=cfg.kind)
    try:
        model.load_state_dict(src.state_dict())
    except RuntimeError as e:
        raise ValueError(f"init {cfg.init!r}: its architecture differs from model: in the config ({e})") from None


def _load_teacher(cfg: TrainConfig, device) -> UNet | None:
    """``cfg.teacher`` (a model folder, or "shipped"), frozen and in eval mode; None without one."""
    from mcgr.train.config import check_teacher

    check_teacher(cfg, "train config")
    if not cfg.teacher:
        return None
    from mcgr.models import load_model, segmentor_folder

    t = load_model(segmentor_folder(cfg.teacher), kind="seg").to(device).eval()
    for p in t.parameters():
        p.requires_grad_(False)
    return t


def _ema_swap(model: UNet, ema: dict | None, fn):
    """Run ``fn`` with the EMA weights loaded into ``model`` (restored afterwards)."""
    if ema is None:
        return fn()
    live = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(ema)
    try:
        return fn()
    finally:
        model.load_state_dict(live)


def export_model(model: UNet, ema: dict | None, directory: Path, cfg: TrainConfig, metrics: dict) -> Path:
    """The deliverable: ``model.safetensors`` (EMA weights when kept) + ``config.json``."""
    export = UNet(cfg.model)
    export.load_state_dict(ema if ema is not None else model.state_dict())
    return save_model(export, directory, cfg.kind,
                      extra={"train": cfg.to_dict(), "metrics": metrics, "ema": ema is not None})
