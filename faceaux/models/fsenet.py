"""FSENet: global IResNet features plus part features pooled under face-parsing masks.

Cheng et al., "Face Segmentor-Enhanced Deep Feature Learning for Face Recognition", IEEE T-BIOM
2019, doi:10.1109/TBIOM.2019.2936624 (§3.2–3.6, Figs. 1, 4–6, Table 8):

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
- descriptor y = [g / ‖g‖, 0.6 · l / ‖l‖] (eq. 3 with Table 8's best 1 : 0.6 weighting; §4.7.2
  L2-normalises the global representation g; Table 8 implies l is on its scale), 1340-d.

The model is a :class:`faceaux.models.FaceRecognizer` configuration (a tap on stage 2 feeds the
part pooling while the backbone continues), so every ablation is an argument: the part-feature
resolution (Table 12: ``part_stage`` 0/1/2 = 56/28/14), the pooling (Table 13: ``pooling_mode``,
``pooling_normalize``), the correlation step (``structure``), the fusion weight (Table 8:
``local_weight``); global and local alone (Table 7) are ``forward_aux``'s ``"global"`` and
``"local"``.

Choices where the paper is open:

- Class order of the parsing output: Helen's (Smith et al. 2013) 0 background, 1 face skin,
  2 left eyebrow, 3 right eyebrow, 4 left eye, 5 right eye, 6 nose, 7 upper lip, 8 inner mouth,
  9 lower lip, 10 hair, so the six parts are channels (1, 4, 5, 6, 7, 9)
  (:data:`faceaux.conventions.FSENET_PARTS`).
- Masks are the softmax over the 11 classes (§3.4: "the probability of corresponding image
  pixel for this label"); §3.5's mention of an L2 normalisation across channels is not applied.
- The global branch ends with ArcFace's output block (BN → dropout → FC → BN, "we resort to
  [23] architecture R") by default, so that it keeps InsightFace's IResNet layout:
  ``model.backbone`` loads an InsightFace r50 state dict. §4.7.2 speaks of "the ArcFace
  architecture with the global average pooling layer"; ``pooling="gap"`` builds that reading.
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

from torch import nn

from faceaux.conventions import FSENET_PARTS
from faceaux.layers.parts import PartMaskPooling, StructureCorrelation
from faceaux.models.hourglass import StackedHourGlass
from faceaux.models.iresnet import IResNet
from faceaux.models.recognizer import FaceRecognizer
from faceaux.models.registry import load_checkpoint, register_model

__all__ = ["fsenet", "parsing_network"]


def parsing_network(num_classes: int = 11, num_features: int = 256) -> StackedHourGlass:
    """FSENet's face-parsing network (Fig. 4): 2 hourglasses at 128×128 down to 4×4.

    Shape:
        (B, 3, 128, 128) → class scores (B, num_classes, 32, 32).

    Examples:
        >>> net = parsing_network(num_features=16).eval()
        >>> net(torch.randn(1, 3, 128, 128)).shape
        torch.Size([1, 11, 32, 32])
    """
    return StackedHourGlass(
        num_stacks=2, out_channels=num_classes, num_features=num_features, depth=3, input_size=128
    )


def fsenet(
    layers: Sequence[int],
    *,
    parsing_net: nn.Module | None = None,
    parsing_checkpoint: str | os.PathLike | None = None,
    embedding_size: int = 512,
    parts: Sequence[int] = FSENET_PARTS,
    local_weight: float = 0.6,
    normalize_global: bool = True,
    normalize_local: bool = True,
    part_stage: int | str = 1,
    pooling_mode: str = "weighted",
    pooling_normalize: bool = True,
    structure: bool = True,
    parsing_size: int = 128,
    dropout: float = 0.0,
    widths: Sequence[int] = (64, 128, 256, 512),
    pooling: str = "fc",
) -> FaceRecognizer:
    """FSENet on an IResNet: descriptor ``[g/‖g‖, local_weight · l/‖l‖]``.

    Args:
        layers: IResNet blocks per stage ((3, 4, 14, 3) for IResNet-50).
        parsing_net: the face-parsing network (any module mapping (B, 3, 128, 128) to
            (B, P, h, w) class scores); default :func:`parsing_network`. It is frozen.
        parsing_checkpoint: path of a state dict for the parsing network.
        embedding_size: size of the global representation g (512).
        parts: parsing channels pooled, in order (default
            :data:`faceaux.conventions.FSENET_PARTS`).
        local_weight: weight of l in the descriptor (Table 8: 0.6).
        normalize_global: L2-normalise g first (§4.7.2).
        normalize_local: L2-normalise l too (Table 8 implies it; see
            :class:`faceaux.FaceRecognizer`); ``False``: ``[ĝ, w·l]``.
        part_stage: IResNet stage whose output is pooled: 1 (``layer2``, 28×28, the paper's),
            0 (56×56) or 2 (14×14) — Table 12.
        pooling_mode: ``"weighted"`` (eq. 6), ``"mean"`` or ``"max"`` — Table 13.
        pooling_normalize: divide by the mask sum (eq. 6) — Table 13.
        structure: append the structure correlation (eq. 7); ``False``: part features only.
        parsing_size: the parsing network's input / mask size (128).
        dropout: IResNet's dropout before the FC.
        widths: IResNet stage widths; the part-feature size C is ``widths[part_stage]``.
        pooling: the global branch's output stage, ``"fc"`` (ArcFace's E block, default),
            ``"gap"`` or ``"gnap"``.

    With neither ``parsing_net`` nor ``parsing_checkpoint`` the parsing network is randomly
    initialised and a ``UserWarning`` says so.

    Shape:
        - images: (B, 3, 112, 112)
        - output: (B, D + K·(C + 2(K − 1))) = (B, 1340) by default
        - ``forward_aux``: ``{"embedding", "global": (B, D), "local": (B, 828),
          "parts": (B, K, C), "masks": (B, P, 128, 128) class probabilities}``
    """
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
    backbone = IResNet(
        layers, widths=widths, embedding_size=embedding_size, dropout=dropout, pooling=pooling
    )
    pool = PartMaskPooling(
        parts=tuple(parts), mode=pooling_mode, normalize=pooling_normalize, mask_resize="max"
    )
    return FaceRecognizer(
        backbone,
        parser=parsing_net,
        parser_input_size=parsing_size,
        parts=pool,
        part_stage=part_stage,
        structure=StructureCorrelation(flatten=True) if structure else None,
        local_weight=local_weight,
        normalize_global=normalize_global,
        normalize_local=normalize_local,
    )


@register_model(
    baseline="iresnet50",
    embedding_size=1340,
    side_networks=("parser",),
    paper="FSENet (§3, Table 8 1 : 0.6)",
    small={"widths": (8, 16, 32, 64)},
)
def fsenet_iresnet50(**kwargs) -> FaceRecognizer:
    """FSENet on IResNet-50 (28×28 part features of 128 channels). kwargs → :func:`fsenet`."""
    return fsenet((3, 4, 14, 3), **kwargs)
