import os
import sys
from pathlib import Path

import pytest
import torch

# The infer tests build their tiny models and mammogram folders with the archive tests' factory.
sys.path.insert(0, str(Path(__file__).resolve().parent / "archive"))

# Triton kernels run on CPU tensors in the interpreter when no GPU is present. Set before any
# import of triton so that every test sees the same mode.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


def backend_or_skip(op: str, backend: str, device) -> None:
    """Skip (with the registry's reason) when ``backend`` cannot run ``op`` on ``device``."""
    from mcgr._backends import backend_status

    ok, why = backend_status(op, backend, device)
    if not ok:
        pytest.skip(f"{op}/{backend} on {torch.device(device).type}: {why}")
