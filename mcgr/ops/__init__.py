"""The fused ops: each ``<op>_ref`` (PyTorch, the specification) beside ``<op>()`` (the dispatcher)."""
from mcgr.ops.inject import InjectParams, inject, inject_ref

__all__ = ["InjectParams", "inject", "inject_ref"]
