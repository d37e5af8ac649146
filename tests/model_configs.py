"""Small configurations of every registered model, read from the registry (``small`` and
``side_networks`` of :func:`faceaux.models.get_model_cfg`) plus small side networks.

Narrow widths, a small FAN and a small parsing network: the full models' layer counts and code
paths at a fraction of the cost.
"""

from __future__ import annotations

from faceaux.models import FAN, StackedHourGlass, get_model_cfg, list_models

ALL_MODELS = list_models()
NARROW = (8, 16, 32, 64)


def small_fan() -> FAN:
    return FAN(num_stacks=2, num_landmarks=68, num_features=16, input_size=64)


def small_parser() -> StackedHourGlass:
    return StackedHourGlass(2, 11, num_features=16, depth=3, input_size=128)


def small_kwargs(name: str) -> dict:
    """The registry's narrow configuration, with small side networks where the model has any."""
    cfg = get_model_cfg(name)
    kwargs = dict(cfg["small"])
    if "fan" in cfg["side_networks"]:
        kwargs["fan"] = small_fan()
    if "parser" in cfg["side_networks"]:
        kwargs["parsing_net"] = small_parser()
    return kwargs


def input_size(name: str) -> tuple[int, int]:
    return tuple(get_model_cfg(name)["input_size"][1:])
