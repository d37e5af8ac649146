"""Test harness shared by every test: device and dtype fixtures, the ``cuda`` marker.

Modelled on kornia's: ``pytest --device cpu|cuda|all`` picks the devices the ``device``
fixture runs on (default ``all``: CPU, plus CUDA where a GPU is present — CUDA cases are
reported as skipped, with the reason, on a machine without one). The ``dtype`` fixture runs
float32 and float64; a test opts into other dtypes with ``@pytest.mark.dtypes(...)``.
"""

from __future__ import annotations

import pytest
import torch

NO_CUDA_REASON = "needs a CUDA GPU: torch.cuda.is_available() is False on this machine"
DEFAULT_DTYPES = ("float32", "float64")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device",
        action="store",
        default="all",
        choices=("cpu", "cuda", "all"),
        help="devices for the `device` fixture: cpu, cuda, or all (CPU plus CUDA when present)",
    )


def _devices(config: pytest.Config) -> list[str]:
    choice = config.getoption("--device")
    return ["cpu", "cuda"] if choice == "all" else [choice]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "device" in metafunc.fixturenames:
        params = []
        for name in _devices(metafunc.config):
            marks = []
            if name == "cuda" and not torch.cuda.is_available():
                marks.append(pytest.mark.skip(reason=f"CUDA case: {NO_CUDA_REASON}"))
            params.append(pytest.param(torch.device(name), id=name, marks=marks))
        metafunc.parametrize("device", params)
    if "dtype" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("dtypes")
        names = marker.args if marker is not None else DEFAULT_DTYPES
        metafunc.parametrize("dtype", [getattr(torch, n) for n in names], ids=list(names))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_cuda = pytest.mark.skip(reason=f"CPU/CUDA parity test: {NO_CUDA_REASON}")
    if torch.cuda.is_available():
        return
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same RNG state, so a failure reproduces."""
    torch.manual_seed(0)
