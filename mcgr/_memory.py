"""How much memory this machine can still give, and a one-line refusal when a job would not fit.

Used before allocating anything large (the model grid of a mammogram, a demo phantom, a synthesis
batch), so that a size that cannot fit ends in a clear error with the numbers instead of an
allocation traceback or a machine driven into swap.
"""
from __future__ import annotations

import os


class MemoryBudgetError(ValueError):
    """A job would need more memory than the machine has available (the message gives both)."""


def _cgroup_headroom() -> int | None:
    """Bytes this process's cgroup (v2 or v1) may still allocate, or None without a limit."""
    for limit_f, used_f in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                            ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_f) as fh:
                limit = fh.read().strip()
            with open(used_f) as fh:
                used = int(fh.read().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 1 << 60:
            return None
        return max(0, int(limit) - used)
    return None


def available_bytes() -> int | None:
    """Memory a new allocation can use without swapping: MemAvailable of /proc/meminfo, capped by the
    cgroup's headroom; None where neither can be read (the checks are then skipped)."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        avail = None
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = None
    cg = _cgroup_headroom()
    if cg is not None:
        avail = cg if avail is None else min(avail, cg)
    return avail


def format_bytes(n: float) -> str:
    """``n`` bytes as a short human figure (``'23.8 GB'``, decimal units)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def check_fits(need_bytes: float, what: str) -> None:
    """Raise :class:`MemoryBudgetError` when ``need_bytes`` exceeds the available memory.

    ``what`` names the job in the message, e.g. ``"segmenting a 18286 x 14629 px model grid"``."""
    avail = available_bytes()
    if avail is not None and need_bytes > avail:
        raise MemoryBudgetError(f"{what} needs about {format_bytes(need_bytes)} of memory; "
                                f"this machine has {format_bytes(avail)} available")
