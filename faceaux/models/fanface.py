"""FAN-Face: a recognizer guided by a frozen landmark network (heatmaps + feature integration).

``papers/fanface-landmark-feature-integration.txt``, the paper's best model
FAN-Face(H2, 1-1, BL, h2l-2) (§6): the 51 internal-landmark heatmaps of FAN's hourglass 2 are
stacked with the image (eq. 1, the first convolution takes 3 + 51 channels), and the
high-to-low features of hourglass 2 are merged into the recognizer at the end of every stage
with the Basic integration Layer (eq. 2, Fig. 2–3, 1-1 connectivity). FAN stays frozen
(§4: "FAN remained fixed for the whole training procedure").

This is the worked example of :class:`faceaux.FANFeatureIntegrator`: the IResNet's code is not
touched; forward hooks on ``layer1`` … ``layer4`` (outputs at 56, 28, 14, 7 for 112×112 faces)
take FAN's ``h2l.2.64``, ``h2l.2.32``, ``h2l.2.16``, ``h2l.2.8`` (resized bilinearly).

Inputs are faces normalised to [-1, 1] (the paper's pre-processing); FAN receives them mapped to
[0, 1] and resized to 256×256 (face-alignment's convention).

Extra parameters over the plain IResNet-34 (embedding 512): 977,344 = 2.86 % (947,968 in the
four Basic Layers — see :class:`faceaux.FANIntegrationLayer` for why that exceeds the paper's
"40K to 110K" — and 29,376 in the 51 extra input channels of ``conv1``); FAN's own 2-stack
parameters are frozen and not counted (it is the landmark detector the pipeline runs anyway).

Examples:
    >>> import torch, warnings
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
from collections.abc import Sequence

import torch
from torch import nn

from faceaux.layers.heatmaps import INTERNAL_51
from faceaux.layers.integration import FANFeatureIntegrator
from faceaux.models.hourglass import FAN
from faceaux.models.iresnet import IResNet
from faceaux.models.registry import register_model

__all__ = ["FANFace", "fanface_connections", "to_unit_range"]


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Map faces normalised to [-1, 1] to FAN's [0, 1] input range: (x + 1) / 2."""
    return (images + 1.0) * 0.5


def fanface_connections(stacks: int = 2, part: str = "h2l", fan_input_size: int = 256) -> dict:
    """IResNet stage → FAN feature key of the paper's 1-1 connectivity (Fig. 2).

    Stage outputs at 56, 28, 14, 7 (112×112 faces) take the FAN feature of the hourglass level
    at the nearest resolution: 64, 32, 16, 8 for a 256×256 FAN input (``fan_input_size / 4``
    and its halvings).

    Examples:
        >>> fanface_connections()
        {'layer1': 'h2l.2.64', 'layer2': 'h2l.2.32', 'layer3': 'h2l.2.16', 'layer4': 'h2l.2.8'}
    """
    if part not in ("h2l", "l2h"):
        raise ValueError(f"part: expected 'h2l' or 'l2h', received {part!r}")
    base = fan_input_size // 4
    return {f"layer{i + 1}": f"{part}.{stacks}.{base // 2**i}" for i in range(4)}


class FANFace(nn.Module):
    """IResNet + frozen FAN through :class:`faceaux.FANFeatureIntegrator`.

    Args:
        layers: IResNet blocks per stage ((3, 4, 6, 3) for IResNet-34).
        fan: a :class:`faceaux.models.FAN` (pretrained, e.g. loaded with
            :func:`faceaux.models.load_face_alignment_checkpoint`); default a 2-stack FAN.
        fan_checkpoint: path of a face-alignment FAN state dict to load into ``fan``.
        embedding_size: D.
        variant: integration layer, ``"basic"`` (BL, the paper's best), ``"simple"``,
            ``"advanced"``.
        connectivity: ``"1-1"`` (the paper's best) or ``"1-many"``.
        heatmaps: ``"input"`` (H2), ``"all"`` (H2+) or ``"none"``.
        fan_part: ``"h2l"`` (the paper's best) or ``"l2h"`` features of the last hourglass.
        landmarks: heatmaps stacked (default the 51 internal points).
        fan_input_size: FAN's input side (256).
        dropout: IResNet's dropout before the FC.
        widths: IResNet stage widths (narrower ones for quick experiments and tests).

    With neither ``fan`` nor ``fan_checkpoint`` FAN is randomly initialised and a
    ``UserWarning`` says so: the model then runs and trains, but the landmark guidance is noise.

    Shape:
        - images: (B, 3, 112, 112) in [-1, 1]
        - output: (B, D)
        - ``forward_features``: (B, 512, 7, 7), the IResNet's pre-pooling map
        - ``forward_aux``: ``{"embedding": (B, D), "heatmaps": (B, N, 64, 64)}`` (FAN's last
          stack)
    """

    def __init__(
        self,
        layers: Sequence[int],
        *,
        fan: nn.Module | None = None,
        fan_checkpoint: str | os.PathLike | None = None,
        embedding_size: int = 512,
        variant: str = "basic",
        connectivity: str = "1-1",
        heatmaps: str = "input",
        fan_part: str = "h2l",
        landmarks: Sequence[int] | None = INTERNAL_51,
        fan_input_size: int = 256,
        dropout: float = 0.0,
        widths: Sequence[int] = (64, 128, 256, 512),
    ) -> None:
        super().__init__()
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
        num_maps = len(landmarks) if landmarks is not None else fan.out_channels
        extra = num_maps if heatmaps in ("input", "all") else 0
        backbone = IResNet(
            layers,
            widths=widths,
            embedding_size=embedding_size,
            dropout=dropout,
            in_channels=3 + extra,
        )
        num_stacks = getattr(fan, "num_stacks", 2)
        self.integrator = FANFeatureIntegrator(
            backbone,
            fan,
            fanface_connections(num_stacks, fan_part, fan_input_size),
            variant=variant,
            connectivity=connectivity,
            heatmaps=heatmaps,
            landmarks=tuple(landmarks) if landmarks is not None else None,
            fan_input_size=fan_input_size,
            input_size=(112, 112),
            in_channels=3,
            fan_preprocess=to_unit_range,
        )

    @property
    def backbone(self) -> IResNet:
        """The recognizer (with its integration hooks)."""
        return self.integrator.backbone

    @property
    def fan(self) -> nn.Module:
        """The frozen landmark network."""
        return self.integrator.fan

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embedding (B, D) of faces (B, 3, 112, 112) in [-1, 1]."""
        return self.integrator(images)

    def _run_capturing(self, images: torch.Tensor, module: nn.Module) -> tuple:
        captured: list[torch.Tensor] = []
        handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            embedding = self.integrator(images)
        finally:
            handle.remove()
        return embedding, captured[-1]

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The IResNet's pre-pooling map (after ``bn2``) with FAN integrated, (B, 512, 7, 7)."""
        return self._run_capturing(images, self.backbone.bn2)[1]

    def forward_aux(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"embedding", "heatmaps"}``: the embedding and FAN's last-stack heatmaps."""
        last = self.fan._modules[f"l{self.fan.num_stacks - 1}"]  # the heatmap 1×1 conv
        embedding, heatmaps = self._run_capturing(images, last)
        return {"embedding": embedding, "heatmaps": heatmaps}


@register_model
def fanface_iresnet34(**kwargs) -> FANFace:
    """FAN-Face(H2, 1-1, BL, h2l-2) on IResNet-34. kwargs → :class:`FANFace`."""
    return FANFace((3, 4, 6, 3), **kwargs)


@register_model
def fanface_iresnet50(**kwargs) -> FANFace:
    """FAN-Face(H2, 1-1, BL, h2l-2) on IResNet-50. kwargs → :class:`FANFace`."""
    return FANFace((3, 4, 14, 3), **kwargs)
