"""Small configurations of every registered model, shared by the model tests.

Narrow widths, a small FAN and a small parsing network: the full models' layer counts, code
paths and hooks at a fraction of the cost.
"""

from __future__ import annotations

from faceaux.models import FAN, StackedHourGlass

ALL_MODELS = [
    "fanface_iresnet34",
    "fanface_iresnet50",
    "fsenet_iresnet50",
    "iresnet100",
    "iresnet18",
    "iresnet18_gnap",
    "iresnet34",
    "iresnet50",
    "iresnet_nano",
    "lresnet18e",
    "mobilefacenet",
    "mobilefacenet_gnap",
    "mtl_attr_fast",
    "mtl_attr_full",
    "stnface_iresnet34",
]
NARROW = (8, 16, 32, 64)


def small_fan() -> FAN:
    return FAN(num_stacks=2, num_landmarks=68, num_features=16, input_size=64)


def small_parser() -> StackedHourGlass:
    return StackedHourGlass(2, 11, num_features=16, depth=3, input_size=128)


def small_kwargs(name: str) -> dict:
    """Narrow configurations with the full models' structure, for fast forward/backward."""
    if name.startswith(("iresnet", "lresnet")) and name != "iresnet_nano":
        return {"widths": NARROW, "embedding_size": 32}
    if name.startswith("fanface"):
        return {"fan": small_fan(), "fan_input_size": 64, "widths": NARROW}
    if name.startswith("fsenet"):
        return {"parsing_net": small_parser(), "widths": NARROW}
    if name.startswith("stnface"):
        return {"widths": NARROW}
    if name.startswith("mtl"):
        return {"widths": NARROW, "embedding_size": 64, "attribute_hidden": 32}
    return {}


def input_size(name: str) -> tuple[int, int]:
    return (112, 96) if name.startswith("mtl") else (112, 112)
