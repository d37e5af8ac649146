"""Model registry: build any reference model by name, timm-style.

``register_model`` adds a builder function under its name, ``list_models`` lists the names and
``create_model`` builds one, optionally loading a state dict from a file the user supplies
(``torch.load(path, weights_only=True)``; there is no download path, the library never touches
the network).

Examples:
    >>> from faceaux.models import create_model, list_models
    >>> "iresnet50" in list_models()
    True
    >>> model = create_model("iresnet_nano", embedding_size=64).eval()
    >>> model(torch.randn(1, 3, 112, 112)).shape
    torch.Size([1, 64])
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import os
from collections.abc import Callable, Mapping
from typing import TypeVar

import torch
from torch import nn

__all__ = ["create_model", "list_models", "load_checkpoint", "register_model"]

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])

_MODELS: dict[str, Callable[..., nn.Module]] = {}

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


def register_model(fn: Builder | None = None, *, name: str | None = None):
    """Register a model builder under ``name`` (default: the function's name).

    Use as ``@register_model`` or ``@register_model(name="my_net")``. The builder takes keyword
    arguments only (the model's configuration) and returns an ``nn.Module``.

    Raises:
        ValueError: a different builder is already registered under that name.
    """

    def decorate(builder: Builder) -> Builder:
        key = name or builder.__name__
        existing = _MODELS.get(key)
        if existing is not None and existing.__qualname__ != builder.__qualname__:
            raise ValueError(f"register_model: a model named {key!r} is already registered")
        _MODELS[key] = builder
        return builder

    return decorate(fn) if fn is not None else decorate


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally filtered by a shell-style pattern.

    Args:
        pattern: e.g. ``"iresnet*"`` or ``"*gnap"``; ``None`` lists everything.

    Shape:
        No tensors: returns a sorted ``list[str]`` of names for :func:`create_model`.

    Examples:
        >>> list_models("*gnap")
        ['iresnet18_gnap', 'mobilefacenet_gnap']
    """
    _import_builtins()
    names = sorted(_MODELS)
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
    state = torch.load(os.fspath(checkpoint_path), map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(
            f"checkpoint_path: expected a state dict (a mapping of names to tensors) in "
            f"{os.fspath(checkpoint_path)!r}, received {type(state).__name__}"
        )
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
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
            f"checkpoint_path: {os.fspath(checkpoint_path)!r} does not match the model: "
            f"missing keys {first(missing)}, unexpected keys {first(unexpected)}, "
            f"shape mismatches {first(mismatched)}"
        )
    model.load_state_dict(state, strict=strict)
    return model


def create_model(
    name: str,
    *,
    checkpoint_path: str | os.PathLike | None = None,
    strict: bool = True,
    **kwargs,
) -> nn.Module:
    """Build the registered model ``name`` with its configuration ``kwargs``.

    Args:
        name: a name from ``list_models()``.
        checkpoint_path: optional path of a state dict to load after building (no download:
            the file must already be on disk).
        strict: with ``checkpoint_path``, require the keys to match exactly.
        **kwargs: passed to the model's builder (e.g. ``embedding_size=256``).

    Shape:
        The model's own contract; the recognizers map ``(B, 3, H, W)`` images (112×112 by
        default) to ``(B, embedding_size)`` embeddings (see the "Reference models" docs page).

    Raises:
        ValueError: unknown ``name`` (the message lists the closest registered names).

    Examples:
        >>> model = create_model("iresnet_nano", embedding_size=64)
        >>> model(torch.randn(2, 3, 112, 112)).shape
        torch.Size([2, 64])
    """
    _import_builtins()
    builder = _MODELS.get(name)
    if builder is None:
        close = difflib.get_close_matches(name, list(_MODELS), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"name: unknown model {name!r}{hint} (see faceaux.models.list_models() for all "
            f"{len(_MODELS)} names)"
        )
    model = builder(**kwargs)
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path, strict=strict)
    return model
