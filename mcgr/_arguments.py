"""What every ``mcgr`` command line shares: the user-facing error and the argparse value types.

Kept below the commands (stdlib only) so that :mod:`mcgr.cli` and each stage's own CLI
(:mod:`mcgr.archive.cli`, :mod:`mcgr.eval.cli`, :mod:`mcgr.train.cli`) import it without importing one another.
"""
from __future__ import annotations

import argparse
from typing import Callable

__all__ = ["CLIError", "argument_type", "positive_int", "nonnegative_int", "positive_float", "nonnegative_float",
           "fraction"]


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def argument_type(cast: Callable, ok: Callable, expected: str) -> Callable[[str], object]:
    """An argparse ``type=``: ``cast(text)`` that must satisfy ``ok``, else "expected <expected>"."""

    def parse(text: str):
        try:
            v = cast(text)
        except ValueError:
            v = None
        if v is None or not ok(v):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return v

    parse.__name__ = expected
    return parse


positive_int = argument_type(int, lambda v: v >= 1, "a positive integer")
nonnegative_int = argument_type(int, lambda v: v >= 0, "a non-negative integer")
positive_float = argument_type(float, lambda v: 0 < v < float("inf"), "a positive finite number")
nonnegative_float = argument_type(float, lambda v: 0 <= v < float("inf"), "a number >= 0")
fraction = argument_type(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
