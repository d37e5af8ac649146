"""FSENet: global IResNet features plus part features pooled under face-parsing masks.

``papers/fsenet-part-mask-structure-correlation.txt`` (§3.2–3.6, Figs. 1, 4–6, Table 8):

- backbone module B: the ArcFace ResNet up to 28×28 (stem, stage 1, stage 2 of an IResNet:
  128 channels at 28×28) — §3.3 chooses 28×28 as the trade-off between detail and abstraction;
- global branch R: the remaining residual stages (3, 4) and the ArcFace output block → g, 512-d
  (eq. 2);
- semantic parsing network P (§3.4, Fig. 4): the 112×112 face resized (bilinear) to 128×128, a
  2-stack hourglass (:class:`faceaux.models.StackedHourGlass`, Bulat's ConvBlocks, encoder down
  to 4×4, i.e. depth 3 at 32×32) giving 11 Helen classes, up-sampled to 128×128; frozen while
  the recognizer trains (§3.7: "apart from the fixed face segmentor module");
- part mask M (§3.5, eq. 6): six parts — skin, left eye, right eye, nose, upper lip, lower lip —
  max-pooled from 128×128 to 28×28 and used as weights for :class:`faceaux.PartMaskPooling`;
- structure correlation S (§3.6, eq. 7): :class:`faceaux.StructureCorrelation` → local
  descriptor l of 6 · (128 + 2 · 5) = 828 dimensions;
- descriptor y = [g, 0.6 · l] (eq. 3 with Table 8's best 1 : 0.6 weighting), 1340-d.

Choices where the paper is open:

- Class order of the parsing output: Helen's (Smith et al. 2013) 0 background, 1 face skin,
  2 left eyebrow, 3 right eyebrow, 4 left eye, 5 right eye, 6 nose, 7 upper lip, 8 inner mouth,
  9 lower lip, 10 hair, so the six parts are channels (1, 4, 5, 6, 7, 9) (:data:`FSENET_PARTS`).
- Masks are the softmax over the 11 classes (§3.4: "the probability of corresponding image
  pixel for this label"); §3.5's mention of an L2 normalisation across channels is not applied.
- The global branch ends with ArcFace's output block (BN → dropout → FC → BN, "we resort to
  [23] architecture R"), not a bare global average pooling, so that the global branch keeps
  InsightFace's IResNet layout: ``model.backbone`` loads an InsightFace r50 state dict.
- The hourglass output (32×32, a quarter of its input like FAN's) is up-sampled bilinearly to
  the 128×128 of Fig. 4 before the softmax.

Examples:
    >>> import torch
    >>> from faceaux.models import StackedHourGlass, create_model
    >>> parser = StackedHourGlass(2, 11, num_features=16, depth=3, input_size=128)
    >>> model = create_model("fsenet_iresnet50", parsing_net=parser).eval()
    >>> out = model.forward_aux(torch.randn(1, 3, 112, 112))
    >>> out["embedding"].shape, out["global"].shape, out["local"].shape
    (torch.Size([1, 1340]), torch.Size([1, 512]), torch.Size([1, 828]))
    >>> out["parts"].shape, out["masks"].shape
    (torch.Size([1, 6, 128]), torch.Size([1, 11, 128, 128]))
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from faceaux._checks import check_tensor
from faceaux.layers.parts import PartMaskPooling, StructureCorrelation
from faceaux.models.hourglass import StackedHourGlass
from faceaux.models.iresnet import IResNet
from faceaux.models.registry import load_checkpoint, register_model

__all__ = ["FSENET_PARTS", "HELEN_CLASSES", "FSENet", "parsing_network"]

#: The 11 Helen face-parsing classes, in label order.
HELEN_CLASSES: tuple[str, ...] = (
    "background",
    "skin",
    "left_eyebrow",
    "right_eyebrow",
    "left_eye",
    "right_eye",
    "nose",
    "upper_lip",
    "inner_mouth",
    "lower_lip",
    "hair",
)

#: FSENet's six parts (§3.4): skin, left eye, right eye, nose, upper lip, lower lip.
FSENET_PARTS: tuple[int, ...] = tuple(
    HELEN_CLASSES.index(name)
    for name in ("skin", "left_eye", "right_eye", "nose", "upper_lip", "lower_lip")
)


def parsing_network(num_classes: int = 11, num_features: int = 256) -> StackedHourGlass:
    """FSENet's face-parsing network (Fig. 4): 2 hourglasses at 128×128 down to 4×4.

    Examples:
        >>> net = parsing_network(num_features=16).eval()
        >>> net(torch.randn(1, 3, 128, 128)).shape
        torch.Size([1, 11, 32, 32])
    """
    return StackedHourGlass(
        num_stacks=2, out_channels=num_classes, num_features=num_features, depth=3, input_size=128
    )


class FSENet(nn.Module):
    """Face Segmentor-Enhanced Network: descriptor ``[g, local_weight · l]``.

    Args:
        layers: IResNet blocks per stage ((3, 4, 14, 3) for IResNet-50).
        parsing_net: the face-parsing network (any module mapping (B, 3, 128, 128) to
            (B, P, h, w) class scores); default :func:`parsing_network`. It is frozen.
        parsing_checkpoint: path of a state dict for the parsing network.
        embedding_size: size of the global representation g (512).
        parts: parsing channels pooled, in order (default :data:`FSENET_PARTS`).
        local_weight: weight of l in the descriptor (Table 8: 0.6).
        parsing_size: the parsing network's input / mask size (128).
        dropout: IResNet's dropout before the FC.
        widths: IResNet stage widths; C = ``widths[1]`` (128) is the part-feature size.

    With neither ``parsing_net`` nor ``parsing_checkpoint`` the parsing network is randomly
    initialised and a ``UserWarning`` says so.

    Shape:
        - images: (B, 3, 112, 112)
        - output: (B, D + K·(C + 2(K − 1))) = (B, 1340) by default
        - ``forward_features``: (B, 512, 7, 7), the global branch's pre-pooling map
        - ``forward_aux``: ``{"embedding", "global": (B, D), "local": (B, 828),
          "parts": (B, K, C), "masks": (B, P, 128, 128) class probabilities}``
    """

    def __init__(
        self,
        layers: Sequence[int],
        *,
        parsing_net: nn.Module | None = None,
        parsing_checkpoint: str | os.PathLike | None = None,
        embedding_size: int = 512,
        parts: Sequence[int] = FSENET_PARTS,
        local_weight: float = 0.6,
        parsing_size: int = 128,
        dropout: float = 0.0,
        widths: Sequence[int] = (64, 128, 256, 512),
    ) -> None:
        super().__init__()
        if parsing_net is None and parsing_checkpoint is None:
            warnings.warn(
                "FSENet: no parsing_net= network or parsing_checkpoint= file given, so the "
                "face-parsing network is randomly initialised and its part masks are "
                "meaningless; load a trained parser with parsing_checkpoint=",
                UserWarning,
                stacklevel=3,
            )
        if parsing_net is None:
            parsing_net = parsing_network()
        if parsing_checkpoint is not None:
            load_checkpoint(parsing_net, parsing_checkpoint)
        self.backbone = IResNet(
            layers, widths=widths, embedding_size=embedding_size, dropout=dropout
        )
        self.parsing_net = parsing_net.requires_grad_(False).eval()
        self.parsing_size = int(parsing_size)
        self.local_weight = float(local_weight)
        self.part_pooling = PartMaskPooling(
            parts=tuple(parts), mask_activation="softmax", mode="weighted", mask_resize="max"
        )
        self.structure = StructureCorrelation(flatten=True)

    def train(self, mode: bool = True) -> FSENet:
        super().train(mode)
        self.parsing_net.eval()  # frozen: BatchNorm statistics never change
        return self

    def parse(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores (B, P, 128, 128) of the frozen parsing network (no gradients).

        Their softmax over P is the parsing probability map; :class:`faceaux.PartMaskPooling`
        applies it (``mask_activation="softmax"``) before selecting the six parts.
        """
        size = (self.parsing_size, self.parsing_size)
        with torch.no_grad():
            resized = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
            scores = self.parsing_net(resized)
            if tuple(scores.shape[-2:]) != size:
                scores = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
            return scores

    def _branches(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        check_tensor(images, "images", "(B, 3, 112, 112)", sizes=(None, 3, 112, 112))
        net = self.backbone
        backbone_features = net.layer2(net.layer1(net.stem(images)))  # (B, 128, 28, 28)
        global_map = net.layer4(net.layer3(backbone_features))
        global_embedding = net.pool(global_map)
        scores = self.parse(images)
        parts = self.part_pooling(backbone_features, scores)
        local = self.structure(parts)
        embedding = torch.cat([global_embedding, self.local_weight * local], dim=1)
        return {
            "embedding": embedding,
            "global": global_embedding,
            "local": local,
            "parts": parts,
            "masks": scores.softmax(dim=1),
            "global_map": global_map,
        }

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Descriptor ``[g, 0.6 · l]`` (B, 1340) of faces (B, 3, 112, 112)."""
        return self._branches(images)["embedding"]

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The global branch's pre-pooling map (after ``bn2``), (B, 512, 7, 7)."""
        check_tensor(images, "images", "(B, 3, 112, 112)", sizes=(None, 3, 112, 112))
        return self.backbone.forward_features(images)

    def forward_aux(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Descriptor, its global and local halves, the part features and the parsing masks."""
        out = self._branches(images)
        out.pop("global_map")
        return out


@register_model
def fsenet_iresnet50(**kwargs) -> FSENet:
    """FSENet on IResNet-50 (28×28 part features of 128 channels). kwargs → :class:`FSENet`."""
    return FSENet((3, 4, 14, 3), **kwargs)
