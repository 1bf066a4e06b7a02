"""pytest-benchmark cases of rf_step (the quick sizes of benchmarks/bench_rf_step.py), every provider."""
import pytest

from benchmarks._pytest_cases import bench, params


@pytest.mark.parametrize("index,provider", params("rf_step"))
def test_rf_step(benchmark, bench_device, index, provider):
    bench(benchmark, "rf_step", index, provider, bench_device)
