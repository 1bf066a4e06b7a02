"""What an archive run reads: mammogram files named one by one, folders (walked), globs and
manifest files (``.csv`` / ``.jsonl`` rows of paths with an optional spacing and output name),
streamed as :class:`InputItem` one at a time. Also the input forms of ``mcgr adapt``.

Folder scanning stays inside the folder given and skips mcgr's own outputs (see :mod:`mcgr.archive`).
"""
from __future__ import annotations

import csv
import glob
import json
import os
from dataclasses import dataclass
from typing import Iterable, Iterator

from mcgr.archive.layout import DONE, OUTPUT_SUFFIXES, RESERVED

IMAGE_SUFFIXES = (".dcm", ".dicom", ".dic", ".png", ".tif", ".tiff", ".npy")
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson")
_GLOB_CHARS = set("*?[")
_PATH_COLUMNS = ("path", "input", "file", "filename")
_SPACING_COLUMNS = ("spacing", "spacing_mm")


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
    return low.endswith(OUTPUT_SUFFIXES) or name in RESERVED


def key_from_rel(rel: str) -> str:
    parts = [p for p in rel.replace(os.sep, "/").split("/") if p not in ("", ".")]
    parts[-1] = strip_image_suffix(parts[-1])
    return "/".join(parts)


def _file_key(path: str, root: str) -> str:
    """The key of ``path`` found under the folder ``root``: its path relative to ``root`` without the
    image extension, unless a folder of that name lies beside it (``case.dcm`` beside ``case/``):
    then the extension stays (``case.dcm``), so that the two results never nest."""
    key = key_from_rel(os.path.relpath(path, root))
    name = os.path.basename(path)
    stem = strip_image_suffix(name)
    if stem != name and os.path.isdir(os.path.join(os.path.dirname(path), stem)):
        key = key[: len(key) - len(stem)] + name
    return key


def check_key(key: str) -> str | None:
    """Why ``key`` cannot name an output folder, or None."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        return f"output name {key!r} must be a relative path without '.', '..' or hidden parts"
    if key in RESERVED:
        return f"output name {key!r} is reserved for the run's own files"
    return None


def is_inside(real: str, root_real: str) -> bool:
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
        if real in excluded or real in seen or not is_inside(real, root_real):
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
                    if e.is_symlink() and not is_inside(os.path.realpath(e.path), root_real):
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
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = _csv_rows if path.lower().endswith(".csv") else _jsonl_rows
        yield from rows(fh, os.path.basename(path))


def _csv_rows(fh, name: str) -> Iterator[tuple[int, dict | None, str | None]]:
    """A ``.csv`` manifest's rows: a header naming a path column (and spacing / id), or none
    (``path[,spacing]``); blank lines and ``#`` comments skipped."""
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


def _jsonl_rows(fh, name: str) -> Iterator[tuple[int, dict | None, str | None]]:
    """A ``.jsonl`` manifest's rows: path strings or objects with ``path`` (and spacing / id)."""
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
    """Whether ``path`` is read as a manifest of inputs (``.csv``, ``.jsonl``, ``.ndjson``)."""
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
            yield _item(p, key if key else key_from_rel(os.path.basename(p)), sp, where, serr)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        yield InputItem(path=path, key="", origin=path, error=f"{name}: cannot read the manifest ({e})")


def _item(path: str, key: str, spacing, origin: str, error: str | None = None) -> InputItem:
    path = os.path.abspath(path)
    if error is None and not os.path.isfile(path):
        error = "no such file" if not os.path.exists(path) else "not a file"
    if error is None:
        error = check_key(key)
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
                yield _item(spec, key_from_rel(os.path.basename(spec)), None, spec)
        elif _GLOB_CHARS & set(spec):
            any_match = False
            for m in glob.iglob(spec, recursive=True):
                if os.path.isdir(m):
                    any_match = True
                    for f in walk_folder(m, exclude):
                        yield _item(f, _file_key(f, m), None, spec)
                elif os.path.isfile(m) and is_mammogram_file(m):
                    any_match = True
                    yield _item(m, key_from_rel(os.path.basename(m)), None, spec)
            if not any_match:
                yield InputItem(path=os.path.abspath(spec), key="", origin=spec, error="the pattern matches no mammogram file")
        else:
            yield InputItem(path=os.path.abspath(spec), key="", origin=spec, error="no such file or folder")
