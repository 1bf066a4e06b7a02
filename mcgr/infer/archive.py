"""Archive runs of ``mcgr infer``: streamed inputs, one result folder per input committed whole,
the run manifest, and resume. Shared by the local engine (here) and the Ray engine
(:mod:`mcgr.infer.ray_engine`).

Layout of an output folder ``OUT``::

    OUT/manifest.jsonl          one JSON line per input (ok / error / skipped), appended as inputs finish
    OUT/run.json                the settings that define the results (checked by --resume)
    OUT/<key>/<stem>.*          write_outputs' files (mask.png, prob.npy, overlay.png, json, ...)
    OUT/<key>/.done             the input's record (the same as its manifest line), with file sizes
    OUT/.mcgr-staging/          work in progress; removed at the start of every run
    OUT/.mcgr.lock              held while a run writes into OUT

``<key>`` mirrors the input: a file inside a folder given on the command line keeps its path
relative to that folder; any other file is named by its own name; a manifest row may give an
``id``. Known image extensions (.dcm .dicom .dic .png .tif .tiff .npy) are dropped from the key.

Commit protocol (per input): a worker writes every file and ``.done`` into a fresh folder under
``.mcgr-staging``; the driver then appends the manifest line (flushed and fsynced) and renames the
folder onto ``OUT/<key>``. A result folder is therefore complete or absent, never partial, and every
result folder has its manifest line. ``--resume`` keeps the manifest lines whose result folder
still verifies (``.done`` names the same result id, every file exists with the recorded size),
drops the rest (errors, lines of folders that were never moved into place, a line cut by a kill)
and redoes those inputs; inputs whose folder verifies are skipped without a new line, so no input
is ever listed twice. A result verifies when its input still has the content it was computed from
(``input_sha256``: the sha256 of the input file, streamed) and every output still has its recorded
size and sha256 (``sha256``: {file name: digest}, in ``.done`` and the manifest line): an input
replaced by another image, or a result overwritten (even by zeros of the same size), is redone.

Folder scanning stays inside the folder given: a symlink to a folder outside it is not followed
(a symlink to a single file is, as the file was named by whoever made the link). mcgr's own outputs
are never taken as inputs: result folders (holding ``.done``), files named like
:func:`mcgr.io.write_outputs`' and ``mcgr demo``'s outputs (``OUTPUT_SUFFIXES``), so pointing a run at
a results folder, or at a study folder holding one, reads only the mammograms.
"""
from __future__ import annotations

import csv
import fcntl
import glob
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

IMAGE_SUFFIXES = (".dcm", ".dicom", ".dic", ".png", ".tif", ".tiff", ".npy")
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson")
MANIFEST = "manifest.jsonl"
RUN_FILE = "run.json"
STAGING = ".mcgr-staging"
DONE = ".done"
LOCK = ".mcgr.lock"
_RESERVED = {MANIFEST, RUN_FILE}
# Files mcgr writes (write_outputs, mcgr demo): never inputs of a folder scan.
OUTPUT_SUFFIXES = (".seg.dcm", ".prob.npy", ".uncertainty.npy", ".mask.png", ".overlay.png", ".truth.png",
                   ".compare.png")
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_GLOB_CHARS = set("*?[")
_PATH_COLUMNS = ("path", "input", "file", "filename")
_SPACING_COLUMNS = ("spacing", "spacing_mm")


class ArchiveError(ValueError):
    """A problem with the run as a whole (output folder, manifest file, resume settings): the CLI
    prints it as one line and exits non-zero."""


@dataclass(frozen=True)
class InputItem:
    """One input of a run.

    path: absolute path of the mammogram file. key: its output folder relative to ``OUT`` (POSIX
    separators). spacing: pixel spacing in mm for this input (None: the run's ``--spacing`` or the
    file's own). origin: the argument (or manifest line) it came from. error: set when the input is
    known to be unusable before any reading (missing file, bad manifest row).
    """

    path: str
    key: str
    spacing: float | None = None
    origin: str = ""
    error: str | None = None


# ---------------------------------------------------------------- inputs

def strip_image_suffix(name: str) -> str:
    """``name`` without a known image extension (``case1.dcm`` -> ``case1``; a DICOM file named by
    its UID keeps every dotted part)."""
    low = name.lower()
    for s in IMAGE_SUFFIXES:
        if low.endswith(s) and len(name) > len(s):
            return name[: -len(s)]
    return name


def _is_dicom_file(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def is_mammogram_file(path: str) -> bool:
    """Whether a file found in a folder is taken as an input: a known image extension, or any other
    name holding a DICOM preamble (archives often store DICOM without extension or under UIDs)."""
    name = os.path.basename(path)
    if is_mcgr_output(name):
        return False
    if name.lower().endswith(IMAGE_SUFFIXES):
        return True
    return _is_dicom_file(path)


def is_mcgr_output(name: str) -> bool:
    """Whether a file name is one mcgr writes (a result, a run's manifest or settings)."""
    low = name.lower()
    return low.endswith(OUTPUT_SUFFIXES) or name in _RESERVED


def _key_from_rel(rel: str) -> str:
    parts = [p for p in rel.replace(os.sep, "/").split("/") if p not in ("", ".")]
    parts[-1] = strip_image_suffix(parts[-1])
    return "/".join(parts)


def _check_key(key: str) -> str | None:
    """Why ``key`` cannot name an output folder, or None."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        return f"output name {key!r} must be a relative path without '.', '..' or hidden parts"
    if key in _RESERVED:
        return f"output name {key!r} is reserved for the run's own files"
    return None


def _inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def walk_folder(root: str, exclude: Iterable[str] = ()) -> Iterator[str]:
    """Mammogram files under ``root``, depth first in name order, one folder listing at a time
    (never the whole tree in memory). Hidden entries, the folders in ``exclude``, symlinks to
    folders outside ``root``, mcgr result folders (holding ``.done``) and mcgr's own output files
    are skipped."""
    excluded = {os.path.realpath(e) for e in exclude}
    root_real = os.path.realpath(root)
    seen: set[str] = set()
    stack = [root]
    while stack:
        d = stack.pop()
        real = os.path.realpath(d)
        if real in excluded or real in seen or not _inside(real, root_real):
            continue
        seen.add(real)
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        if any(e.name == DONE for e in entries):
            continue  # an mcgr result folder
        dirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                if e.is_dir():
                    if e.is_symlink() and not _inside(os.path.realpath(e.path), root_real):
                        continue  # never leave the tree given
                    dirs.append(e.path)
                elif e.is_file() and is_mammogram_file(e.path):
                    yield e.path
            except OSError:
                continue
        stack.extend(reversed(dirs))


def _parse_spacing(text, where: str) -> tuple[float | None, str | None]:
    from mcgr.io.reader import _SPACING_RANGE_MM

    if text is None or (isinstance(text, str) and not text.strip()):
        return None, None
    try:
        s = float(text)
    except (TypeError, ValueError):
        return None, f"{where}: spacing must be a number of mm, got {text!r}"
    lo, hi = _SPACING_RANGE_MM
    if not lo <= s <= hi:
        return None, f"{where}: spacing must be a pixel spacing in mm within [{lo}, {hi}], got {text!r}"
    return s, None


def _manifest_rows(path: str) -> Iterator[tuple[int, dict | None, str | None]]:
    """``(line number, {"path", "spacing", "id"} or None, error or None)`` for each row, streamed."""
    name = os.path.basename(path)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        if path.lower().endswith(".csv"):
            reader = csv.reader(fh)
            header = None
            first = True
            for row in reader:
                n = reader.line_num
                if not row or not any(c.strip() for c in row) or row[0].lstrip().startswith("#"):
                    continue
                cells = [c.strip() for c in row]
                if first and any(c.lower() in _PATH_COLUMNS for c in cells):
                    header = [c.lower() for c in cells]
                    first = False
                    continue
                first = False
                if header is None:
                    yield n, {"path": cells[0], "spacing": cells[1] if len(cells) > 1 else None, "id": None}, None
                    continue
                rec = dict(zip(header, cells))
                p = next((rec[c] for c in _PATH_COLUMNS if rec.get(c)), None)
                if p is None:
                    yield n, None, f"{name} line {n}: no path (columns {header})"
                    continue
                sp = next((rec[c] for c in _SPACING_COLUMNS if rec.get(c)), None)
                yield n, {"path": p, "spacing": sp, "id": rec.get("id") or None}, None
        else:
            for n, line in enumerate(fh, 1):
                s = line.strip()
                if not s or s.startswith("#"):
                    continue
                try:
                    obj = json.loads(s)
                except json.JSONDecodeError as e:
                    yield n, None, f"{name} line {n}: not valid JSON ({e.msg})"
                    continue
                if isinstance(obj, str):
                    obj = {"path": obj}
                if not isinstance(obj, dict):
                    yield n, None, f"{name} line {n}: expected a path string or an object with a 'path'"
                    continue
                p = next((obj[c] for c in _PATH_COLUMNS if isinstance(obj.get(c), str) and obj[c]), None)
                if p is None:
                    yield n, None, f"{name} line {n}: no 'path' (or 'input') string"
                    continue
                sp = next((obj[c] for c in _SPACING_COLUMNS if obj.get(c) is not None), None)
                yield n, {"path": p, "spacing": sp, "id": obj.get("id")}, None


def is_manifest_file(path: str) -> bool:
    return path.lower().endswith(MANIFEST_SUFFIXES)


def _from_manifest(path: str, exclude) -> Iterator[InputItem]:
    base = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    try:
        rows = _manifest_rows(path)
        for n, row, err in rows:
            where = f"{name} line {n}"
            if err is not None:
                yield InputItem(path=f"{path}:{n}", key="", origin=where, error=err)
                continue
            p = os.path.normpath(os.path.join(base, os.path.expanduser(row["path"])))
            sp, serr = _parse_spacing(row["spacing"], where)
            key = str(row["id"]).strip().strip("/") if row["id"] not in (None, "") else None
            if os.path.isdir(p):
                for f in walk_folder(p, exclude):
                    k = _key_from_rel(os.path.relpath(f, p))
                    yield _item(f, f"{key}/{k}" if key else k, sp, where, serr)
                continue
            yield _item(p, key if key else _key_from_rel(os.path.basename(p)), sp, where, serr)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        yield InputItem(path=path, key="", origin=path, error=f"{name}: cannot read the manifest ({e})")


def _item(path: str, key: str, spacing, origin: str, error: str | None = None) -> InputItem:
    path = os.path.abspath(path)
    if error is None and not os.path.isfile(path):
        error = "no such file" if not os.path.exists(path) else "not a file"
    if error is None:
        error = _check_key(key)
    return InputItem(path=path, key=key, spacing=spacing, origin=origin, error=error)


def iter_inputs(specs: Iterable[str], exclude: Iterable[str] = ()) -> Iterator[InputItem]:
    """Stream the inputs named by ``specs``: files, folders (recursive), globs and manifest files
    (``.csv``: a ``path`` column, optional ``spacing`` and ``id``, or headerless ``path[,spacing]``;
    ``.jsonl``: path strings or objects with ``path``, optional ``spacing`` and ``id``; relative paths
    are relative to the manifest). Folders in ``exclude`` (the output folder) are never entered.

    Yields :class:`InputItem` one at a time; a spec that names nothing yields one item whose
    ``error`` says so, so the run reports it and goes on.
    """
    exclude = list(exclude)
    for spec in specs:
        spec = os.path.expanduser(str(spec))
        if os.path.isdir(spec):
            for f in walk_folder(spec, exclude):
                yield _item(f, _key_from_rel(os.path.relpath(f, spec)), None, spec)
        elif os.path.exists(spec):
            if is_manifest_file(spec):  # a regular file, or a pipe another program writes paths into
                yield from _from_manifest(spec, exclude)
            else:
                yield _item(spec, _key_from_rel(os.path.basename(spec)), None, spec)
        elif _GLOB_CHARS & set(spec):
            any_match = False
            for m in glob.iglob(spec, recursive=True):
                if os.path.isdir(m):
                    any_match = True
                    for f in walk_folder(m, exclude):
                        yield _item(f, _key_from_rel(os.path.relpath(f, m)), None, spec)
                elif os.path.isfile(m) and is_mammogram_file(m):
                    any_match = True
                    yield _item(m, _key_from_rel(os.path.basename(m)), None, spec)
            if not any_match:
                yield InputItem(path=os.path.abspath(spec), key="", origin=spec, error="the pattern matches no mammogram file")
        else:
            yield InputItem(path=os.path.abspath(spec), key="", origin=spec, error="no such file or folder")


# ---------------------------------------------------------------- result folders

def read_done(folder: Path) -> dict | None:
    """The ``.done`` record of a result folder, or None when absent or unreadable."""
    try:
        obj = json.loads((Path(folder) / DONE).read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def file_sha256(path) -> str:
    """sha256 of a file's content (hex), streamed in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


def is_complete(out: Path, item: InputItem) -> bool:
    """Whether ``item``'s result folder under ``out`` is complete and verified, and was computed from
    the input's present content (used by --resume)."""
    if item.error is not None or not item.key:
        return False
    folder = Path(out) / item.key
    done = read_done(folder)
    return (done is not None and done.get("status") == "ok" and done.get("input") == item.path
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


def _fsync_write(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _settings_line(settings: dict) -> dict:
    return {k: settings.get(k) for k in ("refine", "spacing", "device", "backend", "engine", "threads")}


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
        res = pipeline(item.path, spacing=spacing, refine=bool(settings.get("refine", True)), canonical=True)
        return stage_result(rec, item, res, out, t0)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - one bad input is reported, the archive goes on
        return record_error(rec, exc, t0)


def new_record(item: InputItem, settings: dict, run_id: str) -> dict:
    """The record of ``item`` before it is processed (status "error" until staged)."""
    return {"input": item.path, "key": item.key, "status": "error", "error": None,
            "settings": _settings_line(settings), "run_id": run_id,
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


def stage_result(rec: dict, item: InputItem, res, out: Path, t0: float) -> dict:
    """Write the pipeline result ``res`` of ``item`` and its ``.done`` into a fresh folder under
    ``out/.mcgr-staging``; return ``rec`` completed ("ok", files, result_id, "staging"). Raises on a
    write failure, leaving no staged folder behind."""
    timings = {k: round(float(v), 4) for k, v in res.timings.items()}
    root = Path(out) / STAGING
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix="r-"))
    try:
        stem = item.key.rsplit("/", 1)[-1]
        t = time.perf_counter()
        from mcgr.io import write_outputs

        write_outputs(staging, stem, res.mammogram, res.prob, res.mask, res.detections, res.clusters,
                      uncertainty=res.uncertainty, excluded={"pectoral": res.pectoral})
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
        rec["input_sha256"] = file_sha256(item.path)
        notes = (getattr(res.mammogram, "meta", None) or {}).get("warnings")
        if notes:
            rec["warnings"] = [str(n) for n in notes]
        timings["total"] = round(time.perf_counter() - t0, 4)
        rec["timings"] = timings
        _fsync_write(staging / DONE, json.dumps(rec, sort_keys=True) + "\n")
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


_RESULT_SUFFIXES = (".mask.png", ".prob.npy", ".uncertainty.npy", ".overlay.png", ".json", ".seg.dcm")


def _is_result_folder(folder: Path) -> bool:
    """An mcgr result (possibly damaged: its ``.done`` lost), as opposed to a user's own folder: it
    holds only write_outputs' files for its stem, ``.done`` and hidden temporaries."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    stem = folder.name
    for e in os.scandir(folder):
        if e.name.startswith("."):
            continue
        if not e.is_file() or not any(e.name == stem + s for s in _RESULT_SUFFIXES):
            return False
    return True


def _replace_dir(src: Path, dst: Path, trash_root: Path) -> None:
    """Move the staged folder ``src`` onto ``dst`` (replacing an earlier mcgr result there)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if dst.exists() or dst.is_symlink():
        if not _is_result_folder(dst):
            raise OSError(f"{dst} exists and is not an mcgr result folder")
        old = trash_root / f"old-{uuid.uuid4().hex}"
        os.rename(dst, old)
    os.rename(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class Manifest:
    """The run's ``manifest.jsonl``, appended one whole line at a time (flushed and fsynced, so a
    line is on disk before its result folder is moved into place)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fh = open(self.path, "a", encoding="utf-8")

    def append(self, record: dict) -> None:
        record.setdefault("finished_unix", round(time.time(), 3))
        self._fh.write(json.dumps(record, sort_keys=True) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

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
    if (target.exists() or target.is_symlink()) and not _is_result_folder(target):
        shutil.rmtree(staging, ignore_errors=True)
        rec = {k: v for k, v in rec.items() if k not in ("files", "result_id")}
        rec.update(status="error", error=f"{target} exists and is not an mcgr result folder; move it away or choose another --out")
        manifest.append(rec)
        return rec
    manifest.append(rec)
    try:
        _replace_dir(Path(staging), target, out / STAGING)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        rec = {k: v for k, v in rec.items() if k not in ("files", "result_id")}
        rec.update(status="error", error=f"cannot move the result into place: {e}")
        manifest.append(rec)
    return rec


# ---------------------------------------------------------------- the run folder

def _result_settings(settings: dict) -> dict:
    """The settings that decide the results (a resumed run must use the same)."""
    return {k: settings.get(k) for k in ("refine", "spacing", "models", "ttgpr", "tile", "overlap")}


class RunFolder:
    """The output folder of a run, locked while the run writes into it.

    ``open()`` checks the folder (a previous run there needs ``resume=True`` and the same result
    settings), rewrites the manifest keeping only verified results when resuming, clears stale
    staging, writes ``run.json`` and opens the manifest for appending.
    """

    def __init__(self, out, settings: dict, resume: bool):
        self.out = Path(out)
        self.settings = settings
        self.resume = resume
        self.run_id = uuid.uuid4().hex
        self.kept = 0
        self.dropped = 0
        self.manifest: Manifest | None = None
        self._lock = None

    def open(self) -> "RunFolder":
        out = self.out
        if out.exists() and not out.is_dir():
            raise ArchiveError(f"--out {out} exists and is not a folder")
        try:
            out.mkdir(parents=True, exist_ok=True)
            lock = open(out / LOCK, "a+")
        except OSError as e:
            raise ArchiveError(f"--out {out} cannot be written: {e.strerror or e}"
                               + (f" ({e.filename})" if e.filename and str(e.filename) != str(out) else "")) from None
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise ArchiveError(f"another mcgr infer is writing into {out}; wait for it or choose another --out") from None
        self._lock = lock
        try:
            self._prepare()
        except OSError as e:
            self.close()
            raise ArchiveError(f"--out {out} cannot be written: {e.strerror or e}") from None
        except BaseException:
            self.close()
            raise
        return self

    def _prepare(self) -> None:
        out = self.out
        mpath, rpath = out / MANIFEST, out / RUN_FILE
        previous = mpath.exists() or rpath.exists()
        if previous and not self.resume:
            raise ArchiveError(f"{out} holds a previous run ({MANIFEST}): pass --resume to continue it, "
                               f"or choose another --out")
        if previous:
            try:
                old = json.loads(rpath.read_text())
                old_settings = old["settings"]
            except (OSError, ValueError, KeyError, TypeError):
                old_settings = None
            if old_settings is not None:
                want, got = _result_settings(old_settings), _result_settings(self.settings)
                diff = sorted(k for k in want if want[k] != got[k])
                if diff:
                    raise ArchiveError(f"{out} was started with other settings ({', '.join(diff)} differ: "
                                       f"{ {k: want[k] for k in diff} }); resume with the same settings or choose another --out")
            self._filter_manifest(mpath)
        shutil.rmtree(out / STAGING, ignore_errors=True)
        (out / STAGING).mkdir()
        doc = {"settings": self.settings, "run_id": self.run_id, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "resumed": bool(previous)}
        from mcgr import __version__

        doc["mcgr_version"] = __version__
        tmp = out / (RUN_FILE + ".tmp")
        _fsync_write(tmp, json.dumps(doc, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, rpath)
        self.manifest = Manifest(mpath)

    def _filter_manifest(self, mpath: Path) -> None:
        """Keep the lines of verified results; everything else is redone (streamed, O(1) memory)."""
        if not mpath.exists():
            return
        tmp = mpath.with_name(mpath.name + ".tmp")
        with open(mpath, encoding="utf-8", errors="replace") as src, open(tmp, "w", encoding="utf-8") as dst:
            for line in src:
                try:
                    rec = json.loads(line)
                except ValueError:
                    self.dropped += 1
                    continue
                if isinstance(rec, dict) and rec.get("status") == "ok" and isinstance(rec.get("key"), str) \
                        and _check_key(rec["key"]) is None and verify_result(self.out / rec["key"], rec) \
                        and input_unchanged(rec):
                    dst.write(json.dumps(rec, sort_keys=True) + "\n")
                    self.kept += 1
                else:
                    self.dropped += 1
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, mpath)

    def close(self) -> None:
        if self.manifest is not None:
            self.manifest.close()
            self.manifest = None
        if self._lock is not None:
            try:
                (self.out / STAGING).rmdir()  # only when empty: what a crash left stays for the next run
            except OSError:
                pass
            self._lock.close()
            self._lock = None

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()


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


def run_local(items: Iterable[InputItem], pipeline, run: RunFolder, tally: Tally) -> Tally:
    """Process ``items`` one by one in this process (the local engine)."""
    for item in items:
        if run.resume and is_complete(run.out, item):
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


def read_manifest(path) -> list[dict]:
    """All records of a manifest (for tests and small runs; an archive run streams it instead)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
