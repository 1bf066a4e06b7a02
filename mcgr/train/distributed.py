"""Multi-process training: ``torchrun --nproc-per-node N -m mcgr train seg|rf ...``.

torchrun starts N processes with RANK, WORLD_SIZE and LOCAL_RANK set; :func:`setup` (called by
:func:`mcgr.train.trainer.train`) sees WORLD_SIZE > 1, joins the process group (NCCL on CUDA, gloo
on the CPU) and the model is wrapped in DistributedDataParallel.

Data. The global batch of step k (``data.batch_size`` = B pairs) is made of M micro-batches of B / M
pairs; micro-batch j of step k is batch ``k M + j`` of ``SynthPairs(batch_size=B / M)``, a pure
function of ``(seed, k M + j)``, so no synthetic sample is ever drawn twice, across ranks or steps.
Rank r of W makes only its own M / W micro-batches (``j = r M / W ... (r + 1) M / W - 1``). M
defaults to W (one micro-batch per rank) and is kept in the checkpoint. The union over the ranks is
exactly the stream of a 1-process run with the same ``micro_batches=M`` (which accumulates the
gradients of its M micro-batches); M = 1 is the original 1-process stream. Resuming with another
world size W' keeps the stream as long as W' divides M.

Loss. The step's loss is the mean of its M micro-batch losses: each rank averages its own, DDP
averages the gradients over the ranks. The random draws of micro-batch j (RF time, noise, seed
jitter and dropout) come from ``step_seed(seed, k, j)``, so they too do not depend on W.

Files. Rank 0 alone writes the checkpoint, the metrics and the model (the output folder must be
on storage every rank sees when resuming across nodes); every rank reads the checkpoint on
--resume. A stop (SIGTERM/SIGINT) on any rank stops all of them after the same step, with a
checkpoint.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch


@dataclass
class Dist:
    """This process's place in the run: ``rank`` of ``world`` (1 = no process group)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``model`` for the training forward: DDP over the process group when ``world`` > 1."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
        return DDP(model, device_ids=ids)

    def no_sync(self, model: torch.nn.Module, last: bool):
        """Skip the gradient all-reduce on all but the last local micro-batch."""
        if self.world == 1 or last:
            return nullcontext()
        return model.no_sync()

    def mean(self, value: float, device: torch.device) -> float:
        """Mean of ``value`` over the ranks."""
        if self.world == 1:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when ``flag`` is true on some rank."""
        if self.world == 1:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.owns_group = False


def setup(device) -> tuple[Dist, torch.device]:
    """The run's :class:`Dist` and this rank's device, from torchrun's environment.

    Joins the default process group when WORLD_SIZE > 1 and none is open yet (NCCL for CUDA, gloo
    otherwise); ``device="cuda"`` becomes ``cuda:LOCAL_RANK``. Without WORLD_SIZE (or with 1):
    a single process, nothing to join.
    """
    device = torch.device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
    if world <= 1:
        return Dist(), device
    if not torch.distributed.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    owns = False
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    return Dist(rank=torch.distributed.get_rank(), world=torch.distributed.get_world_size(), local_rank=local,
                owns_group=owns), device


def resolve_micro_batches(requested: int | None, saved: int | None, world: int, batch_size: int) -> int:
    """M, the micro-batches per step: the checkpoint's on resume, else ``requested``, else ``world``.

    Raises ValueError unless W divides M and M divides the global batch."""
    if saved is not None and requested is not None and requested != saved:
        raise ValueError(f"the checkpoint was written with micro_batches={saved}; resume with the same (got {requested})")
    m = saved if saved is not None else (requested if requested is not None else world)
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"micro_batches must be an integer >= 1, got {m!r}")
    if m % world:
        raise ValueError(f"micro_batches={m} must be a multiple of the number of processes ({world}): each rank "
                         f"takes micro_batches / world of every step's micro-batches")
    if batch_size % m:
        raise ValueError(f"data.batch_size={batch_size} must be a multiple of micro_batches={m}")
    return m


def local_micro_batches(m: int, rank: int, world: int) -> range:
    """The micro-batch indices j (of 0..m-1) that ``rank`` makes at every step."""
    per = m // world
    return range(rank * per, (rank + 1) * per)


def micro_batch_stream(cfg, start_step: int, m: int, local: range):
    """For steps ``start_step, ...``: ``[(j, batch) for j in local]``, batch j of step k being batch
    ``k m + j`` of the synthetic stream with ``batch_size / m`` pairs per batch."""
    import dataclasses

    from mcgr.synth.dataset import SynthPairs
    from mcgr.train.data import dataset_kwargs

    kw = dataset_kwargs(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=cfg.data.batch_size // m)))
    ds = SynthPairs(seed=cfg.seed, **kw)
    k = start_step
    while True:
        yield [(j, ds.batch(k * m + j)) for j in local]
        k += 1
