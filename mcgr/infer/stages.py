"""The local engine's stages overlapped: a bounded prefetch reader and a write-behind writer around
the networks, so that reading, decoding and masking the next image and writing the previous one's
outputs run beside the segmentor instead of before and after it.

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
the staging protocol of :mod:`mcgr.infer.archive` still holds (a result folder is complete or
absent) and ``--resume`` redoes what is missing.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Iterable, Iterator

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


def run_overlapped(items, pipeline, run, tally, prefetch: int = 1, write_behind: int = 1) -> object:
    """Process ``items`` with the local engine's stages overlapped (see the module docstring).

    Same records, manifest lines, result folders, per-input errors and ``--resume`` behaviour as
    :func:`mcgr.infer.archive.run_local`; ``tally`` is updated as each input is committed.
    """
    from mcgr.infer import archive

    settings, out, run_id = run.settings, run.out, run.run_id
    refine = bool(settings.get("refine", True))
    lock = threading.Lock()

    def load(item):
        if run.resume and archive.is_complete(out, item, settings.get("outputs")):
            return "complete"
        if item.error is not None:
            return None
        t0 = time.perf_counter()
        spacing = item.spacing if item.spacing is not None else settings.get("spacing")
        return t0, pipeline.prepare(item.path, spacing=spacing)

    def finish_and_commit(item, rec, t0, prep, fr, exc):
        if rec["error"] is None and exc is None:
            try:
                res = pipeline.finish(prep, fr)
                # "total" is this input's own work (the sum of its stages), not its time in the queues
                busy = sum(float(v) for v in res.timings.values())
                rec = archive.stage_result(rec, item, res, out, time.perf_counter() - busy)
            except Exception as e:  # noqa: BLE001 - one bad input is reported, the archive goes on
                rec = archive.record_error(rec, e, t0)
        elif exc is not None:
            rec = archive.record_error(rec, exc, t0)
        done = archive.commit(rec, out, run.manifest, run_id)
        with lock:
            tally.add(done)

    reader = Prefetcher(items, load, depth=prefetch)
    writer = WriteBehind(depth=write_behind)
    try:
        for item, loaded, exc in reader:
            if loaded == "complete":
                with lock:
                    tally.add_complete()
                continue
            rec = archive.new_record(item, settings, run_id)
            if item.error is not None:
                rec["error"] = item.error
                writer.submit(finish_and_commit, item, rec, 0.0, None, None, None)
                continue
            t0 = loaded[0] if loaded is not None else time.perf_counter()
            if exc is not None:
                writer.submit(finish_and_commit, item, rec, t0, None, None, exc)
                continue
            prep = loaded[1]
            try:
                fr = pipeline.network(prep, refine=refine)
            except Exception as e:  # noqa: BLE001 - one bad input is reported, the archive goes on
                writer.submit(finish_and_commit, item, rec, t0, None, None, e)
                continue
            writer.submit(finish_and_commit, item, rec, t0, prep, fr, None)
            del prep, fr, loaded
    except BaseException:
        reader.close()
        try:
            writer.close(drain=True)  # the networks' work already done is written and committed
        except KeyboardInterrupt:
            writer.close(drain=False)  # a second Ctrl-C: stop after the input being written
            raise
        except Exception:  # noqa: BLE001 - the exception that stopped the run is the one to report
            pass
        raise
    reader.close()
    writer.close(drain=True)
    return tally
