"""The local engine of an archive run: one input through the pipeline into a staged result folder
(:func:`process_item`, :func:`stage_result`; also what each Ray worker runs), committed in input
order, serially (:func:`run_local`) or with the stages overlapped (:func:`run_overlapped`): a
bounded prefetch reader and a write-behind writer around the networks, so that reading, decoding
and masking the next image and writing the previous one's outputs run beside the segmentor instead
of before and after it.

    reader thread          main thread                 writer thread
    read, resample,   ->   segmentor (+ TT-GPR)   ->   probability, detections, write_outputs,
    breast mask, grid      (Pipeline.network)          .done, manifest line, rename (commit)
    (Pipeline.prepare)

Both queues are bounded (``prefetch`` prepared images, ``write_behind`` finished ones): a stage
that runs ahead blocks until the next one takes its work, so memory holds at most
``prefetch + write_behind + 2`` images whatever the archive's size. Commits happen in input order,
on the writer thread only. A bad input is a record with its error, never an exception. On Ctrl-C
(or SIGTERM, which the CLI turns into one) the reader stops, the writer finishes and commits the
images whose networks already ran, and the interrupt goes on; if the writer itself is cut short,
the staging protocol of :mod:`mcgr.archive` still holds (a result folder is complete or absent)
and ``--resume`` redoes what is missing.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Callable, Iterable, Iterator

from mcgr._digest import file_sha256
from mcgr.archive.inputs import InputItem
from mcgr.archive.layout import DONE, STAGING
from mcgr.archive.store import commit, committed_in_run, fsync_write, is_complete, read_hashed, result_identity

_UMASK = os.umask(0o022)
os.umask(_UMASK)


# ---------------------------------------------------------------- one input

def _settings_line(settings: dict) -> dict:
    from mcgr.io.writers import DEFAULT_OUTPUTS, output_set

    line = {k: settings.get(k) for k in ("refine", "spacing", "device", "backend", "engine", "threads", "models",
                                         "operating_point")}
    line["outputs"] = list(output_set(settings.get("outputs") or DEFAULT_OUTPUTS))  # always explicit: an identity
    return line


def process_item(item: InputItem, pipeline, out: Path, settings: dict, run_id: str) -> dict:
    """Run ``pipeline`` on one input and stage its outputs under ``out/.mcgr-staging``.

    Returns the input's record (the manifest line): input, key, status ("ok" or "error"), error,
    timings (s per stage, plus "write" and "total"), settings, spacing_mm, refined_fraction,
    n_detections, n_clusters, files ({name: bytes}), result_id, run_id, worker; and "staging" (the
    staged folder, removed from the line at commit). Never raises for a bad input.
    """
    t0 = time.perf_counter()
    rec = new_record(item, settings, run_id)
    if item.error is not None:
        rec["error"] = item.error
        return rec
    try:
        spacing = item.spacing if item.spacing is not None else settings.get("spacing")
        res, digest = read_hashed(item.path, lambda: pipeline(item.path, spacing=spacing,
                                                               refine=bool(settings.get("refine", True)),
                                                               canonical=True))
        return stage_result(rec, item, res, out, t0, input_sha256=digest)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - one bad input is reported, the archive goes on
        return record_error(rec, exc, t0)


def new_record(item: InputItem, settings: dict, run_id: str) -> dict:
    """The record of ``item`` before it is processed (status "error" until staged)."""
    return {"input": item.path, "key": item.key, "status": "error", "error": None,
            "settings": _settings_line(settings), "identity": result_identity(settings, item), "run_id": run_id,
            "worker": f"{socket.gethostname()}:{os.getpid()}", "timings": {}}


def record_error(rec: dict, exc: BaseException, t0: float) -> dict:
    """``rec`` marked failed by ``exc`` (one line; a traceback tail when mcgr or torch failed)."""
    rec["error"] = describe_error(exc)
    from mcgr.io import MammogramReadError

    if not isinstance(exc, (ValueError, OSError, MammogramReadError)):
        # not a bad file but a failure inside mcgr or torch: keep where it happened
        rec["detail"] = "".join(traceback.format_exception(exc, limit=-3)).strip()[-2000:]
    rec["timings"]["total"] = round(time.perf_counter() - t0, 4)
    return rec


def stage_result(rec: dict, item: InputItem, res, out: Path, t0: float, *, input_sha256: str) -> dict:
    """Write the pipeline result ``res`` of ``item`` and its ``.done`` into a fresh folder under
    ``out/.mcgr-staging``; return ``rec`` completed ("ok", files, result_id, "staging"; and
    "failed_outputs", {kind: reason}, when an output could not be made from this input).
    ``input_sha256``: the digest of the bytes the result was computed from
    (:func:`mcgr.archive.store.read_hashed`). Raises on a write failure, leaving no staged folder behind."""
    timings = {k: round(float(v), 4) for k, v in res.timings.items()}
    root = Path(out) / STAGING
    root.mkdir(exist_ok=True)  # never parents: an --out that vanished is not silently made again
    staging = Path(tempfile.mkdtemp(dir=root, prefix="r-"))
    try:
        stem = item.key.rsplit("/", 1)[-1]
        t = time.perf_counter()
        from mcgr.io import write_outputs

        written = write_outputs(staging, stem, res.mammogram, res.prob, res.mask, res.detections, res.clusters,
                                uncertainty=res.uncertainty, excluded={"pectoral": res.pectoral},
                                outputs=rec["settings"]["outputs"],
                                provenance={k: rec["settings"].get(k) for k in ("models", "operating_point")})
        timings["write"] = round(time.perf_counter() - t, 4)
        # temporary names are created private (0600/0700); results are for the archive's readers
        os.chmod(staging, 0o777 & ~_UMASK)
        files = {}
        for e in os.scandir(staging):
            if e.is_file():
                os.chmod(e.path, 0o666 & ~_UMASK)
                files[e.name] = e.stat().st_size
        rec.update(status="ok", spacing_mm=float(res.spacing_mm),
                   spacing_from=getattr(res.mammogram, "spacing_source", None),
                   refined_fraction=round(float(res.refined_fraction), 6), n_detections=len(res.detections),
                   n_clusters=len(res.clusters), files=files, result_id=uuid.uuid4().hex)
        rec["sha256"] = {name: file_sha256(staging / name) for name in files}
        rec["input_sha256"] = input_sha256
        failed = dict(getattr(written, "failed", {}) or {})
        if failed:
            rec["failed_outputs"] = failed
        notes = [str(n) for n in (getattr(res.mammogram, "meta", None) or {}).get("warnings") or ()]
        notes += [f"no {kind} output: {why}" for kind, why in failed.items()]
        if notes:
            rec["warnings"] = notes
        timings["total"] = round(time.perf_counter() - t0, 4)
        rec["timings"] = timings
        fsync_write(staging / DONE, json.dumps(rec, sort_keys=True) + "\n")
        os.chmod(staging / DONE, 0o666 & ~_UMASK)
        rec["staging"] = str(staging)
        staging = None
        return rec
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def describe_error(exc: BaseException) -> str:
    """One line for the manifest and the terminal."""
    from mcgr.io import MammogramReadError

    if isinstance(exc, MammogramReadError):
        msg = str(exc)
        if "no pixel spacing" in exc.reason:
            msg += " (use --spacing MM, or a spacing column in a manifest)"
        return msg
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if not isinstance(exc, ValueError) else first or type(exc).__name__


# ---------------------------------------------------------------- the local engine

class Tally:
    """Counts of a run and the terminal report of each failure."""

    def __init__(self, bar=None, quiet: bool = False):
        self.ok = self.error = self.skipped = self.complete = 0
        self.bar = bar
        self.quiet = quiet

    def add(self, rec: dict) -> None:
        st = rec.get("status")
        for note in rec.get("warnings") or ():
            self._say(f"mcgr infer: warning: {note}")
        if st == "ok":
            self.ok += 1
        elif st == "skipped":
            self.skipped += 1
        else:
            self.error += 1
            where = rec.get("input") or rec.get("key")
            self._say(f"mcgr infer: {where}: {rec.get('error')}")
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(ok=self.ok, failed=self.error, refresh=False)

    def add_complete(self) -> None:
        self.complete += 1
        if self.bar is not None:
            self.bar.update(1)

    def _say(self, msg: str) -> None:
        import sys

        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr)

    @property
    def total(self) -> int:
        return self.ok + self.error + self.skipped + self.complete


def run_local(items: Iterable[InputItem], pipeline, run, tally: Tally) -> Tally:
    """Process ``items`` one by one in this process (the serial local engine); ``run``: the
    :class:`mcgr.archive.run_folder.RunFolder` open for the run."""
    for item in items:
        if run.resume and is_complete(run.out, item, run.settings):
            tally.add_complete()
            continue
        dup = committed_in_run(run.out, item, run.run_id)
        if dup is not None:
            tally.add(commit(dict(process_item(InputItem(item.path, item.key, item.spacing, item.origin, dup["error"]),
                                               None, run.out, run.settings, run.run_id), status=dup["status"]),
                             run.out, run.manifest, run.run_id))
            continue
        rec = process_item(item, pipeline, run.out, run.settings, run.run_id)
        tally.add(commit(rec, run.out, run.manifest, run.run_id))
    return tally


# ---------------------------------------------------------------- overlapped stages

_END = object()


class _Failed:
    """An exception raised inside a stage thread, carried to the thread that reads its output."""

    def __init__(self, exc: BaseException):
        self.exc = exc


class Prefetcher:
    """Run ``load(item)`` on a background thread, at most ``depth`` results ahead of the consumer.

    Iterating yields ``(item, value, error)`` in the order of ``items``: ``value = load(item)``, or
    ``error`` the exception it raised (``value`` None). ``load`` returning is what the bound counts:
    the thread blocks once ``depth`` results wait. An exception from iterating ``items`` itself
    ends the iteration by re-raising it in the consumer. ``close()`` stops the thread (it finishes
    the ``load`` in progress) and is idempotent.
    """

    def __init__(self, items: Iterable, load: Callable, depth: int = 1):
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
        self._items = items
        self._load = load
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mcgr-prefetch", daemon=True)
        self._thread.start()

    def _put(self, obj) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(obj, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._items:
                if self._stop.is_set():
                    return
                try:
                    out = (item, self._load(item), None)
                except Exception as exc:  # noqa: BLE001 - reported with its item
                    out = (item, None, exc)
                if not self._put(out):
                    return
        except BaseException as exc:  # noqa: BLE001 - the input listing failed: the consumer re-raises
            self._put(_Failed(exc))
            return
        self._put(_END)

    def __iter__(self) -> Iterator[tuple]:
        while True:
            obj = self._q.get()
            if obj is _END:
                return
            if isinstance(obj, _Failed):
                raise obj.exc
            yield obj

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a put waiting on a full queue
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        self._thread.join()


class WriteBehind:
    """One writer thread that runs submitted jobs in submission order.

    ``submit(fn, *args)`` returns at once while fewer than ``depth`` jobs wait, and blocks otherwise
    (back-pressure). A job that raises stops the writer: the exception is re-raised in the submitting
    thread by the next ``submit`` or by ``close`` (jobs catch per-input failures themselves; what
    escapes is a failure of the run, e.g. its manifest cannot be written). ``close(drain=True)``
    runs every submitted job first; ``close(drain=False)`` lets the job in progress finish and drops
    the rest.
    """

    def __init__(self, depth: int = 1):
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._abort = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mcgr-write-behind", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._q.get()
            if job is _END:
                return
            if self._abort.is_set() or self._error is not None:
                continue
            fn, args = job
            try:
                fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the submitting thread
                self._error = exc

    def _check(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def submit(self, fn: Callable, *args) -> None:
        self._check()
        if not self._thread.is_alive():
            raise RuntimeError("the writer is closed")
        while True:
            try:
                self._q.put((fn, args), timeout=0.1)
                return
            except queue.Full:
                self._check()

    def close(self, drain: bool = True) -> None:
        if not drain:
            self._abort.set()
        if self._thread.is_alive():
            while True:
                try:
                    self._q.put(_END, timeout=0.1)
                    break
                except queue.Full:
                    if not self._thread.is_alive():
                        break
            self._thread.join()
        self._check()


class _OverlappedStages:
    """The three stages of :func:`run_overlapped` for one run: :meth:`load` (the reader thread),
    :meth:`network` (the main thread) and :meth:`finish_and_commit` (the writer thread)."""

    def __init__(self, pipeline, run, tally):
        self.pipeline, self.run, self.tally = pipeline, run, tally
        self.refine = bool(run.settings.get("refine", True))
        self.lock = threading.Lock()

    def load(self, item):
        """``"complete"`` (resumed and verified), None (known bad), or ``(t0, prepared, digest)``."""
        run = self.run
        if run.resume and is_complete(run.out, item, run.settings):
            return "complete"
        if item.error is not None:
            return None
        t0 = time.perf_counter()
        spacing = item.spacing if item.spacing is not None else run.settings.get("spacing")
        # the input's digest is of the bytes this read saw (a file replaced later is redone by --resume)
        prep, digest = read_hashed(item.path, lambda: self.pipeline.prepare(item.path, spacing=spacing))
        return t0, prep, digest

    def network(self, item, loaded, exc, writer: "WriteBehind") -> None:
        """Run the networks on one loaded input and hand it (or its failure) to the writer."""
        run = self.run
        if loaded == "complete":
            with self.lock:
                self.tally.add_complete()
            return
        rec = new_record(item, run.settings, run.run_id)
        if item.error is not None:
            rec["error"] = item.error
            writer.submit(self.finish_and_commit, item, rec, 0.0, None, None, None)
            return
        t0 = loaded[0] if loaded is not None else time.perf_counter()
        if exc is not None:
            writer.submit(self.finish_and_commit, item, rec, t0, None, None, exc)
            return
        try:
            fr = self.pipeline.network(loaded[1], refine=self.refine)
        except Exception as e:  # noqa: BLE001 - one bad input is reported, the archive goes on
            writer.submit(self.finish_and_commit, item, rec, t0, None, None, e)
            return
        writer.submit(self.finish_and_commit, item, rec, t0, loaded[1], fr, None, loaded[2])

    def finish_and_commit(self, item, rec, t0, prep, fr, exc, digest=None) -> None:
        """Post-process, stage and commit one input (or record its failure)."""
        run = self.run
        if rec["error"] is None and exc is None:
            try:
                res = self.pipeline.finish(prep, fr)
                # "total" is this input's own work (the sum of its stages), not its time in the queues
                busy = sum(float(v) for v in res.timings.values())
                rec = stage_result(rec, item, res, run.out, time.perf_counter() - busy, input_sha256=digest)
            except Exception as e:  # noqa: BLE001 - one bad input is reported, the archive goes on
                rec = record_error(rec, e, t0)
        elif exc is not None:
            rec = record_error(rec, exc, t0)
        done = commit(rec, run.out, run.manifest, run.run_id)
        with self.lock:
            self.tally.add(done)


def _close_after_stop(writer: "WriteBehind") -> None:
    """The run stopped: the networks' work already done is written and committed; a second Ctrl-C
    stops after the input being written."""
    try:
        writer.close(drain=True)
    except KeyboardInterrupt:
        writer.close(drain=False)
        raise
    except Exception:  # noqa: BLE001 - the exception that stopped the run is the one to report
        pass


def run_overlapped(items, pipeline, run, tally, prefetch: int = 1, write_behind: int = 1) -> object:
    """Process ``items`` with the local engine's stages overlapped (see the module docstring).

    Same records, manifest lines, result folders, per-input errors and ``--resume`` behaviour as
    :func:`run_local`; ``tally`` is updated as each input is committed.
    """
    stages = _OverlappedStages(pipeline, run, tally)
    reader = Prefetcher(items, stages.load, depth=prefetch)
    writer = WriteBehind(depth=write_behind)
    try:
        for item, loaded, exc in reader:
            stages.network(item, loaded, exc, writer)
            del loaded  # the prepared image lives on in the writer's queue only
    except BaseException:
        reader.close()
        _close_after_stop(writer)
        raise
    reader.close()
    writer.close(drain=True)
    return tally
