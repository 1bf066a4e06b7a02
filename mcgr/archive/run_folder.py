"""The output folder of one archive run (:class:`RunFolder`): locked while the run writes into it,
checked (a previous run there needs ``resume``), its manifest filtered to the verified results when
resuming, its ``run.json`` written, and everything temporary removed however the run ends.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
import uuid
from pathlib import Path

from mcgr.archive.inputs import check_key
from mcgr.archive.layout import LOCK, MANIFEST, RUN_FILE, STAGING, ArchiveError
from mcgr.archive.store import RESULT_SETTINGS, Manifest, fsync_write, input_unchanged, verify_result


class RunFolder:
    """The output folder of a run, locked while the run writes into it.

    ``open()`` checks the folder (a previous run there needs ``resume=True``), rewrites the manifest
    keeping only verified results when resuming, clears stale staging, writes ``run.json`` and opens
    the manifest for appending. Results whose identity (:func:`mcgr.archive.store.result_identity`)
    differs from this run's settings are redone input by input, and their earlier lines dropped when
    the run closes.

    The lock is an ``flock`` on the output folder itself (no lock file that could be deleted under a
    running run, or outlive it). Every temporary (``*.tmp``, the staging folder) is removed on the
    way out, whatever stopped the run; a SIGKILL leaves the staging folder, which the next run in
    the folder removes first. A run that ends before its first manifest line (refused, or stopped
    before any input finished) removes what it created: ``run.json``, the empty manifest, and the
    output folder itself when it made it and it is empty.
    """

    def __init__(self, out, settings: dict, resume: bool):
        self.out = Path(out)
        self.settings = settings
        self.resume = resume
        self.run_id = uuid.uuid4().hex
        self.kept = 0
        self.dropped = 0
        self.manifest: Manifest | None = None
        self._lock: int | None = None
        self._made_out = False
        self._previous = False
        self._run_json_before: bytes | None = None
        self.discard = False  # set by the caller when the run found nothing to do: closed like a failure

    def open(self) -> "RunFolder":
        out = self.out
        if out.exists() and not out.is_dir():
            raise ArchiveError(f"--out {out} exists and is not a folder")
        try:
            self._made_out = not out.exists()
            out.mkdir(parents=True, exist_ok=True)
            fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise ArchiveError(f"--out {out} cannot be written: {e.strerror or e}"
                               + (f" ({e.filename})" if e.filename and str(e.filename) != str(out) else "")) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            self._made_out = False
            raise ArchiveError(f"another mcgr infer is writing into {out}; wait for it or choose another --out") from None
        self._lock = fd
        try:
            old_lock = out / LOCK  # the lock file of earlier versions: the folder itself is locked now
            if old_lock.is_file() and old_lock.stat().st_size == 0:
                old_lock.unlink()
            self._prepare()
        except OSError as e:
            self.close(failed=True)
            raise ArchiveError(f"--out {out} cannot be written: {e.strerror or e}") from None
        except BaseException:
            self.close(failed=True)
            raise
        return self

    def _prepare(self) -> None:
        out = self.out
        mpath, rpath = out / MANIFEST, out / RUN_FILE
        previous = mpath.exists() or rpath.exists()
        self._previous = previous
        if previous and not self.resume:
            raise ArchiveError(f"{out} holds a previous run ({MANIFEST}): pass --resume to continue it, "
                               f"or choose another --out")
        if previous:
            try:
                self._run_json_before = rpath.read_bytes()
            except OSError:
                self._run_json_before = None
            self._filter_manifest(mpath)
        shutil.rmtree(out / STAGING, ignore_errors=True)
        (out / STAGING).mkdir()
        doc = {"settings": self.settings, "run_id": self.run_id, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "resumed": bool(previous), "result_settings": list(RESULT_SETTINGS)}
        from mcgr import __version__

        doc["mcgr_version"] = __version__
        _replace_text(rpath, json.dumps(doc, indent=1, sort_keys=True) + "\n")
        self.manifest = Manifest(mpath)

    def _filter_manifest(self, mpath: Path, drop_ids: set | None = None) -> None:
        """Keep the lines of verified results (and not of ``drop_ids``); everything else is redone
        (streamed, O(1) memory). The temporary copy never outlives a failure (a full disk)."""
        if not mpath.exists():
            return
        tmp = mpath.with_name(mpath.name + ".tmp")
        kept = dropped = 0
        try:
            with open(mpath, encoding="utf-8", errors="replace") as src, open(tmp, "w", encoding="utf-8") as dst:
                for line in src:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        dropped += 1
                        continue
                    if drop_ids is not None:
                        ok = isinstance(rec, dict) and rec.get("result_id") not in drop_ids
                    else:
                        ok = (isinstance(rec, dict) and rec.get("status") == "ok" and isinstance(rec.get("key"), str)
                              and check_key(rec["key"]) is None and verify_result(self.out / rec["key"], rec)
                              and input_unchanged(rec))
                    if ok:
                        dst.write(json.dumps(rec, sort_keys=True) + "\n")
                        kept += 1
                    else:
                        dropped += 1
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp, mpath)
        finally:
            if tmp.exists():
                tmp.unlink()
        if drop_ids is None:
            self.kept, self.dropped = kept, dropped

    def close(self, failed: bool = False) -> None:
        """Close the manifest and unlock; ``failed``: the run stopped on an exception."""
        lines = 0
        if self.manifest is not None:
            lines = self.manifest.lines
            superseded = self.manifest.superseded
            self.manifest.close()
            self.manifest = None
            if superseded:
                try:
                    self._filter_manifest(self.out / MANIFEST, drop_ids=superseded)
                except OSError:
                    pass  # the next --resume drops them: their result ids no longer match their folders
        if self._lock is not None:
            out = self.out
            shutil.rmtree(out / STAGING, ignore_errors=True)
            for tmp in (out / (MANIFEST + ".tmp"), out / (RUN_FILE + ".tmp")):
                try:
                    tmp.unlink()
                except OSError:
                    pass
            if (failed or self.discard) and lines == 0:
                self._undo()
            os.close(self._lock)
            self._lock = None

    def _undo(self) -> None:
        """Remove what a run that never wrote a manifest line created (it leaves nothing behind)."""
        out = self.out
        mpath, rpath = out / MANIFEST, out / RUN_FILE
        try:
            if not self._previous:
                for f in (mpath, rpath):
                    if f.exists() and (f is rpath or f.stat().st_size == 0):
                        f.unlink()
                if self._made_out and not any(os.scandir(out)):
                    out.rmdir()
            elif self._run_json_before is not None and rpath.exists():
                _replace_text(rpath, self._run_json_before.decode("utf-8", "replace"))
        except OSError:
            pass

    def __enter__(self):
        return self.open()

    def __exit__(self, exc_type, exc, tb):
        self.close(failed=exc_type is not None)


def _replace_text(path: Path, text: str) -> None:
    """``path`` replaced whole by ``text`` (temp file, fsync, rename); the temporary never outlives a failure."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fsync_write(tmp, text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
