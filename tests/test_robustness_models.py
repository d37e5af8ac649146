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
            {"x": torch.rand(b, 3, 16, 16, generator=g)},
        ),
        ("x",),
        meta=True,
        loss=_normalised_loss,
        min_batch=2,
    ),
]
SPECS = [_registered(name) for name in faceaux.list_models()] + OTHER_SPECS

ZERO = (
    "all-zero images in training mode: non-finite input gradients (every BatchNorm sees a "
    "zero-variance batch and multiplies the gradient by 1/sqrt(eps) ≈ 316; a dozen layers "
    "overflow float32)"
)
HUGE = (
    "images of magnitude 1e20 in training mode: non-finite input gradients (the first "
    "BatchNorm's variance overflows float32, its output is constant, then as all-zero images)"
)
NAN = "a NaN pixel gives NaN embeddings (no ValueError naming the images)"
HALF_DTYPE = "bfloat16 images: RuntimeError 'expected scalar type BFloat16 but found Float'"
HALF_BIAS = (
    "bfloat16 images: RuntimeError 'Input type (c10::BFloat16) and bias type (float) should "
    "be the same'"
)
INTEGER_BIAS = "int64 images: RuntimeError 'Input type (long int) and bias type (float) ...'"


def _names(said: str, argument: str) -> str:
    return f"the ValueError names '{said}', not the forward's argument '{argument}'"


#: Today's failures (exact), by (spec, class); owner: models/integration.
XFAIL: dict[tuple[str, str], str] = {
    ("fanface_iresnet34", "nan"): _names("x", "images"),
    ("fanface_iresnet34", "huge"): HUGE,
    ("fanface_iresnet34", "half"): HALF_DTYPE,
    ("fanface_iresnet50", "nan"): _names("x", "images"),
    ("fanface_iresnet50", "huge"): HUGE,
    ("fanface_iresnet50", "half"): HALF_DTYPE,
    ("fsenet_iresnet50", "nan"): _names("features", "images"),
    ("fsenet_iresnet50", "zero"): ZERO,
    ("fsenet_iresnet50", "huge"): HUGE,
    ("fsenet_iresnet50", "half"): HALF_DTYPE,
    ("iresnet100", "wrong_rank"): _names("images", "x"),
    ("iresnet100", "integer"): _names("images", "x"),
    ("iresnet100", "nan"): NAN,
    ("iresnet100", "zero"): ZERO,
    ("iresnet100", "huge"): HUGE,
    ("iresnet100", "half"): HALF_DTYPE,
    ("iresnet18", "wrong_rank"): _names("images", "x"),
    ("iresnet18", "integer"): _names("images", "x"),
    ("iresnet18", "nan"): NAN,
    ("iresnet18", "zero"): ZERO,
    ("iresnet18", "huge"): HUGE,
    ("iresnet18", "half"): HALF_DTYPE,
    ("iresnet18_gnap", "wrong_rank"): _names("images", "x"),
    ("iresnet18_gnap", "integer"): _names("images", "x"),
    ("iresnet18_gnap", "nan"): _names("features", "x"),
    ("iresnet18_gnap", "half"): HALF_DTYPE,
    ("iresnet34", "wrong_rank"): _names("images", "x"),
    ("iresnet34", "integer"): _names("images", "x"),
    ("iresnet34", "nan"): NAN,
    ("iresnet34", "zero"): ZERO,
    ("iresnet34", "huge"): HUGE,
    ("iresnet34", "half"): HALF_DTYPE,
    ("iresnet50", "wrong_rank"): _names("images", "x"),
    ("iresnet50", "integer"): _names("images", "x"),
    ("iresnet50", "nan"): NAN,
    ("iresnet50", "zero"): ZERO,
    ("iresnet50", "huge"): HUGE,
    ("iresnet50", "half"): HALF_DTYPE,
    ("iresnet_nano", "wrong_rank"): _names("images", "x"),
    ("iresnet_nano", "integer"): _names("images", "x"),
    ("iresnet_nano", "nan"): NAN,
    ("iresnet_nano", "zero"): ZERO,
    ("iresnet_nano", "huge"): HUGE,
    ("iresnet_nano", "half"): HALF_DTYPE,
    ("lresnet18e", "wrong_rank"): _names("images", "x"),
    ("lresnet18e", "integer"): _names("images", "x"),
    ("lresnet18e", "nan"): NAN,
    ("lresnet18e", "zero"): ZERO,
    ("lresnet18e", "huge"): HUGE,
    ("lresnet18e", "half"): HALF_DTYPE,
    ("mobilefacenet", "wrong_rank"): _names("images", "x"),
    ("mobilefacenet", "integer"): _names("images", "x"),
    ("mobilefacenet", "nan"): NAN,
    ("mobilefacenet", "zero"): ZERO,
    ("mobilefacenet", "huge"): HUGE,
    ("mobilefacenet", "half"): HALF_DTYPE,
    ("mobilefacenet_gnap", "wrong_rank"): _names("images", "x"),
    ("mobilefacenet_gnap", "integer"): _names("images", "x"),
    ("mobilefacenet_gnap", "nan"): _names("features", "x"),
    ("mobilefacenet_gnap", "half"): HALF_DTYPE,
    ("mtl_attr_fast", "nan"): _names("embedding", "images"),
    ("mtl_attr_fast", "zero"): ZERO,
    ("mtl_attr_fast", "huge"): HUGE,
    ("mtl_attr_fast", "half"): HALF_DTYPE,
    ("mtl_attr_full", "nan"): _names("embedding", "images"),
    ("mtl_attr_full", "zero"): ZERO,
    ("mtl_attr_full", "huge"): HUGE,
    ("mtl_attr_full", "half"): HALF_DTYPE,
    ("stnface_iresnet34", "nan"): _names("x", "images"),
    ("stnface_iresnet34", "zero"): ZERO,
    ("stnface_iresnet34", "huge"): HUGE,
    ("stnface_iresnet34", "half"): _names("x", "images"),
    ("FAN", "integer"): INTEGER_BIAS,
    ("FAN", "nan"): NAN,
    ("FAN", "half"): HALF_BIAS,
    ("FANFeatureIntegrator", "nan"): _names("x", "images"),
    ("FANFeatureIntegrator", "half"): HALF_BIAS,
    ("FaceRecognizer", "nan"): NAN,
    ("FaceRecognizer", "zero"): ZERO,
    ("FaceRecognizer", "huge"): HUGE,
    ("FaceRecognizer", "half"): HALF_DTYPE,
    ("BackboneAdapter", "wrong_rank"): _names("images", "x"),
    ("BackboneAdapter", "integer"): _names("images", "x"),
    ("BackboneAdapter", "nan"): NAN,
    ("BackboneAdapter", "half"): HALF_BIAS,
}


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
