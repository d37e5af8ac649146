"""Robustness walk (issue 13): every public name through every class of bad input.

For each name in ``faceaux.__all__`` that takes tensors, a *spec* builds a valid call for a batch
of ``B`` samples; each *input class* then breaks one thing about it — wrong rank, integer or
boolean data, ``B = 0``, ``B = 1`` in training, a NaN or an inf, all zeros, huge values (1e20),
labels out of range, bfloat16 data outside autocast, bfloat16 autocast, meta tensors — and the
outcome must be one of:

- a ``ValueError``/``TypeError`` whose message starts with the name of the argument at fault
  (the perturbed one, where one argument was perturbed), or
- finite outputs and finite gradients (for the inputs and the module's parameters),

never an error from inside PyTorch and never a NaN. Wrong ranks, integer/boolean data and labels
out of range must raise; the other classes may go either way (an empty batch is an empty output
or a zero loss, never NaN). Meta tensors, where shape-only use makes sense, must give the shapes
a real run gives. The names without tensor inputs (constants, constructors, file readers) go
through ``test_bad_arguments_are_named``. The registered models are walked in
``test_robustness_models.py``.

Cases of names in files owned elsewhere that fail today are marked ``xfail(strict=True)`` with the
exact failure, so that they turn into failures (XPASS) once fixed.
"""

from __future__ import annotations

import contextlib
import functools
import math
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from torch import nn

import faceaux

# ---------------------------------------------------------------------------------------------
# specs: a valid call per public name


@dataclass(frozen=True)
class Spec:
    """How to call one public name validly, and which of its arguments are what.

    ``build(B, generator)`` returns ``(fn, kwargs)`` with ``fn(**kwargs)`` a valid call for a batch
    of ``B``; ``fn`` is the module itself for modules. ``data`` are the floating tensor arguments
    (batch first), ``labels`` the integer label arguments with their number of classes.
    """

    name: str
    build: Callable[[int, torch.Generator], tuple[Callable[..., Any], dict[str, Any]]]
    data: tuple[str, ...]
    labels: dict[str, int] = field(default_factory=dict)
    meta: bool = False  # shape-only use makes sense
    min_batch: int = 1  # the smallest valid B (verification needs both kinds of pair)
    integer_ok: tuple[str, ...] = ()  # data arguments that accept integer tensors too
    skip: dict[str, str] = field(default_factory=dict)  # class -> why it does not apply
    xfail: dict[str, str] = field(default_factory=dict)  # class -> today's failure
    documented_nan: Callable[[Any], Any] | None = None  # drops documented NaN from outputs
    loss: Callable[[Any], torch.Tensor] | None = None  # what to back-propagate (default: sum)

    def __str__(self) -> str:
        return self.name


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen)


def _rand(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=gen)


def _labels(gen: torch.Generator, batch: int, classes: int, low: int = 0) -> torch.Tensor:
    return torch.randint(low, classes, (batch,), generator=gen)


def _near_identity(gen: torch.Generator, batch: int) -> torch.Tensor:
    return torch.eye(3) + 0.05 * _randn(gen, batch, 3, 3)


def _head(cls: type, **kwargs: Any) -> Spec:
    def build(b: int, gen: torch.Generator) -> tuple[Callable, dict]:
        torch.manual_seed(0)
        return cls(8, 5, **kwargs), {"embeddings": _randn(gen, b, 8), "labels": _labels(gen, b, 5)}

    return Spec(cls.__name__, build, ("embeddings",), {"labels": 5}, meta=True)


def _pixel_matrix_call(name: str) -> Callable:
    function = getattr(faceaux, name)
    return lambda **kwargs: function(in_size=(8, 8), out_size=(6, 6), **kwargs)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 4))


def _verification_scores(b: int, gen: torch.Generator) -> tuple[Callable, dict]:
    issame = torch.arange(b) % 2 == 0
    scores = _rand(gen, b) + issame
    return functools.partial(faceaux.verification_metrics, n_folds=2), {
        "scores": scores,
        "issame": issame,
    }


def _documented_non_finite(metrics: dict) -> dict:
    """Documented: TAR at a FAR below 1/N_impostors is NaN (nothing measured there) and the
    ROC's first threshold is +inf (nothing accepted)."""
    fpr, tpr, thresholds = metrics["roc"]
    kept = {key: value for key, value in metrics.items() if key not in ("tar_at_far", "roc")}
    return {**kept, "roc": (fpr, tpr, thresholds[1:])}


SPECS: list[Spec] = [
    # margin heads and their functional cores
    _head(faceaux.ArcFace),
    _head(faceaux.CosFace),
    _head(faceaux.CombinedMargin),
    _head(faceaux.SphereFace),
    _head(faceaux.AdaFace),
    _head(faceaux.SubCenterArcFace),
    _head(faceaux.NormSoftmax),
    Spec(
        "PartialFC",
        lambda b, g: (
            faceaux.PartialFC(8, 10),
            {"embeddings": _randn(g, b, 8), "labels": _labels(g, b, 10)},
        ),
        ("embeddings",),
        {"labels": 10},
    ),
    Spec(
        "PartialFC[AdaFaceMargin]",
        lambda b, g: (
            faceaux.PartialFC(8, 10, margin_fn=faceaux.AdaFaceMargin(), sample_rate=0.5),
            {"embeddings": _randn(g, b, 8), "labels": _labels(g, b, 10)},
        ),
        ("embeddings",),
        {"labels": 10},
    ),
    Spec(
        "AdaFaceMargin",
        lambda b, g: (
            faceaux.AdaFaceMargin(),
            {"cosine": _rand(g, b, 5) * 2 - 1, "labels": _labels(g, b, 5), "norms": _rand(g, b)},
        ),
        ("cosine", "norms"),
        {"labels": 5},
        meta=True,
    ),
    Spec(
        "margin_logits",
        lambda b, g: (
            faceaux.margin_logits,
            {"cosine": _rand(g, b, 5) * 2 - 1, "labels": _labels(g, b, 5, low=-1)},
        ),
        ("cosine",),
        {"labels": 5},
        meta=True,
    ),
    Spec(
        "sphereface_logits",
        lambda b, g: (
            faceaux.sphereface_logits,
            {
                "cosine": _rand(g, b, 5) * 2 - 1,
                "labels": _labels(g, b, 5),
                "norms": 30 * _rand(g, b),
            },
        ),
        ("cosine", "norms"),
        {"labels": 5},
        meta=True,
    ),
    Spec(
        "adaface_logits",
        lambda b, g: (
            functools.partial(faceaux.adaface_logits, batch_mean=20.0, batch_std=100.0),
            {
                "cosine": _rand(g, b, 5) * 2 - 1,
                "labels": _labels(g, b, 5),
                "norms": 30 * _rand(g, b),
            },
        ),
        ("cosine", "norms"),
        {"labels": 5},
        meta=True,
    ),
    Spec(
        "margin_cross_entropy",
        lambda b, g: (
            functools.partial(faceaux.margin_cross_entropy, chunk_size=2),
            {"embeddings": _randn(g, b, 8), "weight": _randn(g, 5, 8), "labels": _labels(g, b, 5)},
        ),
        ("embeddings",),
        {"labels": 5},
    ),
    Spec(
        "sharded_cross_entropy",
        lambda b, g: (
            faceaux.sharded_cross_entropy,
            {"logits": _randn(g, b, 5), "labels": _labels(g, b, 5)},
        ),
        ("logits",),
        {"labels": 5},
    ),
    # alignment geometry
    Spec(
        "transform_matrix",
        lambda b, g: (
            functools.partial(faceaux.transform_matrix, kind="projective"),
            {"params": _near_identity(g, b).reshape(b, 9)[:, :8]},
        ),
        ("params",),
        meta=True,
        # documented: a sample with a NaN/inf parameter gets an all-NaN matrix (its gradient 0),
        # which warp turns into padding; the other samples are untouched
        documented_nan=lambda out: out[torch.isfinite(out).flatten(1).any(dim=1)],
    ),
    Spec(
        "params_from_matrix",
        lambda b, g: (
            functools.partial(faceaux.params_from_matrix, kind="projective"),
            {"matrix": _near_identity(g, b)},
        ),
        ("matrix",),
        meta=True,
    ),
    Spec(
        "warp",
        lambda b, g: (
            functools.partial(faceaux.warp, output_size=(6, 6)),
            {"x": _rand(g, b, 3, 8, 8), "matrix": _near_identity(g, b)},
        ),
        ("x", "matrix"),
        meta=True,
    ),
    Spec(
        "to_pixel_matrix",
        lambda b, g: (_pixel_matrix_call("to_pixel_matrix"), {"matrix": _near_identity(g, b)}),
        ("matrix",),
        meta=True,
    ),
    Spec(
        "from_pixel_matrix",
        lambda b, g: (
            _pixel_matrix_call("from_pixel_matrix"),
            {"pixel_matrix": _near_identity(g, b)},
        ),
        ("pixel_matrix",),
        meta=True,
    ),
    Spec(
        "similarity_from_landmarks",
        lambda b, g: (
            faceaux.similarity_from_landmarks,
            {"src": faceaux.ARCFACE_TEMPLATE_112 * 0.5 + 3 * _rand(g, b, 5, 2)},
        ),
        ("src",),
        meta=True,
    ),
    Spec(
        "align_faces",
        lambda b, g: (
            functools.partial(faceaux.align_faces, output_size=112),
            {
                "images": _rand(g, b, 3, 40, 40),
                "landmarks": faceaux.ARCFACE_TEMPLATE_112 * 0.3 + 2 * _rand(g, b, 5, 2),
            },
        ),
        ("images", "landmarks"),
        meta=True,
        integer_ok=("images",),
    ),
    Spec(
        "SpatialTransformerAlign",
        lambda b, g: (
            faceaux.SpatialTransformerAlign(
                "affine", (6, 6), loc_input_size=(8, 8), loc_channels=(4,), loc_hidden=8
            ),
            {"x": _rand(g, b, 3, 10, 10)},
        ),
        ("x",),
        meta=True,
    ),
    Spec(
        "theta_regularization",
        lambda b, g: (faceaux.theta_regularization, {"matrix": _near_identity(g, b)}),
        ("matrix",),
        meta=True,
    ),
    # landmark heatmaps
    Spec(
        "render_heatmaps",
        lambda b, g: (
            functools.partial(faceaux.render_heatmaps, size=(8, 8)),
            {"landmarks": 8 * _rand(g, b, 5, 2)},
        ),
        ("landmarks",),
        meta=True,
    ),
    Spec(
        "heatmaps_to_landmarks",
        lambda b, g: (
            functools.partial(faceaux.heatmaps_to_landmarks, method="soft"),
            {"heatmaps": _rand(g, b, 5, 8, 8)},
        ),
        ("heatmaps",),
        meta=True,
    ),
    Spec(
        "HeatmapStacker",
        lambda b, g: (
            faceaux.HeatmapStacker(),
            {"x": _rand(g, b, 3, 8, 8), "heatmaps": _rand(g, b, 68, 4, 4)},
        ),
        ("x", "heatmaps"),
        meta=True,
    ),
    # norm-aware pooling, parts, attributes
    Spec(
        "GNAP",
        lambda b, g: (faceaux.GNAP(8, out_features=4), {"features": _randn(g, b, 8, 3, 3)}),
        ("features",),
        meta=True,
    ),
    Spec(
        "norm_aware_reweight",
        lambda b, g: (faceaux.norm_aware_reweight, {"x": _randn(g, b, 8, 3, 3)}),
        ("x",),
        meta=True,
    ),
    Spec(
        "part_mask_pooling",
        lambda b, g: (
            faceaux.part_mask_pooling,
            {"features": _randn(g, b, 4, 5, 5), "masks": _rand(g, b, 3, 10, 10)},
        ),
        ("features", "masks"),
        meta=True,
    ),
    Spec(
        "PartMaskPooling",
        lambda b, g: (
            faceaux.PartMaskPooling(parts=[0, 2], mask_activation="softmax"),
            {"features": _randn(g, b, 4, 5, 5), "masks": _randn(g, b, 3, 10, 10)},
        ),
        ("features", "masks"),
        meta=True,
    ),
    Spec(
        "structure_correlation",
        lambda b, g: (faceaux.structure_correlation, {"parts": _randn(g, b, 3, 4)}),
        ("parts",),
        meta=True,
    ),
    Spec(
        "StructureCorrelation",
        lambda b, g: (faceaux.StructureCorrelation(), {"parts": _randn(g, b, 3, 4)}),
        ("parts",),
        meta=True,
    ),
    Spec(
        "AttributeHead",
        lambda b, g: (
            faceaux.AttributeHead(8, 3, hidden_features=4),
            {"embedding": _randn(g, b, 8)},
        ),
        ("embedding",),
        meta=True,
    ),
    Spec(
        "attribute_loss",
        lambda b, g: (
            faceaux.attribute_loss,
            {"pred": _randn(g, b, 3), "target": _rand(g, b, 3).round()},
        ),
        ("pred", "target"),
        integer_ok=("target",),
    ),
    Spec(
        "MultiTaskLoss",
        lambda b, g: (
            faceaux.MultiTaskLoss(),
            {
                "identity_logits": _randn(g, b, 5),
                "identity_labels": _labels(g, b, 5),
                "attribute_pred": _randn(g, b, 3),
                "attribute_target": _rand(g, b, 3).round(),
            },
        ),
        ("identity_logits", "attribute_pred", "attribute_target"),
        {"identity_labels": 5},
        integer_ok=("attribute_target",),
    ),
    Spec(
        "majority_vote",
        lambda b, g: (
            faceaux.majority_vote,
            {"attribute_labels": _rand(g, b, 3).round(), "identity_labels": _labels(g, b, 3)},
        ),
        ("attribute_labels",),
        integer_ok=("attribute_labels",),
        skip={
            "nan": "NaN is majority_vote's documented 'no prediction' label (tests/layers)",
            "boolean": "bool labels are valid attribute labels",
        },
    ),
    # evaluation
    Spec(
        "verification_metrics",
        _verification_scores,
        ("scores",),
        min_batch=4,
        integer_ok=("scores",),
        documented_nan=_documented_non_finite,
    ),
    Spec(
        "extract_embeddings",
        lambda b, g: (
            lambda loader: faceaux.extract_embeddings(_mlp(), [loader], progress=False),
            {"loader": _rand(g, b, 3, 4, 4)},
        ),
        ("loader",),
    ),
    # files owned by the models/integration work
    Spec(
        "adain",
        lambda b, g: (
            faceaux.adain,
            {"content": _randn(g, b, 4, 5, 5), "style": _randn(g, b, 4, 3, 3)},
        ),
        ("content", "style"),
        meta=True,
    ),
    Spec(
        "FANIntegrationLayer",
        lambda b, g: (
            faceaux.FANIntegrationLayer(6, 4),
            {"y": _randn(g, b, 4, 5, 5), "x": _randn(g, b, 6, 8, 8)},
        ),
        ("y", "x"),
        meta=True,
    ),
]
SPECS_BY_NAME = {spec.name: spec for spec in SPECS}

#: Names without tensor inputs to perturb: constants (checked for being what they say) and the
#: constructors / readers / registries walked by ``test_bad_arguments_are_named``.
CONSTANTS = {
    "ARCFACE_TEMPLATE_112",
    "CELEBA_ATTRIBUTE_NAMES",
    "CELEBA_FACE_ATTRIBUTES",
    "FIVE_POINT",
    "INTERNAL_51",
    "LANDMARKS_68",
    "TRANSFORM_PARAMETERS",
    "__version__",
}
ARGUMENT_ONLY = {
    "ImageFolderFaces",
    "RecordFaces",
    "evaluate_ijb",
    "SyntheticFaces",
    "create_model",
    "expand_input_channels",
    "get_model_cfg",
    "list_models",
    "load_face_alignment_checkpoint",
    "load_verification_bin",
    "make_pairs",
    "param_groups",
}
#: Walked in test_robustness_models.py (networks with a backbone: slower, fewer examples).
MODEL_NAMES = {"FAN", "FANFeatureIntegrator", "FaceRecognizer", "BackboneAdapter"}


def test_every_public_name_is_walked():
    walked = {spec.name.split("[")[0] for spec in SPECS}
    covered = walked | CONSTANTS | ARGUMENT_ONLY | MODEL_NAMES
    assert set(faceaux.__all__) - covered == set(), "public names with no robustness case"
    assert covered - set(faceaux.__all__) == set(), "robustness cases for names not exported"


def test_constants_are_finite_and_immutable():
    assert torch.isfinite(faceaux.ARCFACE_TEMPLATE_112).all()
    for name in ("FIVE_POINT", "INTERNAL_51", "LANDMARKS_68", "CELEBA_ATTRIBUTE_NAMES"):
        assert isinstance(getattr(faceaux, name), tuple)
    assert all(0 <= i < 68 for i in faceaux.FIVE_POINT + faceaux.INTERNAL_51)


# ---------------------------------------------------------------------------------------------
# input classes


CLASSES = (
    "wrong_rank",
    "integer",
    "boolean",
    "empty",
    "single_training",
    "nan",
    "inf",
    "zero",
    "huge",
    "labels_high",
    "labels_low",
    "half",
    "autocast",
    "meta",
)
MUST_RAISE = {"wrong_rank", "integer", "boolean", "labels_high", "labels_low"}


def applicable(spec: Spec, kind: str) -> bool:
    if kind in spec.skip:
        return False
    if kind in ("labels_high", "labels_low"):
        return bool(spec.labels)
    if kind in ("integer", "boolean"):
        return any(name not in spec.integer_ok for name in spec.data)
    if kind == "meta":
        return spec.meta
    return True


@dataclass
class Prepared:
    fn: Callable[..., Any]
    kwargs: dict[str, Any]
    at_fault: str | None  # the argument that was perturbed (None: all or none)
    context: Any


def prepare(spec: Spec, kind: str, batch: int, seed: int) -> Prepared:
    """Build the valid call for this batch size, then break it the way ``kind`` says."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "empty":
        batch = 0
    elif kind == "single_training":
        batch = 1
    fn, kwargs = spec.build(max(batch, spec.min_batch) if kind != "empty" else 0, gen)
    if isinstance(fn, nn.Module):
        fn.train()
    at_fault = None
    context: Any = contextlib.nullcontext()
    first_data = next(
        n for n in spec.data if kind not in ("integer", "boolean") or n not in spec.integer_ok
    )
    if kind == "wrong_rank":
        at_fault = first_data
        kwargs[at_fault] = kwargs[at_fault].unsqueeze(0)
    elif kind == "integer":
        at_fault = first_data
        kwargs[at_fault] = kwargs[at_fault].round().long()
    elif kind == "boolean":
        at_fault = first_data
        kwargs[at_fault] = kwargs[at_fault] > 0
    elif kind in ("nan", "inf"):
        at_fault = spec.data[seed % len(spec.data)]
        value = kwargs[at_fault].clone()
        if value.numel():
            value.view(-1)[seed % value.numel()] = math.nan if kind == "nan" else math.inf
        kwargs[at_fault] = value
    elif kind == "zero":
        for name in spec.data:
            kwargs[name] = torch.zeros_like(kwargs[name])
    elif kind == "huge":
        for name in spec.data:
            kwargs[name] = kwargs[name] * 1e20
    elif kind in ("labels_high", "labels_low"):
        at_fault, classes = next(iter(spec.labels.items()))
        labels = kwargs[at_fault].clone()
        labels[seed % labels.numel()] = classes if kind == "labels_high" else -2
        kwargs[at_fault] = labels
    elif kind == "half":
        for name in spec.data:
            kwargs[name] = kwargs[name].bfloat16()
    elif kind == "autocast":
        context = torch.autocast("cpu", dtype=torch.bfloat16)
    return Prepared(fn, kwargs, at_fault, context)


# ---------------------------------------------------------------------------------------------
# the outcome rule


def floats_in(value: Any) -> list[Any]:
    """Every floating tensor, array and float in an output (tuples, lists, dicts walked)."""
    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() else []
    if isinstance(value, np.ndarray):
        return [value] if value.dtype.kind == "f" else []
    if isinstance(value, float):
        return [value]
    if isinstance(value, dict):
        return [x for v in value.values() for x in floats_in(v)]
    if isinstance(value, (tuple, list)):
        return [x for v in value for x in floats_in(v)]
    return []


def all_finite(values: list[Any]) -> bool:
    for value in values:
        if isinstance(value, torch.Tensor):
            if not torch.isfinite(value).all():
                return False
        elif not np.isfinite(value).all():
            return False
    return True


def argument_names(spec: Spec, prepared: Prepared) -> list[str]:
    names = list(prepared.kwargs)
    if isinstance(prepared.fn, nn.Module):
        names.append(type(prepared.fn).__name__)
    return names


def check_outcome(spec: Spec, kind: str, prepared: Prepared) -> str:
    """Run the call; assert the outcome rule; return "raised" or "finite"."""
    leaves = []
    for name, value in prepared.kwargs.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and kind != "meta":
            prepared.kwargs[name] = value = value.detach().clone().requires_grad_(True)
            leaves.append((name, value))
    error: Exception | None = None
    try:
        with prepared.context:
            out = prepared.fn(**prepared.kwargs)
    except (ValueError, TypeError) as caught:
        error = caught
    if error is not None:
        allowed = [prepared.at_fault] if prepared.at_fault else argument_names(spec, prepared)
        pattern = rf"^({'|'.join(re.escape(n) for n in allowed)})\b"
        assert re.match(pattern, str(error)), (
            f"{spec} / {kind}: {type(error).__name__} does not start with the argument at fault "
            f"({allowed}): {error}"
        )
        return "raised"
    assert kind not in MUST_RAISE, f"{spec} / {kind}: accepted silently"
    if spec.documented_nan is not None:
        out = spec.documented_nan(out)
    values = floats_in(out)
    assert all_finite(values), f"{spec} / {kind}: non-finite output"
    differentiable = [v for v in values if isinstance(v, torch.Tensor) and v.requires_grad]
    if differentiable:
        total = (
            sum(v.float().sum() for v in differentiable) if spec.loss is None else spec.loss(out)
        )
        assert torch.isfinite(total), f"{spec} / {kind}: non-finite loss"
        total.backward()
        for name, leaf in leaves:
            assert leaf.grad is None or torch.isfinite(leaf.grad).all(), (
                f"{spec} / {kind}: non-finite gradient for {name}"
            )
        if isinstance(prepared.fn, nn.Module):
            for name, parameter in prepared.fn.named_parameters():
                assert parameter.grad is None or torch.isfinite(parameter.grad).all(), (
                    f"{spec} / {kind}: non-finite gradient for parameter {name}"
                )
    return "finite"


def check_meta(spec: Spec, batch: int, seed: int) -> None:
    """Meta tensors (and a module moved to meta) give the shapes of the real call."""
    prepared = prepare(spec, "meta", batch, seed)
    with torch.no_grad():
        real = prepared.fn(**prepared.kwargs)
    fn = prepared.fn.to("meta") if isinstance(prepared.fn, nn.Module) else prepared.fn
    meta_kwargs = {
        k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in prepared.kwargs.items()
    }
    fake = fn(**meta_kwargs)
    real_shapes = [tuple(t.shape) for t in floats_in(real) if isinstance(t, torch.Tensor)]
    fake_shapes = [tuple(t.shape) for t in floats_in(fake) if isinstance(t, torch.Tensor)]
    assert fake_shapes == real_shapes, f"{spec}: meta shapes {fake_shapes} vs {real_shapes}"


# ---------------------------------------------------------------------------------------------
# the walk


def cases() -> list[Any]:
    params = []
    for spec in SPECS:
        for kind in CLASSES:
            if not applicable(spec, kind):
                continue
            marks = []
            if kind in spec.xfail:
                marks.append(pytest.mark.xfail(strict=True, reason=spec.xfail[kind]))
            params.append(pytest.param(spec, kind, marks=marks, id=f"{spec.name}-{kind}"))
    return params


WALK = settings(
    max_examples=3,
    deadline=None,
    derandomize=True,  # the same examples on every run: a strict xfail cannot flake
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: the class already is minimal
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.filterwarnings("ignore:AdaFaceMargin. an empty batch")
@pytest.mark.parametrize(("spec", "kind"), cases())
@WALK
@given(batch=st.integers(2, 5), seed=st.integers(0, 2**16))
def test_public_name_under_bad_input(spec: Spec, kind: str, batch: int, seed: int) -> None:
    if kind == "meta":
        check_meta(spec, batch, seed)
        return
    check_outcome(spec, kind, prepare(spec, kind, batch, seed))


# ---------------------------------------------------------------------------------------------
# names whose arguments are not tensors: each bad argument is refused, by name


def _bin_file(tmp_path, data: bytes):
    path = tmp_path / "bad.bin"
    path.write_bytes(data)
    return path


def _conv() -> nn.Conv2d:
    return nn.Conv2d(3, 4, 3)


ARGUMENT_CASES = [
    # (id, call(tmp_path), the name the message must start with, xfail reason or None)
    ("param_groups-model", lambda p: faceaux.param_groups(3, lr=0.1), "model", None),
    (
        "param_groups-lr",
        lambda p: faceaux.param_groups(faceaux.SpatialTransformerAlign(), lr=math.nan),
        "lr",
        None,
    ),
    (
        "param_groups-loc_lr_scale",
        lambda p: faceaux.param_groups(faceaux.SpatialTransformerAlign(), 0.1, loc_lr_scale=2),
        "loc_lr_scale",
        None,
    ),
    ("ImageFolderFaces-root", lambda p: faceaux.ImageFolderFaces(p / "absent"), "root", None),
    ("ImageFolderFaces-size", lambda p: faceaux.ImageFolderFaces(p, size=(0, 3)), "size", None),
    ("RecordFaces-path", lambda p: faceaux.RecordFaces(p / "absent"), "path", None),
    ("RecordFaces-decoder", lambda p: faceaux.RecordFaces(p, decoder="x"), "decoder", None),
    ("evaluate_ijb-root", lambda p: faceaux.evaluate_ijb(_mlp(), p / "absent"), "root", None),
    (
        "evaluate_ijb-dataset",
        lambda p: faceaux.evaluate_ijb(_mlp(), p, dataset="IJBX"),
        "dataset",
        None,
    ),
    (
        "load_verification_bin-empty",
        lambda p: faceaux.load_verification_bin(_bin_file(p, b"")),
        "path",
        None,
    ),
    (
        "load_verification_bin-strings",
        lambda p: faceaux.load_verification_bin(
            _bin_file(p, pickle.dumps(([b"a", b"b"], ["False"])))
        ),
        "path",
        None,
    ),
    (
        "load_verification_bin-image_size",
        lambda p: faceaux.load_verification_bin(_bin_file(p, b""), image_size=(0, 2)),
        "image_size",
        None,
    ),
    (
        "verification_metrics-n_folds",
        lambda p: faceaux.verification_metrics([0.1, 0.9], [0, 1], 2.5),
        "n_folds",
        None,
    ),
    (
        "extract_embeddings-fusion",
        lambda p: faceaux.extract_embeddings(_mlp(), [], fusion="mean"),
        "fusion",
        None,
    ),
    (
        "expand_input_channels-float",
        lambda p: faceaux.expand_input_channels(_conv(), 2.5),
        "extra",
        None,
    ),
    (
        "expand_input_channels-negative",
        lambda p: faceaux.expand_input_channels(_conv(), -1),
        "extra",
        None,
    ),
    ("list_models-int", lambda p: faceaux.list_models(123), "pattern", None),
    ("get_model_cfg-unknown", lambda p: faceaux.get_model_cfg("no_such_model"), "name", None),
    ("create_model-unknown", lambda p: faceaux.create_model("no_such_model"), "name", None),
    (
        "create_model-not_a_state_dict",
        lambda p: faceaux.create_model("iresnet_nano", checkpoint_path=_saved(p, [1, 2, 3])),
        "checkpoint_path",
        None,
    ),
    (
        "create_model-non_tensor_values",
        lambda p: faceaux.create_model("iresnet_nano", checkpoint_path=_saved(p, {"a": 1})),
        "checkpoint_path",
        None,
    ),
    (
        "create_model-garbage_file",
        lambda p: faceaux.create_model("iresnet_nano", checkpoint_path=_bin_file(p, b"\x00junk")),
        "checkpoint_path",
        None,
    ),
    (
        "load_face_alignment_checkpoint-garbage",
        lambda p: faceaux.load_face_alignment_checkpoint(_bin_file(p, b"\x00junk")),
        "checkpoint",
        None,
    ),
    (
        "make_pairs-negative",
        lambda p: faceaux.make_pairs(torch.tensor([0, 0, 1, 1]), -3),
        "n_pairs",
        None,
    ),
    (
        "make_pairs-float",
        lambda p: faceaux.make_pairs(torch.tensor([0, 0, 1, 1]), 2.5),
        "n_pairs",
        None,
    ),
    (
        "SyntheticFaces-float",
        lambda p: faceaux.SyntheticFaces(num_identities=2.5),
        "num_identities",
        None,
    ),
    ("SyntheticFaces-nan_pose", lambda p: faceaux.SyntheticFaces(pose=math.nan), "pose", None),
]


def _saved(tmp_path, obj: Any):
    path = tmp_path / "checkpoint.pt"
    torch.save(obj, path)
    return path


@pytest.mark.parametrize(
    ("call", "name"),
    [
        pytest.param(
            call,
            name,
            id=case_id,
            marks=[pytest.mark.xfail(strict=True, reason=reason)] if reason else [],
        )
        for case_id, call, name, reason in ARGUMENT_CASES
    ],
)
def test_bad_arguments_are_named(call, name, tmp_path):
    with pytest.raises((ValueError, TypeError)) as caught:
        call(tmp_path)
    message = str(caught.value)
    if name == "path":  # file readers name the file itself, or the argument
        assert message.startswith((str(tmp_path), "path:")), message
    else:
        assert re.match(rf"^{name}\b", message), message


# ---------------------------------------------------------------------------------------------
# the data checks cost no graph break under torch.compile (they are skipped there)


@pytest.mark.parametrize(
    "name",
    [
        "ArcFace",
        "AdaFace",
        "PartialFC",
        "margin_logits",
        "GNAP",
        "warp",
        "HeatmapStacker",
        "structure_correlation",
        "AttributeHead",
        "SpatialTransformerAlign",
    ],
)
def test_data_checks_do_not_break_the_compiled_graph(name):
    spec = SPECS_BY_NAME[name]
    fn, kwargs = spec.build(3, torch.Generator().manual_seed(0))
    if isinstance(fn, nn.Module):
        fn.eval()
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="eager", fullgraph=True)  # fails on any graph break
    expected = fn(**kwargs)
    got = compiled(**kwargs)
    for a, b in zip(floats_in(got), floats_in(expected), strict=True):
        torch.testing.assert_close(a, b)
