"""The Ray engine of ``mcgr infer`` (``--engine ray``): the per-image work of the local engine, run by
Ray actors that each hold the models (one per GPU, or one per ``--cpus-per-worker`` CPUs).

* Back-pressure: the driver pulls inputs from the streamed iterator only while some actor has fewer
  than ``IN_FLIGHT_PER_WORKER`` tasks queued, so memory and queued work stay bounded by the pool,
  never by the archive.
* Results are written by the workers (into ``OUT/.mcgr-staging`` on storage every node sees at the
  same path); the driver commits each one exactly as the local engine does (manifest line, then
  the folder moved into place), so the manifest and ``--resume`` mean the same on both engines.
* A bad input comes back as an error record; a worker that dies (out of memory, a crashed node)
  fails only the inputs it held and is replaced, up to ``MAX_RESTARTS`` times per worker.

The models travel through Ray's object store as safetensors bytes plus their configs (no model
files need to exist on the workers); mcgr itself must be installed on every node.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from mcgr.archive.engine import Tally, process_item
from mcgr.archive.inputs import InputItem
from mcgr.archive.layout import ArchiveError
from mcgr.archive.run_folder import RunFolder
from mcgr.archive.store import commit, is_complete

IN_FLIGHT_PER_WORKER = 2  # one running + one queued: the worker never waits for the driver
MAX_RESTARTS = 2


def model_blobs(models: dict) -> dict:
    """``{kind: {"config": UNetConfig dict, "weights": safetensors bytes}}`` for the object store."""
    from safetensors.torch import save

    return {k: {"config": m.cfg.to_dict(), "weights": save({n: t.detach().contiguous().cpu() for n, t in m.state_dict().items()})}
            for k, m in models.items()}


def models_from_blobs(blobs: dict) -> dict:
    from safetensors.torch import load

    from mcgr.models.checkpoint import load_state_into
    from mcgr.models.unet import UNet, UNetConfig

    out = {}
    for k, b in blobs.items():
        m = UNet(UNetConfig.from_dict(b["config"], source=f"{k} model config"))
        load_state_into(m, load(b["weights"]), f"{k} model weights")
        out[k] = m.eval()
    return out


class InferenceWorker:
    """A Ray actor holding one :class:`~mcgr.infer.pipeline.Pipeline` (models loaded once)."""

    def __init__(self, blobs: dict, settings: dict, out: str, run_id: str, device: str, threads: int,
                 tile: int, overlap: float, config: dict):
        import torch

        from mcgr.infer.pipeline import Pipeline
        from mcgr.infer.ttgpr import TTGPRConfig

        torch.set_num_threads(max(1, int(threads)))
        models = models_from_blobs(blobs)
        self.pipe = Pipeline(models["seg"], models.get("rf"), config=TTGPRConfig.from_dict(config), device=device,
                             backend=settings["backend"], tile=tile, overlap=overlap,
                             runtime=settings.get("runtime", "torch"))
        self.settings = settings
        self.out = Path(out)
        self.run_id = run_id

    def ready(self) -> int:
        return os.getpid()

    def run(self, item: InputItem) -> dict:
        return process_item(item, self.pipe, self.out, self.settings, self.run_id)


def _error_record(item: InputItem, settings: dict, run_id: str, message: str) -> dict:
    rec = process_item(InputItem(path=item.path, key=item.key, origin=item.origin, error=message), None,
                       Path("."), settings, run_id)
    rec["worker"] = "ray"
    return rec


def _plan(ray, address, device: str, gpus_per_worker, workers, cpus_per_worker: int) -> tuple[float, int]:
    res = ray.cluster_resources()
    n_gpu, n_cpu = float(res.get("GPU", 0)), float(res.get("CPU", 0))
    g = gpus_per_worker
    if g is None:
        g = 1.0 if (device == "auto" or device.startswith("cuda")) and n_gpu >= 1 else 0.0
    if device.startswith("cuda") and g == 0:
        raise ArchiveError("--device cuda with --engine ray: the Ray cluster has no GPU" if n_gpu == 0 else
                           "--device cuda with --engine ray needs --num-gpus-per-worker > 0")
    if workers is None:
        workers = int(n_gpu // g) if g > 0 else int(n_cpu // cpus_per_worker)
        if workers < 1:
            raise ArchiveError(f"the Ray cluster ({n_cpu:g} CPU, {n_gpu:g} GPU) cannot hold one worker of "
                               f"{cpus_per_worker} CPU and {g:g} GPU")
    need_gpu, need_cpu = workers * g, workers * cpus_per_worker
    if need_gpu > n_gpu or need_cpu > n_cpu:
        msg = (f"{workers} Ray workers need {need_cpu:g} CPU and {need_gpu:g} GPU; the cluster has {n_cpu:g} CPU "
               f"and {n_gpu:g} GPU")
        if address is None:
            raise ArchiveError(msg + ": lower --workers, --cpus-per-worker or --num-gpus-per-worker")
        print(f"mcgr infer: warning: {msg}; the rest wait for the autoscaler", file=sys.stderr)
    return g, workers


def run_ray(items, models: dict, run: RunFolder, tally: Tally, *, address=None, device: str = "auto",
            gpus_per_worker=None, workers=None, cpus_per_worker: int = 1, tile: int = 256, overlap: float = 0.25,
            config=None) -> Tally:
    """Process ``items`` on Ray: connect to ``address`` (None: the Ray instance this process already
    started, else a new local one), start ``workers`` actors and stream the inputs through them."""
    try:
        import ray
        from ray.exceptions import RayActorError, RayError
    except ImportError:
        raise ArchiveError("--engine ray needs Ray: pip install 'mcgr[distributed]'") from None
    from mcgr.infer.ttgpr import TTGPRConfig

    started = False
    if not ray.is_initialized():
        try:
            ray.init(address=address or "local", include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ArchiveError(f"cannot start or reach Ray{' at ' + address if address else ''}: {e}") from None
        started = True
    try:
        g, n_workers = _plan(ray, address, device, gpus_per_worker, workers, cpus_per_worker)
        actor_cls = ray.remote(num_cpus=cpus_per_worker, num_gpus=g)(InferenceWorker)
        blobs = ray.put(model_blobs(models))
        wdev = "cuda" if g > 0 else "cpu"
        settings = dict(run.settings, device=wdev)
        cfg = (config or TTGPRConfig()).to_dict()

        def start():
            return actor_cls.remote(blobs, settings, str(run.out.resolve()), run.run_id, wdev, cpus_per_worker,
                                    tile, overlap, cfg)

        actors = [start() for _ in range(n_workers)]
        try:
            ray.get(actors[0].ready.remote())
        except RayError as e:
            raise ArchiveError(f"the Ray workers cannot start: {_cause(e)}") from None
        _drive(ray, RayActorError, RayError, iter(items), actors, start, run, tally, settings)
    finally:
        if started:
            ray.shutdown()
    return tally


def _cause(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__


def _drive(ray, RayActorError, RayError, items, actors: list, start, run: RunFolder, tally: Tally, settings: dict) -> None:
    load = [0] * len(actors)
    restarts = [0] * len(actors)
    in_flight: dict = {}
    exhausted = False
    try:
        while True:
            while not exhausted:
                free = [i for i, a in enumerate(actors) if a is not None and load[i] < IN_FLIGHT_PER_WORKER]
                if not free:
                    break
                item = next(items, None)
                if item is None:
                    exhausted = True
                    break
                if run.resume and is_complete(run.out, item, run.settings):
                    tally.add_complete()
                    continue
                if item.error is not None:
                    tally.add(commit(_error_record(item, settings, run.run_id, item.error), run.out, run.manifest, run.run_id))
                    continue
                slot = min(free, key=lambda i: load[i])
                in_flight[actors[slot].run.remote(item)] = (slot, actors[slot], item)
                load[slot] += 1
            if not in_flight:
                if exhausted:
                    break
                raise ArchiveError("every Ray worker died repeatedly; the inputs not yet done are left for --resume")
            done, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in done:
                slot, actor, item = in_flight.pop(ref)
                load[slot] -= 1
                try:
                    rec = ray.get(ref)
                except RayActorError as e:
                    rec = _error_record(item, settings, run.run_id, f"the Ray worker died while on this input: {_cause(e)}")
                    if actors[slot] is actor:
                        if restarts[slot] < MAX_RESTARTS:
                            restarts[slot] += 1
                            actors[slot] = start()
                        else:
                            actors[slot] = None
                except RayError as e:
                    rec = _error_record(item, settings, run.run_id, f"Ray task failed: {_cause(e)}")
                tally.add(commit(rec, run.out, run.manifest, run.run_id))
    finally:
        for a in actors:
            if a is not None:
                ray.kill(a)
