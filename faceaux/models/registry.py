"""Model registry: build any reference model by name, timm-style.

``register_model`` adds a builder function under its name together with the model's
configuration (input size, normalisation, embedding size, side networks it needs, the plain
backbone it is compared with …), ``list_models`` lists the names, ``get_model_cfg`` returns a
configuration and ``create_model`` builds one — attaching that configuration as
``model.pretrained_cfg``, timm's name — optionally loading a state dict from a file the user
supplies (``torch.load(path, weights_only=True)``; there is no download path, the library never
touches the network). The registry is the one table that ``faceaux bench``, the demo and the
tests read.

timm's conventions that hold: ``create_model(name, pretrained=False, num_classes=...,
features_only=..., out_indices=..., checkpoint_path=...)``, ``list_models(pattern)``,
``model.pretrained_cfg`` (``input_size``, ``mean``, ``std``), and on the backbones
``feature_info``, ``forward_features``/``forward_head``, ``forward_intermediates``,
``set_grad_checkpointing`` and ``reset_classifier(0)``. Where faceaux differs: no weights are
downloaded (``pretrained=True`` raises; give ``checkpoint_path``), and a model's output is the
embedding, so ``num_classes`` may only be 0 (the margin head that trains the identities takes
the labels and lives outside the model).

Examples:
    >>> from faceaux.models import create_model, list_models
    >>> "iresnet50" in list_models()
    True
    >>> model = create_model("iresnet_nano", embedding_size=64).eval()
    >>> model(torch.randn(1, 3, 112, 112)).shape
    torch.Size([1, 64])
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import importlib
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from faceaux.models.features import no_classifier_message, resolve_indices

__all__ = [
    "DEFAULT_CFG",
    "StageFeatures",
    "create_model",
    "get_model_cfg",
    "list_models",
    "load_checkpoint",
    "register_model",
]

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_CFGS: dict[str, dict[str, Any]] = {}

DEFAULT_CFG: dict[str, Any] = {
    "input_size": (3, 112, 112),
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "embedding_size": 512,
    "side_networks": (),
    "baseline": None,
    "paper": None,
    "small": {},
}
"""Every registered model's configuration, with these defaults (timm's ``pretrained_cfg`` keys
where timm has one):

- ``input_size``: ``(C, H, W)`` of the images the model is built for.
- ``mean``, ``std``: per-channel normalisation of images in [0, 1]: the model expects
  ``(image − mean) / std`` — (0.5, 0.5) is InsightFace's ``(x − 127.5) / 127.5`` to [−1, 1].
- ``embedding_size``: D of ``model(images)`` with the default arguments.
- ``side_networks``: frozen networks the model needs to be meaningful (``"fan"``, ``"parser"``);
  built randomly (with a warning) when not given.
- ``baseline``: the plain backbone the model's overhead is measured against (``faceaux bench``).
- ``paper``: the paper and table the configuration reproduces.
- ``small``: builder arguments for a narrow version with the same structure (tests, quick runs).

Shape:
    A ``dict``; no tensors.
"""

# Modules whose import registers the built-in models. Imported lazily by ``list_models`` and
# ``create_model`` so that ``faceaux.models.registry`` can be imported by the model files
# themselves without a circular import.
_BUILTIN_MODULES: tuple[str, ...] = (
    "faceaux.models.iresnet",
    "faceaux.models.mobilefacenet",
    "faceaux.models.fanface",
    "faceaux.models.fsenet",
    "faceaux.models.stnface",
    "faceaux.models.multitask",
)


def _import_builtins() -> None:
    for module_name in _BUILTIN_MODULES:
        importlib.import_module(module_name)


def register_model(fn: Builder | None = None, *, name: str | None = None, **cfg: Any):
    """Register a model builder under ``name`` (default: the function's name) with its config.

    Use as ``@register_model`` or ``@register_model(name="my_net", input_size=(3, 112, 96))``.
    The builder takes keyword arguments only (the model's configuration) and returns an
    ``nn.Module``; ``cfg`` overrides entries of :data:`DEFAULT_CFG`.

    Shape:
        No tensors: returns the builder (or a decorator).

    Raises:
        ValueError: a different builder is already registered under that name, or ``cfg`` has a
            key :data:`DEFAULT_CFG` does not know.
    """
    unknown = sorted(set(cfg) - set(DEFAULT_CFG))
    if unknown:
        raise ValueError(
            f"register_model: unknown config keys {unknown}; known: {sorted(DEFAULT_CFG)}"
        )

    def decorate(builder: Builder) -> Builder:
        key = name or builder.__name__
        existing = _MODELS.get(key)
        if existing is not None and existing.__qualname__ != builder.__qualname__:
            raise ValueError(f"register_model: a model named {key!r} is already registered")
        _MODELS[key] = builder
        _CFGS[key] = {**copy.deepcopy(DEFAULT_CFG), **copy.deepcopy(cfg), "name": key}
        return builder

    return decorate(fn) if fn is not None else decorate


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name: expected a model name (str), received {type(name).__name__}")
    _import_builtins()
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"name: unknown model {name!r}{hint} (see faceaux.models.list_models() for all "
            f"{len(_MODELS)} names)"
        )
    return name


def get_model_cfg(name: str) -> dict[str, Any]:
    """The configuration of registered model ``name`` (a copy; keys of :data:`DEFAULT_CFG`).

    Args:
        name: a name from :func:`list_models`.

    Shape:
        No tensors: a ``dict``; ``input_size`` is ``(C, H, W)``.

    Examples:
        >>> cfg = get_model_cfg("mtl_attr_fast")
        >>> cfg["input_size"], cfg["embedding_size"], cfg["baseline"]
        ((3, 112, 96), 1024, None)
    """
    return copy.deepcopy(_CFGS[_check_name(name)])


def list_models(pattern: str | None = None, pretrained: bool = False) -> list[str]:
    """Sorted names of the registered models, optionally filtered by a shell-style pattern.

    Args:
        pattern: e.g. ``"iresnet*"`` or ``"*gnap"``; ``None`` lists everything.
        pretrained: timm's filter for models with downloadable weights: faceaux has none, so
            ``True`` gives ``[]`` (weights come from files you give, ``checkpoint_path=``).

    Shape:
        No tensors: returns a sorted ``list[str]`` of names for :func:`create_model`.

    Examples:
        >>> list_models("*gnap")
        ['iresnet18_gnap', 'mobilefacenet_gnap']
    """
    if pattern is not None and not isinstance(pattern, str):
        raise TypeError(f"pattern: expected a str or None, received {type(pattern).__name__}")
    _import_builtins()
    names = [] if pretrained else sorted(_MODELS)
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return names


def load_checkpoint(
    model: nn.Module, checkpoint_path: str | os.PathLike, *, strict: bool = True
) -> nn.Module:
    """Load a state dict saved with ``torch.save(model.state_dict(), path)`` into ``model``.

    The file is read with ``torch.load(path, map_location="cpu", weights_only=True)``, so it may
    contain only tensors and plain containers. A ``"module."`` prefix (left by
    ``DistributedDataParallel``) is stripped.

    Raises:
        ValueError: the file does not hold a mapping of names to tensors, a tensor's shape
            differs from the model's, or (``strict=True``) keys are missing / unexpected; the
            message lists them.
    """
    path = os.fspath(checkpoint_path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise ValueError(
            f"checkpoint_path: could not read {path!r} as a PyTorch state dict with "
            f"torch.load(weights_only=True): {error}"
        ) from error
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(
            f"checkpoint_path: expected a state dict (a mapping of str names to tensors) in "
            f"{path!r}, received {type(state).__name__}"
            + (" with non-str keys or non-tensor values" if isinstance(state, Mapping) else "")
        )
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    convert = getattr(model, "convert_state_dict", None)
    if callable(convert):
        state = convert(state)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if mismatched or (strict and (missing or unexpected)):

        def first(items: list[str]) -> str:
            return f"{items[:10]}{' …' if len(items) > 10 else ''}"

        raise ValueError(
            f"checkpoint_path: {path!r} does not match the model: "
            f"missing keys {first(missing)}, unexpected keys {first(unexpected)}, "
            f"shape mismatches {first(mismatched)}"
        )
    model.load_state_dict(state, strict=strict)
    return model


class StageFeatures(nn.Module):
    """timm's ``features_only`` model: the stage feature maps of a backbone, as a list.

    Wraps a model that speaks the stage contract (:class:`faceaux.models.StagedBackbone`: every
    registered backbone) and returns the outputs of the stages ``out_indices`` with
    ``forward_intermediates(images, out_indices, intermediates_only=True)``: the stages after
    the last requested one, and the output stage, do not run. ``feature_info`` describes the
    returned maps, with timm's ``channels()``, ``reduction()`` and ``module_name()``. The
    wrapped model is ``.model``, so state-dict keys gain a ``model.`` prefix (load weights
    before wrapping: ``create_model(name, features_only=True, checkpoint_path=...)`` does).

    Args:
        model: a backbone with ``feature_info`` and ``forward_intermediates``.
        out_indices: timm's stage selection: ``None`` all stages, an int n the last n, or a
            sequence of indices (negative ones count from the end).

    Shape:
        - images: ``(B, C, H, W)``
        - output: a list with one ``(B, C_i, H / r_i, W / r_i)`` map per selected stage

    Examples:
        >>> features = create_model("iresnet_nano", features_only=True, out_indices=(1, -1))
        >>> [tuple(f.shape) for f in features.eval()(torch.rand(1, 3, 112, 112))]
        [(1, 32, 28, 28), (1, 128, 7, 7)]
        >>> features.feature_info.channels(), features.feature_info.reduction()
        ([32, 128], [4, 16])
    """

    def __init__(self, model: nn.Module, out_indices: int | Sequence[int] | None = None) -> None:
        super().__init__()
        info = getattr(model, "feature_info", None)
        if not callable(getattr(model, "forward_intermediates", None)) or not info:
            raise ValueError(
                f"features_only: {type(model).__name__} does not give its stage maps "
                "(feature_info and forward_intermediates); the registered backbones do, while "
                "the papers' FaceRecognizer configurations run side networks and taps inside "
                "their stages: take create_model(backbone_name, features_only=True)"
            )
        self.model = model
        self.out_indices = resolve_indices(out_indices, len(info))
        self.feature_info = _FeatureInfo(dict(info[i], index=i) for i in self.out_indices)
        if hasattr(model, "pretrained_cfg"):
            self.pretrained_cfg = model.pretrained_cfg

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The selected stages' maps, in stage order."""
        return self.model.forward_intermediates(images, self.out_indices, intermediates_only=True)


class _FeatureInfo(list):
    """A list of stage dicts with timm's ``FeatureInfo`` accessors."""

    def channels(self) -> list[int]:
        return [stage["num_chs"] for stage in self]

    def reduction(self) -> list[int]:
        return [stage["reduction"] for stage in self]

    def module_name(self) -> list[str]:
        return [stage["module"] for stage in self]


def create_model(
    name: str,
    pretrained: bool = False,
    *,
    checkpoint_path: str | os.PathLike | None = None,
    strict: bool = True,
    num_classes: int | None = None,
    features_only: bool = False,
    out_indices: int | Sequence[int] | None = None,
    **kwargs,
) -> nn.Module:
    """Build the registered model ``name`` with its configuration ``kwargs``.

    timm's signature, where it means the same thing (see the module docstring for what holds).

    Args:
        name: a name from ``list_models()``.
        pretrained: must be ``False``: faceaux downloads nothing. Give the weights you have
            with ``checkpoint_path`` (InsightFace's IResNet backbones load as they are).
        checkpoint_path: optional path of a state dict to load after building (no download:
            the file must already be on disk).
        strict: with ``checkpoint_path``, require the keys to match exactly.
        num_classes: ``None`` or 0: the model ends in the embedding (timm's ``num_classes=0``);
            a classifier over identities is a margin head outside the model, so other values
            raise.
        features_only: return a :class:`StageFeatures` over the model: ``model(images)`` is
            then the list of stage feature maps (timm's ``features_only``); backbones only.
        out_indices: with ``features_only``, the stages to return (timm's convention; default
            all).
        **kwargs: passed to the model's builder (e.g. ``embedding_size=256``).

    The model gets ``model.pretrained_cfg``: its :func:`get_model_cfg` configuration, with
    ``embedding_size`` the built model's (``model.embedding_size``) and ``input_size`` updated
    from ``kwargs`` when given.

    Shape:
        The model's own contract; the recognizers map ``(B, 3, H, W)`` images (112×112 by
        default) to ``(B, embedding_size)`` embeddings (see the "Reference models" docs page);
        with ``features_only``, to a list of ``(B, C_i, h_i, w_i)`` stage maps.

    Raises:
        ValueError: unknown ``name`` (the message lists the closest registered names),
            ``pretrained=True``, ``num_classes`` other than 0, ``features_only`` for a model
            without the stage contract, bad ``out_indices``, or a checkpoint that does not match.

    Examples:
        >>> model = create_model("iresnet_nano", embedding_size=64)
        >>> model(torch.randn(2, 3, 112, 112)).shape
        torch.Size([2, 64])
        >>> model.pretrained_cfg["input_size"], model.pretrained_cfg["mean"]
        ((3, 112, 112), (0.5, 0.5, 0.5))
    """
    if pretrained is not False:
        raise ValueError(
            f"pretrained: faceaux never downloads weights (received pretrained={pretrained!r}); "
            "pass checkpoint_path= a state dict you have, e.g. InsightFace's backbone.pth for "
            "an IResNet"
        )
    if num_classes not in (None, 0):
        raise ValueError(no_classifier_message(num_classes))
    if out_indices is not None and not features_only:
        raise ValueError("out_indices: only used with features_only=True")
    builder = _MODELS[_check_name(name)]
    model = builder(**kwargs)
    cfg = get_model_cfg(name)
    size = getattr(model, "embedding_size", kwargs.get("embedding_size"))
    if isinstance(size, int):
        cfg["embedding_size"] = size
    if "input_size" in kwargs:
        cfg["input_size"] = (cfg["input_size"][0], *tuple(kwargs["input_size"]))
    model.pretrained_cfg = cfg
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path, strict=strict)
    if features_only:
        return StageFeatures(model, out_indices)
    return model
