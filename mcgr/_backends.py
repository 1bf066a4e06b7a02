"""Backend registry: what each backend supports, and which one runs a call.

Every fused op has up to four implementations: ``reference`` (PyTorch, the specification),
``cpu`` (C++/OpenMP in ``mcgr._C``), ``cuda`` (CUDA in ``mcgr._C``) and ``triton``
(``mcgr.kernels``). ``backend="auto"`` takes the first of the device's preference list that can run
the call and falls back to the reference; an explicit backend (argument or ``MCGR_BACKEND``) that
cannot run raises :class:`BackendError` with the reason.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable

import torch

BACKENDS = ("reference", "cpu", "triton", "cuda")
OPS = ("inject", "stitch", "rf_step", "refine", "group_norm_silu")

# Fastest first, per device type; the reference ends every list.
AUTO_ORDER = {
    "cuda": ("cuda", "triton", "reference"),
    "cpu": ("cpu", "reference"),
}


class BackendError(RuntimeError):
    """Raised when an explicitly requested backend cannot run a call."""


@dataclass(frozen=True)
class Choice:
    backend: str
    fn: Callable


_IMPLS: dict[str, dict[str, Callable]] = {op: {} for op in OPS}
_C_MODULE = None
_C_ERROR: str | None = None


def register(op: str, backend: str):
    """Decorator: ``fn`` implements ``op`` on ``backend`` (same signature as the op's reference)."""
    if op not in _IMPLS:
        raise KeyError(f"unknown op {op!r}; ops are {OPS}")
    if backend not in BACKENDS:
        raise KeyError(f"unknown backend {backend!r}; backends are {BACKENDS}")

    def deco(fn):
        _IMPLS[op][backend] = fn
        return fn

    return deco


def native():
    """The compiled extension ``mcgr._C``, or None (the reason is in :func:`native_error`)."""
    global _C_MODULE, _C_ERROR
    if _C_MODULE is None and _C_ERROR is None:
        try:
            _C_MODULE = importlib.import_module("mcgr._C")
        except ImportError as exc:  # not built: pure-Python install or source checkout
            _C_ERROR = f"mcgr._C is not built ({exc})"
    return _C_MODULE


def native_error() -> str:
    native()
    return _C_ERROR or ""


def build_info() -> dict:
    """The compiled extension's build metadata (CUDA on/off, architectures, OpenMP, compiler)."""
    C = native()
    if C is None:
        return {"built": False, "reason": native_error()}
    info = dict(C.build_info())
    info["built"] = True
    return info


def _triton_status() -> tuple[bool, str]:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return False, f"triton is not installed ({exc})"
    return True, ""


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def backend_status(op: str, backend: str, device: torch.device | None = None) -> tuple[bool, str]:
    """Whether ``backend`` can run ``op`` (on ``device`` when given) and, if not, why."""
    if backend not in BACKENDS:
        return False, f"unknown backend {backend!r}; choose one of {BACKENDS} or 'auto'"
    _load_launchers(op)
    if backend not in _IMPLS[op]:
        return False, f"no {backend} implementation of {op} is registered"
    dev = None if device is None else torch.device(device).type
    if backend == "reference":
        return True, ""
    if backend == "cpu":
        C = native()
        if C is None:
            return False, native_error()
        if not hasattr(C, f"{op}_cpu"):
            return False, f"mcgr._C was built without {op}_cpu"
        if dev is not None and dev != "cpu":
            return False, f"the cpu backend runs on CPU tensors, got {dev}"
        return True, ""
    if backend == "cuda":
        C = native()
        if C is None:
            return False, native_error()
        if not C.build_info().get("cuda", False):
            return False, "mcgr._C was built without CUDA (no nvcc at build time, or MCGR_ENABLE_CUDA=OFF)"
        if not hasattr(C, f"{op}_cuda"):
            return False, f"mcgr._C was built without {op}_cuda"
        if not torch.cuda.is_available():
            return False, "no CUDA device is available to torch"
        if dev is not None and dev != "cuda":
            return False, f"the cuda backend runs on CUDA tensors, got {dev}"
        return True, ""
    if backend == "triton":
        ok, why = _triton_status()
        if not ok:
            return False, why
        if dev == "cpu" and not _interpret():
            return False, "triton runs CPU tensors only under TRITON_INTERPRET=1"
        if dev is None and not torch.cuda.is_available() and not _interpret():
            return False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on CPU tensors)"
        if dev is not None and dev not in ("cpu", "cuda"):
            return False, f"triton runs on CUDA tensors, got {dev}"
        return True, ""
    return False, "unreachable"


_LOADED: set[str] = set()


def _load_launchers(op: str) -> None:
    """Import the module that registers ``op``'s launchers (mcgr.ops.<op>) once."""
    if op in _LOADED:
        return
    _LOADED.add(op)
    importlib.import_module(f"mcgr.ops.{op}")


def choose(op: str, device: torch.device, backend: str | None = "auto") -> Choice:
    """Pick the implementation of ``op`` for tensors on ``device``.

    ``backend`` is ``"auto"`` (or None), or one of :data:`BACKENDS`. With ``"auto"`` the
    ``MCGR_BACKEND`` environment variable, when set, is used as an explicit request.
    """
    if op not in _IMPLS:
        raise KeyError(f"unknown op {op!r}; ops are {OPS}")
    _load_launchers(op)
    requested = backend or "auto"
    if requested == "auto":
        env = os.environ.get("MCGR_BACKEND", "").strip()
        if env and env != "auto":
            requested = env
    if requested != "auto":
        ok, why = backend_status(op, requested, device)
        if not ok:
            raise BackendError(f"backend {requested!r} cannot run {op} on {torch.device(device).type} tensors: {why}")
        return Choice(requested, _resolve(op, requested))
    for name in AUTO_ORDER.get(torch.device(device).type, ("reference",)):
        ok, _ = backend_status(op, name, device)
        if ok:
            return Choice(name, _resolve(op, name))
    return Choice("reference", _resolve(op, "reference"))


PIPELINE_OPS = ("stitch", "rf_step", "refine")  # the fused ops full-field inference runs


def requested_backend(backend: str | None = "auto") -> str:
    """The backend a call with ``backend`` asks for: ``backend`` itself, or for "auto" (and None) the
    ``MCGR_BACKEND`` environment variable when set, else "auto"."""
    requested = backend or "auto"
    if requested == "auto":
        env = os.environ.get("MCGR_BACKEND", "").strip()
        if env and env != "auto":
            requested = env
    return requested


def check_backend(backend: str | None, device, ops=PIPELINE_OPS) -> str:
    """Check, before any compute, that the backend ``backend`` asks for (argument or ``MCGR_BACKEND``)
    can run every op of ``ops`` on ``device``; return it ("auto" always can: it falls back to the
    reference). Raises :class:`BackendError` naming where the request came from and why not."""
    requested = requested_backend(backend)
    if requested == "auto":
        return requested
    where = "MCGR_BACKEND" if (backend or "auto") == "auto" else "backend"
    if requested not in BACKENDS:
        raise BackendError(f"{where}={requested!r} is not a backend; choose auto or one of {', '.join(BACKENDS)}")
    dev = torch.device(device)
    for op in ops:
        ok, why = backend_status(op, requested, dev)
        if not ok:
            raise BackendError(f"{where}={requested!r} cannot run {op} on {dev.type}: {why}")
    return requested


def _resolve(op: str, backend: str) -> Callable:
    return _IMPLS[op][backend]


def availability() -> dict:
    """``{op: {backend: {"available": bool, "reason": str}}}`` for this process and build."""
    out: dict = {}
    for op in OPS:
        out[op] = {}
        for b in BACKENDS:
            try:
                ok, why = backend_status(op, b)
            except Exception as exc:  # an op whose module fails to import is reported, not fatal
                ok, why = False, f"{type(exc).__name__}: {exc}"
            out[op][b] = {"available": bool(ok), "reason": why}
    return out
