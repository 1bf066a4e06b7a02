"""pytest-benchmark entry to the op benchmarks: ``pytest benchmarks/ --benchmark-only``.

The same cases as ``python -m benchmarks.run_all --quick`` (small sizes), one test per op, case and
provider; an absent provider is skipped with its reason. The main test suite never collects this
folder (``testpaths = ["tests"]``). ``--bench-device cuda`` runs on the GPU.
"""
from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--bench-device", default="cpu", help="device of the benchmark cases (cpu or cuda)")


@pytest.fixture(scope="session")
def bench_device(request) -> torch.device:
    dev = torch.device(request.config.getoption("--bench-device"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("--bench-device cuda but torch sees no CUDA device")
    return dev


def pytest_configure(config):
    # a few short rounds per case: the slow references take ~1 s a call on a 2-core box
    opt = config.option
    if getattr(opt, "benchmark_max_time", None) == 1.0:
        opt.benchmark_max_time = 0.25
    if getattr(opt, "benchmark_min_rounds", None) == 5:
        opt.benchmark_min_rounds = 3
