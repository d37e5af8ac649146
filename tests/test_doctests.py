"""Every docstring example in the package runs and prints what it shows (DESIGN: "Example (a
doctest that runs)"). ``torch`` and ``nn`` are available to every example."""

import doctest
import importlib
import pkgutil

import pytest
import torch
from torch import nn

import faceaux

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(faceaux.__path__, prefix="faceaux.")
    if info.name not in ("faceaux.__main__",)
)


@pytest.mark.parametrize("name", MODULES)
def test_module_examples_run(name):
    module = importlib.import_module(name)
    torch.manual_seed(0)
    result = doctest.testmod(
        module,
        extraglobs={"torch": torch, "nn": nn},
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        verbose=False,
    )
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"
