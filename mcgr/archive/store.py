"""Result folders of an archive run: what a complete result is (its ``.done``, sizes and digests,
the identity of the settings it was computed with), the run's manifest, and the commit of one
input (manifest line, then the staged folder renamed into place). The protocol is in
:mod:`mcgr.archive`.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

from mcgr._digest import file_sha256
from mcgr.archive.inputs import InputItem
from mcgr.archive.layout import DONE, RESULT_SUFFIXES, STAGING, ArchiveError


def read_done(folder: Path) -> dict | None:
    """The ``.done`` record of a result folder, or None when absent or unreadable."""
    try:
        obj = json.loads((Path(folder) / DONE).read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def input_unchanged(record: dict) -> bool:
    """Whether the input file of ``record`` still holds the content its result was computed from
    (``input_sha256``); a missing input cannot be redone, so its result stands."""
    path, digest = record.get("input"), record.get("input_sha256")
    if not isinstance(path, str) or not isinstance(digest, str):
        return False
    try:
        return file_sha256(path) == digest
    except FileNotFoundError:
        return True
    except OSError:
        return False


def verify_result(folder: Path, record: dict) -> bool:
    """Whether ``folder`` holds exactly the result ``record`` describes: its ``.done`` names the same
    input and result id, and every listed file exists with the recorded size and sha256."""
    done = read_done(folder)
    if done is None or done.get("result_id") != record.get("result_id") or done.get("input") != record.get("input"):
        return False
    files, sums = done.get("files"), done.get("sha256")
    if not isinstance(files, dict) or not files or not isinstance(sums, dict) or set(sums) != set(files):
        return False
    for name, size in files.items():
        p = Path(folder) / name
        try:
            if os.stat(p).st_size != size or file_sha256(p) != sums[name]:
                return False
        except OSError:
            return False
    return True


# The run settings that change a result (others, e.g. the device or the thread count, change only
# how fast it comes): with the input's content and its effective spacing they make a result's
# identity, which --resume compares. A new setting that changes results is one more name here.
RESULT_SETTINGS = ("refine", "models", "operating_point", "ttgpr", "tile", "overlap", "outputs")


def result_identity(settings: dict, item: InputItem) -> dict:
    """What decides ``item``'s result besides its content: the settings of ``RESULT_SETTINGS`` (the
    models by their weights' sha256) and the spacing the input is read at (its manifest row's, else
    the run's ``--spacing``, else None: the file's own, which its content hash covers)."""
    ident = {}
    for k in RESULT_SETTINGS:
        v = settings.get(k)
        if k == "models" and isinstance(v, dict):
            v = {kind: (m.get("sha256") if isinstance(m, dict) else m) for kind, m in sorted(v.items())}
        if k == "outputs":
            from mcgr.io.writers import DEFAULT_OUTPUTS, output_set

            v = list(output_set(v if v is not None else DEFAULT_OUTPUTS))
        ident[k] = v
    ident["spacing"] = item.spacing if item.spacing is not None else settings.get("spacing")
    return json.loads(json.dumps(ident, sort_keys=True))  # the form it has once read back from .done


def is_complete(out: Path, item: InputItem, settings: dict) -> bool:
    """Whether ``item``'s result folder under ``out`` is complete and verified, was computed from the
    input's present content, and has the identity ``settings`` give it now (used by --resume)."""
    if item.error is not None or not item.key:
        return False
    folder = Path(out) / item.key
    done = read_done(folder)
    return (done is not None and done.get("status") == "ok" and done.get("input") == item.path
            and done.get("identity") == result_identity(settings, item)
            and verify_result(folder, done) and input_unchanged(done))


def committed_in_run(out: Path, item: InputItem, run_id: str) -> dict | None:
    """What ``commit`` would say about ``item`` when its output folder already holds a result of this
    run (two inputs with one output name, or one input given twice), checked BEFORE computing it:
    ``{"status": "skipped" | "error", "error": why}``, or None when the input is to be computed."""
    if item.error is not None or not item.key:
        return None
    prev = read_done(Path(out) / item.key)
    if prev is None or prev.get("run_id") != run_id:
        return None
    if prev.get("input") == item.path:
        return {"status": "skipped", "error": "the same input was given twice; its result is already written"}
    return {"status": "error", "error": f"output folder {item.key!r} already holds the result of {prev.get('input')} "
            f"(two inputs map to one name: give them as a folder, or in a manifest with an id column)"}


def fsync_write(path: Path, text: str) -> None:
    """``text`` written to ``path``, flushed and fsynced (on disk before anything refers to it)."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


class InputChanged(ValueError):
    """The input file changed while it was being read: no result is made from a mix of two files."""


def read_hashed(path: str, read):
    """``(read(), sha256 of path)`` where the digest is of the bytes ``read`` saw: the file is hashed
    before it is read, and its identity (device, inode, size, mtime) must be the same before the
    hash and after the read; a file replaced or rewritten in between raises :class:`InputChanged`."""
    def ident():
        st = os.stat(path)
        return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns

    before = ident()
    digest = file_sha256(path)
    value = read()
    if ident() != before:
        raise InputChanged(f"{path} changed while it was being read; run again (or --resume) once it is complete")
    return value, digest


def is_result_folder(folder: Path) -> bool:
    """An mcgr result (possibly damaged: its ``.done`` lost), as opposed to a user's own folder: it
    holds only write_outputs' files for its stem, ``.done`` and hidden temporaries."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    stem = folder.name
    for e in os.scandir(folder):
        if e.name.startswith("."):
            continue
        if not e.is_file() or not any(e.name == stem + s for s in RESULT_SUFFIXES):
            return False
    return True


def _replace_dir(src: Path, dst: Path, trash_root: Path) -> None:
    """Move the staged folder ``src`` onto ``dst`` (replacing an earlier mcgr result there)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if dst.exists() or dst.is_symlink():
        if not is_result_folder(dst):
            raise OSError(f"{dst} exists and is not an mcgr result folder")
        old = trash_root / f"old-{uuid.uuid4().hex}"
        os.rename(dst, old)
    os.rename(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class Manifest:
    """The run's ``manifest.jsonl``, appended one whole line at a time (flushed and fsynced, so a
    line is on disk before its result folder is moved into place).

    Before each line it checks that the manifest file it holds open is still the one at its path (the
    output folder deleted, moved or replaced during the run): if not, :class:`~mcgr.archive.layout.ArchiveError`, which
    stops the run with an error exit instead of writing results nobody will find.
    ``superseded``: result ids of earlier runs' results this run replaced (their lines are dropped
    when the run closes)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fh = open(self.path, "a", encoding="utf-8")
        self.lines = 0
        self.superseded: set[str] = set()

    def check(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError:
            st = None
        mine = os.fstat(self._fh.fileno())
        if st is None or (st.st_dev, st.st_ino) != (mine.st_dev, mine.st_ino):
            raise ArchiveError(f"the output folder {self.path.parent} (its {self.path.name}) vanished or was replaced "
                               f"during the run after {self.lines} manifest line(s); stopped")

    def append(self, record: dict) -> None:
        self.check()
        record.setdefault("finished_unix", round(time.time(), 3))
        self._fh.write(json.dumps(record, sort_keys=True) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.lines += 1

    def close(self) -> None:
        self._fh.close()


def commit(record: dict, out: Path, manifest: Manifest, run_id: str) -> dict:
    """Record one finished input: its manifest line, then (for "ok") its staged folder moved onto
    ``out/<key>``. Returns the record as written. Two inputs mapping to one key in the same run:
    the second is "skipped" when it is the same file, an "error" otherwise."""
    rec = dict(record)
    staging = rec.pop("staging", None)
    if rec.get("status") != "ok":
        manifest.append(rec)
        return rec
    out = Path(out)
    target = out / rec["key"]
    nest = _nesting(out, rec["key"])
    if nest is not None:
        shutil.rmtree(staging, ignore_errors=True)
        rec = {k: v for k, v in rec.items() if k not in ("files", "result_id", "sha256")}
        rec.update(status="error", error=nest)
        manifest.append(rec)
        return rec
    prev = read_done(target)
    if prev is not None and prev.get("run_id") == run_id:
        shutil.rmtree(staging, ignore_errors=True)
        for k in ("files", "result_id"):
            rec.pop(k, None)
        if prev.get("input") == rec["input"]:
            rec.update(status="skipped", error="the same input was given twice; its result is already written")
        else:
            rec.update(status="error", error=f"output folder {rec['key']!r} already holds the result of "
                       f"{prev.get('input')} (two inputs map to one name: give them as a folder, or in a manifest with an id column)")
        manifest.append(rec)
        return rec
    if (target.exists() or target.is_symlink()) and not is_result_folder(target):
        shutil.rmtree(staging, ignore_errors=True)
        rec = {k: v for k, v in rec.items() if k not in ("files", "result_id")}
        rec.update(status="error", error=f"{target} exists and is not an mcgr result folder; move it away or choose another --out")
        manifest.append(rec)
        return rec
    if prev is not None and isinstance(prev.get("result_id"), str):
        manifest.superseded.add(prev["result_id"])  # its line in the manifest goes when the run closes
    manifest.append(rec)
    try:
        _replace_dir(Path(staging), target, out / STAGING)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        rec = {k: v for k, v in rec.items() if k not in ("files", "result_id")}
        rec.update(status="error", error=f"cannot move the result into place: {e}")
        manifest.append(rec)
    return rec


def _nesting(out: Path, key: str) -> str | None:
    """Why the result folder ``out/key`` would nest with another result (a result folder above it,
    or result folders inside it), or None."""
    parts = key.split("/")
    for i in range(1, len(parts)):
        above = "/".join(parts[:i])
        if (out / above / DONE).exists():
            return (f"output folder {key!r} would lie inside the result folder {above!r}; results never nest: "
                    f"give the inputs an id column in a manifest")
    target = out / key
    if target.is_dir() and not target.is_symlink():
        for e in os.scandir(target):
            if e.is_dir(follow_symlinks=False) and not e.name.startswith("."):
                return (f"output folder {key!r} holds the folder {e.name!r}; results never nest: "
                        f"give the inputs an id column in a manifest")
    return None
