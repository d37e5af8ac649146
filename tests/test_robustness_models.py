"""Robustness walk (issue 13), continued: every registered model and the model-building names.

The same input classes and the same outcome rule as ``test_robustness.py`` (whose harness this
module reuses), with the models' small test configurations (``model_configs.py``) and one fixed
example per case (seed 0, ``B = 2``) instead of hypothesis' several, as a network's forward and
backward costs ~0.1–0.5 s here. bfloat16 autocast and meta tensors (the slowest classes on a
CPU) run on one model per architecture family (``FAMILY_REPRESENTATIVES``): the others share
their code paths. Back-propagation
goes through L2-normalised embeddings, as a margin head's loss does: that is what exposes
degenerate gradients (an all-zero batch in training mode).

The models belong to the models/integration work; the cases that fail today are marked
``xfail(strict=True)`` with the exact failure, so that they turn into failures once fixed.
"""

from __future__ import annotations

import copy
import functools
import inspect

import pytest
import torch
import torch.nn.functional as F
from model_configs import input_size, small_fan, small_kwargs
from test_robustness import Spec, applicable, check_meta, check_outcome, prepare
from torch import nn

import faceaux

MODEL_CLASSES = (
    "wrong_rank",
    "integer",
    "empty",
    "single_training",
    "nan",
    "zero",
    "huge",
    "half",
    "autocast",
    "meta",
)


def _normalised_loss(out: torch.Tensor) -> torch.Tensor:
    """A margin head's view of the embeddings: their directions, each sample pulled its own way
    (as samples of different classes are; identical pulls would cancel in BatchNorm)."""
    weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=torch.float32).reshape(out.shape)
    return (F.normalize(out.float(), dim=1) * weights.roll(out.shape[1] // 2, dims=1)).sum()


@functools.cache
def _cached(name: str) -> nn.Module:
    return faceaux.create_model(name, **small_kwargs(name))


def _registered(name: str) -> Spec:
    # the forward's own name for the images: "images" for the paper models, "x" for backbones
    argument = next(iter(inspect.signature(_cached(name).forward).parameters))

    def build(b: int, gen: torch.Generator) -> tuple[nn.Module, dict]:
        height, width = input_size(name)
        images = torch.rand(b, 3, height, width, generator=gen)
        return copy.deepcopy(_cached(name)), {argument: images}

    return Spec(name, build, (argument,), meta=True, loss=_normalised_loss, min_batch=2)


def _backbone() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("stem", nn.Conv2d(3, 8, 3, padding=1))
    net.add_module("stage1", nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1)))
    net.add_module("stage2", nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1)))
    return net


def _fan_integrator(b: int, gen: torch.Generator) -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1)
    )
    model = faceaux.FANFeatureIntegrator(
        backbone,
        small_fan(),
        {"1": "h2l.2.16", "2": "h2l.2.8"},
        fan_input_size=64,
        input_size=(16, 16),
    )
    return model, {"images": torch.rand(b, 3, 16, 16, generator=gen)}


OTHER_SPECS = [
    Spec(
        "FAN",
        lambda b, g: (small_fan(), {"x": torch.rand(b, 3, 64, 64, generator=g)}),
        ("x",),
        meta=True,
        min_batch=2,
    ),
    Spec("FANFeatureIntegrator", _fan_integrator, ("images",), meta=True, min_batch=2),
    Spec(
        "FaceRecognizer",
        lambda b, g: (
            faceaux.FaceRecognizer(copy.deepcopy(_cached("iresnet_nano"))),
            {"images": torch.rand(b, 3, 112, 112, generator=g) * 2 - 1},
        ),
        ("images",),
        meta=True,
        loss=_normalised_loss,
        min_batch=2,
    ),
    Spec(
        "BackboneAdapter",
        lambda b, g: (
            faceaux.BackboneAdapter(
                _backbone(), ["stage1", "stage2"], embedding_size=16, input_size=(16, 16)
            ),
            {"images": torch.rand(b, 3, 16, 16, generator=g)},
        ),
        ("images",),
        meta=True,
        loss=_normalised_loss,
        min_batch=2,
    ),
]
SPECS = [_registered(name) for name in faceaux.list_models()] + OTHER_SPECS

#: Cases that fail today (exact failure), by (spec, class). Empty: every model passes.
XFAIL: dict[tuple[str, str], str] = {}


#: One registered model per architecture family: the slow classes run on these only.
FAMILY_REPRESENTATIVES = {
    "iresnet18",  # IResNet (iresnet34/50/100 differ in depth only; lresnet18e, *_gnap in the head)
    "iresnet18_gnap",
    "mobilefacenet",
    "fanface_iresnet34",
    "fsenet_iresnet50",
    "mtl_attr_fast",
    "stnface_iresnet34",
}
SLOW_CLASSES = {"autocast", "meta"}


def cases() -> list:
    params = []
    registered = set(faceaux.list_models())
    for spec in SPECS:
        for kind in MODEL_CLASSES:
            if not applicable(spec, kind):
                continue
            if kind in SLOW_CLASSES and spec.name in registered - FAMILY_REPRESENTATIVES:
                continue
            reason = XFAIL.get((spec.name, kind))
            marks = []
            if reason:
                reason = f"{reason}; owner: models/integration"
                marks.append(pytest.mark.xfail(strict=True, reason=reason))
            params.append(pytest.param(spec, kind, marks=marks, id=f"{spec.name}-{kind}"))
    return params


def test_every_registered_model_is_walked():
    assert {spec.name for spec in SPECS} >= set(faceaux.list_models())


@pytest.mark.parametrize(("spec", "kind"), cases())
def test_model_under_bad_input(spec: Spec, kind: str) -> None:
    """One fixed example per case (a network costs too much for several): seed 0, B = 2."""
    torch.set_num_threads(1)
    if kind == "meta":
        check_meta(spec, 2, 0)
        return
    check_outcome(spec, kind, prepare(spec, kind, 2, 0))
