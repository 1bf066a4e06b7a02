"""Archive runs of ``mcgr infer``: streamed inputs, one result folder per input committed whole,
the run manifest, and resume. Shared by the local engine (here) and the Ray engine
(:mod:`mcgr.infer.ray_engine`).

Layout of an output folder ``OUT``::

    OUT/manifest.jsonl          one JSON line per input (ok / error / skipped), appended as inputs finish
    OUT/run.json                the settings that define the results (checked by --resume)
    OUT/<key>/<stem>.*          write_outputs' files: the run's output set (``--outputs``; default
                                mask.png, json, seg.dcm, overlay.png; prob.png, uncertainty.png asked for)
    OUT/<key>/.done             the input's record (the same as its manifest line), with file sizes
    OUT/.mcgr-staging/          work in progress; removed at the start and the end of every run
    (OUT itself is flock'ed while a run writes into it)

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
``input_sha256`` is of the bytes that were read (:func:`read_hashed`), and a result whose identity
(:func:`result_identity`: the settings that change a result, and the input's spacing) differs from
the resumed run's is redone too, its earlier line dropped when the run closes.
The output set (``--outputs``, ``--save-prob``) is part of that identity: a resume asking for
another set redoes every input whose result holds a different one.

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
OUTPUT_SUFFIXES = (".seg.dcm", ".prob.png", ".uncertainty.png", ".prob.npy", ".uncertainty.npy", ".mask.png",
                   ".overlay.png", ".truth.png", ".compare.png")
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


def _file_key(path: str, root: str) -> str:
    """The key of ``path`` found under the folder ``root``: its path relative to ``root`` without the
    image extension, unless a folder of that name lies beside it (``case.dcm`` beside ``case/``):
    then the extension stays (``case.dcm``), so that the two results never nest."""
    key = _key_from_rel(os.path.relpath(path, root))
    name = os.path.basename(path)
    stem = strip_image_suffix(name)
    if stem != name and os.path.isdir(os.path.join(os.path.dirname(path), stem)):
        key = key[: len(key) - len(stem)] + name
    return key


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
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        return None, f"{where}: spacing must be a number of mm, got {json.dumps(text)}"
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
                    if not cells[0]:
                        yield n, None, f"{name} line {n}: empty path cell (first column) in {','.join(row)!r}"
                        continue
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
                    k = _file_key(f, p)
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
                yield _item(f, _file_key(f, spec), None, spec)
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
                        yield _item(f, _file_key(f, m), None, spec)
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


def _fsync_write(path: Path, text: str) -> None:
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
    ``input_sha256``: the digest of the bytes the result was computed from (:func:`read_hashed`).
    Raises on a write failure, leaving no staged folder behind."""
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


_RESULT_SUFFIXES = (".mask.png", ".prob.png", ".uncertainty.png", ".prob.npy", ".uncertainty.npy", ".overlay.png",
                    ".json", ".seg.dcm")


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
    line is on disk before its result folder is moved into place).

    Before each line it checks that the manifest file it holds open is still the one at its path (the
    output folder deleted, moved or replaced during the run): if not, :class:`ArchiveError`, which
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
    if (target.exists() or target.is_symlink()) and not _is_result_folder(target):
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


# ---------------------------------------------------------------- the run folder

class RunFolder:
    """The output folder of a run, locked while the run writes into it.

    ``open()`` checks the folder (a previous run there needs ``resume=True``), rewrites the manifest
    keeping only verified results when resuming, clears stale staging, writes ``run.json`` and opens
    the manifest for appending. Results whose identity (:func:`result_identity`) differs from this
    run's settings are redone input by input, and their earlier lines dropped when the run closes.

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
                              and _check_key(rec["key"]) is None and verify_result(self.out / rec["key"], rec)
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
        _fsync_write(tmp, text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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


def read_manifest(path) -> list[dict]:
    """All records of a manifest (for tests and small runs; an archive run streams it instead)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
