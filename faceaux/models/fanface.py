"""FAN-Face: a recognizer guided by a frozen landmark network (heatmaps + feature integration).

Yang, Bulat & Tzimiropoulos, "FAN-Face: a simple orthogonal improvement to deep face
recognition" (AAAI 2020), the paper's best model FAN-Face(H2, 1-1, BL, h2l-2) (§6): the 51
internal-landmark heatmaps of FAN's hourglass 2 are stacked with the image (eq. 1, the first
convolution takes 3 + 51 channels), and the high-to-low features of hourglass 2 are merged into
the recognizer at the end of every stage with the Basic integration Layer (eq. 2, Fig. 2–3, 1-1
connectivity). FAN stays frozen (§4: "FAN remained fixed for the whole training procedure").

The models are :class:`faceaux.models.FaceRecognizer` configurations: an IResNet whose stage
outputs ``layer1`` … ``layer4`` (56, 28, 14, 7 for 112×112 faces) take FAN's ``h2l.2.64``,
``h2l.2.32``, ``h2l.2.16``, ``h2l.2.8`` (resized bilinearly). Every ablation of the paper is an
argument: ``heatmaps`` (none / H2 / H2+), ``heatmap_key`` (H1 / H2: which hourglass's heatmaps),
``fan_part`` (h2l / l2h), ``variant`` (BL / SL / AL), ``connectivity`` (1-1 / 1-many).

Heatmaps are stacked as FAN gives them (``heatmap_normalize=None``): the paper re-samples and
stacks the heatmaps themselves, so a confident landmark (peak 0.84) and an unsure one (0.009)
stay distinguishable. ``heatmap_normalize="max"`` rescales each map to peak 1 (faceaux 0.1's
behaviour).

Inputs are faces normalised to [-1, 1] (the paper's pre-processing); FAN receives them mapped to
[0, 1] and resized to 256×256 (face-alignment's convention).

Extra parameters over the plain IResNet-34 (embedding 512): 977,344 = 2.86 % (947,968 in the
four Basic Layers — see :class:`faceaux.FANIntegrationLayer` for why that exceeds the paper's
"40K to 110K" — and 29,376 in the 51 extra input channels of ``conv1``); FAN's own 2-stack
parameters are frozen and not counted (it is the landmark detector the pipeline runs anyway).

Examples:
    >>> import torch
    >>> from faceaux.models import FAN, create_model
    >>> fan = FAN(num_stacks=2, num_features=32, input_size=64)  # a small FAN for the example
    >>> model = create_model("fanface_iresnet34", fan=fan, fan_input_size=64).eval()
    >>> out = model.forward_aux(torch.rand(1, 3, 112, 112) * 2 - 1)
    >>> out["embedding"].shape, out["heatmaps"].shape
    (torch.Size([1, 512]), torch.Size([1, 68, 16, 16]))
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence

from torch import nn

from faceaux.conventions import INTERNAL_51
from faceaux.layers.heatmaps import HeatmapStacker
from faceaux.models.adapter import BackboneAdapter
from faceaux.models.hourglass import FAN
from faceaux.models.iresnet import IResNet
from faceaux.models.recognizer import FaceRecognizer
from faceaux.models.registry import register_model

__all__ = ["FANFeatureIntegrator", "fanface", "fanface_connections"]


def fanface_connections(stacks: int = 2, part: str = "h2l", fan_input_size: int = 256) -> dict:
    """IResNet stage → FAN feature key of the paper's 1-1 connectivity (Fig. 2).

    Stage outputs at 56, 28, 14, 7 (112×112 faces) take the FAN feature of the hourglass level
    at the nearest resolution: 64, 32, 16, 8 for a 256×256 FAN input (``fan_input_size / 4``
    and its halvings).

    Shape:
        No tensors: a ``dict`` from stage name to FAN feature key.

    Examples:
        >>> fanface_connections()
        {'layer1': 'h2l.2.64', 'layer2': 'h2l.2.32', 'layer3': 'h2l.2.16', 'layer4': 'h2l.2.8'}
    """
    if part not in ("h2l", "l2h"):
        raise ValueError(f"part: expected 'h2l' or 'l2h', received {part!r}")
    base = fan_input_size // 4
    return {f"layer{i + 1}": f"{part}.{stacks}.{base // 2**i}" for i in range(4)}


def fanface(
    layers: Sequence[int],
    *,
    fan: FAN | None = None,
    fan_checkpoint: str | os.PathLike | None = None,
    embedding_size: int = 512,
    variant: str = "basic",
    connectivity: str = "1-1",
    heatmaps: str = "input",
    heatmap_key: str | None = None,
    heatmap_normalize: str | None = None,
    fan_part: str | None = "h2l",
    landmarks: Sequence[int] | None = INTERNAL_51,
    fan_input_size: int = 256,
    gamma: float = 1.0,
    dropout: float = 0.0,
    widths: Sequence[int] = (64, 128, 256, 512),
    pooling: str = "fc",
) -> FaceRecognizer:
    """FAN-Face on an IResNet: a :class:`~faceaux.models.FaceRecognizer` configuration.

    Args:
        layers: IResNet blocks per stage ((3, 4, 6, 3) for IResNet-34).
        fan: a :class:`faceaux.models.FAN` (pretrained, e.g. loaded with
            :func:`faceaux.models.load_face_alignment_checkpoint`); default a 2-stack FAN.
        fan_checkpoint: path of a face-alignment FAN state dict to load into ``fan``.
        embedding_size: D.
        variant: integration layer, ``"basic"`` (BL, the paper's best), ``"simple"`` (SL),
            ``"advanced"`` (AL).
        connectivity: ``"1-1"`` (the paper's best) or ``"1-many"``.
        heatmaps: ``"input"`` (H2), ``"all"`` (H2+: also at every stage) or ``"none"``.
        heatmap_key: FAN output whose heatmaps are stacked: ``"heatmaps.2"`` (H2, default: the
            last stack) or ``"heatmaps.1"`` (H1).
        heatmap_normalize: ``None`` (the paper: heatmaps as FAN gives them) or ``"max"``.
        fan_part: ``"h2l"`` (the paper's best), ``"l2h"`` or ``None`` (no feature integration:
            heatmap stacking only).
        landmarks: heatmaps stacked (default the 51 internal points).
        fan_input_size: FAN's input side (256).
        gamma: γ of eq. 2.
        dropout: IResNet's dropout before the FC.
        widths: IResNet stage widths (narrower ones for quick experiments and tests).
        pooling: the IResNet output stage, ``"fc"``, ``"gap"`` or ``"gnap"``.

    With neither ``fan`` nor ``fan_checkpoint`` FAN is randomly initialised and a
    ``UserWarning`` says so: the model then runs and trains, but the landmark guidance is noise.

    Shape:
        - images: (B, 3, 112, 112) in [-1, 1]
        - output: (B, D)
        - ``forward_aux``: ``{"embedding": (B, D), "heatmaps": (B, N, 64, 64)}`` (FAN's)
    """
    if heatmaps not in ("input", "all", "none"):
        raise ValueError(f"heatmaps: expected 'input', 'all' or 'none', received {heatmaps!r}")
    if fan is None and fan_checkpoint is None:
        warnings.warn(
            "FAN-Face: no fan= network or fan_checkpoint= file given, so FAN is randomly "
            "initialised and its heatmaps/features carry no landmark information; load a "
            "face-alignment 2D-FAN checkpoint with fan_checkpoint=",
            UserWarning,
            stacklevel=3,
        )
    if fan is None:
        fan = FAN(num_stacks=2, num_landmarks=68, input_size=fan_input_size)
    if fan_checkpoint is not None:
        fan.load_face_alignment_checkpoint(fan_checkpoint)
    backbone = IResNet(
        layers, widths=widths, embedding_size=embedding_size, dropout=dropout, pooling=pooling
    )
    stacker = None
    if heatmaps != "none":
        selected = tuple(landmarks) if landmarks is not None else None
        stacker = HeatmapStacker(selected, normalize=heatmap_normalize)
    stacks = getattr(fan, "num_stacks", 2)
    connections = fanface_connections(stacks, fan_part or "h2l", fan_input_size)
    if fan_part is None:
        connections = dict.fromkeys(connections) if heatmaps == "all" else {}
    return FaceRecognizer(
        backbone,
        heatmaps=stacker,
        fan=fan,
        integration=connections,
        integration_variant=variant,
        connectivity=connectivity,
        gamma=gamma,
        stage_heatmaps=heatmaps == "all",
        heatmap_key=heatmap_key,
        fan_input_size=fan_input_size,
        image_range=(-1.0, 1.0),
    )


class FANFeatureIntegrator(FaceRecognizer):
    """Bolt a frozen FAN onto any network that makes its own output: stacking plus integration.

    FAN-Face (§3.1–3.3, Fig. 1–2) for a network you do not want to edit: it is wrapped in a
    :class:`faceaux.models.BackboneAdapter` with ``head=None`` (the adapter's forward hooks let
    :class:`faceaux.models.FaceRecognizer` replace the named modules' outputs
    ỹ_k = y_k + γ·f(x_l, y_k) with a :class:`faceaux.FANIntegrationLayer` each) and the
    network's own output is returned. FAN runs once per call under ``torch.no_grad()`` on the
    input mapped from ``image_range`` to [0, 1] and resized to ``fan_input_size``; it stays frozen.
    For a faceaux backbone, or to get an embedding from a face output stage, build a
    :class:`~faceaux.models.FaceRecognizer` directly.

    The paper's best model FAN-Face(H2, 1-1, BL, h2l-2) on an IResNet-34 is::

        FANFeatureIntegrator(iresnet34(), FAN(), {"layer1": "h2l.2.64", "layer2": "h2l.2.32",
            "layer3": "h2l.2.16", "layer4": "h2l.2.8"})

    Args:
        backbone: the network; its first convolution is grown for the stacked heatmaps (zero
            filters) unless it already takes ``in_channels`` + K channels.
        fan: the landmark network (``forward_features(x) -> dict``, e.g. :class:`FAN`).
        connections: module name → FAN feature key (``"h2l.2.64"``), or ``None`` for a
            heatmap-only point (``heatmaps="all"``).
        variant: ``"basic"``, ``"simple"`` or ``"advanced"``.
        connectivity: ``"1-1"`` (after each named module) or ``"1-many"`` (after each of its
            direct children, each with a learnable γ_k).
        heatmaps: ``"input"`` (H2), ``"all"`` (H2+) or ``"none"``.
        landmarks: heatmap indices to stack (default the 51 internal points); ``None``: all.
        gamma: γ of eq. 2 (initial γ_k for ``"1-many"``).
        heatmap_key: FAN output with the heatmaps (default the last stack's).
        heatmap_normalize: ``None`` (the paper: heatmaps as they are) or ``"max"``.
        fan_input_size: FAN's square input side (256).
        input_size: (H, W) of the input, for the construction-time dry run.
        in_channels: C, image channels.
        image_range: the inputs' value range; FAN receives them mapped to [0, 1] (default
            (0, 1): FAN sees the input as it is).

    Shape:
        - x: (B, C, H, W)
        - output: whatever the network returns

    Examples:
        >>> import torch
        >>> backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        ...                          nn.Conv2d(8, 8, 3, stride=2, padding=1))
        >>> fan = FAN(num_stacks=2, num_landmarks=68, num_features=16, input_size=64)
        >>> model = FANFeatureIntegrator(backbone, fan, {"1": "h2l.2.16", "2": "h2l.2.8"},
        ...                              fan_input_size=64, input_size=(16, 16))
        >>> model(torch.rand(2, 3, 16, 16)).shape, backbone[0].in_channels
        (torch.Size([2, 8, 8, 8]), 54)
    """

    def __init__(
        self,
        backbone: nn.Module,
        fan: nn.Module,
        connections: Mapping[str, str | None],
        *,
        variant: str = "basic",
        connectivity: str = "1-1",
        heatmaps: str = "input",
        landmarks: Sequence[int] | None = INTERNAL_51,
        gamma: float = 1.0,
        heatmap_key: str | None = None,
        heatmap_normalize: str | None = None,
        fan_input_size: int = 256,
        input_size: Sequence[int] = (112, 112),
        in_channels: int = 3,
        image_range: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        if heatmaps not in ("input", "all", "none"):
            raise ValueError(f"heatmaps: expected 'input', 'all' or 'none', received {heatmaps!r}")
        if not isinstance(connections, Mapping) or not connections:
            raise ValueError(f"connections: expected a non-empty mapping, received {connections!r}")
        stacker = None
        if heatmaps != "none":
            selected = tuple(landmarks) if landmarks is not None else None
            stacker = HeatmapStacker(selected, normalize=heatmap_normalize)
        adapter = BackboneAdapter(backbone, list(connections), head=None, input_size=input_size)
        super().__init__(
            adapter,
            heatmaps=stacker,
            fan=fan,
            integration=connections,
            integration_variant=variant,
            connectivity=connectivity,
            gamma=gamma,
            stage_heatmaps=heatmaps == "all",
            heatmap_key=heatmap_key,
            fan_input_size=fan_input_size,
            image_range=image_range,
            input_size=input_size,
            in_channels=in_channels,
        )


_CFG = {
    "side_networks": ("fan",),
    "paper": "FAN-Face (AAAI 2020), FAN-Face(H2, 1-1, BL, h2l-2), §6",
    "small": {"widths": (8, 16, 32, 64), "fan_input_size": 64},
}


@register_model(baseline="iresnet34", **_CFG)
def fanface_iresnet34(**kwargs) -> FaceRecognizer:
    """FAN-Face(H2, 1-1, BL, h2l-2) on IResNet-34. kwargs → :func:`fanface`."""
    return fanface((3, 4, 6, 3), **kwargs)


@register_model(baseline="iresnet50", **_CFG)
def fanface_iresnet50(**kwargs) -> FaceRecognizer:
    """FAN-Face(H2, 1-1, BL, h2l-2) on IResNet-50. kwargs → :func:`fanface`."""
    return fanface((3, 4, 14, 3), **kwargs)
